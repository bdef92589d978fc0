# -*- test-case-name: tests.test_proxy -*-
"""
The proxy's twisted.web glue: the site, its resources, status codes and limits.

One port serves everything.  A request whose URI is absolute (``GET http://fqdn:9100/metrics``)
is a scrape from Prometheus using us as its ``proxy_url``; every other request walks
an ordinary resource tree (``/poll``, ``/push``, ``/clients``, ``/metrics``,
``/-/healthy``, ``/-/ready``).  Push bodies are relayed to Prometheus while they
arrive, so the proxy never holds a whole scraped page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pushprox import wire
from pushprox.auth import ClientAuth, Denied, ScraperAuth
from pushprox.coordinator import (
    CoordinatorError,
    ICoordinator,
    QueueFull,
    Scrape,
    ScrapeTimeout,
    ShuttingDown,
    TooManyClients,
    TooManyPolls,
    UnknownClient,
)
from pushprox.metrics import MetricsResource, ProxyMetrics
from pushprox.relay import (
    SERVER,
    PushStream,
    Relay,
    finish_with,
    request_alive,
    scrape_answer,
    text_response,
)
from pushprox.tls import peer_names

#: Answer this long (at most a tenth of the timeout) before the scraper's own deadline,
#: so that Prometheus reads our 504 and its reason rather than its own timeout.
SCRAPER_MARGIN = 0.25
#: Our client asks the proxy to answer an idle poll after this many seconds.
POLL_TIMEOUT_HEADER = b"X-PushProx-Poll-Timeout"
#: Tells our client, on poll answers, which extensions this proxy speaks.
EXTENSIONS_HEADER = b"X-PushProx-Extensions"
EXTENSIONS = b"poll-timeout, push-poll"
#: Our client asks, on a push, for the next scrape queued for it in the push's answer.
PUSH_POLL_HEADER = b"X-PushProx-Push-Poll"
#: Marks a push answer whose body is the next scrape request.
NEXT_SCRAPE_HEADER = b"X-PushProx-Next-Scrape"

# A host name or an IP address literal, as it may appear in a URL or a poll body.
_FQDN = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_.:\[\]-]*[a-z0-9_\]])?$")
@dataclass(frozen=True)
class ProxyConfig:
    """Timeouts and limits of the proxy; the defaults are the documented ones."""

    scrape_default_timeout: float = 15.0
    scrape_max_timeout: float = 300.0
    poll_max_timeout: float = 300.0
    #: Largest push body (the target's whole response), in bytes.
    max_push_size: int = 64 * 1024 * 1024
    #: Largest body of any other request (a poll carries an FQDN), in bytes.
    max_request_size: int = 64 * 1024
    #: Largest status line plus headers of a pushed response, in bytes.
    max_push_head_size: int = 64 * 1024
    #: Largest request line plus headers of any request to the proxy, in bytes.
    max_header_size: int = 16 * 1024
    log_scrapes: bool = False


def normalize_fqdn(raw: bytes) -> str | None:
    """The FQDN in ``raw`` lowercased, or None when it is not a host name."""
    try:
        text = raw.decode("ascii").strip().lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    return text if _FQDN.match(text) else None


def denied_response(request: Request, denied: Denied) -> bytes:
    """Answer a request that failed authentication or authorization."""
    if denied.challenge is not None:
        request.setHeader(*denied.challenge)
    return text_response(request, denied.code, denied.message)


def peer_host(request: Request) -> str | None:
    """The IP address of the request's peer, if it has one."""
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else None


def certificate_names(request: Request) -> list[str] | None:
    """The DNS names of the verified client certificate, or None without one."""
    return peer_names(request.transport) or None


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host else str(address)


