"""Tests for the twistd plugins' options and services (proxy_tap, client_tap, options)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from pushprox.client import tap as client_tap
from pushprox.client.outbound_proxy import HttpProxy
from pushprox.client.roster import ClientRoster
from pushprox.client.service import ClientConfig, ClientService
from pushprox.proxy import tap as proxy_tap
from pushprox.proxy.assembly import (
    CoordinatorService,
    ProxySetup,
    WatchAcceptFailures,
    client_auth,
    scraper_auth,
)
from pushprox.proxy.cluster.service import DrainingListeners, HeartbeatService
from pushprox.proxy.site import ConnectionRefusals, ProxyConfig
from pushprox.shared.config import default
from pushprox.shared.metrics import ProxyMetrics
from pushprox.shared.options import port_number, positive_float, positive_int
from pushprox.shared.program import FlagListener
from pushprox.shared.reload import ReloadOnHangup, WatchFiles
from pushprox.shared.tls_listeners import (
    ReloadableTLSEndpoint,
    require_client_certificates,
    tls_listener,
)
from tests.tlsfixtures import make_pki


def parse_proxy(*argv: str) -> proxy_tap.Options:
    """Parsed proxy options."""
    options = proxy_tap.Options()
    options.parseOptions(list(argv))
    return options


def parse_client(*argv: str) -> client_tap.Options:
    """Parsed client options."""
    options = client_tap.Options()
    options.parseOptions(list(argv))
    return options


class ValueParserTests(SynchronousTestCase):
    """The option value parsers shared by both plugins."""

    def test_positive_float(self) -> None:
        """Seconds must be a positive finite number."""
        self.assertEqual(positive_float("2.5"), 2.5)
        for bad in ("0", "-1", "inf", "nan", "soon"):
            self.assertRaises(ValueError, positive_float, bad)

    def test_positive_int(self) -> None:
        """Counts and sizes must be positive integers."""
        self.assertEqual(positive_int("16"), 16)
        for bad in ("0", "-3", "1.5"):
            self.assertRaises(ValueError, positive_int, bad)

    def test_port_number(self) -> None:
        """Ports are 1 to 65535."""
        self.assertEqual(port_number("9100"), 9100)
        for bad in ("0", "65536", "http"):
            self.assertRaises(ValueError, port_number, bad)


class ProxyOptionsTests(SynchronousTestCase):
    """``twistd pushprox-proxy`` options."""

    def test_defaults(self) -> None:
        """Without options: one tcp:8080 listener and the documented limits."""
        options = parse_proxy()
        self.assertEqual(options["listen"], ["tcp:8080"])
        self.assertEqual(options.config(), ProxyConfig())
        self.assertEqual(
            (options["registration-timeout"], options["max-queued-scrapes"],
             options["max-clients"], options["max-polls-per-client"]),
            (300.0, 100, 100_000, 16),
        )
        self.assertEqual(options.setup(), ProxySetup())
        self.assertFalse(client_auth(options.setup()).enabled)
        self.assertFalse(scraper_auth(options.setup()).enabled)

    def test_port_is_listen(self) -> None:
        """``--port tcp:8080`` (the documented form) and repeated ``--listen`` add up."""
        options = parse_proxy("--port", "tcp:8080", "--listen", "tcp:9090:interface=::1")
        self.assertEqual(options["listen"], ["tcp:8080", "tcp:9090:interface=::1"])

    def test_limits_are_parsed_in_their_type(self) -> None:
        """Every limit reaches the configuration, parsed."""
        options = parse_proxy(
            "--scrape-default-timeout", "10", "--scrape-max-timeout", "60",
            "--poll-max-timeout", "30", "--max-push-size", "1000",
            "--max-request-size", "100", "--max-header-size", "2000", "--log-scrapes",
        )
        self.assertEqual(options.config(), ProxyConfig(
            scrape_default_timeout=10.0, scrape_max_timeout=60.0, poll_max_timeout=30.0,
            max_push_size=1000, max_request_size=100, max_header_size=2000,
            log_scrapes=True,
        ))

    def test_bad_values_are_usage_errors(self) -> None:
        """Unparsable or inconsistent values stop the program with a usage error."""
        for argv in (
            ["--scrape-default-timeout", "0"],
            ["--max-push-size", "-1"],
            ["--scrape-default-timeout", "400"],  # beyond the default maximum of 300
            ["--client-ca", "ca.pem"],  # no ssl: listener
            ["--scrape-allow-cidr", "nonsense"],
            ["--client-tokens", "/nonexistent/tokens"],
        ):
            self.assertRaises(usage.UsageError, parse_proxy, *argv)

    def test_tls_profile_options(self) -> None:
        """The TLS version and suites are checked, and refused in one line naming them."""
        options = parse_proxy("--tls-min-version", "TLS13", "--tls-cipher-suites",
                              "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "
                              "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
        self.assertEqual((options["tls-min-version"], options["tls-cipher-suites"]), (
            "TLS13", ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                      "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")))
        self.assertEqual((parse_proxy()["tls-min-version"], parse_proxy()["tls-cipher-suites"],
                          parse_proxy()["tls-reload-interval"]), (None, None, 10.0))
        for argv, message in (
            (["--tls-min-version", "TLS11"], "--tls-min-version TLS11: TLS11 is not one of "
                                             "TLS12, TLS13"),
            (["--tls-cipher-suites", "TLS_FOO,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
             "--tls-cipher-suites TLS_FOO,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: unknown TLS "
             "1.2 cipher suite TLS_FOO (IANA names, e.g. "
             "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"),
            (["--tls-reload-interval", "-1"], "--tls-reload-interval -1: -1 is not a "
                                              "positive duration"),
        ):
            with self.assertRaises(usage.UsageError) as raised:
                parse_proxy(*argv)
            self.assertEqual(str(raised.exception), message)
        self.assertEqual(parse_proxy("--tls-reload-interval", "0")["tls-reload-interval"], 0.0)

    def test_ssl_listeners_get_our_endpoint_and_profile(self) -> None:
        """
        ssl: becomes pushprox-tls: with the program's profile unless the description gives
        its own; Twisted's sslmethod= is refused with the options there are.
        """
        directory = tempfile.mkdtemp(prefix="pushprox-taps-")
        self.addCleanup(shutil.rmtree, directory)
        pki = make_pki(directory)
        keys = f"privateKey={pki.server.key}:certKey={pki.server.cert}"
        self.assertEqual(
            tls_listener(f"ssl:8443:{keys}", min_version="TLS13",
                         cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)),
            f"pushprox-tls:8443:{keys}:minVersion=TLS13"
            ":cipherSuites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
        self.assertEqual(tls_listener(f"pushprox-tls:8443:{keys}:minVersion=TLS12",
                                      min_version="TLS13"),
                         f"pushprox-tls:8443:{keys}:minVersion=TLS12")
        self.assertEqual(tls_listener("tcp:8080", min_version="TLS13"), "tcp:8080")
        endpoint = serverFromString(MemoryReactorClock(),
                                    f"pushprox-tls:8443:{keys}:minVersion=TLS13")
        self.assertIsInstance(endpoint, ReloadableTLSEndpoint)
        with self.assertRaises(ValueError) as raised:
            serverFromString(MemoryReactorClock(), f"pushprox-tls:8443:{keys}:sslmethod=X")
        self.assertEqual(str(raised.exception), (
            "pushprox-tls: unsupported option(s) sslmethod (supported: port, privateKey, "
            "certKey, extraCertChain, interface, backlog, clientCA, requireClientCert, "
            "minVersion, maxVersion, cipherSuites)"))

    def test_mutual_tls_description_keeps_escapes(self) -> None:
        """--client-ca turns ssl: into pushprox-mtls:, escapes and all, parsed by Twisted."""
        directory = tempfile.mkdtemp(prefix="pushprox:taps-")
        self.addCleanup(shutil.rmtree, directory)
        pki = make_pki(directory)
        description = require_client_certificates(
            rf"ssl:8443:privateKey={pki.server.key.replace(':', chr(92) + ':')}"
            rf":certKey={pki.server.cert.replace(':', chr(92) + ':')}:interface=\:\:1",
            pki.ca_cert,
        )
        self.assertTrue(description.startswith("pushprox-mtls:8443:"))
        reactor = MemoryReactorClock()
        endpoint = serverFromString(reactor, description)
        endpoint.listen(Factory())
        [(port, _, _, backlog, interface)] = reactor.sslServers
        self.assertEqual((port, backlog, interface), (8443, 50, "::1"))
        self.assertEqual(require_client_certificates("tcp:8080", pki.ca_cert), "tcp:8080")


def proxy_services(options: proxy_tap.Options) -> list[Any]:
    """The services ``makeService`` puts under the proxy's own, in order."""
    return list(IServiceCollection(proxy_tap.makeService(options, reactor=MemoryReactorClock())))


