"""
Tests for the option value parsers: Go durations and listen addresses
(pushprox.shared.options).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared.options import (
    OptionValueError,
    check_endpoint_files,
    did_you_mean,
    endpoint_arguments,
    go_duration,
    host_name,
    http_url,
    listen_endpoint,
    naming,
    optional_listen_endpoint,
    pem_certificates,
    pem_private_key,
    positive_int,
    readable_file,
    seconds,
    target_address,
)
from tests.tlsfixtures import make_pki


class DurationTests(SynchronousTestCase):
    """Durations in seconds or in Go's syntax, as upstream's flags take them."""

    def test_go_durations(self) -> None:
        """Every unit of time.ParseDuration, combined and fractional."""
        for text, expected in [
            ("5m", 300.0), ("1m30s", 90.0), ("250ms", 0.25), ("15s", 15.0), ("1h", 3600.0),
            ("1.5h", 5400.0), ("2h45m", 9900.0), ("100us", 1e-4), ("100µs", 1e-4),
            ("10ns", 1e-8), ("0", 0.0), (".5s", 0.5), ("-1s", -1.0),
        ]:
            self.assertAlmostEqual(go_duration(text), expected, msg=text)

    def test_malformed_go_durations(self) -> None:
        """A number without a unit, an unknown unit or garbage is refused."""
        for text in ("", "5", "5x", "m", "1m 30s", "1d", "s5", "--1s"):
            self.assertRaises(ValueError, go_duration, text)

    def test_seconds_take_both_forms(self) -> None:
        """Our plain seconds and Go durations; zero, negative or infinite refused."""
        self.assertEqual([seconds(v) for v in ("15", "0.5", "15s", "5m")],
                         [15.0, 0.5, 15.0, 300.0])
        for bad in ("0", "0s", "-1", "-1s", "inf", "nan", "soon"):
            self.assertRaises(ValueError, seconds, bad)

    @given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=59))
    def test_minutes_and_seconds(self, minutes: int, secs: int) -> None:
        """``NmSs`` is always N*60+S seconds."""
        self.assertEqual(go_duration(f"{minutes}m{secs}s"), minutes * 60 + secs)

    @given(st.text(max_size=20))
    def test_garbage_raises_only_value_error(self, text: str) -> None:
        """The parser fails only with ValueError, whatever it is given."""
        with contextlib.suppress(ValueError):
            seconds(text)


class ListenEndpointTests(SynchronousTestCase):
    """Where to listen: Twisted endpoints, port numbers and Go's [HOST]:PORT."""

    def test_forms(self) -> None:
        """Each form becomes the endpoint description it means."""
        for text, expected in [
            ("8080", "tcp:8080"),
            (":8080", "tcp:8080"),
            ("127.0.0.1:9369", "tcp:9369:interface=127.0.0.1"),
            ("0.0.0.0:8080", "tcp:8080:interface=0.0.0.0"),
            ("localhost:8080", "tcp:8080:interface=localhost"),
            ("[::1]:8080", r"tcp6:8080:interface=\:\:1"),
            ("tcp:8080", "tcp:8080"),
            ("tcp6:8080", "tcp6:8080"),
            ("ssl:8443:privateKey=k.pem:certKey=c.pem", "ssl:8443:privateKey=k.pem:certKey=c.pem"),
            ("unix:/run/pushprox.sock", "unix:/run/pushprox.sock"),
            ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"),
        ]:
            self.assertEqual(listen_endpoint(text), expected, msg=text)

    def test_bad_ports(self) -> None:
        """A port out of range is refused in every form."""
        for bad in ("70000", ":0", "127.0.0.1:65536", "[::1]:99999"):
            self.assertRaises(ValueError, listen_endpoint, bad)

    def test_empty_turns_off(self) -> None:
        """Only the optional form takes the empty string, and keeps it."""
        self.assertEqual(optional_listen_endpoint(""), "")
        self.assertEqual(optional_listen_endpoint(":9369"), "tcp:9369")


