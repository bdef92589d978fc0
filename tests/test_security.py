"""
Security of a real proxy and a real client on 127.0.0.1, in one process.

Every door is shown closed: client certificates from the wrong CA, expired or for
another FQDN; missing, wrong and borrowed client tokens; scrapers without or with a
wrong password or from another network; pushes for another client's scrape; targets
the client was not told to serve; oversized pushes; and secrets that must never show
up in logs, in ``/clients`` or at the target.  Each is paired with the same setup
opening for the right credentials, so that a test cannot pass because nothing works.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import bcrypt
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushprox import tls, wire
from pushprox.auth import ClientAuth, PasswordChecker, ScraperAuth, parse_networks
from pushprox.client import ClientConfig, ClientService, make_agents
from pushprox.coordinator import Coordinator, Scrape
from pushprox.metrics import ClientMetrics
from pushprox.mtls_endpoint import require_client_certificates
from pushprox.proxy import ProxyConfig, PushProxSite
from pushprox.proxy_tap import Options, ReloadOnHangup, makeService
from tests.helpers import track_connections
from tests.tlsfixtures import PKI, IssuedCertificate, make_pki

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
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
BEARER_CHALLENGE = 'Bearer realm="pushprox"'


def basic(user: str, password: str) -> str:
    """An Authorization or Proxy-Authorization value for basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- raw HTTP on the reactor --


@dataclass(frozen=True)
class Response:
    """An HTTP response read off the wire."""

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The only value of header ``name``; fails if it came more than once."""
        values = self.headers.get(name.lower())
        if values is None:
            return None
        assert len(values) == 1, values
        return values[0]


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


def parse_response(data: bytes) -> Response:
    """Parse one whole HTTP/1.1 response (the connection was closed after it)."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {data[:300]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body = _dechunk(rest)
    elif "content-length" in headers:
        body = rest[: int(headers["content-length"][0])]
    else:
        body = rest
    return Response(int(status_line.split(" ")[1]), headers, body)


class _OneExchange(Protocol):
    """Writes a request, collects everything until the server closes."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self._data)


def request_bytes(method: str, target: str, host: str,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """An HTTP/1.1 request that asks the server to close the connection after it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange_bytes(endpoint: IStreamClientEndpoint, request: bytes) -> bytes:
    """Send ``request`` on a new connection; return every byte received up to the close."""
    protocol = _OneExchange(request)
    await connectProtocol(endpoint, protocol)
    return await protocol.done


async def exchange(endpoint: IStreamClientEndpoint, request: bytes) -> Response:
    """Send ``request`` on a new connection and read the response up to the close."""
    return parse_response(await exchange_bytes(endpoint, request))


class _BodyCollector(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.data)


def read_body(response: Any) -> Deferred[bytes]:
    """The whole body of an Agent response."""
    collector = _BodyCollector()
    response.deliverBody(collector)
    return collector.done


def tcp(port: int) -> IStreamClientEndpoint:
    """A plain TCP endpoint to 127.0.0.1:port."""
    return TCP4ClientEndpoint(reactor, LOCALHOST, port, timeout=5)


def tls_endpoint(port: int, ca_cert: str,
                 client: IssuedCertificate | None = None) -> IStreamClientEndpoint:
    """A TLS endpoint to 127.0.0.1:port that trusts ``ca_cert`` and may present ``client``."""
    policy = tls.https_policy(cacert=ca_cert, cert=None if client is None else client.cert,
                               key=None if client is None else client.key)
    return wrapClientTLS(policy.creatorForNetloc(b"localhost", port), tcp(port))


async def wait_until(predicate: Callable[[], T], *, what: str, timeout: float = 10.0) -> T:
    """Check ``predicate`` every 10 ms until it is true; fail naming ``what``."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


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
            name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()
        }))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        if request.path == b"/metrics":
            return PAGE
        if request.path == b"/big":
            return BIG_PAGE
        if request.path == b"/held":
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"not here\n"

    def release(self) -> None:
        """Answer every held request."""
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.write(HELD_PAGE)
                request.finish()
        self.held.clear()


class RecordingCoordinator(Coordinator):
    """A coordinator that remembers every scrape it hands to a poll, and to whom."""

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(clock)
        self.handed: list[tuple[str | None, Scrape, bytes]] = []

    def poll(self, fqdn: str, identity: str | None, timeout: float | None,
             labels: dict[str, str] | None = None) -> Deferred[Scrape | None]:
        def record(scrape: Scrape | None) -> Scrape | None:
            if scrape is not None:
                self.handed.append((identity, scrape, scrape.payload(reactor.seconds())))
            return scrape

        return super().poll(fqdn, identity, timeout, labels).addCallback(record)


@implementer(IReactorTime)
class TrackingClock:
    """The reactor's clock, remembering the delayed calls made through it."""

    def __init__(self) -> None:
        self._calls: list[IDelayedCall] = []

    def seconds(self) -> float:
        return float(reactor.seconds())

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any,
                  **kw: Any) -> IDelayedCall:
        call = reactor.callLater(delay, f, *args, **kw)
        self._calls = [c for c in self._calls if c.active()] + [call]
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return [c for c in self._calls if c.active()]


