"""
Security of a real proxy and a real client, connected by an in-memory network.

Every door is shown closed: client certificates from the wrong CA, expired or for
another FQDN; missing, wrong and borrowed client tokens; scrapers without or with a
wrong password or from another network; pushes for another client's scrape; targets
the client was not told to serve; oversized pushes; and secrets that must never show
up in logs, in ``/clients`` or at the target.  Each is paired with the same setup
opening for the right credentials, so that a test cannot pass because nothing works.

TLS is real (pyOpenSSL over in-memory transports); only the sockets are not.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable
from typing import Any

import treq
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import provider

from pushprox.client.service import ClientConfig, ClientService
from pushprox.proxy import assembly
from pushprox.proxy.coordinator import Coordinator, Scrape
from pushprox.proxy.site import ProxyConfig, PushProxSite
from pushprox.proxy.tap import Options, makeService
from pushprox.shared import tls, wire
from pushprox.shared.auth import ClientAuth, PasswordChecker, ScraperAuth, parse_networks
from pushprox.shared.metrics import ClientMetrics
from pushprox.shared.reload import ReloadOnHangup
from pushprox.shared.tls_listeners import require_client_certificates
from tests.harness.credentials import fast_hash
from tests.harness.files import FileTestCase
from tests.helpers import HTTPResponse, http_request_bytes
from tests.memory import Exchange, MemoryNetwork, TrackingClock, client_connections, stop_client
from tests.tlsfixtures import PKI, IssuedCertificate, make_pki

LOCALHOST = "127.0.0.1"
PROXY_PORT = 8443
TARGET_PORT = 9100
FQDN = "node1.example"
OTHER_FQDN = "node2.example"
TOKEN_1 = "node1-secret-token-5d1f0c7a9e"
TOKEN_2 = "node2-secret-token-86b2e4f1c3"
WRONG_TOKEN = "wrong-secret-token-0f9e8d7c6b"
SCRAPER = "prometheus"
PASSWORD = "scraper-password-a7c3e9"
WRONG_PASSWORD = "scraper-wrong-password-4b2d"
PAGE = b"# TYPE node_load1 gauge\nnode_load1 0.25\n"
HELD_PAGE = b"held 1\n"
BIG_PAGE = b"x" * 5000
NEVER_SEEN = b"forged_metric 666\n"
BEARER_CHALLENGE = b'Bearer realm="pushprox"'
BASIC_CHALLENGE = b'Basic realm="pushprox"'


def basic(user: str, password: str) -> str:
    """An Authorization or Proxy-Authorization value for basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def target_url(path: str, *, fqdn: str = FQDN, port: int = TARGET_PORT) -> str:
    """The URL Prometheus scrapes through the proxy."""
    return f"http://{fqdn}:{port}{path}"


# -- what runs: a target, a proxy, clients --