class NamingTests(SynchronousTestCase):
    """Parser errors name the flag and the value."""

    def test_error_names_the_flag(self) -> None:
        """The ValueError becomes an OptionValueError saying --flag VALUE: why."""
        parse = naming("max-clients", positive_int)
        self.assertEqual(parse("3"), 3)
        error = self.assertRaises(OptionValueError, parse, "0")
        self.assertEqual(str(error), "--max-clients 0: 0 is not a positive integer")


class HostAndUrlTests(SynchronousTestCase):
    """Host names and proxy URLs are checked when the command line is read."""

    def test_host_names(self) -> None:
        """Names and addresses pass as given; a port, a URL or a space does not."""
        for good in ("node1.example", "node1", "10.0.0.5", "node_1.example.", "[::1]"):
            self.assertEqual(host_name(good), good)
        for bad, reason in [
            ("node1.example:9100", "a host name, not host:port (drop :9100: the port is "
             "the one Prometheus scrapes)"),
            ("http://node1.example", "a host name, not a URL"),
            ("node 1", "not a host name (letters, digits, '-', '_' and dots)"),
            ("node-.example", "not a host name (letters, digits, '-', '_' and dots)"),
            ("a" * 64, "not a host name (letters, digits, '-', '_' and dots)"),
            ("", "not a host name (letters, digits, '-', '_' and dots)"),
            ("[zz]", "[zz] is not an IPv6 address"),
        ]:
            with self.assertRaises(ValueError) as raised:
                host_name(bad)
            self.assertEqual(str(raised.exception), reason)

    def test_target_addresses(self) -> None:
        """An address to connect to: a name, or an IPv4 or bare IPv6 address."""
        for good in ("127.0.0.1", "::1", "node1.example"):
            self.assertEqual(target_address(good), good)
        self.assertRaises(ValueError, target_address, "127.0.0.1:9100")

    def test_urls(self) -> None:
        """http and https, a host, credentials and a path prefix; a valid port if any."""
        for good in ("http://proxy:8080/", "https://proxy", "http://u:t@proxy:8080/prefix/",
                     "http://[::1]:8080/", "http://10.0.0.1/"):
            self.assertEqual(http_url(good), good)
        for bad, reason in [
            ("http://pro xy:8080/", "a URL has no spaces"),
            ("http://proxy:8080/ ", "a URL has no spaces"),
            ("proxy:8080", "not an http:// or https:// URL (e.g. http://proxy:8080/)"),
            ("ftp://proxy/", "not an http:// or https:// URL (e.g. http://proxy:8080/)"),
            ("http://host:99999/", "port 99999 is out of range (1-65535)"),
            ("http://host:80O0/", "port '80O0' is not a number"),
            ("http://host:0/", "port 0 is out of range (1-65535)"),
            ("http://host:/", "host:: the port is missing after ':'"),
            ("http://:8080/", "the URL has no host"),
            ("http://h%st/", "h%st is not a host name"),
            ("http://[zz]:80/",
             "not a URL ('zz' does not appear to be an IPv4 or IPv6 address)"),
            ("http://[::1/", "not a URL (Invalid IPv6 URL)"),
            ("http://::1:80/", "::1:80 is not HOST:PORT (an IPv6 address goes in brackets)"),
        ]:
            with self.assertRaises(ValueError) as raised:
                http_url(bad)
            self.assertEqual(str(raised.exception), reason, bad)