class SecurityTestCase(TestCase):
    """A target on 127.0.0.1; tests add a proxy and clients; everything is torn down."""

    timeout = 30

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pushprox-test-security-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.target = Target()
        target_site = Site(self.target)
        target_site.noisy = False
        self._live = [track_connections(target_site)]
        self.target_port = reactor.listenTCP(0, target_site, interface=LOCALHOST)
        self._ports = [self.target_port]
        # Added first, so it runs last: after every client has stopped.
        self.addCleanup(self._tear_down)

    async def _tear_down(self) -> None:
        self.target.release()
        try:
            await wait_until(lambda: not any(self._live), timeout=5,
                             what="every connection to the proxy and the target to close")
        finally:
            await DeferredList([port.stopListening() for port in self._ports])

    def write(self, name: str, text: str) -> str:
        """Write a file for the proxy and return its path."""
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @property
    def target_port_number(self) -> int:
        return int(self.target_port.getHost().port)

    def target_url(self, path: str, *, fqdn: str = FQDN, port: int | None = None) -> str:
        """The URL Prometheus scrapes through the proxy."""
        return f"http://{fqdn}:{self.target_port_number if port is None else port}{path}"

    # -- the proxy --

    def start_proxy(self, *, client_auth: ClientAuth | None = None,
                    scraper_auth: ScraperAuth | None = None,
                    config: ProxyConfig | None = None, pki: PKI | None = None,
                    **site_options: Any) -> Deferred[None] | None:
        """Serve a PushProxSite on plain TCP, or on mTLS when ``pki`` is given."""
        self.coordinator = RecordingCoordinator(reactor)
        self.site = PushProxSite(self.coordinator, clock=reactor, client_auth=client_auth,
                                 scraper_auth=scraper_auth, config=config, **site_options)
        self._live.append(track_connections(self.site))
        self.pki = pki
        if pki is None:
            port = reactor.listenTCP(0, self.site, interface=LOCALHOST)
            self._ports.append(port)
            self.proxy_port = port.getHost().port
            return None
        endpoint = serverFromString(reactor, require_client_certificates(
            f"ssl:0:privateKey={pki.server.key}:certKey={pki.server.cert}"
            f":interface={LOCALHOST}", pki.ca_cert))

        def listening(port: Any) -> None:
            self._ports.append(port)
            self.proxy_port = port.getHost().port

        return endpoint.listen(self.site).addCallback(listening)

    def proxy_endpoint(self, client: IssuedCertificate | None = None) -> IStreamClientEndpoint:
        """How to connect to the proxy: TCP, or TLS (optionally with a client certificate)."""
        if self.pki is None:
            assert client is None
            return tcp(self.proxy_port)
        return tls_endpoint(self.proxy_port, self.pki.ca_cert, client)

    @property
    def proxy_url(self) -> str:
        scheme = "http" if self.pki is None else "https"
        return f"{scheme}://{LOCALHOST}:{self.proxy_port}/"

    def http_count(self, code: int, path: str) -> float:
        """pushprox_http_requests_total{code, path} of the proxy."""
        value = self.site.metrics.registry.get_sample_value(
            "pushprox_http_requests_total", {"code": str(code), "path": path})
        return 0.0 if value is None else value

    def all_polls(self) -> float:
        """Polls the proxy answered, whatever the code."""
        return sum(
            sample.value
            for metric in self.site.metrics.registry.collect()
            if metric.name == "pushprox_http_requests"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("path") == "/poll"
        )

    # -- requests to the proxy --

    async def scrape(self, url: str, *, headers: Iterable[tuple[str, str]] = (),
                     endpoint: IStreamClientEndpoint | None = None) -> Response:
        """GET ``url`` in proxy form, as Prometheus does."""
        host = url.split("/")[2]
        request = request_bytes(
            "GET", url, host, [("X-Prometheus-Scrape-Timeout-Seconds", "5"), *headers])
        return await exchange(endpoint or self.proxy_endpoint(), request)

    async def get(self, path: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """GET one of the proxy's own endpoints."""
        return await exchange(self.proxy_endpoint(),
                              request_bytes("GET", path, f"{LOCALHOST}:{self.proxy_port}",
                                            headers))

    def poll_request(self, fqdn: str, *, timeout: str = "0",
                     headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """A poll as a client sends it; with timeout 0 an idle proxy answers 204 at once."""
        return request_bytes("POST", "/poll", f"{LOCALHOST}:{self.proxy_port}",
                             [("X-PushProx-Poll-Timeout", timeout), *headers], fqdn.encode())

    async def raw_poll(self, fqdn: str, *, timeout: str = "0",
                       headers: Iterable[tuple[str, str]] = (),
                       client: IssuedCertificate | None = None) -> Response:
        """A poll made by hand."""
        return await exchange(self.proxy_endpoint(client),
                              self.poll_request(fqdn, timeout=timeout, headers=headers))

    async def raw_push(self, scrape_id: str, *, headers: Iterable[tuple[str, str]] = (),
                       page: bytes = NEVER_SEEN,
                       client: IssuedCertificate | None = None) -> Response:
        """A push made by hand, answering ``scrape_id`` with ``page``."""
        body = wire.encode_response_head(
            status=200, reason=b"OK", headers=[(b"Content-Type", b"text/plain")],
            scrape_id=scrape_id, length=len(page)) + page
        request = request_bytes("POST", "/push", f"{LOCALHOST}:{self.proxy_port}",
                                headers, body)
        return await exchange(self.proxy_endpoint(client), request)

    # -- clients --

    def start_client(self, *, fqdn: str = FQDN, proxy_url: str | None = None,
                     certificate: IssuedCertificate | None = None,
                     **overrides: Any) -> ClientService:
        """A running ClientService that serves the target's port and pages only."""
        settings: dict[str, Any] = {
            "proxy_url": proxy_url or self.proxy_url,
            "fqdn": fqdn,
            "target_host": LOCALHOST,
            "allow_ports": frozenset({self.target_port_number}),
            "allow_paths": frozenset({"/metrics", "/held", "/big"}),
            # A failed poll is retried after 10 s: within a test, failures count exactly.
            "retry_initial_wait": 10.0,
            "retry_max_wait": 10.0,
            "shutdown_grace": 0.5,
        }
        settings.update(overrides)
        policy = None
        if self.pki is not None:
            policy = tls.https_policy(
                cacert=self.pki.ca_cert,
                cert=None if certificate is None else certificate.cert,
                key=None if certificate is None else certificate.key,
            )
        proxy_agent, target_agent, pools = make_agents(reactor, proxy_policy=policy)
        clock = TrackingClock()
        service = ClientService(ClientConfig(**settings), reactor=clock,
                                proxy_agent=proxy_agent, target_agent=target_agent,
                                metrics=ClientMetrics(), pools=pools, rand=lambda: 1.0)
        service.startService()
        self.addCleanup(self._stop_client, service, clock, pools)
        return service

    async def _stop_client(self, service: ClientService, clock: TrackingClock,
                           pools: list[HTTPConnectionPool]) -> None:
        self.target.release()
        if service.running:
            await service.stopService()
        # Whatever timer the client still holds (a backoff wait, a scrape timeout) is
        # fired now, so that no test leaves a delayed call behind, even a failing one.
        for call in clock.getDelayedCalls():
            call.reset(0)
        await wait_until(lambda: not clock.getDelayedCalls(), timeout=5,
                         what="the client's timers to fire")
        await DeferredList([pool.closeCachedConnections() for pool in pools])

    @staticmethod
    def client_count(service: ClientService, name: str) -> float:
        """One of the client's counters, e.g. pushprox_client_poll_errors_total."""
        value = service.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    async def registered(self, fqdn: str = FQDN) -> None:
        """Wait until ``fqdn`` holds a poll."""
        await wait_until(
            lambda: fqdn in [c.fqdn for c in self.coordinator.clients()]
            and self.coordinator.waiting_poll_count() >= 1,
            what=f"a poll of {fqdn}")

    async def failed_polls(self, service: ClientService, count: int = 1) -> None:
        """Wait until the client has counted ``count`` failed polls."""
        await wait_until(
            lambda: self.client_count(service, "pushprox_client_poll_errors_total") >= count,
            what=f"{count} failed polls")


# -- client certificates --


class MutualTLSTests(SecurityTestCase):
    """--client-ca: only a certificate from the client CA that names the FQDN may poll."""

    async def start(self) -> None:
        pki = make_pki(os.path.join(self.directory, "pki"))
        auth = ClientAuth(require_certificate=True, names_fqdn=tls.certificate_names_fqdn)
        await self.start_proxy(client_auth=auth, pki=pki)

    def assertNothingRegistered(self) -> None:
        self.assertEqual(self.coordinator.clients(), [])
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)

    async def test_certificate_naming_the_fqdn_scrapes(self) -> None:
        """A client with a certificate naming its FQDN registers; a scrape over TLS gets 200."""
        await self.start()
        assert self.pki is not None
        client = self.start_client(certificate=self.pki.client)
        await self.registered()
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body), (200, PAGE))
        self.assertEqual(self.coordinator.handed[0][0], "cert:node1.example")
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 0)
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 0)

    async def test_certificate_from_another_ca_cannot_connect(self) -> None:
        """A certificate for the right FQDN from another CA fails the TLS handshake."""
        await self.start()
        assert self.pki is not None
        client = self.start_client(certificate=self.pki.rogue_client)
        await self.failed_polls(client)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertNothingRegistered()
        self.assertEqual(self.all_polls(), 0)
        scrape = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((scrape.code, scrape.body),
                         (404, b"no client is registered as node1.example\n"))
        self.assertEqual(self.target.requests, [])

    async def test_raw_poll_with_certificate_from_another_ca_gets_no_answer(self) -> None:
        """By hand too: the handshake fails, not one byte of HTTP comes back."""
        await self.start()
        assert self.pki is not None
        received = await exchange_bytes(self.proxy_endpoint(self.pki.rogue_client),
                                        self.poll_request(FQDN))
        self.assertEqual(received, b"")
        self.assertNothingRegistered()
        self.assertEqual(self.all_polls(), 0)

    async def test_expired_certificate_rejected(self) -> None:
        """An expired certificate from the client CA, naming the FQDN, is refused."""
        await self.start()
        assert self.pki is not None
        expired = self.pki.ca.issue_expired("expired-client", [FQDN])
        client = self.start_client(certificate=expired)
        await self.failed_polls(client)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertNothingRegistered()
        self.assertEqual(self.all_polls(), 0)

    async def test_certificate_for_another_fqdn_403(self) -> None:
        """A valid certificate for node2 may not poll as node1: 403, nothing registered."""
        await self.start()
        assert self.pki is not None
        node2 = self.pki.ca.issue("node2", [OTHER_FQDN], server=False)
        client = self.start_client(certificate=node2)
        await self.failed_polls(client)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertEqual(self.http_count(403, "/poll"), 1)
        self.assertEqual(self.all_polls(), 1)
        self.assertNothingRegistered()
        response = await self.raw_poll(FQDN, client=node2)
        self.assertEqual((response.code, response.body),
                         (403, b"the client certificate does not name node1.example\n"))
        self.assertNothingRegistered()

    async def test_no_certificate_401(self) -> None:
        """Without a certificate, a poll gets 401; scrapes (without one) are still served."""
        await self.start()
        client = self.start_client(certificate=None)
        await self.failed_polls(client)
        self.assertEqual(self.http_count(401, "/poll"), 1)
        self.assertNothingRegistered()
        response = await self.raw_poll(FQDN)
        self.assertEqual(
            (response.code, response.body),
            (401, b"a client certificate signed by the client CA is required\n"))

    async def test_push_from_another_certificate_403(self) -> None:
        """node2's certificate may not push node1's scrape; node1's answer still arrives."""
        await self.start()
        assert self.pki is not None
        node2 = self.pki.ca.issue("node2", [OTHER_FQDN], server=False)
        self.start_client(certificate=self.pki.client)
        await self.registered()
        scrape = Deferred.fromCoroutine(self.scrape(self.target_url("/held")))
        await wait_until(lambda: self.target.held, what="the held target request")
        scrape_id = self.coordinator.handed[0][1].scrape_id
        forged = await self.raw_push(scrape_id, client=node2)
        self.assertEqual(
            (forged.code, forged.body),
            (403, f"scrape {scrape_id} was not sent to cert:node2.example\n".encode()))
        anonymous = await self.raw_push(scrape_id)
        self.assertEqual(anonymous.code, 401)
        self.target.release()
        response = await scrape
        self.assertEqual((response.code, response.body), (200, HELD_PAGE))


