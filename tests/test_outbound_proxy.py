"""Tests for ``pushprox.client.outbound_proxy``: which HTTP proxy the link to the proxy takes."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from pushprox.client.outbound_proxy import HttpProxy, NoProxy, choose_http_proxy, parse_http_proxy


def basic(userinfo: str) -> bytes:
    """A ``Basic`` credential."""
    return b"Basic " + base64.b64encode(userinfo.encode())


class ParseHttpProxyTests(SynchronousTestCase):
    """Proxy URLs as users write them."""

    def test_url_with_credentials(self) -> None:
        """Percent-encoded credentials are decoded into the header, and never shown."""
        proxy = parse_http_proxy("http://al%40ce:p%3Ass@proxy.corp:3128/")
        self.assertEqual(proxy, HttpProxy("proxy.corp", 3128, basic("al@ce:p:ss")))
        self.assertEqual(proxy.shown, "http://proxy.corp:3128")
        self.assertNotIn("p:ss", repr(proxy))

    def test_scheme_and_port_default(self) -> None:
        """No scheme means http:// (as Go); no port means 80."""
        self.assertEqual(parse_http_proxy("proxy.corp:8080"), HttpProxy("proxy.corp", 8080))
        self.assertEqual(parse_http_proxy("http://proxy.corp"), HttpProxy("proxy.corp", 80))
        self.assertEqual(parse_http_proxy("http://[::1]:3128").shown, "http://[::1]:3128")

    def test_unsupported_urls_are_refused_without_their_credentials(self) -> None:
        """https://, socks5://, paths and bad ports are refused; the message hides secrets."""
        for url in ("https://u:secret@proxy:3128", "socks5://proxy:1080", "http://proxy:3128/x",
                    "http://proxy:99999", "http://:3128"):
            with self.assertRaises(ValueError) as raised:
                parse_http_proxy(url)
            self.assertNotIn("secret", str(raised.exception))


class NoProxyTests(SynchronousTestCase):
    """NO_PROXY entries, with Go's meaning."""

    def test_domains_match_themselves_and_subdomains(self) -> None:
        """``corp.example`` matches itself and below; a leading dot or ``*.`` only below."""
        rules = NoProxy.parse("corp.example, .sub.example,*.star.example")
        self.assertTrue(rules.bypasses("corp.example", 80))
        self.assertTrue(rules.bypasses("PROXY.Corp.Example.", 443))
        self.assertFalse(rules.bypasses("notcorp.example", 80))
        self.assertTrue(rules.bypasses("a.sub.example", 80))
        self.assertFalse(rules.bypasses("sub.example", 80))
        self.assertTrue(rules.bypasses("a.star.example", 80))
        self.assertFalse(rules.bypasses("star.example", 80))

    def test_addresses_networks_and_ports(self) -> None:
        """IP addresses, CIDR blocks, and entries limited to a port."""
        rules = NoProxy.parse("10.0.0.0/8,192.0.2.7,proxy.corp:8443,[2001:db8::1]:80,::2")
        self.assertTrue(rules.bypasses("10.1.2.3", 8080))
        self.assertTrue(rules.bypasses("192.0.2.7", 1))
        self.assertFalse(rules.bypasses("192.0.2.8", 1))
        self.assertTrue(rules.bypasses("proxy.corp", 8443))
        self.assertFalse(rules.bypasses("proxy.corp", 8080))
        self.assertTrue(rules.bypasses("[2001:db8::1]", 80))
        self.assertFalse(rules.bypasses("2001:db8::1", 81))
        self.assertTrue(rules.bypasses("::2", 80))

    def test_star_and_empty(self) -> None:
        """``*`` sends everything around; nothing sends nothing around."""
        self.assertTrue(NoProxy.parse("*").bypasses("any.example", 80))
        self.assertFalse(NoProxy.parse(" , ").bypasses("any.example", 80))


class ChooseHttpProxyTests(SynchronousTestCase):
    """The environment, the flags, and Go's rules between them."""

    def test_variable_by_the_scheme_of_the_proxy_url(self) -> None:
        """HTTPS_PROXY for https://, HTTP_PROXY for http://; upper case wins."""
        environ = {"HTTP_PROXY": "http://plain:3128", "https_proxy": "http://lower:3128",
                   "HTTPS_PROXY": "http://upper:3128"}
        self.assertEqual(choose_http_proxy("http://pushprox:8080/", environ),
                         HttpProxy("plain", 3128))
        self.assertEqual(choose_http_proxy("https://pushprox/", environ),
                         HttpProxy("upper", 3128))
        self.assertEqual(choose_http_proxy("https://pushprox/", {"https_proxy": "lower:1"}),
                         HttpProxy("lower", 1))
        self.assertIsNone(choose_http_proxy("https://pushprox/", {"HTTP_PROXY": "plain:1"}))

    def test_no_proxy_and_loopback_go_direct(self) -> None:
        """NO_PROXY (with the URL's port) and loopback hosts are reached directly."""
        environ = {"HTTP_PROXY": "http://corp:3128", "no_proxy": "pushprox:8080"}
        self.assertIsNone(choose_http_proxy("http://pushprox:8080/", environ))
        self.assertIsNotNone(choose_http_proxy("http://pushprox:9090/", environ))
        for url in ("http://localhost:8080/", "http://127.0.0.5/", "http://[::1]:80/"):
            self.assertIsNone(choose_http_proxy(url, environ), url)

    def test_flag_wins_and_reaches_loopback(self) -> None:
        """--http-proxy wins over the environment, applies to loopback, obeys NO_PROXY."""
        environ = {"HTTP_PROXY": "http://env:3128"}
        self.assertEqual(choose_http_proxy("http://127.0.0.1:8080/", environ,
                                           explicit="http://flag:3128"),
                         HttpProxy("flag", 3128))
        self.assertIsNone(choose_http_proxy("http://pushprox/", {"NO_PROXY": "*"},
                                            explicit="http://flag:3128"))

    def test_ignoring_the_environment(self) -> None:
        """No variable is read, NO_PROXY neither."""
        environ = {"HTTP_PROXY": "http://env:3128", "NO_PROXY": "*"}
        self.assertIsNone(choose_http_proxy("http://pushprox/", environ, use_environment=False))
        self.assertEqual(choose_http_proxy("http://pushprox/", environ, explicit="flag:1",
                                           use_environment=False), HttpProxy("flag", 1))

    def test_malformed_proxy_names_its_source(self) -> None:
        """The error names the variable or the flag, not the value."""
        with self.assertRaises(ValueError) as raised:
            choose_http_proxy("https://pushprox/", {"HTTPS_PROXY": "socks5://u:pw@s:1"})
        self.assertTrue(str(raised.exception).startswith("HTTPS_PROXY: socks5://"))
        self.assertNotIn("pw", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            choose_http_proxy("http://pushprox/", {}, explicit="ftp://x")
        self.assertTrue(str(raised.exception).startswith("--http-proxy: "))
