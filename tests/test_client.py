"""
Tests for L{pushprox.client.service}: the target allow-list, backoff, configuration, and
L{ClientService} polling a real in-process proxy and scraping a real target, connected
by an in-memory network on one clock (no sockets, no waiting).
"""

from __future__ import annotations

import base64
import gzip
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushprox.client.link import ProxyLink
from pushprox.client.service import (
    REGISTERED_AFTER,
    Backoff,
    ClientConfig,
    ClientService,
    ScrapeRefused,
    make_proxy_link,
    plan_target,
)
from pushprox.client.target_link import PushBody
from pushprox.proxy.coordinator import Coordinator
from pushprox.proxy.site import PushProxSite
from pushprox.shared import wire
from pushprox.shared.metrics import ClientMetrics
from tests.harness.recordings import GO_PROXY_POLL_ANSWER, recording
from tests.helpers import HTTPResponse, http_request_bytes, prometheus_headers
from tests.memory import Exchange, MemoryNetwork, TrackingClock, client_connections, stop_client

FQDN = "node1.example"


def scrape_request(
    url: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    *,
    method: bytes = b"GET",
) -> wire.ScrapeRequest:
    """A scrape request as a proxy hands it out (built directly, headers untouched)."""
    return wire.ScrapeRequest(scrape_id="f00d", method=method, url=url, headers=headers,
                              timeout=10.0)


def config(**overrides: Any) -> ClientConfig:
    """A client configuration for FQDN, scraping port 9100 and /metrics by default."""
    settings: dict[str, Any] = {"proxy_url": "http://proxy.example:8080/", "fqdn": FQDN}
    settings.update(overrides)
    return ClientConfig(**settings)