# -- client tokens --


class TokenTests(SecurityTestCase):
    """--client-tokens: a client must send its own token (or the shared one)."""

    def setUp(self) -> None:
        super().setUp()
        self.token_file = self.write(
            "tokens", f"# clients\n{FQDN} {TOKEN_1}\n{OTHER_FQDN} {TOKEN_2}\n")
        self.client_auth = ClientAuth(token_file=self.token_file)
        self.start_proxy(client_auth=self.client_auth)

    async def assertPollRefused(self, client: ClientService, code: int) -> None:
        """The client's first poll got ``code``; it is counted, and nothing registered."""
        await self.failed_polls(client)
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 1)
        self.assertEqual(self.http_count(code, "/poll"), 1)
        self.assertEqual(self.all_polls(), 1)
        self.assertEqual(self.coordinator.clients(), [])

    async def test_right_token_scrapes(self) -> None:
        """With its token, the client registers and the scrape gets the target's page."""
        client = self.start_client(proxy_token=TOKEN_1)
        await self.registered()
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body), (200, PAGE))
        self.assertEqual(self.coordinator.handed[0][0], "token:node1.example")
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 0)
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 0)

    async def test_missing_token_401(self) -> None:
        """Without a token the poll gets 401 with a Bearer challenge and is counted."""
        client = self.start_client()
        await self.assertPollRefused(client, 401)
        response = await self.raw_poll(FQDN)
        self.assertEqual((response.code, response.body), (401, b"client token required\n"))
        self.assertEqual(response.header("WWW-Authenticate"), BEARER_CHALLENGE)

    async def test_wrong_token_401(self) -> None:
        """A token that is not in the file gets 401 and is counted."""
        client = self.start_client(proxy_token=WRONG_TOKEN)
        await self.assertPollRefused(client, 401)
        response = await self.raw_poll(FQDN, headers=[("Authorization",
                                                       f"Bearer {WRONG_TOKEN}")])
        self.assertEqual((response.code, response.body), (401, b"unknown client token\n"))
        self.assertEqual(response.header("WWW-Authenticate"), BEARER_CHALLENGE)

    async def test_token_of_another_fqdn_403(self) -> None:
        """node2's token may not poll as node1: 403, nothing registered."""
        client = self.start_client(proxy_token=TOKEN_2)
        await self.assertPollRefused(client, 403)
        scrape = await self.scrape(self.target_url("/metrics"))
        self.assertEqual(scrape.code, 404)
        self.assertEqual(self.target.requests, [])

    async def test_upstream_style_proxy_url(self) -> None:
        """``http://user:TOKEN@proxy/`` sends the token as the basic-auth password."""
        port = self.proxy_port
        client = self.start_client(proxy_url=f"http://{FQDN}:{TOKEN_1}@{LOCALHOST}:{port}/")
        await self.registered()
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body), (200, PAGE))
        self.assertEqual(self.client_count(client, "pushprox_client_poll_errors_total"), 0)

    async def test_upstream_style_proxy_url_with_wrong_token(self) -> None:
        """A wrong password in the proxy URL gets 401 like a wrong Bearer token."""
        port = self.proxy_port
        client = self.start_client(
            proxy_url=f"http://{FQDN}:{WRONG_TOKEN}@{LOCALHOST}:{port}/")
        await self.assertPollRefused(client, 401)

    async def test_push_for_another_clients_scrape_403(self) -> None:
        """
        node2, authenticated with its own token, pushes the id handed to node1: 403, and
        node1's scrape still completes with node1's answer.
        """
        client = self.start_client(proxy_token=TOKEN_1)
        node2 = await self.raw_poll(OTHER_FQDN, headers=[("Authorization",
                                                          f"Bearer {TOKEN_2}")])
        self.assertEqual(node2.code, 204)
        await self.registered()
        scrape = Deferred.fromCoroutine(self.scrape(self.target_url("/held")))
        await wait_until(lambda: self.target.held, what="the held target request")
        [(identity, handed, _)] = self.coordinator.handed
        self.assertEqual(identity, "token:node1.example")
        forged = await self.raw_push(handed.scrape_id,
                                     headers=[("Authorization", f"Bearer {TOKEN_2}")])
        self.assertEqual(
            (forged.code, forged.body),
            (403, f"scrape {handed.scrape_id} was not sent to token:node2.example\n".encode()))
        self.assertEqual(self.http_count(403, "/push"), 1)
        self.target.release()
        response = await scrape
        self.assertEqual((response.code, response.body), (200, HELD_PAGE))
        await wait_until(lambda: self.http_count(200, "/push") == 1, what="node1's push")
        self.assertEqual(self.client_count(client, "pushprox_client_push_errors_total"), 0)

    async def test_push_without_or_with_wrong_token_401(self) -> None:
        """A push without a token, or with an unknown one, gets 401 and changes nothing."""
        self.start_client(proxy_token=TOKEN_1)
        await self.registered()
        scrape = Deferred.fromCoroutine(self.scrape(self.target_url("/held")))
        await wait_until(lambda: self.target.held, what="the held target request")
        scrape_id = self.coordinator.handed[0][1].scrape_id
        missing = await self.raw_push(scrape_id)
        self.assertEqual((missing.code, missing.body), (401, b"client token required\n"))
        self.assertEqual(missing.header("WWW-Authenticate"), BEARER_CHALLENGE)
        wrong = await self.raw_push(scrape_id, headers=[("Authorization",
                                                         basic(FQDN, WRONG_TOKEN))])
        self.assertEqual((wrong.code, wrong.body), (401, b"unknown client token\n"))
        self.target.release()
        response = await scrape
        self.assertEqual((response.code, response.body), (200, HELD_PAGE))

    async def test_sighup_reloads_tokens(self) -> None:
        """After SIGHUP a new token works and a removed one no longer does."""
        reloader = ReloadOnHangup(self.client_auth.reload, reactor)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        new_token = "node1-rotated-token-77aa11"
        before = await self.raw_poll(FQDN, headers=[("Authorization", f"Bearer {new_token}")])
        self.assertEqual(before.code, 401)
        self.write("tokens", f"{FQDN} {new_token}\n")
        os.kill(os.getpid(), signal.SIGHUP)

        async def new_token_works() -> bool:
            response = await self.raw_poll(
                FQDN, headers=[("Authorization", f"Bearer {new_token}")])
            return response.code == 204

        deadline = reactor.seconds() + 5
        while not await new_token_works():
            self.assertLess(reactor.seconds(), deadline, "SIGHUP did not reload the tokens")
            await deferLater(reactor, 0.05, lambda: None)
        old = await self.raw_poll(FQDN, headers=[("Authorization", f"Bearer {TOKEN_1}")])
        self.assertEqual((old.code, old.body), (401, b"unknown client token\n"))