class Target(Resource):
    """An exporter: /metrics, /big, and /held (answered when the test says so)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]]]] = []
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.requests.append((request.uri, {
            name.lower(): list(values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        if request.path == b"/metrics":
            return PAGE
        if request.path == b"/big":
            return BIG_PAGE
        if request.path == b"/held":
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: self.held.remove(request))
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"not here\n"

    def release(self) -> None:
        """Answer every held request."""
        for request in list(self.held):
            self.held.remove(request)
            request.write(HELD_PAGE)
            request.finish()


class RecordingCoordinator(Coordinator):
    """A coordinator that remembers every scrape it hands to a poll, and to whom."""

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(clock)
        self.clock = clock
        self.handed: list[tuple[str | None, Scrape, bytes]] = []

    def poll(self, fqdn: str, identity: str | None, timeout: float | None,
             labels: dict[str, str] | None = None) -> Deferred[Scrape | None]:
        def record(scrape: Scrape | None) -> Scrape | None:
            if scrape is not None:
                self.handed.append((identity, scrape, scrape.payload(self.clock.seconds())))
            return scrape

        return super().poll(fqdn, identity, timeout, labels).addCallback(record)


def quiet_site(resource: Resource, clock: IReactorTime) -> Site:
    """A Site for ``resource`` on ``clock`` that does not log starting."""
    site = Site(resource, reactor=clock)
    site.noisy = False
    return site


class SecurityTestCase(SynchronousTestCase):
    """A target on the network; tests add a proxy and clients; nothing may be left over."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pushprox-test-security-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.network = MemoryNetwork()
        self.target = Target()
        self.network.listenTCP(TARGET_PORT, quiet_site(self.target, self.network))
        self.site: PushProxSite | None = None
        self.coordinator: RecordingCoordinator
        self.pki: PKI | None = None
        # Added first, so it runs last: after every client has stopped.
        self.addCleanup(self.assert_nothing_left)

    def assert_nothing_left(self) -> None:
        """Every connection is closed and the proxy holds no scrape, poll or queue."""
        self.target.release()
        self.network.flush()
        self.assertEqual(self.network.open_connections(), [])
        if self.site is not None:
            self.assertTrue(self.coordinator.is_idle())

    def write(self, name: str, text: str) -> str:
        """Write a file for the proxy and return its path."""
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    # -- the proxy --

    def start_proxy(self, *, client_auth: ClientAuth | None = None,
                    scraper_auth: ScraperAuth | None = None,
                    config: ProxyConfig | None = None, pki: PKI | None = None) -> None:
        """Serve a PushProxSite on plain TCP, or on mutual TLS when ``pki`` is given."""
        self.coordinator = RecordingCoordinator(self.network)
        self.site = PushProxSite(self.coordinator, clock=self.network,
                                 client_auth=client_auth, scraper_auth=scraper_auth,
                                 config=config)
        self.pki = pki
        if pki is None:
            self.network.listenTCP(PROXY_PORT, self.site)
            return
        endpoint = serverFromString(self.network, require_client_certificates(
            f"ssl:{PROXY_PORT}:privateKey={pki.server.key}:certKey={pki.server.cert}"
            f":interface={LOCALHOST}", pki.ca_cert))
        self.successResultOf(endpoint.listen(self.site))

    @property
    def proxy_url(self) -> str:
        scheme = "http" if self.pki is None else "https"
        return f"{scheme}://{LOCALHOST}:{PROXY_PORT}/"

    def http_count(self, code: int, path: str) -> float:
        """pushprox_http_requests_total{code, path} of the proxy."""
        assert self.site is not None
        value = self.site.metrics.registry.get_sample_value(
            "pushprox_http_requests_total", {"code": str(code), "path": path})
        return 0.0 if value is None else float(value)

    def all_polls(self) -> float:
        """Polls the proxy answered, whatever the code."""
        assert self.site is not None
        return sum(
            sample.value
            for metric in self.site.metrics.registry.collect()
            if metric.name == "pushprox_http_requests"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("path") == "/poll"
        )

    # -- requests to the proxy --

    def tls_creator(self, client: IssuedCertificate | None
                    ) -> IOpenSSLClientConnectionCreator | None:
        """How a connection to the proxy starts TLS (presenting ``client``), if it does."""
        if self.pki is None:
            assert client is None
            return None
        policy = tls.https_policy(cacert=self.pki.ca_cert,
                                  cert=None if client is None else client.cert,
                                  key=None if client is None else client.key)
        creator: IOpenSSLClientConnectionCreator = policy.creatorForNetloc(
            b"localhost", PROXY_PORT)
        return creator

    def send(self, request: bytes, client: IssuedCertificate | None = None) -> Exchange:
        """Send ``request`` to the proxy on a new connection; the network has settled."""
        return self.network.exchange(PROXY_PORT, request, tls=self.tls_creator(client))

    def scrape(self, url: str, *, headers: Iterable[tuple[str, str]] = ()) -> Exchange:
        """GET ``url`` in proxy form, as Prometheus does."""
        return self.send(http_request_bytes(
            "GET", url, [("X-Prometheus-Scrape-Timeout-Seconds", "5"), *headers]))

    def get(self, path: str, headers: Iterable[tuple[str, str]] = ()) -> HTTPResponse:
        """GET one of the proxy's own endpoints."""
        return self.send(http_request_bytes("GET", path, list(headers),
                                            host=f"{LOCALHOST}:{PROXY_PORT}")).response()

    def poll_request(self, fqdn: str, *, timeout: str = "0",
                     headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """A poll as a client sends it; with timeout 0 an idle proxy answers 204 at once."""
        return http_request_bytes("POST", "/poll",
                                  [("X-PushProx-Poll-Timeout", timeout), *headers],
                                  fqdn.encode(), host=f"{LOCALHOST}:{PROXY_PORT}")

    def raw_poll(self, fqdn: str, *, timeout: str = "0",
                 headers: Iterable[tuple[str, str]] = (),
                 client: IssuedCertificate | None = None) -> HTTPResponse:
        """A poll made by hand."""
        return self.send(self.poll_request(fqdn, timeout=timeout, headers=headers),
                         client).response()

    def raw_push(self, scrape_id: str, *, headers: Iterable[tuple[str, str]] = (),
                 page: bytes = NEVER_SEEN,
                 client: IssuedCertificate | None = None) -> HTTPResponse:
        """A push made by hand, answering ``scrape_id`` with ``page``."""
        body = wire.encode_response_head(
            status=200, reason=b"OK", headers=[(b"Content-Type", b"text/plain")],
            scrape_id=scrape_id, length=len(page)) + page
        request = http_request_bytes("POST", "/push", list(headers), body,
                                     host=f"{LOCALHOST}:{PROXY_PORT}")
        return self.send(request, client).response()

    # -- clients --

    def start_client(self, *, fqdn: str = FQDN, proxy_url: str | None = None,
                     certificate: IssuedCertificate | None = None,
                     **overrides: Any) -> ClientService:
        """A running ClientService that serves the target's port and pages only; it has polled."""
        settings: dict[str, Any] = {
            "proxy_url": proxy_url or self.proxy_url,
            "fqdn": fqdn,
            "target_host": LOCALHOST,
            "allow_ports": frozenset({TARGET_PORT}),
            "allow_paths": frozenset({"/metrics", "/held", "/big"}),
            # A failed poll is retried after 10 s: within a test, failures count exactly.
            "retry_initial_wait": 10.0,
            "retry_max_wait": 10.0,
            "shutdown_grace": 0.5,
        }
        settings.update(overrides)
        config = ClientConfig(**settings)
        policy = None
        if self.pki is not None:
            policy = tls.https_policy(
                cacert=self.pki.ca_cert,
                cert=None if certificate is None else certificate.cert,
                key=None if certificate is None else certificate.key,
            )
        proxy_link, target_link, pools = client_connections(self.network, config,
                                                            proxy_policy=policy)
        #: The timers of the client started last.
        self.clock = clock = TrackingClock(self.network)
        service = ClientService(config, reactor=clock,
                                proxy_link=proxy_link, target_link=target_link,
                                metrics=ClientMetrics(), pools=pools, rand=lambda: 1.0)
        service.startService()
        self.addCleanup(self.stop_client, service, clock)
        self.network.flush()
        return service

    def stop_client(self, service: ClientService, clock: TrackingClock) -> None:
        """Stop ``service`` within its grace period; it leaves no timer behind."""
        self.target.release()
        if service.running:
            self.successResultOf(stop_client(self.network, service))
        self.assertEqual(clock.pending(), [])

    @staticmethod
    def client_count(service: ClientService, name: str) -> float:
        """One of the client's counters, e.g. pushprox_client_poll_errors_total."""
        value = service.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else float(value)

    def registered(self, fqdn: str = FQDN) -> None:
        """``fqdn`` is registered, and one poll waits."""
        assert self.site is not None
        self.assertIn(fqdn, [c.fqdn for c in self.coordinator.clients()])
        self.assertEqual(self.site.coordinator.waiting_poll_count(), 1)

    def held_scrape(self) -> tuple[Exchange, str]:
        """A scrape of /held, handed to the client and waiting at the target; its id."""
        scrape = self.scrape(target_url("/held"))
        self.assertEqual((len(self.target.held), scrape.answered), (1, False))
        [(_, handed, _)] = self.coordinator.handed
        return scrape, handed.scrape_id


# -- client certificates --


class MutualTLSTests(SecurityTestCase):
    """--client-ca: only a certificate from the client CA that names the FQDN may poll."""

    def setUp(self) -> None:
        super().setUp()
        self.pki_files = make_pki(os.path.join(self.directory, "pki"))
        auth = ClientAuth(require_certificate=True, names_fqdn=tls.certificate_names_fqdn)
        self.start_proxy(client_auth=auth, pki=self.pki_files)

    def assertNothingRegistered(self) -> None:
        self.assertEqual(self.coordinator.clients(), [])
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)

    def test_certificate_naming_the_fqdn_scrapes(self) -> None:
        """A client with a certificate naming its FQDN registers; a scrape over TLS gets 200."""
        client = self.start_client(certificate=self.pki_files.client)
        self.registered()
        response = self.scrape(target_url("/metrics")).response()
        self.assertEqual((response.status, response.body), (200, PAGE))
        self.assertEqual(self.coordinator.handed[0][0], "cert:node1.example")
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 0)
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 0)

    def test_certificate_the_client_ca_does_not_vouch_for_cannot_connect(self) -> None:
        """
        A certificate for the right FQDN from another CA, or an expired one from the
        client CA, fails the TLS handshake: the poll is counted as failed, the proxy
        never sees it, and a scrape finds no client.
        """
        certificates = {
            "from another CA": self.pki_files.rogue_client,
            "expired": self.pki_files.ca.issue_expired("expired-client", [FQDN]),
        }
        for which, certificate in certificates.items():
            with self.subTest(which):
                client = self.start_client(certificate=certificate)
                self.assertEqual(
                    self.client_count(client, "pushprox_client_poll_errors_total"), 1)
                self.assertNothingRegistered()
                self.assertEqual(self.all_polls(), 0)
                scrape = self.scrape(target_url("/metrics")).response()
                self.assertEqual((scrape.status, scrape.body),
                                 (404, b"no client is registered as node1.example\n"))
                self.assertEqual(self.target.requests, [])
                self.stop_client(client, self.clock)

    def test_raw_poll_with_certificate_from_another_ca_gets_no_answer(self) -> None:
        """By hand too: the handshake fails, not one byte of HTTP comes back."""
        exchange = self.send(self.poll_request(FQDN), self.pki_files.rogue_client)
        self.assertEqual((exchange.closed, exchange.received), (True, b""))
        self.assertNothingRegistered()
        self.assertEqual(self.all_polls(), 0)

    def test_certificate_for_another_fqdn_403(self) -> None:
        """A valid certificate for node2 may not poll as node1: 403, nothing registered."""
        node2 = self.pki_files.ca.issue("node2", [OTHER_FQDN], server=False)
        client = self.start_client(certificate=node2)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertEqual(self.http_count(403, "/poll"), 1)
        self.assertEqual(self.all_polls(), 1)
        self.assertNothingRegistered()
        response = self.raw_poll(FQDN, client=node2)
        self.assertEqual((response.status, response.body),
                         (403, b"the client certificate does not name node1.example\n"))
        self.assertNothingRegistered()

    def test_no_certificate_401(self) -> None:
        """Without a certificate, a poll gets 401; scrapes (without one) are still served."""
        client = self.start_client(certificate=None)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertEqual(self.http_count(401, "/poll"), 1)
        self.assertNothingRegistered()
        response = self.raw_poll(FQDN)
        self.assertEqual(
            (response.status, response.body),
            (401, b"a client certificate signed by the client CA is required\n"))
        scrape = self.scrape(target_url("/metrics")).response()
        self.assertEqual((scrape.status, scrape.body),
                         (404, b"no client is registered as node1.example\n"))

    def test_push_from_another_certificate_403(self) -> None:
        """node2's certificate may not push node1's scrape; node1's answer still arrives."""
        node2 = self.pki_files.ca.issue("node2", [OTHER_FQDN], server=False)
        self.start_client(certificate=self.pki_files.client)
        self.registered()
        scrape, scrape_id = self.held_scrape()
        forged = self.raw_push(scrape_id, client=node2)
        self.assertEqual(
            (forged.status, forged.body),
            (403, f"scrape {scrape_id} was not sent to cert:node2.example\n".encode()))
        anonymous = self.raw_push(scrape_id)
        self.assertEqual(
            (anonymous.status, anonymous.body),
            (401, b"a client certificate signed by the client CA is required\n"))
        self.assertFalse(scrape.answered)
        self.target.release()
        self.network.flush()
        response = scrape.response()
        self.assertEqual((response.status, response.body), (200, HELD_PAGE))