class PushProxRequest(Request):
    """A request that enforces body limits while bytes arrive and streams pushes."""

    push_stream: PushStream | None = None
    #: The answer when the body exceeded its limit, decided while it arrived.
    body_rejection: tuple[int, str] | None = None
    _body_limit: int = 0
    _body_received: int = 0

    def gotLength(self, length: int | None) -> None:
        """Decide how this request's body is handled once its headers are read."""
        channel = cast(Any, self.channel)
        site = cast(PushProxSite, channel.site)
        path = channel._path.split(b"?", 1)[0]
        # The resource tree sends /push/anything to the push resource as well.
        if channel._command == b"POST" and (path == b"/push" or path.startswith(b"/push/")):
            self.push_stream = site.push_stream(self, length)
            super().gotLength(0)
            return
        self._body_limit = site.config.max_request_size
        if length is not None and length > self._body_limit:
            self._reject_body(length)
            super().gotLength(0)
            return
        super().gotLength(length)

    def _reject_body(self, size: int) -> None:
        self.body_rejection = (
            413, f"request body of {size} bytes exceeds the limit of {self._body_limit} bytes"
        )

    def handleContentChunk(self, data: bytes) -> None:
        """Stream push bytes to their relay; count other bodies against their limit."""
        if self.push_stream is not None:
            self.push_stream.feed(data)
            return
        if self.body_rejection is not None:
            return
        self._body_received += len(data)
        if self._body_received > self._body_limit:
            self._reject_body(self._body_received)
            content = cast(Any, self.content)
            content.seek(0)
            content.truncate()
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        """Tell a push in progress that its client hung up."""
        if self.push_stream is not None and not self.finished:
            self.push_stream.connection_lost()
        super().connectionLost(reason)