# -- scrapers --


def password_checker() -> PasswordChecker:
    """The scrapers' password file: prometheus with PASSWORD."""
    return PasswordChecker({SCRAPER: bcrypt.hashpw(PASSWORD.encode(),
                                                    bcrypt.gensalt(rounds=4))})


class ScraperAuthTests(SecurityTestCase):
    """--scrape-auth and --scrape-allow-cidr: who may scrape and read /clients, /metrics."""

    async def scraping_client(self, **proxy_options: Any) -> ClientService:
        """A proxy with ``proxy_options`` and a registered client."""
        self.start_proxy(**proxy_options)
        client = self.start_client()
        await self.registered()
        return client

    async def test_no_proxy_authorization_407(self) -> None:
        """A scrape without Proxy-Authorization gets 407 with a Basic challenge."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body), (407, b"credentials required\n"))
        self.assertEqual(response.header("Proxy-Authenticate"), 'Basic realm="pushprox"')
        self.assertEqual(self.coordinator.handed, [])
        self.assertEqual(self.target.requests, [])

    async def test_credentials_in_authorization_instead_407(self) -> None:
        """The right password in Authorization (meant for the target) is not a proxy login."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        response = await self.scrape(self.target_url("/metrics"),
                                     headers=[("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(response.code, 407)
        self.assertEqual(self.target.requests, [])

    async def test_wrong_password_407(self) -> None:
        """A wrong password, or an unknown user, gets 407 and never reaches the client."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        for user, password in ((SCRAPER, WRONG_PASSWORD), ("grafana", PASSWORD)):
            response = await self.scrape(
                self.target_url("/metrics"),
                headers=[("Proxy-Authorization", basic(user, password))])
            self.assertEqual((response.code, response.body),
                             (407, b"wrong user or password\n"))
            self.assertEqual(response.header("Proxy-Authenticate"), 'Basic realm="pushprox"')
        self.assertEqual(self.coordinator.handed, [])
        self.assertEqual(self.target.requests, [])

    async def test_right_password_200(self) -> None:
        """With the right password (sent by ProxyAgent, as Prometheus does) the scrape works."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = ProxyAgent(tcp(self.proxy_port), reactor, pool=pool)
        response = await agent.request(
            b"GET", self.target_url("/metrics").encode(),
            Headers({b"Proxy-Authorization": [basic(SCRAPER, PASSWORD).encode()]}))
        body = await read_body(response)
        self.assertEqual((response.code, body), (200, PAGE))

    async def test_outside_allowed_network_403(self) -> None:
        """From 127.0.0.1, with only 10.0.0.0/8 allowed: 403 for scrapes, /clients, /metrics."""
        await self.scraping_client(
            scraper_auth=ScraperAuth(networks=parse_networks(["10.0.0.0/8"])))
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body),
                         (403, b"address 127.0.0.1 is not allowed to scrape\n"))
        self.assertIsNone(response.header("Proxy-Authenticate"))
        for path in ("/clients", "/metrics"):
            answer = await self.get(path)
            self.assertEqual((answer.code, answer.body),
                             (403, b"address 127.0.0.1 is not allowed to scrape\n"))
        self.assertEqual(self.target.requests, [])

    async def test_inside_allowed_network_200(self) -> None:
        """From 127.0.0.1, with 127.0.0.0/8 allowed, the scrape works."""
        await self.scraping_client(
            scraper_auth=ScraperAuth(networks=parse_networks(["10.0.0.0/8", "127.0.0.0/8"])))
        response = await self.scrape(self.target_url("/metrics"))
        self.assertEqual((response.code, response.body), (200, PAGE))

    async def test_clients_and_metrics_want_authorization(self) -> None:
        """/clients and /metrics get 401 without Authorization, and serve with it."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        for path in ("/clients", "/metrics"):
            for headers in ([], [("Proxy-Authorization", basic(SCRAPER, PASSWORD))]):
                refused = await self.get(path, headers)
                self.assertEqual((refused.code, refused.body),
                                 (401, b"credentials required\n"))
                self.assertEqual(refused.header("WWW-Authenticate"), 'Basic realm="pushprox"')
            wrong = await self.get(path, [("Authorization", basic(SCRAPER, WRONG_PASSWORD))])
            self.assertEqual((wrong.code, wrong.body), (401, b"wrong user or password\n"))
        clients = await self.get("/clients", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(clients.code, 200)
        self.assertEqual(json.loads(clients.body), [{"targets": [FQDN], "labels": {}}])
        metrics = await self.get("/metrics", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(metrics.code, 200)
        self.assertIn(b"pushprox_http_requests_total", metrics.body)

    async def test_health_stays_open(self) -> None:
        """/-/healthy needs no credentials (load balancers probe it)."""
        await self.scraping_client(scraper_auth=ScraperAuth(passwords=password_checker()))
        response = await self.get("/-/healthy")
        self.assertEqual((response.code, response.body), (200, b"Healthy\n"))


# -- the client serves only what it is told --


class ClientAllowListTests(SecurityTestCase):
    """The client scrapes only its allowed ports and paths; the proxy limits pushes."""

    async def test_disallowed_port_502(self) -> None:
        """A scrape of another port is refused by the client: 502 with its reason."""
        self.start_proxy()
        client = self.start_client()
        await self.registered()
        other = self.target_port_number + 1 if self.target_port_number < 65535 else 1
        url = self.target_url("/metrics", port=other)
        response = await self.scrape(url)
        allowed = self.target_port_number
        self.assertEqual(
            (response.code, response.body.decode()),
            (502, f"the client could not scrape the target: failed to scrape {url}: "
                  f"refused: port {other} is not allowed (allowed: {allowed}; see "
                  "--allow-port)\n"))
        self.assertEqual(self.target.requests, [])
        self.assertEqual(self.client_count(client, "pushprox_client_scrape_errors_total"), 1)

    async def test_disallowed_path_502(self) -> None:
        """A scrape of another path is refused by the client: 502 with its reason."""
        self.start_proxy()
        self.start_client()
        await self.registered()
        url = self.target_url("/debug/pprof")
        response = await self.scrape(url)
        self.assertEqual(
            (response.code, response.body.decode()),
            (502, f"the client could not scrape the target: failed to scrape {url}: "
                  "refused: path /debug/pprof is not allowed (see --allow-path)\n"))
        self.assertEqual(self.target.requests, [])

    async def test_allowed_path_with_query_is_scraped(self) -> None:
        """The allow-list compares the path alone: a query string still scrapes /metrics."""
        self.start_proxy()
        self.start_client()
        await self.registered()
        response = await self.scrape(self.target_url("/metrics?collect[]=cpu"))
        self.assertEqual((response.code, response.body), (200, PAGE))
        self.assertEqual(self.target.requests[0][0], b"/metrics?collect[]=cpu")

    async def test_oversized_push_413(self) -> None:
        """A target page above --max-push-size: the push gets 413, the scrape 502."""
        self.start_proxy(config=ProxyConfig(max_push_size=1000))
        client = self.start_client()
        await self.registered()
        response = await self.scrape(self.target_url("/big"))
        self.assertEqual(response.code, 502)
        match = re.fullmatch(rb"the target's response of (\d+) bytes exceeds the limit of "
                             rb"1000 bytes \(--max-push-size\)\n", response.body)
        self.assertIsNotNone(match, response.body)
        assert match is not None
        self.assertGreaterEqual(int(match.group(1)), len(BIG_PAGE))
        await wait_until(
            lambda: self.client_count(client, "pushprox_client_push_errors_total") == 1,
            what="the client to count the refused push")
        self.assertEqual(self.http_count(413, "/push"), 1)
        self.assertEqual(self.http_count(200, "/push"), 0)

    async def test_raw_oversized_push_413(self) -> None:
        """A push body above --max-push-size is answered 413 with the limit."""
        self.start_proxy(config=ProxyConfig(max_push_size=1000))
        registered = await self.raw_poll(FQDN)
        self.assertEqual(registered.code, 204)
        scrape = Deferred.fromCoroutine(self.scrape(self.target_url("/metrics")))
        await wait_until(lambda: self.coordinator.queued_scrape_count() == 1,
                         what="the queued scrape")
        poll = await self.raw_poll(FQDN, timeout="5")
        scrape_id = wire.decode_scrape_request(poll.body).scrape_id
        page = b"y" * 2000
        pushed = await self.raw_push(scrape_id, page=page)
        self.assertEqual(
            (pushed.code, pushed.body.decode()),
            (413, "the target's response of 2000 bytes exceeds the limit of 1000 bytes\n"))
        response = await scrape
        self.assertEqual(response.code, 502)
        self.assertNotIn(b"y" * 100, response.body)

    async def test_no_clients_endpoint_404(self) -> None:
        """With --no-clients-endpoint, /clients is 404 (and /metrics still served)."""
        options = Options()
        options.parseOptions(["--no-clients-endpoint", "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options, reactor)
        [site] = [child.factory for child in service  # type: ignore[attr-defined]
                  if isinstance(child, StreamServerEndpointService)]
        self.assertIsInstance(site, PushProxSite)
        self.site = site
        self.pki = None
        self._live.append(track_connections(site))
        port = reactor.listenTCP(0, site, interface=LOCALHOST)
        self._ports.append(port)
        self.proxy_port = port.getHost().port
        clients = await self.get("/clients")
        self.assertEqual(clients.code, 404)
        self.assertTrue(clients.body.startswith(b"not found: this is a PushProx proxy"),
                        clients.body)
        metrics = await self.get("/metrics")
        self.assertEqual(metrics.code, 200)


# -- secrets --


class SecretsTests(SecurityTestCase):
    """Tokens and passwords never appear in logs, in /clients, or at the target."""

    SECRETS = (TOKEN_1, WRONG_TOKEN, PASSWORD, WRONG_PASSWORD)

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        token_file = self.write("tokens", f"{FQDN} {TOKEN_1}\n")
        self.start_proxy(client_auth=ClientAuth(token_file=token_file),
                         scraper_auth=ScraperAuth(passwords=password_checker()),
                         config=ProxyConfig(log_scrapes=True))

    def assertNoSecrets(self, text: str, where: str) -> None:
        encoded = [base64.b64encode(f"{user}:{secret}".encode()).decode()
                   for user in (FQDN, SCRAPER) for secret in self.SECRETS]
        for secret in (*self.SECRETS, *encoded):
            self.assertNotIn(secret, text, f"a secret appears in {where}")

    async def test_secrets_never_logged(self) -> None:
        """A failed token, a scrape with Proxy-Authorization, a wrong password: no secret."""
        port = self.proxy_port
        refused = self.start_client(
            proxy_url=f"http://{FQDN}:{WRONG_TOKEN}@{LOCALHOST}:{port}/", log_scrapes=True)
        await self.failed_polls(refused)
        await refused.stopService()
        self.start_client(proxy_token=TOKEN_1, log_scrapes=True)
        await self.registered()
        good = await self.scrape(self.target_url("/metrics"),
                                 headers=[("Proxy-Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(good.code, 200)
        bad = await self.scrape(self.target_url("/metrics"),
                                headers=[("Proxy-Authorization",
                                          basic(SCRAPER, WRONG_PASSWORD))])
        self.assertEqual(bad.code, 407)
        denied = await self.get("/clients", [("Authorization", basic(SCRAPER, WRONG_PASSWORD))])
        self.assertEqual(denied.code, 401)
        events = list(self.events)
        texts = [logged_text(event) for event in events]
        # The observer saw the refusals and the scrape, so their absence means something.
        self.assertTrue(any(t.startswith("Refused poll for node1.example from 127.0.0.1:")
                            and t.endswith(": 401 unknown client token") for t in texts), texts)
        self.assertTrue(any(t.startswith("Refused scrape of b'http://node1.example:") and
                            t.endswith(": 407 wrong user or password") for t in texts), texts)
        self.assertTrue(any(t.startswith("Polling http://127.0.0.1:") and
                            t.endswith("/poll failed, retrying with backoff: PollError: poll "
                                       "answered 401: unknown client token") for t in texts),
                        texts)
        self.assertTrue(any(t == f"Scrape of {self.target_url('/metrics')} via {FQDN}: 200"
                            for t in texts), texts)
        for event, text in zip(events, texts, strict=True):
            self.assertNoSecrets(text, f"the log line {text!r}")
            self.assertNoSecrets(formatEvent(event), f"the log line {text!r}")
            self.assertNoSecrets(repr(event), f"the log event {event!r}")

    async def test_secrets_not_in_clients(self) -> None:
        """/clients lists the FQDN and nothing about how the client authenticated."""
        self.start_client(proxy_token=TOKEN_1)
        await self.registered()
        response = await self.get("/clients", [("Authorization", basic(SCRAPER, PASSWORD))])
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(response.body), [{"targets": [FQDN], "labels": {}}])
        self.assertNoSecrets(response.body.decode(), "/clients")

    async def test_proxy_credentials_go_neither_to_the_client_nor_to_the_target(self) -> None:
        """Proxy-Authorization stays at the proxy; the client's token stays with the proxy."""
        self.start_client(proxy_token=TOKEN_1)
        await self.registered()
        response = await self.scrape(
            self.target_url("/metrics"),
            headers=[("Proxy-Authorization", basic(SCRAPER, PASSWORD)),
                     ("Accept", "text/plain")])
        self.assertEqual((response.code, response.body), (200, PAGE))
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