#: The services of a single proxy, in the order they start.
SINGLE_PROXY = [CoordinatorService, MultiService, WatchAcceptFailures, ReloadOnHangup,
                WatchFiles]


class ProxyServiceTests(SynchronousTestCase):
    """The service ``makeService`` builds for the proxy."""

    def test_one_listener_per_endpoint_and_the_coordinator(self) -> None:
        """A coordinator service first (it stops last), then a listener per endpoint."""
        children = proxy_services(parse_proxy("--listen", "tcp:0:interface=127.0.0.1",
                                              "--listen", "tcp:0:interface=127.0.0.1"))
        self.assertEqual([type(child) for child in children], SINGLE_PROXY)
        listeners = list(IServiceCollection(children[1]))
        self.assertEqual([type(child) for child in listeners],
                         [FlagListener, FlagListener])

    def test_accept_failures_are_watched_while_running(self) -> None:
        """The ports' reports of refused connections reach the site only while it runs."""
        publisher = LogPublisher()
        site_refusals = ConnectionRefusals(ProxyMetrics())
        watch = WatchAcceptFailures(site_refusals, publisher)
        refused = {"log_format": "EMFILE recovery: Closed socket from {address}",
                   "log_namespace": "twisted.internet.tcp.Port",
                   "address": ("127.0.0.1", 40000)}
        publisher(refused)
        watch.startService()
        publisher(refused)
        publisher(dict(refused, log_namespace="elsewhere"))
        watch.stopService()
        publisher(refused)
        self.assertEqual(site_refusals.refusing, 1)

    def test_mutual_tls_listener_and_token_reload(self) -> None:
        """--client-ca builds the TLS listener itself; --client-tokens adds SIGHUP reload."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        pki = make_pki(directory)
        tokens = Path(directory, "tokens")
        tokens.write_text("node1.example 0123456789abcdef0123\n")
        options = parse_proxy(
            "--listen", f"ssl:0:privateKey={pki.server.key}:certKey={pki.server.cert}",
            "--client-ca", pki.ca_cert, "--client-tokens", str(tokens),
        )
        children = proxy_services(options)
        self.assertEqual([type(child) for child in children], SINGLE_PROXY)
        [listener] = list(IServiceCollection(children[1]))
        self.assertIsInstance(listener, FlagListener)
        self.assertIsNotNone(listener.factory.client_auth)
        self.assertEqual(options.setup().client_tokens,
                         {"0123456789abcdef0123": "node1.example"})

    def test_replica_assembled_through_its_variant(self) -> None:
        """
        A replica's service: the draining listeners first (they stop last), then the
        heartbeat; its site counts requests, knows its peers and forwards pushes.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        token = Path(directory, "token")
        token.write_text("peer-token-0123456789abcdef\n")
        children = proxy_services(parse_proxy(
            "--redis", "redis://r:6379/1", "--peer-token-file", str(token),
            "--peer-url", "http://10.0.0.7:8080", "--listen", "tcp:0:interface=127.0.0.1"))
        self.assertEqual([type(child) for child in children],
                         [DrainingListeners, HeartbeatService, *SINGLE_PROXY[2:]])
        [listener] = list(IServiceCollection(children[0]))
        site = children[0].site
        self.assertIs(listener.factory, site)
        self.assertEqual((site.count_requests, type(site.coordinator).__name__,
                          type(site.push_forwarder).__name__, site.peer_auth is not None),
                         (True, "ClusterCoordinator", "Peers", True))