class PlanTargetTests(SynchronousTestCase):
    """plan_target checks a scrape request and works out where it goes."""

    def test_own_fqdn_is_scraped(self) -> None:
        """A request for our own FQDN on an allowed port and path keeps its URL."""
        target = plan_target(scrape_request(b"http://node1.example:9100/metrics"), config())
        self.assertEqual(target.url, b"http://node1.example:9100/metrics")
        self.assertEqual(target.headers.getRawHeaders(b"host"), [b"node1.example:9100"])

    def test_fqdn_match_ignores_case(self) -> None:
        """Host names are case-insensitive."""
        target = plan_target(scrape_request(b"http://NODE1.Example:9100/metrics"), config())
        self.assertEqual(target.url, b"http://node1.example:9100/metrics")

    def test_other_host_is_refused(self) -> None:
        """A request for another host is refused, naming both hosts."""
        with self.assertRaises(ScrapeRefused) as caught:
            plan_target(scrape_request(b"http://node2.example:9100/metrics"), config())
        self.assertEqual(
            str(caught.exception),
            "target host node2.example is not this client's FQDN node1.example",
        )

    def test_fqdn_as_suffix_of_other_host_is_refused(self) -> None:
        """A host that merely ends with our FQDN is another host."""
        with self.assertRaises(ScrapeRefused):
            plan_target(scrape_request(b"http://evil-node1.example:9100/metrics"), config())
        with self.assertRaises(ScrapeRefused):
            plan_target(scrape_request(b"http://node1.example.evil:9100/metrics"), config())

    def test_port_not_allowed_is_refused(self) -> None:
        """A port outside the allow-list is refused with the allowed ports listed."""
        with self.assertRaises(ScrapeRefused) as caught:
            plan_target(scrape_request(b"http://node1.example:22/metrics"),
                        config(allow_ports=frozenset({9100, 9090})))
        self.assertEqual(
            str(caught.exception),
            "port 22 is not allowed (allowed: 9090, 9100; see --allow-port)",
        )

    def test_path_not_allowed_is_refused(self) -> None:
        """A path outside the allow-list is refused."""
        with self.assertRaises(ScrapeRefused) as caught:
            plan_target(scrape_request(b"http://node1.example:9100/debug/pprof"), config())
        self.assertEqual(str(caught.exception),
                         "path /debug/pprof is not allowed (see --allow-path)")

    def test_allowed_ports_and_paths(self) -> None:
        """Every port and path of the allow-list is accepted."""
        allowing = config(allow_ports=frozenset({9100, 9256}),
                          allow_paths=frozenset({"/metrics", "/probe"}))
        for url in (b"http://node1.example:9256/metrics", b"http://node1.example:9100/probe"):
            self.assertEqual(plan_target(scrape_request(url), allowing).url, url)

    def test_allow_any_accepts_any_port_and_path(self) -> None:
        """allow_any lifts the port and path allow-list, not the FQDN check."""
        anything = config(allow_any=True)
        target = plan_target(scrape_request(b"http://node1.example:22/debug?x=1"), anything)
        self.assertEqual(target.url, b"http://node1.example:22/debug?x=1")
        with self.assertRaises(ScrapeRefused):
            plan_target(scrape_request(b"http://node2.example:9100/metrics"), anything)

    def test_scheme_https_switches_scheme_and_is_removed(self) -> None:
        """_scheme=https makes an https URL; the other parameters keep their order."""
        request = scrape_request(
            b"http://node1.example:9100/metrics?b=2&_scheme=https&a=1&collect%5B%5D=cpu"
        )
        target = plan_target(request, config())
        self.assertEqual(target.url,
                         b"https://node1.example:9100/metrics?b=2&a=1&collect%5B%5D=cpu")

    def test_scheme_http_is_removed(self) -> None:
        """_scheme=http keeps http and is not passed on to the target."""
        request = scrape_request(b"http://node1.example:9100/metrics?_scheme=http&module=x")
        self.assertEqual(plan_target(request, config()).url,
                         b"http://node1.example:9100/metrics?module=x")

    def test_scheme_https_without_port_uses_443(self) -> None:
        """Without a port, https means port 443, which the allow-list must name."""
        request = scrape_request(b"http://node1.example/metrics?_scheme=https")
        with self.assertRaises(ScrapeRefused):
            plan_target(request, config())
        target = plan_target(request, config(allow_ports=frozenset({443})))
        self.assertEqual(target.url, b"https://node1.example:443/metrics")

    def test_other_scheme_is_refused(self) -> None:
        """Only http and https are scraped."""
        with self.assertRaises(ScrapeRefused):
            plan_target(scrape_request(b"http://node1.example:9100/metrics?_scheme=file"),
                        config())

    def test_only_get_and_head_are_scraped(self) -> None:
        """A method that could change the target is refused."""
        with self.assertRaises(ScrapeRefused):
            plan_target(scrape_request(b"http://node1.example:9100/metrics", method=b"POST"),
                        config())
        head = plan_target(scrape_request(b"http://node1.example:9100/metrics", method=b"HEAD"),
                           config())
        self.assertEqual(head.url, b"http://node1.example:9100/metrics")

    def test_target_host_replaces_connect_address_not_host_header(self) -> None:
        """target_host is where the client connects; the Host header keeps FQDN:port."""
        target = plan_target(scrape_request(b"http://node1.example:9100/metrics?a=1"),
                             config(target_host="127.0.0.1"))
        self.assertEqual(target.url, b"http://127.0.0.1:9100/metrics?a=1")
        self.assertEqual(target.headers.getRawHeaders(b"host"), [b"node1.example:9100"])
        self.assertEqual(target.headers.getRawHeaders(b"host"), [b"node1.example:9100"])

    def test_ipv6_target_host_is_bracketed(self) -> None:
        """An IPv6 target_host is written as a URL literal."""
        target = plan_target(scrape_request(b"http://node1.example:9100/metrics"),
                             config(target_host="::1"))
        self.assertEqual(target.url, b"http://[::1]:9100/metrics")

    def test_id_and_hop_by_hop_headers_are_dropped(self) -> None:
        """
        The Id, Host and hop-by-hop headers of the scrape request are not sent to the
        target; Accept-Encoding and Prometheus' other headers are, in order.
        """
        request = scrape_request(b"http://node1.example:9100/metrics", headers=(
            (b"Host", b"node1.example:9100"),
            (b"User-Agent", b"Prometheus/2.53.0"),
            (b"Accept", b"text/plain;version=0.0.4"),
            (b"Accept-Encoding", b"gzip"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic c2VjcmV0"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"Id", b"f00d"),
            (b"X-Prometheus-Scrape-Timeout-Seconds", b"10"),
        ))
        target = plan_target(request, config())
        self.assertEqual(
            sorted((name.lower(), values) for name, values in target.headers.getAllRawHeaders()),
            [
                (b"accept", [b"text/plain;version=0.0.4"]),
                (b"accept-encoding", [b"gzip"]),
                (b"host", [b"node1.example:9100"]),
                (b"user-agent", [b"Prometheus/2.53.0"]),
                (b"x-prometheus-scrape-timeout-seconds", [b"10"]),
            ],
        )

    def test_upstream_proxy_poll_answer(self) -> None:
        """The scrape request in an upstream Go proxy's recorded poll answer is planned."""
        body = recording(GO_PROXY_POLL_ANSWER).body
        request = wire.decode_scrape_request(body)
        target = plan_target(request, config(fqdn="localhost", target_host="127.0.0.1"))
        self.assertEqual(target.url, b"http://127.0.0.1:9100/metrics?foo=bar")
        self.assertEqual(target.headers.getRawHeaders(b"host"), [b"localhost:9100"])
        self.assertEqual(target.headers.getRawHeaders(b"accept-encoding"), [b"gzip"])
        self.assertIsNone(target.headers.getRawHeaders(b"id"))


class BackoffTests(SynchronousTestCase):
    """Backoff grows by 1.5 up to its maximum, with jitter between half and all."""

    def waits(self, backoff: Backoff, count: int) -> list[float]:
        return [round(backoff.next(), 6) for _ in range(count)]

    def test_grows_by_half_up_to_the_maximum(self) -> None:
        """With the largest jitter the waits are the steps: 1, 1.5, 2.25, ... capped at 5."""
        backoff = Backoff(1.0, 5.0, rand=lambda: 1.0)
        self.assertEqual(self.waits(backoff, 7), [1.0, 1.5, 2.25, 3.375, 5.0, 5.0, 5.0])

    def test_smallest_jitter_is_half_the_step(self) -> None:
        """With the smallest jitter each wait is half its step."""
        backoff = Backoff(1.0, 5.0, rand=lambda: 0.0)
        self.assertEqual(self.waits(backoff, 6), [0.5, 0.75, 1.125, 1.6875, 2.5, 2.5])

    def test_jitter_in_between(self) -> None:
        """rand() = 0.5 gives three quarters of the step."""
        backoff = Backoff(2.0, 3.0, rand=lambda: 0.5)
        self.assertEqual(self.waits(backoff, 3), [1.5, 2.25, 2.25])

    def test_reset_starts_again(self) -> None:
        """After reset the next wait is the initial one again."""
        backoff = Backoff(1.0, 5.0, rand=lambda: 1.0)
        self.waits(backoff, 4)
        backoff.reset()
        self.assertEqual(self.waits(backoff, 2), [1.0, 1.5])

    def test_random_jitter_stays_between_half_and_all(self) -> None:
        """With the real random source every wait lies between half and all of its step."""
        backoff = Backoff(1.0, 5.0)
        steps = [1.0, 1.5, 2.25, 3.375] + [5.0] * 200
        for step in steps:
            wait = backoff.next()
            self.assertTrue(step / 2 <= wait <= step, f"{wait} not in [{step / 2}, {step}]")


class ClientConfigTests(SynchronousTestCase):
    """The proxy's endpoint URLs and credentials come from --proxy-url."""

    def test_endpoint_without_path(self) -> None:
        """A proxy URL without a path, with or without its slash."""
        for url in ("http://proxy:8080", "http://proxy:8080/"):
            self.assertEqual(config(proxy_url=url).endpoint("poll"), b"http://proxy:8080/poll")

    def test_endpoint_under_path_prefix(self) -> None:
        """A path prefix is kept, with or without a trailing slash."""
        for url in ("https://lb.example/pushprox", "https://lb.example/pushprox/"):
            self.assertEqual(config(proxy_url=url).endpoint("push"),
                             b"https://lb.example/pushprox/push")

    def test_endpoint_drops_credentials(self) -> None:
        """Credentials in the proxy URL never appear in the request URL."""
        self.assertEqual(
            config(proxy_url="https://user:token@proxy:8443/p/").endpoint("poll"),
            b"https://proxy:8443/p/poll",
        )

    def test_proxy_authorization_from_credentials(self) -> None:
        """user:token@ becomes a Basic Authorization value."""
        self.assertEqual(
            config(proxy_url="https://user:token@proxy:8443/").proxy_authorization(),
            b"Basic " + base64.b64encode(b"user:token"),
        )

    def test_proxy_authorization_unquotes(self) -> None:
        """Percent-encoded credentials are decoded before encoding them."""
        self.assertEqual(
            config(proxy_url="http://us%40er:p%3Ass%2Fw@proxy/").proxy_authorization(),
            b"Basic " + base64.b64encode(b"us@er:p:ss/w"),
        )

    def test_proxy_authorization_user_only(self) -> None:
        """A user without a token has an empty password."""
        self.assertEqual(config(proxy_url="http://user@proxy/").proxy_authorization(),
                         b"Basic " + base64.b64encode(b"user:"))

    def test_no_credentials_no_authorization(self) -> None:
        """Without credentials there is no Authorization header."""
        self.assertIsNone(config(proxy_url="http://proxy:8080/").proxy_authorization())


# -- ClientService against a real proxy, in memory --

PROXY_PORT = 8080
FAKE_PROXY_PORT = 8081
TARGET_PORT = 9100
#: A port where nothing listens.
CLOSED_PORT = 9101

METRICS = b"".join(b"node_cpu_seconds_total{cpu=\"%d\",mode=\"idle\"} %d.5\n" % (i, i * 7)
                   for i in range(200))
GZIPPED = gzip.compress(METRICS, mtime=0)
CHUNKS = [b"# HELP a A.\n", b"# TYPE a gauge\n", b"a 1\n" * 500, b"b 2\n"]


class Target(Resource):
    """A target with a few pages; it records the headers of every request it gets."""

    isLeaf = True

    def __init__(self, clock: IReactorTime, delay: float = 2.0) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.requests: list[tuple[bytes, list[tuple[bytes, Sequence[bytes]]]]] = []
        self.slow_pending: set[Deferred[None]] = set()

    def render_GET(self, request: Request) -> bytes | int:
        self.requests.append((request.uri, list(request.requestHeaders.getAllRawHeaders())))
        path = request.path
        if path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            request.responseHeaders.setRawHeaders(b"x-target", [b"one", b"two"])
            request.setHeader(b"cache-control", b"no-store")
            return METRICS
        if path == b"/gzip":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4")
            request.setHeader(b"vary", b"Accept-Encoding")
            if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
                request.setHeader(b"content-encoding", b"gzip")
                return GZIPPED
            return METRICS
        if path == b"/chunked":
            request.setHeader(b"content-type", b"text/plain")
            for piece in CHUNKS:
                request.write(piece)
            request.finish()
            return NOT_DONE_YET
        if path == b"/slow":
            return self._slow(request)
        request.setResponseCode(404)
        return b"no such page\n"

    def _slow(self, request: Request) -> int:
        def answer() -> None:
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"slow 1\n")
            request.finish()

        later = deferLater(self.clock, self.delay, answer)
        self.slow_pending.add(later)
        later.addBoth(lambda _: self.slow_pending.discard(later))
        # The client hangs up when it gives up: stop waiting with it.
        request.notifyFinish().addErrback(lambda _: later.cancel())
        return NOT_DONE_YET

    def header(self, index: int, name: bytes) -> Sequence[bytes] | None:
        """The values of header ``name`` in the ``index``-th request received."""
        for key, values in self.requests[index][1]:
            if key.lower() == name.lower():
                return values
        return None