class FileTests(SynchronousTestCase):
    """Files named by options are read when the command line is read."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pushprox-options-")
        self.addCleanup(shutil.rmtree, self.directory)
        self.pki = make_pki(self.directory)
        self.garbage = os.path.join(self.directory, "garbage.pem")
        Path(self.garbage).write_text("not PEM\n")

    def reason(self, parse: Any, path: str) -> str:
        with self.assertRaises(ValueError) as raised:
            parse(path)
        return str(raised.exception)

    def test_readable_files(self) -> None:
        """A missing file or a directory is refused with the system's reason."""
        self.assertEqual(readable_file(self.garbage), self.garbage)
        self.assertEqual(self.reason(readable_file, os.path.join(self.directory, "none")),
                         "No such file or directory")
        self.assertEqual(self.reason(readable_file, self.directory), "a directory, not a file")

    def test_pipes_are_not_read(self) -> None:
        """A pipe (``<(command)``) passes unread: what the program reads later is intact."""
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        os.write(write_end, b"token\n")
        os.close(write_end)
        path = f"/dev/fd/{read_end}"
        for parse in (readable_file, pem_certificates, pem_private_key):
            self.assertEqual(parse(path), path)
        self.assertEqual(os.read(read_end, 100), b"token\n")

    def test_pem_files(self) -> None:
        """Certificates and keys must be PEM of their kind."""
        self.assertEqual(pem_certificates(self.pki.ca_bundle), self.pki.ca_bundle)
        self.assertEqual(pem_private_key(self.pki.client.key), self.pki.client.key)
        self.assertEqual(self.reason(pem_certificates, self.garbage), "holds no PEM certificate")
        self.assertEqual(self.reason(pem_certificates, self.pki.client.key),
                         "holds no PEM certificate")
        self.assertEqual(self.reason(pem_private_key, self.pki.client.cert),
                         "holds no PEM private key")
        self.assertEqual(self.reason(pem_private_key, self.directory),
                         "a directory, not a file")

    def test_endpoint_files(self) -> None:
        """An ssl: endpoint's privateKey and certKey (the key file when absent) are read."""
        key, cert = self.pki.server.key, self.pki.server.cert
        good = f"ssl:8443:privateKey={key}:certKey={cert}"
        self.assertEqual(check_endpoint_files(good), good)
        self.assertEqual(check_endpoint_files("tcp:8080"), "tcp:8080")
        self.assertEqual(self.reason(check_endpoint_files, f"ssl:8443:privateKey={key}"),
                         f"certKey={key}: holds no PEM certificate")
        self.assertEqual(
            self.reason(check_endpoint_files, f"ssl:8443:privateKey={self.garbage}"),
            f"privateKey={self.garbage}: holds no PEM private key")
        self.assertEqual(
            self.reason(check_endpoint_files, f"ssl:8443:privateKey={key}:certKey="
                        f"{self.pki.client.cert}"),
            f"privateKey={key} is not the key of certKey={self.pki.client.cert}")
        self.assertEqual(self.reason(check_endpoint_files, "ssl:8443"),
                         "an ssl: endpoint needs privateKey=KEY.pem (and certKey=CERT.pem)")
        self.assertEqual(self.reason(check_endpoint_files, "tcp:abc"), "port 'abc' is not a number")
        self.assertEqual(self.reason(check_endpoint_files, "tcp6:port=70000"),
                         "port 70000 is out of range (1-65535)")
        self.assertEqual(check_endpoint_files("tcp:0:interface=127.0.0.1"),
                         "tcp:0:interface=127.0.0.1")
        sock = os.path.join(self.directory, "proxy.sock")
        self.assertEqual(check_endpoint_files(f"unix:{sock}"), f"unix:{sock}")
        self.assertEqual(self.reason(check_endpoint_files, f"unix:{self.garbage}/proxy.sock"),
                         f"{self.garbage} is not a directory")

    def test_endpoint_arguments(self) -> None:
        """Positional and keyword arguments, with escaped colons."""
        self.assertEqual(endpoint_arguments(r"tcp6:8080:interface=\:\:1"),
                         ("tcp6", ["8080"], {"interface": "::1"}))


class DidYouMeanTests(SynchronousTestCase):
    """The name a misspelt one most likely stands for."""

    def test_suggestions(self) -> None:
        """Missing or extra underscores, a letter off; nothing for a stranger."""
        known = ["ALLOW_ANY", "ALLOW_PORT", "PROXY_URL", "REDIS", "PEER_TOKEN_FILE"]
        self.assertEqual(did_you_mean("ALLOWANY", known), "ALLOW_ANY")
        self.assertEqual(did_you_mean("ALLOW_PROT", known), "ALLOW_PORT")
        self.assertEqual(did_you_mean("PROXYURL", known), "PROXY_URL")
        self.assertEqual(did_you_mean("PEER_TOKEN", known), "PEER_TOKEN_FILE")
        for stranger in ("TEST_INSTALLED", "SDIST", "WHEEL", "HEALTHCHECK_URL"):
            self.assertIsNone(did_you_mean(stranger, known))