class ProxyOptionsTests(SynchronousTestCase):
    """twistd pushprox-proxy refuses security options it cannot honour, naming why."""

    def write(self, name: str, data: str) -> str:
        directory = getattr(self, "_directory", None)
        if directory is None:
            directory = self._directory = tempfile.mkdtemp(prefix="pushprox-test-options-")
            self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)
        return path

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
        ca = self.write("ca.crt", "")
        self.assertEqual(self.usage_error("--client-ca", ca),
                         "--client-ca needs an ssl: endpoint in --listen")
        self.assertEqual(self.usage_error("--client-ca", ca, "--listen", "tcp:8443"),
                         "--client-ca needs an ssl: endpoint in --listen")

    def test_client_ca_not_a_certificate(self) -> None:
        """A --client-ca file without a certificate is a usage error naming it."""
        ca = self.write("ca.crt", "not a certificate\n")
        message = self.usage_error("--client-ca", ca, "--listen", "ssl:8443:privateKey=k")
        self.assertEqual(message, f"certificate file {ca} holds no valid PEM certificate")

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
        self.assertTrue(message.startswith(f"cannot read password file {path}: "), message)

    def test_bad_cidr(self) -> None:
        """--scrape-allow-cidr nonsense is a usage error naming the value."""
        self.assertEqual(self.usage_error("--scrape-allow-cidr", "10.0.0.0/8",
                                          "--scrape-allow-cidr", "nonsense"),
                         "nonsense is not a CIDR network")

    def test_bad_token_file(self) -> None:
        """A token file with a short token is a usage error naming file and line."""
        path = self.write("tokens", f"# ok\n{FQDN} short\n")
        self.assertEqual(self.usage_error("--client-tokens", path),
                         f"{path}:2: token shorter than 16 characters")

    def test_good_security_options(self) -> None:
        """Valid files and networks turn every check on; SIGHUP reloads tokens."""
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        htpasswd = self.write("htpasswd", f"prometheus:{hashed}\n")
        tokens = self.write("tokens", f"{FQDN} {TOKEN_1}\n")
        options = self.parse("--scrape-auth", htpasswd, "--client-tokens", tokens,
                             "--scrape-allow-cidr", "10.0.0.0/8",
                             "--listen", "tcp:0:interface=127.0.0.1")
        client_auth = options["client-auth"]
        scraper_auth = options["scraper-auth"]
        self.assertTrue(client_auth.enabled)
        self.assertTrue(scraper_auth.enabled)
        self.assertEqual(client_auth.poll_principal(FQDN, f"Bearer {TOKEN_1}".encode(), None),
                         "token:node1.example")
        scraper_auth.check("10.1.1.1", basic("prometheus", "pw").encode(), proxy=True)
        service = makeService(options, reactor)
        reloaders = [child for child in service  # type: ignore[attr-defined]
                     if isinstance(child, ReloadOnHangup)]
        self.assertEqual(len(reloaders), 1)

    def test_mutual_tls_endpoint_needs_a_key(self) -> None:
        """An ssl: listener without privateKey= is refused with the reason."""
        with self.assertRaises(ValueError) as caught:
            serverFromString(reactor, require_client_certificates("ssl:8443", "ca.crt"))
        self.assertEqual(str(caught.exception),
                         "pushprox-mtls: needs privateKey= (and certKey=) and clientCA=")