class ClientOptionsTests(SynchronousTestCase):
    """``twistd pushprox-client`` options."""

    def test_documented_defaults(self) -> None:
        """Only --proxy-url is needed; the rest has the documented defaults."""
        options = parse_client("--proxy-url", "http://proxy:8080/", "--fqdn", "node1.example")
        self.assertEqual(options.config(), ClientConfig(
            proxy_url="http://proxy:8080/", fqdn="node1.example",
        ))
        self.assertEqual(options["metrics-listen"], "tcp:9369")
        self.assertEqual(options.config().allow_ports, frozenset({9100}))
        self.assertEqual(options.config().allow_paths, frozenset({"/metrics"}))

    def test_poll_timeout_and_grace(self) -> None:
        """--poll-timeout and --poll-grace bound how long a silent poll is waited for."""
        self.assertEqual(default(ClientConfig, "poll_grace"), 10.0)
        config = parse_client("--proxy-url", "http://proxy/", "--fqdn", "n.example",
                              "--poll-timeout", "20s", "--poll-grace", "2.5").config()
        self.assertEqual((config.poll_timeout, config.poll_grace), (20.0, 2.5))
        self.assertRaises(usage.UsageError, parse_client, "--proxy-url", "http://proxy/",
                          "--poll-grace", "0")

    def test_allow_lists_repeat(self) -> None:
        """--allow-port and --allow-path are repeatable and replace the defaults."""
        config = parse_client(
            "--proxy-url", "http://proxy/", "--fqdn", "n.example",
            "--allow-port", "9100", "--allow-port", "9182", "--allow-path", "/probe",
        ).config()
        self.assertEqual((config.allow_ports, config.allow_paths),
                         (frozenset({9100, 9182}), frozenset({"/probe"})))

    def test_labels(self) -> None:
        """--label NAME=VALUE repeats; reserved or malformed names are usage errors."""
        config = parse_client("--proxy-url", "http://proxy/", "--fqdn", "n.example",
                              "--label", "site=customer a", "--label", "rack=r=1").config()
        self.assertEqual(config.labels, (("site", "customer a"), ("rack", "r=1")))
        for bad in ("__meta=x", "9x=y", "novalue"):
            self.assertRaises(usage.UsageError, parse_client, "--proxy-url", "http://proxy/",
                              "--label", bad)

    def test_fqdn_defaults_to_this_host(self) -> None:
        """Without --fqdn the client registers as this host's FQDN."""
        import socket

        options = parse_client("--proxy-url", "http://proxy/")
        self.assertEqual(options["fqdn"], [socket.getfqdn()])

    def test_fqdn_must_be_a_host_name(self) -> None:
        """A name with a space, a slash, a leading dash, a scheme or a port stops the
        client naming --fqdn."""
        for bad, reason in [
            *[(bad, "not a host name (letters, digits, '-', '_' and dots)")
              for bad in ("node 1", "node1/metrics", "-node1", "node1.example:")],
            ("http://node1", "a host name, not a URL"),
            ("node1.example:9100", "a host name, not host:port (drop :9100: the port is "
             "the one Prometheus scrapes)"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                parse_client("--proxy-url", "http://proxy/", "--fqdn", bad)
            self.assertEqual(str(raised.exception), f"--fqdn {bad}: {reason}")

    def test_several_names_each_with_its_address(self) -> None:
        """--fqdn repeats; each name keeps the labels and allow-lists, and its address."""
        options = parse_client("--proxy-url", "http://proxy/", "--fqdn", "a.example",
                               "--fqdn", "b.example=10.0.0.2", "--target-host", "127.0.0.1",
                               "--label", "site=berlin", "--allow-port", "9182")
        self.assertEqual(options["fqdn"], ["a.example", "b.example"])
        self.assertEqual(
            [(c.fqdn, c.target_host, c.labels, c.allow_ports) for c in options.configs()],
            [("a.example", "127.0.0.1", (("site", "berlin"),), frozenset({9182})),
             ("b.example", "10.0.0.2", (("site", "berlin"),), frozenset({9182}))])

    def test_names_from_the_environment(self) -> None:
        """FQDN=a,b=10.0.0.2 as upstream's images set FQDN, a list here."""
        previous = os.environ.get("FQDN")
        os.environ["FQDN"] = "a.example, b.example=10.0.0.2"
        self.addCleanup(lambda: os.environ.__setitem__("FQDN", previous) if previous
                        else os.environ.pop("FQDN", None))
        options = parse_client("--proxy-url", "http://proxy/")
        self.assertEqual([(c.fqdn, c.target_host) for c in options.configs()],
                         [("a.example", None), ("b.example", "10.0.0.2")])

    def test_a_name_given_twice_is_refused(self) -> None:
        """Two polls of one name would take each other's scrapes."""
        with self.assertRaises(usage.UsageError) as raised:
            parse_client("--proxy-url", "http://proxy/", "--fqdn", "a.example",
                         "--fqdn", "A.example=10.0.0.2")
        self.assertEqual(str(raised.exception), "--fqdn A.example is given twice")

    def test_localhost_as_this_host_name_is_warned_about(self) -> None:
        """A host whose FQDN is localhost gets a warning suggesting --fqdn; a chosen one not."""
        import socket

        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.patch(socket, "getfqdn", lambda: "localhost.localdomain")
        client_tap.makeService(parse_client("--proxy-url", "http://proxy/",
                                            "--metrics-listen", ""),
                               reactor=MemoryReactorClock())
        client_tap.makeService(parse_client("--proxy-url", "http://proxy/", "--fqdn",
                                            "localhost", "--metrics-listen", ""),
                               reactor=MemoryReactorClock())
        warnings = [formatEvent(event) for event in events
                    if event.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, [
            "This host's FQDN is localhost.localdomain: Prometheus must scrape it as "
            "localhost.localdomain, and two such clients would take each other's scrapes; "
            "give the name Prometheus uses with --fqdn"])

    def test_secret_files_are_read(self) -> None:
        """Token files are read at start, first line, stripped."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        Path(directory, "proxy").write_text("proxy-token-0123456789\nignored\n")
        Path(directory, "target").write_text("  target-token \n")
        config = parse_client(
            "--proxy-url", "http://proxy/", "--fqdn", "n.example",
            "--proxy-token-file", f"{directory}/proxy",
            "--target-bearer-token-file", f"{directory}/target",
        ).config()
        self.assertEqual((config.proxy_token, config.target_bearer_token),
                         ("proxy-token-0123456789", "target-token"))

    def test_bad_values_are_usage_errors(self) -> None:
        """A missing or malformed URL, half a key pair, a bad port: usage errors."""
        for argv in (
            [],
            ["--proxy-url", "proxy:8080"],
            ["--proxy-url", "http://proxy/", "--tls-cert", "c.pem"],
            ["--proxy-url", "http://proxy/", "--allow-port", "70000"],
            ["--proxy-url", "http://proxy/", "--allow-path", "metrics"],
            ["--proxy-url", "http://proxy/", "--retry-initial-wait", "9"],
            ["--proxy-url", "http://proxy/", "--proxy-token-file", "/nonexistent"],
            ["--proxy-url", "http://proxy/", "--target-http-proxy", "socks5://corp:1080"],
            ["--proxy-url", "http://proxy/", "--http-proxy", "https://corp:3128"],
            ["--proxy-url", "http://proxy/", "--proxy-url", "http://proxy/"],
            ["--proxy-url", "http://proxy:port/"],
        ):
            self.assertRaises(usage.UsageError, parse_client, *argv)


class ClientHttpProxyOptionsTests(SynchronousTestCase):
    """--http-proxy, --ignore-proxy-environment and the proxy variables."""

    def setUp(self) -> None:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                     "no_proxy", "PUSHPROX_HTTP_PROXY", "PUSHPROX_IGNORE_PROXY_ENVIRONMENT"):
            self.patch_environ(name, None)

    def patch_environ(self, name: str, value: str | None) -> None:
        """Set or remove variable ``name`` for this test."""
        previous = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        self.addCleanup(lambda: os.environ.__setitem__(name, previous) if previous is not None
                        else os.environ.pop(name, None))

    def test_environment_is_read(self) -> None:
        """HTTPS_PROXY for an https:// proxy URL, unless the environment is ignored."""
        self.patch_environ("HTTPS_PROXY", "http://u:p@corp:3128")
        options = parse_client("--proxy-url", "https://pushprox/", "--fqdn", "n.example")
        self.assertEqual(options.setup().http_proxies[0], HttpProxy("corp", 3128, b"Basic dTpw"))
        ignoring = parse_client("--proxy-url", "https://pushprox/", "--fqdn", "n.example",
                                "--ignore-proxy-environment")
        self.assertIsNone(ignoring.setup().http_proxies[0])

    def test_flag_wins(self) -> None:
        """--http-proxy (or PUSHPROX_HTTP_PROXY) over HTTP_PROXY, for loopback too."""
        self.patch_environ("HTTP_PROXY", "http://env:3128")
        options = parse_client("--proxy-url", "http://127.0.0.1:8080/", "--fqdn", "n.example",
                               "--http-proxy", "flag:3128")
        self.assertEqual(options.setup().http_proxies[0], HttpProxy("flag", 3128))
        self.patch_environ("PUSHPROX_HTTP_PROXY", "http://pushprox-env:3128")
        options = parse_client("--proxy-url", "http://pushprox/", "--fqdn", "n.example")
        self.assertEqual(options.setup().http_proxies[0], HttpProxy("pushprox-env", 3128))

    def test_malformed_proxy_is_a_usage_error_naming_its_source(self) -> None:
        """A proxy URL we cannot use stops the client with the variable's name."""
        self.patch_environ("HTTP_PROXY", "socks5://corp:1080")
        with self.assertRaises(usage.UsageError) as raised:
            parse_client("--proxy-url", "http://pushprox/", "--fqdn", "n.example")
        self.assertIn("HTTP_PROXY: socks5:// proxies are not supported", str(raised.exception))


class ClientServiceMakerTests(SynchronousTestCase):
    """The service ``makeService`` builds for the client."""

    def test_one_client_service_per_name_sharing_the_link(self) -> None:
        """Each --fqdn gets its own ClientService, all on one link to the proxy."""
        roster = next(iter(IServiceCollection(client_tap.makeService(
            parse_client("--proxy-url", "http://proxy/", "--fqdn", "a.example",
                         "--fqdn", "b.example=10.0.0.2", "--metrics-listen", ""),
            reactor=MemoryReactorClock()))))
        clients = [cast(ClientService, service) for service in cast(ClientRoster, roster)]
        self.assertEqual([(c.config.fqdn, c.config.target_host) for c in clients],
                         [("a.example", None), ("b.example", "10.0.0.2")])
        self.assertIs(clients[0]._route.link, clients[1]._route.link)

    def test_client_and_metrics_listener(self) -> None:
        """The client service, and a /metrics listener unless it is turned off."""
        reactor = MemoryReactorClock()
        with_metrics = list(IServiceCollection(client_tap.makeService(
            parse_client("--proxy-url", "http://proxy/", "--fqdn", "n.example"),
            reactor=reactor)))
        self.assertEqual([type(child) for child in with_metrics],
                         [ClientRoster, FlagListener, ReloadOnHangup, WatchFiles])
        self.assertEqual([type(child) for child in cast(ClientRoster, with_metrics[0])],
                         [ClientService])
        without = list(IServiceCollection(client_tap.makeService(
            parse_client("--proxy-url", "http://proxy/", "--fqdn", "n.example",
                         "--metrics-listen", ""), reactor=reactor)))
        self.assertEqual([type(child) for child in without],
                         [ClientRoster, ReloadOnHangup, WatchFiles])
