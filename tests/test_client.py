"""
Tests for L{pushprox.client}: the target allow-list, backoff, configuration, and
L{ClientService} polling a real in-process proxy over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import base64
import gzip
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushprox import wire
from pushprox.client import (
    Backoff,
    ClientConfig,
    ClientService,
    ScrapeRefused,
    make_agents,
    plan_target,
)
from pushprox.coordinator import Coordinator
from pushprox.metrics import ClientMetrics
from pushprox.proxy import PushProxSite
from tests.helpers import (
    DATA,
    HTTPResponse,
    free_port,
    http_request_bytes,
    prometheus_headers,
    raw_http_request,
    track_connections,
    wait_until,
)

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
        body = (DATA / "go-proxy-poll-response.bin").read_bytes().split(b"\r\n\r\n", 1)[1]
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


# -- ClientService against a real proxy --

METRICS = b"".join(b"node_cpu_seconds_total{cpu=\"%d\",mode=\"idle\"} %d.5\n" % (i, i * 7)
                   for i in range(200))
GZIPPED = gzip.compress(METRICS, mtime=0)
CHUNKS = [b"# HELP a A.\n", b"# TYPE a gauge\n", b"a 1\n" * 500, b"b 2\n"]


class Target(Resource):
    """A target with a few pages; it records the headers of every request it gets."""

    isLeaf = True

    def __init__(self, clock: Any, delay: float = 2.0) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.requests: list[tuple[bytes, list[tuple[bytes, list[bytes]]]]] = []
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

    def header(self, index: int, name: bytes) -> list[bytes] | None:
        """The values of header ``name`` in the ``index``-th request received."""
        for key, values in self.requests[index][1]:
            if key.lower() == name.lower():
                return values
        return None


class FakeProxy(Resource):
    """A proxy stand-in that answers every poll with a fixed error page."""

    isLeaf = True

    def __init__(self, clock: Any, code: int, body: bytes, content_type: bytes) -> None:
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
        self.held: list[Request] = []

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
            self.held.append(request)
            return NOT_DONE_YET
        self.pushes.append((request.getHeader(b"x-pushprox-push-poll"), body))
        if len(self.pushes) == 1:
            request.setHeader(b"X-PushProx-Next-Scrape", b"1")
            return self._scrape("b")
        return b""


class SilentProxy(Resource):
    """A proxy stand-in that says it bounds polls, then never answers one again."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        self.polls += 1
        request.setHeader(b"X-PushProx-Extensions", b"poll-timeout, push-poll")
        if self.polls == 1:
            request.setResponseCode(204)
            return b""
        self.held.append(request)
        return NOT_DONE_YET


NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1"
             b"</center>\r\n</body>\r\n</html>\r\n")