# -- client tokens --


class TokenTests(SecurityTestCase):
    """--client-tokens: a client must send its own token (or the shared one)."""

    def setUp(self) -> None:
        super().setUp()
        self.token_file = self.write(
            "tokens", f"# clients\n{FQDN} {TOKEN_1}\n{OTHER_FQDN} {TOKEN_2}\n")
        self.client_auth = ClientAuth(token_file=self.token_file)
        self.start_proxy(client_auth=self.client_auth)

    def test_right_token_scrapes(self) -> None:
        """
        With its token, as a Bearer token or as the password in an upstream-style
        ``http://user:TOKEN@proxy/`` URL, the client registers and the scrape gets the
        target's page.
        """
        ways: dict[str, dict[str, Any]] = {
            "Bearer": {"proxy_token": TOKEN_1},
            "proxy URL": {"proxy_url": f"http://{FQDN}:{TOKEN_1}@{LOCALHOST}:{PROXY_PORT}/"},
        }
        for pushes, (way, settings) in enumerate(ways.items(), start=1):
            with self.subTest(way):
                self.coordinator.handed.clear()
                client = self.start_client(**settings)
                self.registered()
                response = self.scrape(target_url("/metrics")).response()
                self.assertEqual((response.status, response.body), (200, PAGE))
                [(identity, _, _)] = self.coordinator.handed
                self.assertEqual(identity, "token:node1.example")
                self.assertEqual(self.http_count(200, "/push"), pushes)
                self.assertEqual(
                    self.client_count(client, "pushprox_client_poll_errors_total"), 0)
                self.assertEqual(
                    self.client_count(client, "pushprox_client_push_errors_total"), 0)
                self.stop_client(client, self.clock)

    def test_poll_without_its_own_token_is_refused(self) -> None:
        """
        A client without a token, with a wrong one (as a Bearer token or in the proxy
        URL), or with node2's token gets 401 or 403: counted, nothing registered, no
        scrape reaches the target; a poll made by hand with the same credentials gets
        the reason (and a Bearer challenge for 401).
        """
        rows: list[tuple[str, dict[str, Any], list[tuple[str, str]], int, bytes]] = [
            ("no token", {}, [], 401, b"client token required\n"),
            ("wrong Bearer token", {"proxy_token": WRONG_TOKEN},
             [("Authorization", f"Bearer {WRONG_TOKEN}")], 401, b"unknown client token\n"),
            ("wrong password in the proxy URL",
             {"proxy_url": f"http://{FQDN}:{WRONG_TOKEN}@{LOCALHOST}:{PROXY_PORT}/"},
             [("Authorization", basic(FQDN, WRONG_TOKEN))], 401, b"unknown client token\n"),
            ("node2's token", {"proxy_token": TOKEN_2},
             [("Authorization", f"Bearer {TOKEN_2}")], 403,
             b"this token is not allowed to poll as node1.example\n"),
        ]
        for which, settings, headers, code, reason in rows:
            with self.subTest(which):
                before = self.all_polls()
                client = self.start_client(**settings)
                self.assertEqual(
                    self.client_count(client, "pushprox_client_poll_errors_total"), 1)
                self.assertEqual(self.all_polls(), before + 1)
                self.assertEqual(self.coordinator.clients(), [])
                response = self.raw_poll(FQDN, headers=headers)
                self.assertEqual((response.status, response.body), (code, reason))
                self.assertEqual(response.header_values(b"www-authenticate"),
                                 [BEARER_CHALLENGE] if code == 401 else [])
                self.assertEqual(self.coordinator.clients(), [])
                scrape = self.scrape(target_url("/metrics")).response()
                self.assertEqual((scrape.status, scrape.body),
                                 (404, b"no client is registered as node1.example\n"))
                self.assertEqual(self.target.requests, [])
                self.stop_client(client, self.clock)
        self.assertEqual((self.http_count(401, "/poll"), self.http_count(403, "/poll")),
                         (6.0, 2.0))

    def test_push_for_another_clients_scrape_403(self) -> None:
        """
        node2, authenticated with its own token, pushes the id handed to node1: 403, and
        node1's scrape still completes with node1's answer.
        """
        client = self.start_client(proxy_token=TOKEN_1)
        node2 = self.raw_poll(OTHER_FQDN, headers=[("Authorization", f"Bearer {TOKEN_2}")])
        self.assertEqual(node2.status, 204)
        self.registered()
        scrape, scrape_id = self.held_scrape()
        [(identity, _, _)] = self.coordinator.handed
        self.assertEqual(identity, "token:node1.example")
        forged = self.raw_push(scrape_id, headers=[("Authorization", f"Bearer {TOKEN_2}")])
        self.assertEqual(
            (forged.status, forged.body),
            (403, f"scrape {scrape_id} was not sent to token:node2.example\n".encode()))
        self.assertEqual(self.http_count(403, "/push"), 1)
        self.assertFalse(scrape.answered)
        self.target.release()
        self.network.flush()
        response = scrape.response()
        self.assertEqual((response.status, response.body), (200, HELD_PAGE))
        self.assertEqual(self.http_count(200, "/push"), 1)
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 0)

    def test_push_without_or_with_wrong_token_401(self) -> None:
        """A push without a token, or with an unknown one, gets 401 and changes nothing."""
        self.start_client(proxy_token=TOKEN_1)
        self.registered()
        scrape, scrape_id = self.held_scrape()
        missing = self.raw_push(scrape_id)
        self.assertEqual((missing.status, missing.body), (401, b"client token required\n"))
        self.assertEqual(missing.header_values(b"www-authenticate"), [BEARER_CHALLENGE])
        wrong = self.raw_push(scrape_id, headers=[("Authorization", basic(FQDN, WRONG_TOKEN))])
        self.assertEqual((wrong.status, wrong.body), (401, b"unknown client token\n"))
        self.assertFalse(scrape.answered)
        self.target.release()
        self.network.flush()
        response = scrape.response()
        self.assertEqual((response.status, response.body), (200, HELD_PAGE))

    def test_sighup_reloads_tokens(self) -> None:
        """After SIGHUP a new token works and a removed one no longer does."""
        reloader = ReloadOnHangup(self.client_auth.reload, self.network)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        new_token = "node1-rotated-token-77aa11"
        before = self.raw_poll(FQDN, headers=[("Authorization", f"Bearer {new_token}")])
        self.assertEqual(before.status, 401)
        self.write("tokens", f"{FQDN} {new_token}\n")
        # The handler runs before raise_signal returns and hands the reload to the
        # reactor, which runs it at the next flush.
        signal.raise_signal(signal.SIGHUP)
        self.network.flush()
        after = self.raw_poll(FQDN, headers=[("Authorization", f"Bearer {new_token}")])
        self.assertEqual(after.status, 204)
        old = self.raw_poll(FQDN, headers=[("Authorization", f"Bearer {TOKEN_1}")])
        self.assertEqual((old.status, old.body), (401, b"unknown client token\n"))