class FakeProxy(Resource):
    """A proxy stand-in that answers every poll with a fixed error page."""

    isLeaf = True

    def __init__(self, clock: IReactorTime, code: int, body: bytes,
                 content_type: bytes) -> None:
        super().__init__()
        self.clock = clock
        self.code = code
        self.body = body
        self.content_type = content_type
        self.polls: list[tuple[float, bytes, bytes | None, bytes | None, bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.polls.append((self.clock.seconds(), request.uri,
                           request.getHeader(b"authorization"),
                           request.getHeader(b"user-agent"), request.content.read()))
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.content_type)
        return self.body


class PushPollProxy(Resource):
    """
    A proxy stand-in: the first poll brings scrape "a" and says it speaks push-poll;
    the push of "a" is answered with scrape "b"; later polls are held.
    """

    isLeaf = True

    def __init__(self, url_a: bytes, url_b: bytes) -> None:
        super().__init__()
        self.urls = {"a": url_a, "b": url_b}
        self.polls = 0
        self.pushes: list[tuple[bytes | None, bytes]] = []

    def _scrape(self, scrape_id: str) -> bytes:
        return wire.encode_scrape_request(method=b"GET", url=self.urls[scrape_id], headers=[],
                                          scrape_id=scrape_id, timeout=5)

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        if request.path.endswith(b"/poll"):
            self.polls += 1
            request.setHeader(b"X-PushProx-Extensions", b"poll-timeout, push-poll")
            if self.polls == 1:
                return self._scrape("a")
            return NOT_DONE_YET
        self.pushes.append((request.getHeader(b"x-pushprox-push-poll"), body))
        if len(self.pushes) == 1:
            request.setHeader(b"X-PushProx-Next-Scrape", b"1")
            return self._scrape("b")
        return b""


@implementer(IStreamClientEndpoint)
class Blackhole:
    """An endpoint to a host that drops packets: connecting never ends (until cancelled)."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[IProtocol]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """A connection attempt that never succeeds nor fails."""
        attempt: Deferred[IProtocol] = Deferred()
        self.attempts.append(attempt)
        return attempt


class StoppingProxy(Resource):
    """
    A proxy stand-in stopping at the same time as the client: the first poll brings a
    scrape of ``url``, later polls are held, and every push is refused with 503.
    """

    isLeaf = True

    def __init__(self, url: bytes) -> None:
        super().__init__()
        self.url = url
        self.polls = 0
        self.pushes = 0

    def render_POST(self, request: Request) -> bytes | int:
        if request.path.endswith(b"/poll"):
            self.polls += 1
            if self.polls == 1:
                return wire.encode_scrape_request(method=b"GET", url=self.url, headers=[],
                                                  scrape_id="a", timeout=30)
            return NOT_DONE_YET
        self.pushes += 1
        request.setResponseCode(503)
        return b"the proxy is shutting down\n"


class SilentProxy(Resource):
    """A proxy stand-in that says it bounds polls, then never answers one again."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        #: The client port of every poll, in order.
        self.polls: list[int] = []
        #: The polls (by index) whose connection the client dropped.
        self.dropped: list[int] = []

    def render_POST(self, request: Request) -> bytes | int:
        index = len(self.polls)
        self.polls.append(request.getClientAddress().port)
        request.setHeader(b"X-PushProx-Extensions", b"poll-timeout, push-poll")
        if index == 0:
            request.setResponseCode(204)
            return b""
        request.notifyFinish().addErrback(lambda _: self.dropped.append(index))
        return NOT_DONE_YET


NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1"
             b"</center>\r\n</body>\r\n</html>\r\n")