@implementer(IReactorTime)
class TrackingClock:
    """The reactor's clock, remembering the delayed calls made through it."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._calls: list[IDelayedCall] = []

    def seconds(self) -> float:
        return float(self._clock.seconds())

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any
                  ) -> IDelayedCall:
        call = self._clock.callLater(delay, f, *args, **kw)
        self._calls = [c for c in self._calls if c.active()] + [call]
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return self.pending()

    def pending(self) -> list[IDelayedCall]:
        """The delayed calls made through this clock that have not run yet."""
        return [call for call in self._calls if call.active()]


class ClientServiceTests(TestCase):
    """ClientService relays scrapes between a real proxy and a real target on 127.0.0.1."""

    timeout = 20

    def setUp(self) -> None:
        self.coordinator = Coordinator(reactor)
        self.proxy_site = PushProxSite(self.coordinator, clock=reactor)
        self.proxy_connections = track_connections(self.proxy_site)
        self.proxy_port = reactor.listenTCP(0, self.proxy_site, interface="127.0.0.1")
        self.target = Target(reactor)
        target_site = Site(self.target)
        target_site.noisy = False
        self.target_connections = track_connections(target_site)
        self.target_port = reactor.listenTCP(0, target_site, interface="127.0.0.1")
        self.addCleanup(self._shut_down)

    async def _shut_down(self) -> None:
        """Runs after the client has stopped: nothing may be left behind."""
        try:
            await wait_until(reactor, self.coordinator.is_idle, timeout=5,
                             what="the proxy's coordinator to be idle")
            await wait_until(reactor, lambda: not self.target.slow_pending, timeout=5,
                             what="abandoned slow target requests to be cancelled")
            await wait_until(
                reactor, lambda: not (self.proxy_connections or self.target_connections),
                timeout=5, what="every connection to the proxy and the target to close",
            )
        finally:
            await DeferredList([self.proxy_port.stopListening(),
                                self.target_port.stopListening()])

    # -- helpers --

    def target_url(self, path: str, *, port: int | None = None) -> str:
        port = self.target_port.getHost().port if port is None else port
        return f"http://{FQDN}:{port}{path}"

    def start_client(
        self, *, rand: Callable[[], float] | None = None, **overrides: Any
    ) -> ClientService:
        """A running ClientService for FQDN that scrapes the target on 127.0.0.1."""
        settings: dict[str, Any] = {
            "proxy_url": f"http://127.0.0.1:{self.proxy_port.getHost().port}/",
            "fqdn": FQDN,
            "target_host": "127.0.0.1",
            "allow_ports": frozenset({self.target_port.getHost().port}),
            "allow_paths": frozenset({"/metrics", "/gzip", "/chunked", "/slow"}),
        }
        settings.update(overrides)
        proxy_agent, target_agent, pools = make_agents(reactor)
        for pool in pools:
            self.addCleanup(pool.closeCachedConnections)
        extra = {} if rand is None else {"rand": rand}
        self.clock = TrackingClock(reactor)
        service = ClientService(ClientConfig(**settings), reactor=self.clock,
                                proxy_agent=proxy_agent, target_agent=target_agent,
                                metrics=ClientMetrics(), pools=pools, **extra)
        service.startService()
        self.addCleanup(self._end_leftover_timers, self.clock)
        self.addCleanup(self._stop, service)
        return service

    async def _stop(self, service: ClientService) -> None:
        if service.running:
            await service.stopService()

    async def _end_leftover_timers(self, clock: TrackingClock) -> None:
        """
        Work around the backoff timer that stopService leaves behind (the bug shown by
        test_stop_while_polling_leaves_no_timer): fire it now so that the poll loop ends
        instead of dirtying the reactor of every test.
        """
        for call in clock.pending():
            call.reset(0)
        await wait_until(reactor, lambda: not clock.pending(), timeout=2,
                         what="the client's leftover timers to fire")

    async def registered(self) -> None:
        """Wait until the client holds a poll on the proxy."""
        await wait_until(reactor, lambda: self.coordinator.waiting_poll_count() >= 1,
                         timeout=5, what="the client's poll")

    async def scrape(self, url: str, *, timeout: float = 10.0,
                     headers: list[tuple[str, str]] | None = None) -> HTTPResponse:
        """GET ``url`` through the proxy as Prometheus does."""
        request = http_request_bytes(
            "GET", url, prometheus_headers(timeout) if headers is None else headers
        )
        return await raw_http_request(reactor, self.proxy_port.getHost().port, request)

    async def direct(self, path: str, headers: list[tuple[str, str]]) -> HTTPResponse:
        """GET ``path`` from the target itself, with the Host header the client sends."""
        port = self.target_port.getHost().port
        request = http_request_bytes("GET", path, headers, host=f"{FQDN}:{port}")
        return await raw_http_request(reactor, port, request)

    async def assert_relayed_unchanged(self, path: str, headers: list[tuple[str, str]]
                                       ) -> HTTPResponse:
        """Scrape ``path`` through the proxy and directly; they must be the same."""
        proxied = await self.scrape(self.target_url(path), headers=headers)
        direct = await self.direct(path, headers)
        self.assertEqual((proxied.status, proxied.reason), (direct.status, direct.reason))
        self.assertEqual(proxied.body, direct.body)
        self.assertEqual(proxied.chunked, direct.chunked)
        self.assertEqual(proxied.comparable_headers(ignore=[b"date"]),
                         direct.comparable_headers(ignore=[b"date"]))
        return proxied

    # -- tests --

    async def test_scrape_relays_body_and_headers_unchanged(self) -> None:
        """The scraper gets the target's status, headers and body byte for byte."""
        self.start_client()
        await self.registered()
        proxied = await self.assert_relayed_unchanged("/metrics", prometheus_headers(gzip=False))
        self.assertEqual(proxied.body, METRICS)
        self.assertEqual(proxied.header_values(b"x-target"), [b"one", b"two"])
        self.assertEqual(proxied.header(b"content-length"), b"%d" % len(METRICS))
        self.assertIsNone(proxied.header(b"id"))

    async def test_target_request_carries_fqdn_host_and_prometheus_headers(self) -> None:
        """The target sees Host FQDN:port and Prometheus' headers, never the Id."""
        self.start_client()
        await self.registered()
        response = await self.scrape(self.target_url("/metrics?x=1&_scheme=http"))
        self.assertEqual(response.status, 200)
        self.assertEqual(len(self.target.requests), 1)
        port = self.target_port.getHost().port
        self.assertEqual(self.target.requests[0][0], b"/metrics?x=1")
        self.assertEqual(self.target.header(0, b"host"), [b"%s:%d" % (FQDN.encode(), port)])
        self.assertEqual(self.target.header(0, b"user-agent"), [b"Prometheus/2.53.0"])
        self.assertEqual(self.target.header(0, b"accept-encoding"), [b"gzip"])
        self.assertIsNone(self.target.header(0, b"id"))

    async def test_gzip_body_passes_through_undecoded(self) -> None:
        """With Accept-Encoding: gzip the compressed body and Content-Encoding pass as is."""
        self.start_client()
        await self.registered()
        proxied = await self.assert_relayed_unchanged("/gzip", prometheus_headers(gzip=True))
        self.assertEqual(proxied.header(b"content-encoding"), b"gzip")
        self.assertEqual(proxied.body, GZIPPED)
        self.assertEqual(gzip.decompress(proxied.body), METRICS)

    async def test_identity_when_scraper_does_not_ask_for_gzip(self) -> None:
        """Without Accept-Encoding: gzip the client does not ask the target for it either."""
        self.start_client()
        await self.registered()
        proxied = await self.assert_relayed_unchanged("/gzip", prometheus_headers(gzip=False))
        self.assertIsNone(proxied.header(b"content-encoding"))
        self.assertEqual(proxied.body, METRICS)
        self.assertIsNone(self.target.header(0, b"accept-encoding"))

    async def test_chunked_target_response_is_relayed(self) -> None:
        """A chunked response without Content-Length arrives whole and chunked."""
        self.start_client()
        await self.registered()
        proxied = await self.assert_relayed_unchanged("/chunked", prometheus_headers())
        self.assertTrue(proxied.chunked)
        self.assertEqual(proxied.body, b"".join(CHUNKS))

    async def test_refused_connection_gives_502_with_reason(self) -> None:
        """A target port where nothing listens comes back as 502 naming the refusal."""
        closed_port = free_port()
        self.start_client(allow_ports=frozenset({closed_port}))
        await self.registered()
        response = await self.scrape(self.target_url("/metrics", port=closed_port))
        self.assertEqual(response.status, 502, response.text)
        self.assertIn("the client could not scrape the target", response.text)
        self.assertIn(f"failed to scrape {self.target_url('/metrics', port=closed_port)}",
                      response.text)
        self.assertIn("ConnectionRefusedError", response.text)

    async def test_port_outside_allow_list_gives_502_with_reason(self) -> None:
        """A port the client may not scrape comes back as 502 saying so; nothing is fetched."""
        self.start_client()
        await self.registered()
        response = await self.scrape(self.target_url("/metrics", port=22))
        self.assertEqual(response.status, 502, response.text)
        self.assertIn("refused: port 22 is not allowed", response.text)
        self.assertEqual(self.target.requests, [])

    async def test_slow_target_times_out(self) -> None:
        """A target slower than the scrape timeout gives 502 or 504 saying timeout, in time."""
        self.target.delay = 5.0
        self.start_client()
        await self.registered()
        started = reactor.seconds()
        response = await self.scrape(self.target_url("/slow"), timeout=1.0)
        elapsed = reactor.seconds() - started
        self.assertIn(response.status, (502, 504), response.text)
        self.assertIn("timeout", response.text)
        self.assertLess(elapsed, 2.5)

    async def test_slow_scrapes_run_concurrently(self) -> None:
        """The client polls again at once, so two slow scrapes take one delay, not two."""
        self.target.delay = 1.5
        self.start_client()
        await self.registered()
        started = reactor.seconds()
        results = await DeferredList(
            [Deferred.fromCoroutine(self.scrape(self.target_url("/slow"))) for _ in range(2)],
            consumeErrors=True,
        )
        elapsed = reactor.seconds() - started
        for ok, response in results:
            self.assertTrue(ok, response)
            self.assertEqual((response.status, response.body), (200, b"slow 1\n"))
        self.assertEqual(len(self.target.requests), 2)
        # One after the other they would take 3 s.
        self.assertGreaterEqual(elapsed, 1.5)
        self.assertLess(elapsed, 2.5)

    def serve_fake_proxy(self, resource: Resource) -> int:
        """Serve a stand-in proxy on 127.0.0.1 until the test ends; its port."""
        site = Site(resource)
        site.noisy = False
        connections = track_connections(site)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")

        async def stop() -> None:
            await wait_until(reactor, lambda: not connections, timeout=5,
                             what="connections to the fake proxy to close")
            await port.stopListening()

        self.addCleanup(stop)
        return int(port.getHost().port)

    async def _poll_error_page(self, body: bytes, content_type: bytes) -> tuple[
            FakeProxy, ClientService]:
        fake = FakeProxy(reactor, 502, body, content_type)
        port = self.serve_fake_proxy(fake)
        service = self.start_client(
            proxy_url=f"http://user:token@127.0.0.1:{port}/prefix",
            retry_initial_wait=0.2, retry_max_wait=0.5, rand=lambda: 1.0,
        )
        await wait_until(reactor, lambda: len(fake.polls) >= 4, timeout=10,
                         what="four polls of the fake proxy")
        return fake, service

    async def test_html_502_poll_answer_is_counted_and_retried_with_backoff(self) -> None:
        """
        A load balancer's HTML 502 page in answer to a poll counts as a poll error and
        the poll is retried after 0.2, 0.3, 0.45 s (jitter fixed at its largest).
        """
        fake, service = await self._poll_error_page(NGINX_502, b"text/html")
        errors = service.metrics.registry.get_sample_value("pushprox_client_poll_errors_total")
        self.assertGreaterEqual(errors, 3)
        self.assertEqual(service.metrics.registry.get_sample_value(
            "pushprox_client_scrapes_total"), 0)
        times = [poll[0] for poll in fake.polls[:4]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        for gap, wait in zip(gaps, [0.2, 0.3, 0.45], strict=True):
            self.assertGreaterEqual(gap, wait - 0.01, gaps)
            self.assertLess(gap, wait + 0.5, gaps)
        for _, uri, authorization, user_agent, body in fake.polls:
            self.assertEqual(uri, b"/prefix/poll")
            self.assertEqual(authorization, b"Basic " + base64.b64encode(b"user:token"))
            self.assertEqual(user_agent, b"pushprox-client/0.1.0")
            self.assertEqual(body, FQDN.encode())

    async def test_scrape_handed_over_in_a_push_answer_is_run(self) -> None:
        """A push answer carrying the next scrape (push-poll) is scraped and pushed too."""
        fake = PushPollProxy(self.target_url("/metrics").encode(),
                             self.target_url("/gzip").encode())
        self.start_client(proxy_url=f"http://127.0.0.1:{self.serve_fake_proxy(fake)}/")
        await wait_until(reactor, lambda: len(fake.pushes) >= 2, timeout=10,
                         what="two pushes")
        self.assertEqual([asked for asked, _ in fake.pushes], [b"1", b"1"])
        heads = [wire.decode_response_head(body.split(b"\r\n\r\n", 1)[0])
                 for _, body in fake.pushes]
        self.assertEqual([(head.scrape_id, head.status) for head in heads],
                         [("a", 200), ("b", 200)])
        self.assertEqual(sorted(uri for uri, _ in self.target.requests),
                         [b"/gzip", b"/metrics"])
        self.assertLessEqual(fake.polls, 2)

    async def test_silently_dead_poll_is_given_up_and_polled_again(self) -> None:
        """
        A pushprox proxy that does not answer a poll long after its bound is taken for
        a dead connection: counted, dropped, and polled again on a new connection.
        """
        fake = SilentProxy()
        port = self.serve_fake_proxy(fake)
        service = self.start_client(proxy_url=f"http://127.0.0.1:{port}/", poll_timeout=0.2,
                                    poll_grace=0.3, retry_initial_wait=0.1,
                                    retry_max_wait=0.1)
        await wait_until(reactor, lambda: fake.polls >= 3, timeout=5,
                         what="a third poll after the silent one was given up")
        self.assertGreaterEqual(service.metrics.registry.get_sample_value(
            "pushprox_client_poll_errors_total"), 1)
        self.assertTrue(all(request._disconnected for request in fake.held[:-1]))

    async def test_error_poll_answer_is_never_parsed_as_a_scrape(self) -> None:
        """A 502 whose body reads like a scrape request is an error, not a scrape."""
        port = self.target_port.getHost().port
        lookalike = wire.encode_scrape_request(
            method=b"GET", url=self.target_url("/metrics").encode(),
            headers=[(b"Accept", b"*/*")], scrape_id="not-a-scrape", timeout=5.0,
        )
        self.assertEqual(wire.decode_scrape_request(lookalike).url,
                         b"http://%s:%d/metrics" % (FQDN.encode(), port))
        _, service = await self._poll_error_page(lookalike, b"text/plain")
        registry = service.metrics.registry
        self.assertGreaterEqual(registry.get_sample_value("pushprox_client_poll_errors_total"), 3)
        self.assertEqual(registry.get_sample_value("pushprox_client_scrapes_total"), 0)
        self.assertEqual(self.target.requests, [])

    async def test_stop_while_polling_leaves_no_timer(self) -> None:
        """
        Stopping the client while its poll waits ends the poll loop at once: no backoff
        timer is left running and the cancelled poll is not counted as a poll error.
        """
        service = self.start_client()
        await self.registered()
        await service.stopService()
        registry = service.metrics.registry
        self.assertEqual(
            (self.clock.pending(), registry.get_sample_value("pushprox_client_poll_errors_total")),
            ([], 0.0),
        )