# -- scrapers --


def password_checker() -> PasswordChecker:
    """The scrapers' password file: prometheus with PASSWORD."""
    return PasswordChecker({SCRAPER: fast_hash(PASSWORD.encode())})


class ScraperAuthTests(SecurityTestCase):
    """--scrape-auth and --scrape-allow-cidr: who may scrape and read /clients, /metrics."""

    def scraping_client(self, **proxy_options: Any) -> ClientService:
        """A proxy with ``proxy_options`` and a registered client."""
        self.start_proxy(**proxy_options)
        client = self.start_client()
        self.registered()
        return client

    def test_scrape_without_the_right_proxy_credentials_407(self) -> None:
        """
        A scrape without Proxy-Authorization, with the right password in Authorization
        (meant for the target, not a proxy login), with a wrong password or as an unknown
        user gets 407 with a Basic challenge and never reaches the client.
        """
        self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        rows = [
            ("no Proxy-Authorization", [], b"credentials required\n"),
            ("the password in Authorization", [("Authorization", basic(SCRAPER, PASSWORD))],
             b"credentials required\n"),
            ("wrong password", [("Proxy-Authorization", basic(SCRAPER, WRONG_PASSWORD))],
             b"wrong user or password\n"),
            ("unknown user", [("Proxy-Authorization", basic("grafana", PASSWORD))],
             b"wrong user or password\n"),
        ]
        for which, headers, reason in rows:
            with self.subTest(which):
                response = self.scrape(target_url("/metrics"), headers=headers).response()
                self.assertEqual((response.status, response.body), (407, reason))
                self.assertEqual(response.header_values(b"proxy-authenticate"),
                                 [BASIC_CHALLENGE])
        self.assertEqual(self.coordinator.handed, [])
        self.assertEqual(self.target.requests, [])

    def test_right_password_200(self) -> None:
        """With the right password (sent by ProxyAgent, as Prometheus does) the scrape works."""
        self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        pool = HTTPConnectionPool(self.network, persistent=False)
        agent = ProxyAgent(self.network.endpoint(PROXY_PORT), self.network, pool=pool)
        requested = agent.request(
            b"GET", target_url("/metrics").encode(),
            Headers({b"Proxy-Authorization": [basic(SCRAPER, PASSWORD).encode()]}))
        self.network.flush()
        response = self.successResultOf(requested)
        body = treq.content(response)
        self.network.flush()
        self.assertEqual((response.code, self.successResultOf(body)), (200, PAGE))

    def test_outside_allowed_network_403(self) -> None:
        """From 127.0.0.1, with only 10.0.0.0/8 allowed: 403 for scrapes, /clients, /metrics."""
        self.scraping_client(
            scraper_auth=ScraperAuth(networks=parse_networks(["10.0.0.0/8"])))
        response = self.scrape(target_url("/metrics")).response()
        self.assertEqual((response.status, response.body),
                         (403, b"address 127.0.0.1 is not allowed to scrape\n"))
        self.assertEqual(response.header_values(b"proxy-authenticate"), [])
        for path in ("/clients", "/metrics", "/", "/api/v1/clients"):
            answer = self.get(path)
            self.assertEqual((answer.status, answer.body),
                             (403, b"address 127.0.0.1 is not allowed to scrape\n"))
        self.assertEqual(self.target.requests, [])

    def test_inside_allowed_network_200(self) -> None:
        """From 127.0.0.1, with 127.0.0.0/8 allowed, the scrape works."""
        self.scraping_client(
            scraper_auth=ScraperAuth(networks=parse_networks(["10.0.0.0/8", "127.0.0.0/8"])))
        response = self.scrape(target_url("/metrics")).response()
        self.assertEqual((response.status, response.body), (200, PAGE))

    def test_clients_and_metrics_want_authorization(self) -> None:
        """/clients, /metrics and the status page get 401 without Authorization."""
        self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        for path in ("/clients", "/metrics", "/", "/api/v1/clients"):
            for headers in ([], [("Proxy-Authorization", basic(SCRAPER, PASSWORD))]):
                refused = self.get(path, headers)
                self.assertEqual((refused.status, refused.body),
                                 (401, b"credentials required\n"))
                self.assertEqual(refused.header_values(b"www-authenticate"), [BASIC_CHALLENGE])
            wrong = self.get(path, [("Authorization", basic(SCRAPER, WRONG_PASSWORD))])
            self.assertEqual((wrong.status, wrong.body), (401, b"wrong user or password\n"))
        clients = self.get("/clients", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(clients.status, 200)
        self.assertEqual(json.loads(clients.body), [{"targets": [FQDN], "labels": {}}])
        metrics = self.get("/metrics", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(metrics.status, 200)
        self.assertIn(b"pushprox_http_requests_total", metrics.body)
        page = self.get("/", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(page.status, 200)
        self.assertIn(f'<span class="fqdn">{FQDN}</span>'.encode(), page.body)
        view = self.get("/api/v1/clients", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(view.status, 200)
        self.assertEqual([c["fqdn"] for c in json.loads(view.body)["clients"]], [FQDN])

    def test_health_stays_open(self) -> None:
        """/-/healthy needs no credentials (load balancers probe it)."""
        self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        response = self.get("/-/healthy")
        self.assertEqual((response.status, response.body), (200, b"Healthy\n"))


# -- the client serves only what it is told --


class ClientAllowListTests(SecurityTestCase):
    """The client scrapes only its allowed ports and paths; the proxy limits pushes."""

    def test_disallowed_port_or_path_502(self) -> None:
        """A scrape of another port or path is refused by the client: 502 with its reason."""
        self.start_proxy()
        client = self.start_client()
        self.registered()
        other = TARGET_PORT + 1
        rows = [
            (target_url("/metrics", port=other),
             f"port {other} is not allowed (allowed: {TARGET_PORT}; see --allow-port)"),
            (target_url("/debug/pprof"), "path /debug/pprof is not allowed (see --allow-path)"),
        ]
        for errors, (url, reason) in enumerate(rows, start=1):
            with self.subTest(url):
                response = self.scrape(url).response()
                self.assertEqual(
                    (response.status, response.text),
                    (502, f"the client could not scrape the target: failed to scrape {url}: "
                          f"refused: {reason}\n"))
                self.assertEqual(self.target.requests, [])
                self.assertEqual(
                    self.client_count(client, "pushprox_client_scrape_errors_total"), errors)

    def test_allowed_path_with_query_is_scraped(self) -> None:
        """The allow-list compares the path alone: a query string still scrapes /metrics."""
        self.start_proxy()
        self.start_client()
        self.registered()
        response = self.scrape(target_url("/metrics?collect[]=cpu")).response()
        self.assertEqual((response.status, response.body), (200, PAGE))
        self.assertEqual([uri for uri, _ in self.target.requests], [b"/metrics?collect[]=cpu"])

    def test_oversized_push_413(self) -> None:
        """A target page above --max-push-size: the push gets 413, the scrape 502."""
        self.start_proxy(config=ProxyConfig(max_push_size=1000))
        client = self.start_client()
        self.registered()
        response = self.scrape(target_url("/big")).response()
        self.assertEqual(
            (response.status, response.text),
            (502, f"the target's response of {len(BIG_PAGE)} bytes exceeds the limit of "
                  "1000 bytes (--max-push-size)\n"))
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 1)
        self.assertEqual(self.http_count(413, "/push"), 1)
        self.assertEqual(self.http_count(200, "/push"), 0)

    def test_raw_oversized_push_413(self) -> None:
        """A push body above --max-push-size is answered 413 with the limit."""
        self.start_proxy(config=ProxyConfig(max_push_size=1000))
        registered = self.raw_poll(FQDN)
        self.assertEqual(registered.status, 204)
        scrape = self.scrape(target_url("/metrics"))
        self.assertEqual(self.coordinator.queued_scrape_count(), 1)
        poll = self.raw_poll(FQDN, timeout="5")
        scrape_id = wire.decode_scrape_request(poll.body).scrape_id
        page = b"y" * 2000
        pushed = self.raw_push(scrape_id, page=page)
        self.assertEqual(
            (pushed.status, pushed.text),
            (413, "the target's response of 2000 bytes exceeds the limit of 1000 bytes\n"))
        response = scrape.response()
        self.assertEqual(
            (response.status, response.text),
            (502, "the target's response of 2000 bytes exceeds the limit of 1000 bytes "
                  "(--max-push-size)\n"))

    def test_no_clients_endpoint_404(self) -> None:
        """With --no-clients-endpoint, /clients and the status page are 404 (/metrics stays)."""
        options = Options()
        options.parseOptions(["--no-clients-endpoint",
                              "--listen", f"tcp:{PROXY_PORT}:interface={LOCALHOST}"])
        service = makeService(options, self.network)
        service.startService()
        self.addCleanup(self.stop_service, service)
        for path in ("/clients", "/", "/api/v1/clients"):
            clients = self.get(path)
            self.assertEqual(clients.status, 404)
            self.assertTrue(clients.body.startswith(b"not found: this is a PushProx proxy"),
                            clients.body)
        metrics = self.get("/metrics")
        self.assertEqual(metrics.status, 200)

    def stop_service(self, service: IService) -> None:
        """Stop the proxy: its answers to what waits leave within 0.2 s."""
        stopped = service.stopService()
        self.network.advance(0.2)
        self.successResultOf(stopped)


# -- secrets --


class SecretsTests(SecurityTestCase):
    """Tokens and passwords never appear in logs, in /clients, or at the target."""

    SECRETS = (TOKEN_1, WRONG_TOKEN, PASSWORD, WRONG_PASSWORD)

    def setUp(self) -> None:
        super().setUp()
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observer(event: LogEvent) -> None:
            self.events.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        token_file = self.write("tokens", f"{FQDN} {TOKEN_1}\n")
        self.start_proxy(client_auth=ClientAuth(token_file=token_file),
                         scraper_auth=ScraperAuth(passwords=password_checker()),
                         config=ProxyConfig(log_scrapes=True))

    def assertNoSecrets(self, text: str, where: str) -> None:
        encoded = [base64.b64encode(f"{user}:{secret}".encode()).decode()
                   for user in (FQDN, SCRAPER) for secret in self.SECRETS]
        for secret in (*self.SECRETS, *encoded):
            self.assertNotIn(secret, text, f"a secret appears in {where}")

    def test_secrets_never_logged(self) -> None:
        """A failed token, a scrape with Proxy-Authorization, a wrong password: no secret."""
        refused = self.start_client(
            proxy_url=f"http://{FQDN}:{WRONG_TOKEN}@{LOCALHOST}:{PROXY_PORT}/", log_scrapes=True)
        self.assertEqual(self.client_count(refused, "pushprox_client_poll_errors_total"), 1)
        self.stop_client(refused, self.clock)
        self.start_client(proxy_token=TOKEN_1, log_scrapes=True)
        self.registered()
        good = self.scrape(target_url("/metrics"),
                           headers=[("Proxy-Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(good.response().status, 200)
        bad = self.scrape(target_url("/metrics"),
                          headers=[("Proxy-Authorization", basic(SCRAPER, WRONG_PASSWORD))])
        self.assertEqual(bad.response().status, 407)
        denied = self.get("/clients", [("Authorization", basic(SCRAPER, WRONG_PASSWORD))])
        self.assertEqual(denied.status, 401)
        events = list(self.events)
        texts = [logged_text(event) for event in events]
        # The observer saw the refusals and the scrape, so their absence means something.
        expected = [
            r"Refused poll for node1\.example from 127\.0\.0\.1:\d+: 401 unknown client token",
            r"Refused scrape of b'http://node1\.example:9100/metrics' from 127\.0\.0\.1:\d+: "
            r"407 wrong user or password",
            r"Polling http://127\.0\.0\.1:8443/poll failed, retrying with backoff: PollError: "
            r"poll answered 401: unknown client token",
            re.escape(f"Scrape of {target_url('/metrics')} via {FQDN}: 200"),
        ]
        for pattern in expected:
            self.assertTrue(any(re.fullmatch(pattern, text) for text in texts),
                            (pattern, texts))
        for event, text in zip(events, texts, strict=True):
            self.assertNoSecrets(text, f"the log line {text!r}")
            self.assertNoSecrets(formatEvent(event), f"the log line {text!r}")
            self.assertNoSecrets(repr(event), f"the log event {event!r}")

    def test_secrets_not_in_clients(self) -> None:
        """/clients lists the FQDN and nothing about how the client authenticated."""
        self.start_client(proxy_token=TOKEN_1)
        self.registered()
        response = self.get("/clients", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body), [{"targets": [FQDN], "labels": {}}])
        self.assertNoSecrets(response.body.decode(), "/clients")

    def test_proxy_credentials_go_neither_to_the_client_nor_to_the_target(self) -> None:
        """Proxy-Authorization stays at the proxy; the client's token stays with the proxy."""
        self.start_client(proxy_token=TOKEN_1)
        self.registered()
        response = self.scrape(
            target_url("/metrics"),
            headers=[("Proxy-Authorization", basic(SCRAPER, PASSWORD)),
                     ("Accept", "text/plain")]).response()
        self.assertEqual((response.status, response.body), (200, PAGE))
        [(_, _, payload)] = self.coordinator.handed
        self.assertNotIn(b"proxy-authorization", payload.lower())
        self.assertNoSecrets(payload.decode("latin-1"), "the scrape handed to the client")
        [(uri, headers)] = self.target.requests
        self.assertEqual(uri, b"/metrics")
        self.assertEqual(headers[b"accept"], [b"text/plain"])
        self.assertNotIn(b"proxy-authorization", headers)
        self.assertNotIn(b"authorization", headers)
        self.assertNoSecrets(repr(headers), "the target's request")


def logged_text(event: dict[str, Any]) -> str:
    """
    The text of a log event as it was emitted.

    A legacy observer registered before ours (trial installs one) replaces a field
    called ``message`` with ``()`` in the shared event, after keeping a copy of the
    original under ``log_legacy``; read that copy when it is there.
    """
    legacy = event.get("log_legacy")
    return str(legacy) if legacy is not None else formatEvent(event)


# -- the proxy's command line --


class ProxyOptionsTests(FileTestCase):
    """twistd pushprox-proxy refuses security options it cannot honour, naming why."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def usage_error(self, *argv: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*argv)
        return str(caught.exception)

    def test_client_ca_without_ssl_listener(self) -> None:
        """--client-ca on a plain TCP listener cannot see certificates: a usage error."""
        ca = make_pki(os.path.dirname(self.write("unrelated", ""))).ca_cert
        self.assertEqual(self.usage_error("--client-ca", ca),
                         "--client-ca needs an ssl: endpoint in --listen")
        self.assertEqual(self.usage_error("--client-ca", ca, "--listen", "tcp:8443"),
                         "--client-ca needs an ssl: endpoint in --listen")

    def test_client_ca_not_a_certificate(self) -> None:
        """A --client-ca file without a certificate is a usage error naming it."""
        ca = self.write("ca.crt", "not a certificate\n")
        message = self.usage_error("--client-ca", ca, "--listen", "ssl:8443:privateKey=k")
        self.assertEqual(message, f"--client-ca {ca}: holds no PEM certificate")

    def test_bad_htpasswd(self) -> None:
        """A non-bcrypt htpasswd file is a usage error naming the file and line."""
        path = self.write("htpasswd", "prometheus:$apr1$abc$0123456789abcdefghijkl\n")
        self.assertEqual(self.usage_error("--scrape-auth", path),
                         f"{path}:1: only bcrypt hashes are accepted "
                         "(create them with htpasswd -B)")

    def test_missing_htpasswd(self) -> None:
        """A --scrape-auth file that does not exist is a usage error naming it."""
        path = os.path.join(self.write("unrelated", ""), "htpasswd")
        message = self.usage_error("--scrape-auth", path)
        self.assertEqual(message, f"--scrape-auth {path}: Not a directory")

    def test_bad_cidr(self) -> None:
        """--scrape-allow-cidr nonsense is a usage error naming the value."""
        self.assertEqual(self.usage_error("--scrape-allow-cidr", "10.0.0.0/8",
                                          "--scrape-allow-cidr", "nonsense"),
                         "--scrape-allow-cidr nonsense: nonsense is not a CIDR network")

    def test_bad_token_file(self) -> None:
        """A token file with a short token is a usage error naming file and line."""
        path = self.write("tokens", f"# ok\n{FQDN} short\n")
        self.assertEqual(self.usage_error("--client-tokens", path),
                         f"{path}:2: token shorter than 16 characters")

    def test_good_security_options(self) -> None:
        """Valid files and networks turn every check on; SIGHUP reloads tokens."""
        hashed = fast_hash(b"pw").decode()
        htpasswd = self.write("htpasswd", f"prometheus:{hashed}\n")
        tokens = self.write("tokens", f"{FQDN} {TOKEN_1}\n")
        options = self.parse("--scrape-auth", htpasswd, "--client-tokens", tokens,
                             "--scrape-allow-cidr", "10.0.0.0/8",
                             "--listen", "tcp:0:interface=127.0.0.1")
        client_auth = assembly.client_auth(options.setup())
        scraper_auth = assembly.scraper_auth(options.setup())
        self.assertTrue(client_auth.enabled)
        self.assertTrue(scraper_auth.enabled)
        self.assertEqual(client_auth.poll_principal(FQDN, f"Bearer {TOKEN_1}".encode(), None),
                         "token:node1.example")
        scraper_auth.check("10.1.1.1", basic("prometheus", "pw").encode(), proxy=True)
        service = makeService(options, MemoryReactorClock())
        reloaders = [child for child in service  # type: ignore[attr-defined]
                     if isinstance(child, ReloadOnHangup)]
        self.assertEqual(len(reloaders), 1)

    def test_mutual_tls_endpoint_needs_a_key(self) -> None:
        """An ssl: listener without privateKey= is refused with the reason."""
        with self.assertRaises(ValueError) as caught:
            serverFromString(MemoryReactorClock(),
                             require_client_certificates("ssl:8443", "ca.crt"))
        self.assertEqual(str(caught.exception),
                         "pushprox-mtls: needs privateKey= (and certKey=) and clientCA=")