@implementer(IHostResolution)
class _Resolution:
    """One name being resolved."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to stop: it ends at once."""


@implementer(IHostnameResolver)
class _UnknownName:
    """Resolves nothing for ``name`` (as when DNS does not know it), the rest as before."""

    def __init__(self, name: str, others: IHostnameResolver) -> None:
        self._name = name
        self._others = others

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str,
                        portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        """No address for the unknown name."""
        if hostName != self._name:
            return self._others.resolveHostName(resolutionReceiver, hostName, portNumber,
                                                addressTypes, transportSemantics)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.resolutionComplete()
        return resolution


def target_url(path: str, *, port: int = TARGET_PORT) -> str:
    """The URL Prometheus asks the proxy for."""
    return f"http://{FQDN}:{port}{path}"


class ClientServiceTests(SynchronousTestCase):
    """
    ClientService relays scrapes between a real proxy and a real target, connected by
    an in-memory network on one clock.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.coordinator = Coordinator(self.network)
        self.network.listenTCP(PROXY_PORT, PushProxSite(self.coordinator, clock=self.network))
        self.target = Target(self.network)
        self.network.listenTCP(TARGET_PORT, quiet_site(self.target, self.network))
        # Added first, so it runs last: after the client has stopped.
        self.addCleanup(self.assert_nothing_left)

    def assert_nothing_left(self) -> None:
        """The proxy holds nothing, the target waits for nothing, every connection is closed."""
        self.network.flush()
        self.assertTrue(self.coordinator.is_idle())
        self.assertEqual(self.target.slow_pending, set())
        self.assertEqual(self.network.open_connections(), [])

    # -- helpers --

    def start_client(
        self, *, rand: Callable[[], float] | None = None, **overrides: Any
    ) -> ClientService:
        """A running ClientService for FQDN that scrapes the target; its first poll is made."""
        settings: dict[str, Any] = {
            "proxy_url": f"http://127.0.0.1:{PROXY_PORT}/",
            "fqdn": FQDN,
            "target_host": "127.0.0.1",
            "allow_ports": frozenset({TARGET_PORT}),
            "allow_paths": frozenset({"/metrics", "/gzip", "/chunked", "/slow"}),
        }
        settings.update(overrides)
        config = ClientConfig(**settings)
        proxy_link, target_link, pools = client_connections(self.network, config)
        self.clock = TrackingClock(self.network)
        service = ClientService(config, reactor=self.clock,
                                proxy_link=proxy_link, target_link=target_link,
                                metrics=ClientMetrics(), pools=pools,
                                rand=random.random if rand is None else rand)
        service.startService()
        self.addCleanup(self.stop, service, self.clock)
        self.network.flush()
        return service

    def stop(self, service: ClientService, clock: TrackingClock) -> None:
        """Stop ``service`` (within its grace period): it leaves no timer behind."""
        if service.running:
            self.successResultOf(stop_client(self.network, service))
        self.assertEqual(clock.pending(), [])

    def registered(self) -> None:
        """The client holds exactly one poll on the proxy."""
        self.assertEqual(self.coordinator.waiting_poll_count(), 1)

    def scrape(self, url: str, *, timeout: float = 10.0,
               headers: list[tuple[str, str]] | None = None) -> Exchange:
        """GET ``url`` through the proxy as Prometheus does; the network has settled."""
        request = http_request_bytes(
            "GET", url, prometheus_headers(timeout) if headers is None else headers
        )
        return self.network.exchange(PROXY_PORT, request)

    def direct(self, path: str, headers: list[tuple[str, str]]) -> HTTPResponse:
        """GET ``path`` from the target itself, with the Host header the client sends."""
        request = http_request_bytes("GET", path, headers, host=f"{FQDN}:{TARGET_PORT}")
        return self.network.exchange(TARGET_PORT, request).response()

    def assert_relayed_unchanged(self, path: str, headers: list[tuple[str, str]]
                                 ) -> HTTPResponse:
        """Scrape ``path`` through the proxy and directly; they must be the same."""
        proxied = self.scrape(target_url(path), headers=headers).response()
        direct = self.direct(path, headers)
        self.assertEqual((proxied.status, proxied.reason), (direct.status, direct.reason))
        self.assertEqual(proxied.body, direct.body)
        self.assertEqual(proxied.chunked, direct.chunked)
        self.assertEqual(proxied.comparable_headers(ignore=[b"date"]),
                         direct.comparable_headers(ignore=[b"date"]))
        return proxied

    def serve_fake_proxy(self, resource: Resource, port: int = FAKE_PROXY_PORT) -> str:
        """Serve a stand-in proxy on ``port`` until the test ends; its URL."""
        listening = self.network.listenTCP(port, quiet_site(resource, self.network))
        self.addCleanup(listening.stopListening)
        return f"http://127.0.0.1:{port}/"

    def count(self, service: ClientService, name: str) -> float | None:
        """One of the client's metrics, e.g. pushprox_client_poll_errors_total."""
        value: float | None = service.metrics.registry.get_sample_value(name)
        return value

    # -- tests --

    def test_registered_is_logged_once_a_poll_is_held(self) -> None:
        """"Registered" is logged a second into a held poll, once, and again after a failure."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        def registered() -> list[str]:
            return [formatEvent(event) for event in events
                    if event.get("log_format", "").startswith("Registered with the proxy")]

        self.start_client()
        self.registered()
        self.assertEqual(registered(), [])
        self.network.advance(REGISTERED_AFTER)
        self.assertEqual(registered(), [
            f"Registered with the proxy at http://127.0.0.1:{PROXY_PORT}/poll as {FQDN}"])
        self.network.advance(60)  # idle polls answered and renewed: nothing more
        self.assertEqual(len(registered()), 1)

    def test_registered_is_never_logged_while_polls_fail(self) -> None:
        """
        A proxy that refuses every poll (down, or a load balancer's 503) with backoff
        waits longer than REGISTERED_AFTER between polls: "Registered" is never logged,
        and the failure is logged once.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        def logged(start: str) -> list[str]:
            return [formatEvent(event) for event in events
                    if event.get("log_format", "").startswith(start)]

        fake = FakeProxy(self.network, 503, b"no backend\n", b"text/plain")
        url = self.serve_fake_proxy(fake)
        service = self.start_client(proxy_url=url, retry_initial_wait=2.0, retry_max_wait=4.0,
                                    rand=lambda: 1.0)
        self.network.advance(30)
        self.assertGreater(len(fake.polls), 5)
        self.assertEqual(logged("Registered with the proxy"), [])
        self.assertEqual(len(logged("Polling {url} failed")), 1)
        self.stop(service, self.clock)

    def test_registered_is_never_logged_while_connecting(self) -> None:
        """
        A proxy host that drops packets: the poll's connection is never made, so however
        long it waits, the client never says it is registered.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        config = ClientConfig(proxy_url=f"http://127.0.0.1:{PROXY_PORT}/", fqdn=FQDN)
        _, target_link, pools = client_connections(self.network, config)
        blackhole = Blackhole()
        clock = TrackingClock(self.network)
        service = ClientService(config, reactor=clock, proxy_link=ProxyLink(blackhole),
                                target_link=target_link, metrics=ClientMetrics(),
                                pools=pools)
        service.startService()
        self.network.advance(60)
        self.assertEqual(len(blackhole.attempts), 1)
        self.assertEqual([event for event in events if event.get("log_format", "")
                          .startswith("Registered with the proxy")], [])
        self.stop(service, clock)
        self.assertTrue(blackhole.attempts[0].called)  # the stop gave up connecting

    def test_scrape_relays_body_and_headers_unchanged(self) -> None:
        """The scraper gets the target's status, headers and body byte for byte."""
        self.start_client()
        self.registered()
        proxied = self.assert_relayed_unchanged("/metrics", prometheus_headers(gzip=False))
        self.assertEqual(proxied.status, 200)
        self.assertEqual(proxied.body, METRICS)
        self.assertEqual(proxied.header_values(b"x-target"), [b"one", b"two"])
        self.assertEqual(proxied.header(b"content-length"), b"%d" % len(METRICS))
        self.assertIsNone(proxied.header(b"id"))

    def test_target_request_carries_fqdn_host_and_prometheus_headers(self) -> None:
        """The target sees Host FQDN:port and Prometheus' headers, never the Id."""
        self.start_client()
        self.registered()
        response = self.scrape(target_url("/metrics?x=1&_scheme=http")).response()
        self.assertEqual(response.status, 200)
        self.assertEqual(len(self.target.requests), 1)
        self.assertEqual(self.target.requests[0][0], b"/metrics?x=1")
        self.assertEqual(self.target.header(0, b"host"), [b"%s:%d" % (FQDN.encode(), TARGET_PORT)])
        self.assertEqual(self.target.header(0, b"user-agent"), [b"Prometheus/2.53.0"])
        self.assertEqual(self.target.header(0, b"accept-encoding"), [b"gzip"])
        self.assertIsNone(self.target.header(0, b"id"))

    def test_gzip_passes_through_undecoded_only_when_the_scraper_asks(self) -> None:
        """
        With Accept-Encoding: gzip the compressed body and Content-Encoding pass as is;
        without it the client does not ask the target for gzip either.
        """
        for accepts_gzip, encoding, body in ((True, b"gzip", GZIPPED), (False, None, METRICS)):
            with self.subTest(accepts_gzip=accepts_gzip):
                self.target.requests.clear()
                service = self.start_client()
                self.registered()
                proxied = self.assert_relayed_unchanged(
                    "/gzip", prometheus_headers(gzip=accepts_gzip))
                self.assertEqual(proxied.status, 200)
                self.assertEqual(proxied.header(b"content-encoding"), encoding)
                self.assertEqual(proxied.body, body)
                self.assertEqual(self.target.header(0, b"accept-encoding"),
                                 [b"gzip"] if accepts_gzip else None)
                self.stop(service, self.clock)
        self.assertEqual(gzip.decompress(GZIPPED), METRICS)

    def test_chunked_target_response_is_relayed(self) -> None:
        """A chunked response without Content-Length arrives whole and chunked."""
        self.start_client()
        self.registered()
        proxied = self.assert_relayed_unchanged("/chunked", prometheus_headers())
        self.assertEqual(proxied.status, 200)
        self.assertTrue(proxied.chunked)
        self.assertEqual(proxied.body, b"".join(CHUNKS))

    def test_refused_connection_gives_502_with_reason(self) -> None:
        """A target port where nothing listens comes back as 502 naming the refusal."""
        self.start_client(allow_ports=frozenset({CLOSED_PORT}))
        self.registered()
        url = target_url("/metrics", port=CLOSED_PORT)
        exchange = self.scrape(url)
        # HostnameEndpoint reports the failure when its next attempt would be due.
        self.network.advance(0.3)
        response = exchange.response()
        self.assertEqual(
            (response.status, response.text),
            (502, f"the client could not scrape the target: failed to scrape {url}: "
                  "ConnectionRefusedError: Connection was refused by other side: 111: "
                  "Connection refused.\n"))

    def test_unresolvable_fqdn_suggests_target_host(self) -> None:
        """Without --target-host the FQDN itself is looked up; its failure says what helps."""
        self.network.installNameResolver(_UnknownName(FQDN, self.network.nameResolver))
        self.start_client(target_host=None)
        self.registered()
        url = target_url("/metrics")
        response = self.scrape(url).response()
        self.assertEqual(response.status, 502)
        self.assertIn(f"failed to scrape {url}: DNSLookupError: ", response.text)
        self.assertTrue(response.text.endswith(
            f"(the client connects to {FQDN} itself; --target-host 127.0.0.1, or the "
            "target's address, connects there while Prometheus keeps the name)\n"),
            response.text)

    def test_port_outside_allow_list_gives_502_with_reason(self) -> None:
        """A port the client may not scrape comes back as 502 saying so; nothing is fetched."""
        self.start_client()
        self.registered()
        url = target_url("/metrics", port=22)
        response = self.scrape(url).response()
        self.assertEqual(
            (response.status, response.text),
            (502, f"the client could not scrape the target: failed to scrape {url}: "
                  f"refused: port 22 is not allowed (allowed: {TARGET_PORT}; see "
                  "--allow-port)\n"))
        self.assertEqual(self.target.requests, [])

    def test_slow_target_times_out(self) -> None:
        """
        A target slower than the scrape timeout gives the client's 504 saying timeout,
        in time: the client gives up at the timeout the proxy handed it (1 s less the
        proxy's and the client's margins), before the proxy or Prometheus would.
        """
        self.target.delay = 5.0
        self.start_client()
        self.registered()
        exchange = self.scrape(target_url("/slow"), timeout=1.0)
        self.network.advance(0.79)
        self.assertFalse(exchange.answered, exchange.received)
        self.network.advance(0.01)
        response = exchange.response()
        self.assertEqual(
            (response.status, response.text),
            (504, "the target did not answer in time: failed to scrape "
                  f"{target_url('/slow')}: timeout after 0.8s\n"))

    # -- several proxy URLs --

    def start_failover_client(self) -> ClientService:
        """A client whose first proxy URL is FAKE_PROXY_PORT (nothing there until a test
        serves it) and whose second is the proxy."""
        first, second = (f"http://127.0.0.1:{port}/" for port in (FAKE_PROXY_PORT, PROXY_PORT))
        config = ClientConfig(
            proxy_url=first, proxy_urls=(first, second), fqdn=FQDN, target_host="127.0.0.1",
            allow_ports=frozenset({TARGET_PORT}), allow_paths=frozenset({"/metrics", "/slow"}),
            retry_initial_wait=0.2, retry_max_wait=0.2, poll_timeout=2.0,
            proxy_failback_after=5.0)
        first_link, target_link, pools = client_connections(self.network, config)
        second_link = make_proxy_link(self.network, config.endpoint("poll", second))
        self.clock = TrackingClock(self.network)
        service = ClientService(config, reactor=self.clock, proxy_link=first_link,
                                fallback_links=[second_link], target_link=target_link,
                                metrics=ClientMetrics(), pools=pools, rand=lambda: 1.0)
        service.startService()
        self.addCleanup(self.stop, service, self.clock)
        self.network.flush()
        return service

    def in_use(self, service: ClientService) -> tuple[float | None, float | None]:
        """pushprox_client_proxy_url_in_use of the first and the second URL."""
        return tuple(service.metrics.registry.get_sample_value(  # type: ignore[return-value]
            "pushprox_client_proxy_url_in_use", {"url": f"http://127.0.0.1:{port}/"})
            for port in (FAKE_PROXY_PORT, PROXY_PORT))

    def test_dead_first_proxy_url_fails_over_to_the_next(self) -> None:
        """The first URL refuses: after the backoff the client polls the second."""
        service = self.start_failover_client()
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)
        # The refusal is reported when HostnameEndpoint's next attempt would be due
        # (0.3 s), then the backoff (0.2 s).
        self.network.advance(0.3)
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)
        self.network.advance(0.2)
        self.registered()
        self.assertEqual(self.in_use(service), (0.0, 1.0))
        response = self.scrape(target_url("/metrics")).response()
        self.assertEqual((response.status, response.body), (200, METRICS))

    def test_back_to_the_first_url_while_a_scrape_is_pushed_where_it_came_from(self) -> None:
        """After proxy_failback_after the client polls the first URL again; a scrape that
        the second handed out meanwhile is pushed to the second."""
        service = self.start_failover_client()
        self.network.advance(0.5)
        self.registered()
        first = Coordinator(self.network)
        listening = self.network.listenTCP(FAKE_PROXY_PORT,
                                           PushProxSite(first, clock=self.network))
        self.addCleanup(listening.stopListening)
        self.target.delay = 8.0
        exchange = self.scrape(target_url("/slow"))
        self.network.advance(6.0)  # past the failback, and the end of the poll held then
        self.assertEqual(first.waiting_poll_count(), 1)
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)
        self.assertEqual(self.in_use(service), (1.0, 0.0))
        self.assertFalse(exchange.answered)
        self.network.advance(2.0)
        response = exchange.response()
        self.assertEqual((response.status, response.body), (200, b"slow 1\n"))
        self.successResultOf(stop_client(self.network, service))
        self.network.flush()
        self.assertTrue(first.is_idle())

    def test_slow_scrapes_run_concurrently(self) -> None:
        """The client polls again at once, so two slow scrapes take one delay, not two."""
        self.target.delay = 1.5
        self.start_client()
        self.registered()
        exchanges = [self.scrape(target_url("/slow")) for _ in range(2)]
        self.assertEqual(len(self.target.requests), 2)
        self.network.advance(1.49)
        self.assertEqual([exchange.answered for exchange in exchanges], [False, False])
        # One after the other they would take 3 s.
        self.network.advance(0.01)
        for exchange in exchanges:
            response = exchange.response()
            self.assertEqual((response.status, response.body), (200, b"slow 1\n"))

    def test_error_poll_answers_are_counted_retried_and_never_scraped(self) -> None:
        """
        A 502 in answer to a poll (a load balancer's HTML page, or a text body that reads
        like a scrape request) counts as a poll error, is never taken for a scrape, and
        the poll is retried after 0.2, 0.3, 0.45 s (jitter fixed at its largest).
        """
        lookalike = wire.encode_scrape_request(
            method=b"GET", url=target_url("/metrics").encode(),
            headers=[(b"Accept", b"*/*")], scrape_id="not-a-scrape", timeout=5.0,
        )
        self.assertEqual(wire.decode_scrape_request(lookalike).url,
                         b"http://%s:%d/metrics" % (FQDN.encode(), TARGET_PORT))
        rows = ((NGINX_502, b"text/html"), (lookalike, b"text/plain"))
        for port, (body, content_type) in enumerate(rows, start=FAKE_PROXY_PORT):
            with self.subTest(content_type=content_type):
                fake = FakeProxy(self.network, 502, body, content_type)
                url = self.serve_fake_proxy(fake, port)
                started = self.network.seconds()
                service = self.start_client(
                    proxy_url=url.replace("http://", "http://user:token@") + "prefix",
                    retry_initial_wait=0.2, retry_max_wait=0.5, rand=lambda: 1.0,
                )
                self.network.advance(1.0)
                times = [round(poll[0] - started, 9) for poll in fake.polls]
                self.assertEqual(times, [0.0, 0.2, 0.5, 0.95])
                self.assertEqual(self.count(service, "pushprox_client_poll_errors_total"), 4)
                self.assertEqual(self.count(service, "pushprox_client_scrapes_total"), 0)
                for _, uri, authorization, user_agent, poll_body in fake.polls:
                    self.assertEqual(uri, b"/prefix/poll")
                    self.assertEqual(authorization, b"Basic " + base64.b64encode(b"user:token"))
                    self.assertEqual(user_agent, b"pushprox-client/0.1.0")
                    self.assertEqual(poll_body, FQDN.encode())
                self.assertEqual(self.target.requests, [])
                self.stop(service, self.clock)

    def test_scrape_handed_over_in_a_push_answer_is_run(self) -> None:
        """A push answer carrying the next scrape (push-poll) is scraped and pushed too."""
        fake = PushPollProxy(target_url("/metrics").encode(), target_url("/gzip").encode())
        self.start_client(proxy_url=self.serve_fake_proxy(fake))
        self.assertEqual([asked for asked, _ in fake.pushes], [b"1", b"1"])
        heads = [wire.decode_response_head(body.split(b"\r\n\r\n", 1)[0])
                 for _, body in fake.pushes]
        self.assertEqual([(head.scrape_id, head.status) for head in heads],
                         [("a", 200), ("b", 200)])
        self.assertEqual([uri for uri, _ in self.target.requests], [b"/metrics", b"/gzip"])
        self.assertEqual(fake.polls, 2)

    def test_silently_dead_poll_is_given_up_and_polled_again(self) -> None:
        """
        A pushprox proxy that does not answer a poll long after its bound is taken for
        a dead connection: counted, dropped, and polled again on a new connection.
        """
        fake = SilentProxy()
        service = self.start_client(proxy_url=self.serve_fake_proxy(fake), poll_timeout=0.2,
                                    poll_grace=0.3, retry_initial_wait=0.1,
                                    retry_max_wait=0.1, rand=lambda: 1.0)
        self.assertEqual(len(fake.polls), 2)
        self.network.advance(0.49)
        self.assertEqual((len(fake.polls), fake.dropped), (2, []))
        self.assertEqual(self.count(service, "pushprox_client_poll_errors_total"), 0)
        self.network.advance(0.01)
        self.assertEqual((len(fake.polls), fake.dropped), (2, [1]))
        self.assertEqual(self.count(service, "pushprox_client_poll_errors_total"), 1)
        self.network.advance(0.1)
        self.assertEqual(len(fake.polls), 3)
        self.assertNotEqual(fake.polls[2], fake.polls[1])
        self.assertEqual(fake.dropped, [1])

    def test_push_refused_while_stopping_is_no_warning(self) -> None:
        """
        A scrape cut off by the client's own stop is pushed back as an error; a proxy
        stopping too refuses that push with 503: routine, logged at debug, not a warning.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        fake = StoppingProxy(target_url("/slow").encode())
        service = self.start_client(proxy_url=self.serve_fake_proxy(fake), shutdown_grace=0.5)
        self.assertEqual(len(self.target.slow_pending), 1)
        self.successResultOf(stop_client(self.network, service))
        self.network.flush()
        self.assertEqual(fake.pushes, 1)
        pushes = [(event["log_level"], formatEvent(event)) for event in events
                  if event.get("log_format", "").startswith("Push of scrape")]
        self.assertEqual(pushes, [(LogLevel.debug, "Push of scrape a refused with 503: the "
                                   "proxy is shutting down (the client is stopping)")])

    def test_stop_while_polling_leaves_no_timer(self) -> None:
        """
        Stopping the client while its poll waits ends the poll loop at once: no backoff
        timer is left running and the cancelled poll is not counted as a poll error.
        """
        service = self.start_client()
        self.registered()
        stopped = service.stopService()
        self.network.flush()
        self.successResultOf(stopped)
        self.assertEqual(
            (self.clock.pending(), self.count(service, "pushprox_client_poll_errors_total")),
            ([], 0.0),
        )
        self.assertTrue(self.coordinator.is_idle())


def quiet_site(resource: Resource, network: MemoryNetwork) -> Site:
    """A Site for ``resource`` on ``network``'s clock that does not log starting."""
    site = Site(resource, reactor=network)
    site.noisy = False
    return site


class _Written:
    """A consumer that keeps each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Keep it."""
        self.writes.append(data)


class _Response:
    """The body side of a target's response: hands its protocol to the test."""

    length = 5

    def __init__(self) -> None:
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        """Keep the protocol."""
        self.protocol = protocol


class PushBodyTests(SynchronousTestCase):
    """The push body writes the head together with the first body bytes."""

    def test_head_leaves_with_the_first_bytes(self) -> None:
        """One write for head and first piece, so the push leaves in one packet."""
        response = _Response()
        consumer = _Written()
        done = PushBody(b"HEAD", cast(Any, response)).startProducing(cast(Any, consumer))
        self.assertEqual(consumer.writes, [])
        response.protocol.dataReceived(b"abc")
        response.protocol.dataReceived(b"de")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(consumer.writes, [b"HEADabc", b"de"])
        self.successResultOf(done)

    def test_empty_body_writes_the_head_at_its_end(self) -> None:
        """A target's empty body still pushes the head."""
        response = _Response()
        consumer = _Written()
        done = PushBody(b"HEAD", cast(Any, response)).startProducing(cast(Any, consumer))
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(consumer.writes, [b"HEAD"])
        self.successResultOf(done)