class ScrapeResource(Resource):
    """Hands a proxied scrape from Prometheus to the client of its target's FQDN."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        coordinator: ICoordinator,
        config: ProxyConfig,
        metrics: ProxyMetrics,
        clock: IReactorTime,
        scraper_auth: ScraperAuth | None = None,
    ) -> None:
        super().__init__()
        self._coordinator = coordinator
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._scraper_auth = scraper_auth

    def render(self, request: Request) -> bytes | int:
        """Validate the proxy request and wait for the client's answer."""
        started = self._clock.seconds()
        uri = request.uri
        if self._scraper_auth is not None:
            try:
                self._scraper_auth.check(
                    peer_host(request), request.getHeader(b"proxy-authorization"), proxy=True
                )
            except Denied as denied:
                self.log.info("Refused scrape of {uri!r} from {peer}: {code} {reason}",
                              uri=uri[:200], peer=_peer(request), code=denied.code,
                              reason=denied.message)
                self._count(denied.code, "unauthorized")
                return denied_response(request, denied)
        if request.method not in (b"GET", b"HEAD"):
            return self._refuse(request, 405, f"method {request.method!r} is not proxied")
        try:
            authority = uri.split(b"/", 3)[2]
        except IndexError:
            authority = b""
        host = authority.rpartition(b"@")[2]
        # An IPv6 literal keeps its brackets; otherwise the port goes.
        host = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        fqdn = normalize_fqdn(host)
        if fqdn is None:
            return self._refuse(request, 400, f"no valid host name in {uri[:100]!r}")
        timeout = self._timeout(request)
        if timeout is None:
            return self._refuse(
                request, 400, "X-Prometheus-Scrape-Timeout-Seconds is not a positive number"
            )
        headers = [
            (name, value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        deadline = timeout - min(SCRAPER_MARGIN, timeout / 10)
        deferred = self._coordinator.scrape(fqdn, request.method, uri, headers, deadline)
        request.notifyFinish().addErrback(lambda _: deferred.cancel())
        deferred.addCallbacks(
            self._relay, self._failed, (request, fqdn, started), {}, (request, fqdn, started)
        )
        return NOT_DONE_YET

    def _timeout(self, request: Request) -> float | None:
        raw = request.getHeader(wire.TIMEOUT_HEADER)
        if raw is None:
            return min(self._config.scrape_default_timeout, self._config.scrape_max_timeout)
        try:
            timeout = float(raw)
        except ValueError:
            return None
        if not 0 < timeout < float("inf"):
            return None
        return min(timeout, self._config.scrape_max_timeout)

    def _refuse(self, request: Request, code: int, message: str) -> bytes:
        self.log.info("Refused proxy request {uri!r} from {peer}: {code} {reason}",
                      uri=request.uri[:200], peer=_peer(request), code=code, reason=message)
        self._count(code, "bad_request")
        return text_response(request, code, message)

    def _count(self, code: int, outcome: str) -> None:
        self._metrics.count_scrape(code, outcome)

    def _relay(self, relay: Relay, request: Request, fqdn: str, started: float) -> None:
        code = relay.attach(request)
        if code == 0:
            self._count(499, "cancelled")
            return
        outcome = ("success" if relay.error is None
                   else "timeout" if code == 504 else "client_error")
        self._count(code, outcome)
        self._metrics.scrape_duration.observe(self._clock.seconds() - started)
        if self._config.log_scrapes:
            self.log.info("Scrape of {url} via {fqdn}: {code}",
                          url=request.uri.decode("latin-1"), fqdn=fqdn, code=code)
        if relay.error is not None:
            self.log.warn("Scrape of {url} via {fqdn} failed: {reason}",
                          url=request.uri.decode("latin-1"), fqdn=fqdn, reason=relay.error[1])

    def _failed(self, reason: Failure, request: Request, fqdn: str, started: float) -> None:
        error = reason.value
        if isinstance(error, CancelledError):
            self._count(499, "cancelled")
            return
        if isinstance(error, UnknownClient):
            code, outcome = 404, "unknown_client"
        elif isinstance(error, ScrapeTimeout):
            code, outcome = 504, "timeout"
        elif isinstance(error, QueueFull):
            code, outcome = 503, "queue_full"
            self._metrics.limit_exceeded.labels("scrapes_queued_per_client").inc()
        elif isinstance(error, ShuttingDown):
            code, outcome = 503, "shutdown"
        else:
            self.log.failure("Scrape via {fqdn} failed unexpectedly", reason, fqdn=fqdn)
            code, outcome = 500, "error"
        message = str(error) if isinstance(error, CoordinatorError) else "internal error"
        self._count(code, outcome)
        self._metrics.scrape_duration.observe(self._clock.seconds() - started)
        if code != 404 or self._config.log_scrapes:
            self.log.info("Scrape of {url} via {fqdn}: {code} {reason}",
                          url=request.uri.decode("latin-1"), fqdn=fqdn, code=code,
                          reason=message)
        finish_with(request, code, message)


class _Instrumented(Resource):
    """A leaf of the proxy's own endpoints, counted under its path."""

    isLeaf = True
    path = ""
    log = Logger()

    def __init__(self, metrics: ProxyMetrics, clock: IReactorTime) -> None:
        super().__init__()
        self._metrics = metrics
        self._clock = clock

    def guard(self, request: Request, auth: ScraperAuth | None) -> bytes | None:
        """A refusal body when ``auth`` does not allow this request, else None."""
        if auth is None:
            return None
        try:
            auth.check(peer_host(request), request.getHeader(b"authorization"), proxy=False)
        except Denied as denied:
            return denied_response(request, denied)
        return None

    def refuse(self, request: Request, denied: Denied, fqdn: str | None = None) -> bytes:
        """Log why a request to this endpoint is refused, and answer it so."""
        what = self.path.lstrip("/") + (f" for {fqdn}" if fqdn else "")
        self.log.info("Refused {what} from {peer}: {code} {reason}", what=what,
                      peer=_peer(request), code=denied.code, reason=denied.message)
        return denied_response(request, denied)

    def instrument(self, request: Request) -> None:
        """Count this request by code and path once it ends."""
        started = self._clock.seconds()
        request.setHeader(b"server", SERVER)

        def done(_: object) -> None:
            self._metrics.count_request(request.code, self.path,
                                        self._clock.seconds() - started)

        request.notifyFinish().addBoth(done)


class PollResource(_Instrumented):
    """``POST /poll``: a client waits here until a scrape for its FQDN comes."""

    path = "/poll"
    log = Logger()

    def __init__(
        self,
        coordinator: ICoordinator,
        config: ProxyConfig,
        metrics: ProxyMetrics,
        clock: IReactorTime,
        client_auth: ClientAuth | None,
    ) -> None:
        super().__init__(metrics, clock)
        self._coordinator = coordinator
        self._config = config
        self._client_auth = client_auth

    def render_POST(self, request: Request) -> bytes | int:
        """Register the client and hold the request until a scrape or timeout."""
        self.instrument(request)
        rejection = cast(PushProxRequest, request).body_rejection
        if rejection is not None:
            self._metrics.limit_exceeded.labels("request_size").inc()
            return self.refuse(request, Denied(*rejection))
        raw = request.content.read() if request.content is not None else b""
        fqdn = normalize_fqdn(raw)
        if fqdn is None:
            return self.refuse(request, Denied(400, f"poll body is not an FQDN: {raw[:100]!r}"))
        timeout: float | None = None
        raw_timeout = request.getHeader(POLL_TIMEOUT_HEADER)
        if raw_timeout is not None:
            try:
                timeout = min(max(float(raw_timeout), 0.0), self._config.poll_max_timeout)
            except ValueError:
                return self.refuse(request, Denied(
                    400, f"{POLL_TIMEOUT_HEADER.decode()} is not a number"))
        principal: str | None = None
        if self._client_auth is not None:
            try:
                principal = self._client_auth.poll_principal(
                    fqdn, request.getHeader(b"authorization"), certificate_names(request)
                )
            except Denied as denied:
                return self.refuse(request, denied, fqdn)
        labels: dict[str, str] | None = None
        raw_labels = request.getHeader(wire.LABELS_HEADER)
        if raw_labels is not None:
            try:
                labels = wire.decode_labels(raw_labels)
            except wire.WireError as error:
                return self.refuse(request, Denied(400, f"X-PushProx-Labels: {error}"))
        deferred = self._coordinator.poll(fqdn, principal, timeout, labels)
        request.notifyFinish().addErrback(lambda _: deferred.cancel())
        deferred.addCallbacks(self._answer, self._failed, (request,), {}, (request, fqdn))
        return NOT_DONE_YET

    def _answer(self, scrape: Scrape | None, request: Request) -> None:
        # Set when answering, not while the poll is held: 10,000 idle polls would
        # each keep a copy in their response headers.
        request.setHeader(EXTENSIONS_HEADER, EXTENSIONS)
        if scrape is None:
            request.setResponseCode(204)
            request.finish()
            return
        if not request_alive(request):
            self._coordinator.requeue(scrape)
            return
        request.write(scrape_answer(request, scrape.payload(self._clock.seconds())))
        request.finish()

    def _failed(self, reason: Failure, request: Request, fqdn: str) -> None:
        error = reason.value
        if isinstance(error, CancelledError):
            return
        if isinstance(error, TooManyPolls):
            self._metrics.limit_exceeded.labels("polls_per_client").inc()
            code = 429
        elif isinstance(error, TooManyClients):
            self._metrics.limit_exceeded.labels("clients").inc()
            code = 503
        elif isinstance(error, ShuttingDown):
            code = 503
        else:
            self.log.failure("Poll of {fqdn} failed unexpectedly", reason, fqdn=fqdn)
            code = 500
        message = str(error) if isinstance(error, CoordinatorError) else "internal error"
        if code != 503:
            self.log.info("Poll of {fqdn}: {code} {reason}", fqdn=fqdn, code=code,
                          reason=message)
        finish_with(request, code, message)


class PushResource(_Instrumented):
    """
    ``POST /push``: answers the push once its body has been relayed.

    When our client asks for it (``X-PushProx-Push-Poll``), the answer carries the
    next scrape already queued for that client, saving it a poll round trip under
    load; otherwise (and always for upstream clients) it is empty.
    """

    path = "/push"
    log = Logger()

    def __init__(self, coordinator: ICoordinator, metrics: ProxyMetrics,
                 clock: IReactorTime) -> None:
        super().__init__(metrics, clock)
        self._coordinator = coordinator

    def render_POST(self, request: Request) -> bytes:
        """Report how the relay of this push ended."""
        self.instrument(request)
        stream = cast(PushProxRequest, request).push_stream
        if stream is None:  # pragma: no cover - PushProxRequest always sets it
            return text_response(request, 500, "push was not streamed")
        code, message = stream.end()
        if code != 200:
            if code == 413:
                self._metrics.limit_exceeded.labels("push_size").inc()
            return self.refuse(request, stream.denied or Denied(code, message))
        if stream.fqdn is not None and request.getHeader(PUSH_POLL_HEADER) is not None:
            scrape = self._coordinator.take_queued(stream.fqdn, stream.identity)
            if scrape is not None:
                request.setHeader(NEXT_SCRAPE_HEADER, b"1")
                request.notifyFinish().addErrback(lambda _: self._coordinator.requeue(scrape))
                return scrape_answer(request, scrape.payload(self._clock.seconds()))
        request.setHeader(b"content-length", b"0")
        return b""


class ClientsResource(_Instrumented):
    """``GET /clients``: the registered clients as Prometheus http_sd/file_sd JSON."""

    path = "/clients"

    def __init__(self, coordinator: ICoordinator, metrics: ProxyMetrics,
                 clock: IReactorTime, auth: ScraperAuth | None = None) -> None:
        super().__init__(metrics, clock)
        self._coordinator = coordinator
        self._auth = auth

    def render_GET(self, request: Request) -> bytes:
        """List every registered client as one target group."""
        self.instrument(request)
        refusal = self.guard(request, self._auth)
        if refusal is not None:
            return refusal
        groups = [
            {"targets": [client.fqdn], "labels": dict(client.labels)}
            for client in self._coordinator.clients()
        ]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(groups).encode("utf-8")


class StatusResource(_Instrumented):
    """``/-/healthy`` and ``/-/ready``: a fixed text while the proxy serves."""

    def __init__(self, path: str, message: str, metrics: ProxyMetrics,
                 clock: IReactorTime) -> None:
        super().__init__(metrics, clock)
        self.path = path
        self._message = message

    def render_GET(self, request: Request) -> bytes:
        """Say that the proxy is up."""
        self.instrument(request)
        return text_response(request, 200, self._message)


class InstrumentedMetricsResource(_Instrumented):
    """``/metrics`` counted like the other endpoints."""

    path = "/metrics"

    def __init__(self, metrics: ProxyMetrics, clock: IReactorTime,
                 auth: ScraperAuth | None = None) -> None:
        super().__init__(metrics, clock)
        self._inner = MetricsResource(metrics.registry)
        self._auth = auth

    def render_GET(self, request: Request) -> bytes:
        """Render the proxy's metrics."""
        self.instrument(request)
        refusal = self.guard(request, self._auth)
        if refusal is not None:
            return refusal
        return self._inner.render_GET(request)


class NotFound(_Instrumented):
    """Anything else: 404 with a hint."""

    path = "other"

    def render(self, request: Request) -> bytes:
        """Say what this port serves."""
        self.instrument(request)
        return text_response(
            request, 404, "not found: this is a PushProx proxy (use it as proxy_url; "
            "endpoints /poll /push /clients /metrics /-/healthy /-/ready)"
        )


class ConnectRefused(Resource):
    """``CONNECT``: PushProx relays plain requests only."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        """Explain how to scrape HTTPS targets instead."""
        return text_response(
            request, 405, "CONNECT is not supported: scrape HTTPS targets with "
            "params: {_scheme: [https]} and an http:// proxy_url"
        )


class PushProxChannel(HTTPChannel):
    """
    An HTTP channel whose header limit is the site's ``--max-header-size``.

    Headers past it get a 431 naming the limit, and are counted; Twisted's own
    answer would be a bare 400, and a single line past 16 KiB would only be cut off.
    """

    site: PushProxSite

    @property
    def totalHeadersSize(self) -> int:  # type: ignore[override]
        """The request line plus headers allowed, in bytes."""
        return self.site.config.max_header_size

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        """One header line may use the whole allowance, no more."""
        return self.site.config.max_header_size

    def lineLengthExceeded(self, line: bytes) -> None:
        """A header line past the limit."""
        self._refuse_oversized_headers()

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._refuse_oversized_headers()
        else:
            super()._respondToBadRequestAndDisconnect()

    def _refuse_oversized_headers(self) -> None:
        self.site.metrics.limit_exceeded.labels("header_size").inc()
        body = b"request headers exceed the limit of %d bytes\n" % self.totalHeadersSize
        cast(Any, self.transport).write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nServer: pushprox\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()


def _channel_factory(site: Any) -> _GenericHTTPChannelProtocol:
    # What twisted.web's Site builds by default, with our channel inside.
    return _GenericHTTPChannelProtocol(PushProxChannel())


class _Directory(Resource):
    """A resource tree node whose unknown children are a helpful 404."""

    def __init__(self, not_found: Resource) -> None:
        super().__init__()
        self._not_found = not_found

    def getChild(self, path: bytes, request: Request) -> Resource:
        """Any child not put here."""
        return self._not_found


class PushProxSite(Site):
    """The proxy's one site: scrapes by absolute URI, the rest by path."""

    requestFactory = PushProxRequest
    protocol = _channel_factory

    def __init__(
        self,
        coordinator: ICoordinator,
        *,
        clock: IReactorTime,
        config: ProxyConfig | None = None,
        metrics: ProxyMetrics | None = None,
        client_auth: ClientAuth | None = None,
        scraper_auth: ScraperAuth | None = None,
        clients_endpoint: bool = True,
        metrics_endpoint: bool = True,
        reactor: Any = None,
    ) -> None:
        self.config = config or ProxyConfig()
        self.metrics = metrics or ProxyMetrics()
        self.coordinator = coordinator
        self.client_auth = client_auth if client_auth is not None and client_auth.enabled else None
        scraper_auth = scraper_auth if scraper_auth is not None and scraper_auth.enabled else None
        self.metrics.watch(
            clients=coordinator.client_count,
            polls_waiting=coordinator.waiting_poll_count,
            scrapes_queued=coordinator.queued_scrape_count,
            scrapes_in_flight=coordinator.scrapes_in_flight,
        )
        not_found = NotFound(self.metrics, clock)
        root = _Directory(not_found)
        root.putChild(b"", not_found)
        root.putChild(b"poll", PollResource(coordinator, self.config, self.metrics, clock,
                                            self.client_auth))
        root.putChild(b"push", PushResource(coordinator, self.metrics, clock))
        if clients_endpoint:
            root.putChild(b"clients", ClientsResource(coordinator, self.metrics, clock,
                                                      scraper_auth))
        if metrics_endpoint:
            root.putChild(b"metrics", InstrumentedMetricsResource(self.metrics, clock,
                                                                  scraper_auth))
        status = _Directory(not_found)
        status.putChild(b"healthy", StatusResource("/-/healthy", "Healthy", self.metrics, clock))
        status.putChild(b"ready", StatusResource("/-/ready", "Ready", self.metrics, clock))
        root.putChild(b"-", status)
        self._scrape = ScrapeResource(coordinator, self.config, self.metrics, clock,
                                      scraper_auth)
        self._connect = ConnectRefused()
        super().__init__(root, reactor=reactor if reactor is not None else clock)
        self.displayTracebacks = False
        self.noisy = False

    def push_stream(self, request: Request, length: int | None) -> PushStream:
        """A stream that relays the body of ``request``, a push, once it may."""
        principal: str | None = None
        if self.client_auth is not None:
            try:
                principal = self.client_auth.push_principal(
                    request.getHeader(b"authorization"), certificate_names(request)
                )
            except Denied as denied:
                return PushStream.refused(self.coordinator, self.config, denied)
        return PushStream(self.coordinator, self.config, principal, length, request.transport)

    def getResourceFor(self, request: Request) -> IResource:
        """Route absolute-URI requests to the scrape resource, the rest by path."""
        request.site = self
        uri = request.uri
        if uri[:7].lower() == b"http://" or uri[:8].lower() == b"https://":
            return self._scrape
        if request.method == b"CONNECT":
            return self._connect
        return cast(IResource, super().getResourceFor(request))

    def log(self, request: Any) -> None:
        """No access log: scrapes are logged by their resource when asked to."""
