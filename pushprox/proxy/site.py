# -*- test-case-name: tests.test_proxy -*-
"""
The proxy's twisted.web glue: the site, its resources, status codes and limits.

One port serves everything.  A request whose URI is absolute (``GET http://fqdn:9100/metrics``)
is a scrape from Prometheus using us as its ``proxy_url``; every other request walks
an ordinary resource tree (``/poll``, ``/push``, ``/clients``, ``/metrics``,
``/-/healthy``, ``/-/ready``, the status page ``/`` and its JSON ``/api/v1/clients``).
Push bodies are relayed to Prometheus while they arrive, so the proxy never holds a
whole scraped page.
"""

from __future__ import annotations

import datetime
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pushprox.proxy import status
from pushprox.proxy.channel import BodySink, LlhttpChannel, StreamingRequest, close_after
from pushprox.proxy.coordinator import (
    ClientInfo,
    ClientStatus,
    CoordinatorError,
    ICoordinator,
    IScrapeAnswer,
    QueueFull,
    Scrape,
    TooManyClients,
    TooManyPolls,
    Waiters,
)
from pushprox.proxy.lean import LeanRequest
from pushprox.proxy.push import Push, PushForwarder, PushReply
from pushprox.proxy.responses import SERVER, finish_with, scrape_answer, text_response
from pushprox.shared import wire
from pushprox.shared.answers import denied_response, not_allowed_response, peer_host, refusal
from pushprox.shared.auth import ClientAuth, Denied, PeerAuth, ScraperAuth
from pushprox.shared.config import ProxyConfig as ProxyConfig
from pushprox.shared.keepalive import enable_keepalive
from pushprox.shared.metrics import ProxyMetrics, metrics_answer
from pushprox.shared.version import package_version

#: Answer this long (at most a tenth of the timeout) before the scraper's own deadline,
#: so that Prometheus reads our 504 and its reason rather than its own timeout.
SCRAPER_MARGIN = 0.25
#: Why a scrape ended without an answer when Prometheus hung up first.
SCRAPER_GONE = "the scraper hung up before the answer"
#: No header names, for a scrape whose every header is passed on.
_NONE: frozenset[bytes] = frozenset()
#: What a pushprox proxy tells clients it speaks, on every poll answer.
EXTENSIONS = wire.encode_extensions([wire.POLL_TIMEOUT_EXTENSION, wire.PUSH_POLL_EXTENSION])


#: A request, twisted.web's or a lean one (what the functions below need of either).
AnyRequest = Request | LeanRequest


@dataclass(frozen=True)
class ProxyParts:
    """What every resource of the proxy works with."""

    coordinator: ICoordinator
    config: ProxyConfig
    metrics: ProxyMetrics
    clock: IReactorTime
    #: Headers of every answer of the proxy's own endpoints (``--web.config.file``'s),
    #: replaced in place when the file is re-read.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def certificate_names(request: AnyRequest) -> list[str] | None:
    """The DNS names of the verified client certificate, or None without one."""
    if getattr(request.transport, "getPeerCertificate", None) is None:
        return None
    # Imported here: a proxy without TLS never loads pushprox.shared.tls
    # (pushprox.shared.footprint).
    from pushprox.shared.tls import peer_names

    return peer_names(request.transport) or None


def _header_lines(request: AnyRequest) -> list[tuple[bytes, bytes]]:
    """A request's headers, one (name, value) pair per header line."""
    if isinstance(request, LeanRequest):
        return request.headers
    return [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values]


def _peer(request: AnyRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host else str(address)


class BoundedBody:
    """A request body kept in ``request.content`` up to a limit, refused past it."""

    def __init__(self, request: AnyRequest, limit: int, declared_length: int | None) -> None:
        self._request = request
        self._limit = limit
        self._received = 0
        #: Why the body is refused (413), decided while it arrives.
        self.refusal: Denied | None = None
        if declared_length is not None and declared_length > limit:
            self._refuse(declared_length)

    def _refuse(self, size: int) -> None:
        self.refusal = Denied(
            413, f"request body of {size} bytes exceeds the limit of {self._limit} bytes"
        )

    def feed(self, data: bytes) -> None:
        """Keep ``data`` unless the body has grown past the limit."""
        if self.refusal is not None:
            return
        self._received += len(data)
        content = self._request.content
        assert content is not None
        if self._received > self._limit:
            self._refuse(self._received)
            content.seek(0)
            content.truncate()
            return
        content.write(data)

    def connection_lost(self) -> None:
        """Nothing is waiting on the body."""


class _ProxyRequest:
    """What every request of the proxy offers its resources, twisted.web's or lean."""

    log = Logger()
    uri: bytes
    body_sink: BodySink | None

    #: What ``when_ended`` was given, in order; None once called (or while empty).
    _ended_callbacks: list[Callable[[Failure | None], object]] | None = None

    def when_ended(self, callback: Callable[[Failure | None], object]) -> None:
        """
        Call ``callback(None)`` once this request is finished, or ``callback(reason)``
        if its peer goes first.

        What ``notifyFinish()`` tells, without a Deferred each time: the proxy's own
        resources ask it of every request, three times a scrape.
        """
        if self._ended_callbacks is None:
            self._ended_callbacks = [callback]
        else:
            self._ended_callbacks.append(callback)

    def _ended(self, reason: Failure | None) -> None:
        callbacks, self._ended_callbacks = self._ended_callbacks, None
        if callbacks is not None:
            for callback in callbacks:
                try:
                    callback(reason)
                except Exception:
                    # As a Deferred would: the request's channel must not see it.
                    self.log.failure("A callback of the end of {uri!r} failed",
                                     uri=self.uri[:200])

    def _sink(self, site: PushProxSite, method: bytes, path: bytes,
              length: int | None) -> BodySink | None:
        """A push for ``POST /push``, a size-bounded body for anything else with a body."""
        request = cast("ProxyRequest", self)
        if method == b"POST" and is_push_path(path):
            return site.start_push(request, length)
        if length == 0:
            return None  # no body (a scrape's GET): nothing to bound
        return BoundedBody(request, site.config.max_request_size, length)

    def _count_broken_push(self, site: PushProxSite | None) -> None:
        """Count a push whose connection ended in the middle of its relay."""
        push = self.push
        if push is not None and push.broken_off and site is not None:
            site.metrics.pushes_broken.inc()

    @property
    def push(self) -> Push | None:
        """The push this request carries, if it is one."""
        return self.body_sink if isinstance(self.body_sink, Push) else None

    @property
    def body_refusal(self) -> Denied | None:
        """Why this request's body was refused, if it was."""
        sink = self.body_sink
        return sink.refusal if isinstance(sink, BoundedBody) else None


class PushProxRequest(_ProxyRequest, StreamingRequest):
    """A request twisted.web serves: its body kept under a limit (or relayed, a push)."""

    def finish(self) -> None:
        """Finish the response, then tell whoever asked ``when_ended``."""
        super().finish()
        self._ended(None)

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """A push for ``POST /push``, a size-bounded body for anything else with a body."""
        return self._sink(cast(PushProxChannel, self.channel).site, method, path, length)

    def connectionLost(self, reason: Failure) -> None:
        """Tell whoever asked ``when_ended``; count a push broken off."""
        channel = cast("PushProxChannel | None", self.channel)
        super().connectionLost(reason)
        self._ended(reason)
        self._count_broken_push(channel.site if channel is not None else None)


class HotRequest(_ProxyRequest, LeanRequest):
    """
    One of the three requests of a scrape (Prometheus' proxied GET, ``POST /poll``,
    ``POST /push``), served without twisted.web (``pushprox.proxy.lean``).
    """

    site: PushProxSite

    def finish(self) -> None:
        """Finish the response, then tell whoever asked ``when_ended``."""
        super().finish()
        self._ended(None)

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """A push for ``POST /push``, a size-bounded body for anything else with a body."""
        return self._sink(self.site, method, path, length)

    def requestReceived(self, method: bytes, uri: bytes, version: bytes) -> None:
        """The whole request has arrived: admitted as twisted.web's are, then answered."""
        self.site.admit(self)
        super().requestReceived(method, uri, version)

    def connectionLost(self, reason: Failure) -> None:
        """Tell whoever asked ``when_ended``; count a push broken off."""
        super().connectionLost(reason)
        self._ended(reason)
        self._count_broken_push(self.site)


#: A request of the proxy, as its resources see it.
ProxyRequest = PushProxRequest | HotRequest


class ScrapeResource(Resource):
    """Hands a proxied scrape from Prometheus to the client of its target's FQDN."""

    isLeaf = True
    log = Logger()

    def __init__(self, parts: ProxyParts, scraper_auth: ScraperAuth | None = None,
                 peer_auth: PeerAuth | None = None) -> None:
        super().__init__()
        self._coordinator = parts.coordinator
        self._config = parts.config
        self._metrics = parts.metrics
        self._clock = parts.clock
        self._scraper_auth = scraper_auth
        self._peer_auth = peer_auth

    def render(self, request: AnyRequest) -> bytes | int:
        """Validate the proxy request and wait for the client's answer."""
        started = self._clock.seconds()
        try:
            from_peer = self._authorize(request)
            fqdn, timeout = self._read_target(request)
        except Denied as denied:
            return denied_response(request, denied)
        # Only a peer may say that a scrape was forwarded already.
        dropped = _NONE if from_peer else wire.PEER_HEADERS
        headers = [(name, value) for name, value in _header_lines(request)
                   if name.lower() not in dropped]
        deadline = timeout - min(SCRAPER_MARGIN, timeout / 10)
        answer = self._coordinator.scrape(fqdn, request.method, request.uri, headers, deadline)
        scrape = _ProxiedScrape(cast(ProxyRequest, request), fqdn, started, answer)
        # One notification per scrape, for the answer's wait and for its relay alike.
        scrape.request.when_ended(scrape.ended)
        answer.addCallbacks(self._deliver, self._failed, (scrape,), {}, (scrape,))
        return NOT_DONE_YET

    def _authorize(self, request: AnyRequest) -> bool:
        """Whether a peer replica forwarded this scrape; raise Denied unless it may go on."""
        try:
            if self._peer_auth is not None and self._peer_auth.is_peer(
                request.getHeader(wire.PEER_TOKEN_HEADER)
            ):
                return True
            if self._scraper_auth is None:
                return False
            self._scraper_auth.check(
                peer_host(request), request.getHeader(b"proxy-authorization"), proxy=True
            )
            return False
        except Denied as denied:
            self.log.info("Refused scrape of {uri!r} from {peer}: {status} {reason}",
                          uri=request.uri[:200], peer=_peer(request), status=denied.code,
                          reason=denied.message)
            self._metrics.count_scrape(denied.code, "unauthorized")
            raise

    def _read_target(self, request: AnyRequest) -> tuple[str, float]:
        """The FQDN and timeout of a proxy request; raises Denied for a bad one."""
        if request.method not in (b"GET", b"HEAD"):
            raise self._bad(request, 405, f"method {request.method!r} is not proxied")
        fqdn = wire.url_fqdn(request.uri)
        if fqdn is None:
            raise self._bad(request, 400, f"no valid host name in {request.uri[:100]!r}")
        raw = request.getHeader(wire.TIMEOUT_HEADER)
        if raw is None:
            timeout: float | None = self._config.scrape_default_timeout
        else:
            timeout = wire.parse_timeout(raw)
        if timeout is None:
            raise self._bad(
                request, 400, "X-Prometheus-Scrape-Timeout-Seconds is not a positive number"
            )
        return fqdn, min(timeout, self._config.scrape_max_timeout)

    def _bad(self, request: AnyRequest, code: int, message: str) -> Denied:
        self.log.info("Refused proxy request {uri!r} from {peer}: {status} {reason}",
                      uri=request.uri[:200], peer=_peer(request), status=code, reason=message)
        self._metrics.count_scrape(code, "bad_request")
        return Denied(code, message)

    def _deliver(self, answer: IScrapeAnswer, scrape: _ProxiedScrape) -> None:
        request = scrape.request
        if not request.alive:
            self._done(scrape, 499, "cancelled", SCRAPER_GONE)
            return
        scrape.delivered = answer
        answer.deliver(request)
        code = answer.status
        failure: str | None = answer.failure
        outcome = "success" if failure is None else "timeout" if code == 504 else "client_error"
        self._done(scrape, code, outcome, failure)
        if self._config.log_scrapes:
            self.log.info("Scrape of {url} via {fqdn}: {status}",
                          url=scrape.url, fqdn=scrape.fqdn, status=code)
        if failure is not None:
            self.log.warn("Scrape of {url} via {fqdn} failed: {reason}",
                          url=scrape.url, fqdn=scrape.fqdn, reason=failure)

    def _failed(self, reason: Failure, scrape: _ProxiedScrape) -> None:
        error = reason.value
        if isinstance(error, CancelledError):
            self._done(scrape, 499, "cancelled", SCRAPER_GONE)
            return
        if isinstance(error, CoordinatorError):
            code, outcome, message = error.status, error.outcome, str(error)
            if isinstance(error, QueueFull):
                self._metrics.limit_exceeded.labels("scrapes_queued_per_client").inc()
        else:
            self.log.failure("Scrape via {fqdn} failed unexpectedly", reason, fqdn=scrape.fqdn)
            code, outcome, message = 500, "error", "internal error"
        self._done(scrape, code, outcome, message)
        if code != 404 or self._config.log_scrapes:
            self.log.info("Scrape of {url} via {fqdn}: {status} {reason}",
                          url=scrape.url, fqdn=scrape.fqdn, status=code, reason=message)
        finish_with(scrape.request, code, message)

    def _done(self, scrape: _ProxiedScrape, code: int, outcome: str,
              error: str | None) -> None:
        """Count a scrape's end, and remember it as its client's last (status page)."""
        self._metrics.count_scrape(code, outcome)
        seconds = self._clock.seconds() - scrape.started
        if outcome != "cancelled":  # the histogram counts answered scrapes only
            self._metrics.scrape_duration.observe(seconds)
        self._coordinator.record_scrape(scrape.fqdn, code, seconds, error)


class _ProxiedScrape:
    """Prometheus' side of one scrape: its request, what it is for, when it began."""

    __slots__ = ("answer", "delivered", "fqdn", "request", "started")

    def __init__(self, request: ProxyRequest, fqdn: str, started: float,
                 answer: Deferred[IScrapeAnswer]) -> None:
        self.request = request
        self.fqdn = fqdn
        self.started = started
        #: Fires with the client's answer (cancelled if Prometheus hangs up first).
        self.answer = answer
        #: The answer being relayed to Prometheus, once it is.
        self.delivered: IScrapeAnswer | None = None

    def ended(self, reason: Failure | None) -> None:
        """If Prometheus hung up (``reason``): stop waiting for the answer, or relaying it."""
        if reason is not None:
            self.answer.cancel()
            if self.delivered is not None:
                self.delivered.abort()

    @property
    def url(self) -> str:
        """The scraped URL, for log lines."""
        return self.request.uri.decode("latin-1")


class _Instrumented(Resource):
    """A leaf of the proxy's own endpoints, counted under its path."""

    isLeaf = True
    log = Logger()

    def __init__(self, parts: ProxyParts, path: str) -> None:
        super().__init__()
        #: The label its requests are counted under (the endpoint's path, or ``other``).
        self.path = path
        self._coordinator = parts.coordinator
        self._config = parts.config
        self._metrics = parts.metrics
        self._clock = parts.clock
        self._headers = parts.headers

    def render(self, request: AnyRequest) -> bytes | int:
        """
        As ``Resource.render``; but a method this endpoint does not serve is answered 405
        in one line naming those it does (twisted.web would answer an HTML page, and 501
        for a method it has never heard of).
        """
        try:
            return cast("bytes | int", super().render(request))
        except UnsupportedMethod as unsupported:
            # twisted.web lists HEAD everywhere; it is served where GET is.
            served: list[bytes] = list(unsupported.allowedMethods)
            self.instrument(request)
            return not_allowed_response(request, self.path, [
                method for method in served
                if method != b"HEAD" or hasattr(self, "render_GET")])

    def refuse(self, request: AnyRequest, denied: Denied, fqdn: str | None = None) -> bytes:
        """Log why a request to this endpoint is refused, and answer it so."""
        what = self.path.lstrip("/") + (f" for {fqdn}" if fqdn else "")
        self.log.info("Refused {what} from {peer}: {status} {reason}", what=what,
                      peer=_peer(request), status=denied.code, reason=denied.message)
        return denied_response(request, denied)

    def instrument(self, request: AnyRequest) -> _Counted:
        """Count this request by code and path once it ends."""
        counted = _Counted(self, request)
        request.setHeader(b"server", SERVER)
        for name, value in self._headers:
            request.setHeader(name, value)
        cast(ProxyRequest, request).when_ended(counted.ended)
        return counted


class _Counted:
    """
    A request to one of the proxy's own endpoints, counted once it ends; what else
    must happen if its peer hangs up first rides on the same notification.
    """

    __slots__ = ("gone", "request", "resource", "started")

    def __init__(self, resource: _Instrumented, request: AnyRequest) -> None:
        self.resource = resource
        self.request = request
        self.started = resource._clock.seconds()
        #: Called if the peer hangs up before the request is finished.
        self.gone: Callable[[], object] | None = None

    def ended(self, reason: Failure | None) -> None:
        """The request was finished, or its peer hung up (``reason``)."""
        resource = self.resource
        resource._metrics.count_request(self.request.code, resource.path,
                                        resource._clock.seconds() - self.started)
        if self.gone is not None and reason is not None:
            self.gone()


class PollResource(_Instrumented):
    """``POST /poll``: a client waits here until a scrape for its FQDN comes."""

    log = Logger()

    def __init__(self, parts: ProxyParts, path: str, client_auth: ClientAuth | None) -> None:
        super().__init__(parts, path)
        self._client_auth = client_auth

    def render_POST(self, request: AnyRequest) -> bytes | int:
        """Register the client and hold the request until a scrape or timeout."""
        counted = self.instrument(request)
        try:
            fqdn = self._read_fqdn(cast(ProxyRequest, request))
        except Denied as denied:
            return self.refuse(request, denied)
        try:
            timeout = self._read_timeout(request)
            principal = self._authenticate(request, fqdn)
            labels = self._read_labels(request)
        except Denied as denied:
            return self.refuse(request, denied, fqdn)
        deferred = self._coordinator.poll(fqdn, principal, timeout, labels)
        counted.gone = deferred.cancel
        deferred.addCallbacks(self._answer, self._failed, (request,), {}, (request, fqdn))
        return NOT_DONE_YET

    def _read_fqdn(self, request: ProxyRequest) -> str:
        refusal = request.body_refusal
        if refusal is not None:
            self._metrics.limit_exceeded.labels("request_size").inc()
            raise refusal
        raw = request.content.read() if request.content is not None else b""
        fqdn = wire.normalize_fqdn(raw)
        if fqdn is None:
            raise Denied(400, f"poll body is not an FQDN: {raw[:100]!r}")
        return fqdn

    def _read_timeout(self, request: AnyRequest) -> float | None:
        """How long to hold an idle poll: None (until a scrape) unless the client asks."""
        raw = request.getHeader(wire.POLL_TIMEOUT_HEADER)
        if raw is None:
            return None
        seconds = wire.parse_seconds(raw)
        if seconds is None:
            raise Denied(400, f"{wire.POLL_TIMEOUT_HEADER.decode()} is not a number")
        return min(max(seconds, 0.0), self._config.poll_max_timeout)

    def _authenticate(self, request: AnyRequest, fqdn: str) -> str | None:
        if self._client_auth is None:
            return None
        return self._client_auth.poll_principal(
            fqdn, request.getHeader(b"authorization"), certificate_names(request)
        )

    def _read_labels(self, request: AnyRequest) -> dict[str, str] | None:
        raw = request.getHeader(wire.LABELS_HEADER)
        if raw is None:
            return None
        try:
            return wire.decode_labels(raw)
        except wire.WireError as error:
            raise Denied(400, f"X-PushProx-Labels: {error}") from None

    def _answer(self, scrape: Scrape | None, request: AnyRequest) -> None:
        # Set when answering, not while the poll is held: 10,000 idle polls would
        # each keep a copy in their response headers.
        request.setHeader(wire.EXTENSIONS_HEADER, EXTENSIONS)
        if scrape is None:
            request.setResponseCode(204)
            if self._coordinator.draining:
                # The next poll should reach another proxy: a new connection does. (Once
                # finished, the request has no channel left to close.)
                close_after(request)
                request.finish()
                return
            request.finish()
            return
        if not cast(ProxyRequest, request).alive:
            self._coordinator.requeue(scrape)
            return
        request.write(scrape_answer(request, scrape.payload(self._clock.seconds())))
        request.finish()

    def _failed(self, reason: Failure, request: AnyRequest, fqdn: str) -> None:
        error = reason.value
        if isinstance(error, CancelledError):
            return
        if isinstance(error, CoordinatorError):
            code, message = error.status, str(error)
            if isinstance(error, TooManyPolls):
                self._metrics.limit_exceeded.labels("polls_per_client").inc()
            elif isinstance(error, TooManyClients):
                self._metrics.limit_exceeded.labels("clients").inc()
        else:
            self.log.failure("Poll of {fqdn} failed unexpectedly", reason, fqdn=fqdn)
            code, message = 500, "internal error"
        if code != 503:
            self.log.info("Poll of {fqdn}: {status} {reason}", fqdn=fqdn, status=code,
                          reason=message)
        finish_with(cast(ProxyRequest, request), code, message)


class PushResource(_Instrumented):
    """
    ``POST /push``: answers the push once its body has been relayed.

    When our client asks for it (``X-PushProx-Push-Poll``), the answer carries the
    next scrape already queued for that client, saving it a poll round trip under
    load; otherwise (and always for upstream clients) it is empty.
    """

    log = Logger()

    def render_POST(self, request: AnyRequest) -> bytes | int:
        """Report how the relay of this push ended."""
        counted = self.instrument(request)
        push = cast(ProxyRequest, request).push
        if push is None:  # pragma: no cover - PushProxRequest always makes one
            return text_response(request, 500, "push was not streamed")
        if push.settled is not None and not push.settled.called:
            # Cluster mode: where the push goes is still being asked of Redis.
            push.settled.addCallback(lambda _: self._answer_later(request, push, counted))
            return NOT_DONE_YET
        return self._answer(request, push, counted)

    def _answer_later(self, request: AnyRequest, push: Push, counted: _Counted) -> None:
        body = self._answer(request, push, counted)
        if isinstance(body, bytes) and cast(ProxyRequest, request).alive:
            request.write(body)
            request.finish()

    def _answer(self, request: AnyRequest, push: Push, counted: _Counted) -> bytes | int:
        """The push's answer: its refusal, the owner's answer, or 200 (and push-poll)."""
        refusal = push.end()
        if push.forwarded is not None:
            push.forwarded.reply.addCallbacks(
                self._relay_reply, self._owner_unreachable, (request,), {}, (request,))
            return NOT_DONE_YET
        if refusal is not None:
            if refusal.code == 413:
                self._metrics.limit_exceeded.labels("push_size").inc()
            return self.refuse(request, refusal)
        if push.fqdn is not None and push.push_poll:
            scrape = self._coordinator.take_queued(push.fqdn, push.principal)
            if scrape is not None:
                request.setHeader(wire.NEXT_SCRAPE_HEADER, b"1")
                counted.gone = lambda: self._coordinator.requeue(scrape)
                return scrape_answer(request, scrape.payload(self._clock.seconds()))
        request.setHeader(b"content-length", b"0")
        return b""

    def _relay_reply(self, reply: PushReply, request: AnyRequest) -> None:
        """The owner's answer to a forwarded push, as the owner gave it."""
        if not cast(ProxyRequest, request).alive:
            return
        request.setResponseCode(reply.status)
        for name, value in wire.without(reply.headers, wire.HOP_BY_HOP | {b"content-length"}):
            request.responseHeaders.setRawHeaders(name, [value])
        request.setHeader(b"content-length", b"%d" % len(reply.body))
        request.write(reply.body)
        request.finish()

    def _owner_unreachable(self, reason: Failure, request: AnyRequest) -> None:
        self.log.warn("Forwarding a push failed: {reason}", reason=reason.getErrorMessage())
        finish_with(cast(ProxyRequest, request), 502,
                    f"the proxy that owns this scrape could not be reached: "
                    f"{reason.getErrorMessage()}")


class _Guarded(_Instrumented):
    """A ``GET`` endpoint behind the scrapers' checks (``--scrape-auth``, networks)."""

    def __init__(self, parts: ProxyParts, path: str, auth: ScraperAuth | None = None) -> None:
        super().__init__(parts, path)
        self._auth = auth

    def render_GET(self, request: AnyRequest) -> bytes | int:
        """The endpoint's answer, or the refusal."""
        self.instrument(request)
        refused = refusal(request, self._auth)
        return refused if refused is not None else self.answer(request)

    def answer(self, request: AnyRequest) -> bytes | int:
        """What an allowed request gets (override)."""
        raise NotImplementedError


#: The meta label (dropped by Prometheus after relabelling) of a silent client.
SILENT_SINCE_LABEL = "__meta_pushprox_silent_since"


def discovery_labels(client: ClientInfo) -> dict[str, str]:
    """
    The labels ``/clients`` lists a client with: its own, and for a silent one the
    time (RFC 3339, UTC) of its last poll, as a meta label that relabelling can use.
    """
    labels = dict(client.labels)
    if client.silent_since is not None:
        stamp = datetime.datetime.fromtimestamp(client.silent_since, datetime.timezone.utc)
        labels[SILENT_SINCE_LABEL] = stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
    return labels


class ClientsResource(_Guarded):
    """``GET /clients``: the registered clients as Prometheus http_sd/file_sd JSON."""

    def answer(self, request: AnyRequest) -> bytes | int:
        """List every registered client as one target group."""
        listed = maybeDeferred(self._coordinator.clients)
        listed.addCallbacks(self._write, self._failed, (request,), {}, (request,))
        return NOT_DONE_YET

    def _write(self, clients: list[ClientInfo], request: AnyRequest) -> None:
        groups = [{"targets": [client.fqdn], "labels": discovery_labels(client)}
                  for client in clients]
        body = json.dumps(groups).encode("utf-8")
        if cast(ProxyRequest, request).alive:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    def _failed(self, reason: Failure, request: AnyRequest) -> None:
        if reason.check(CoordinatorError):
            message = str(reason.value)
            self.log.warn("/clients: {message}", message=message)
        else:
            message = "the clients could not be listed"
            self.log.failure("Listing the clients failed", reason)
        finish_with(cast(ProxyRequest, request), 503, message)


class StatusPageResource(_Guarded):
    """``GET /``: the status page, for people (``pushprox.proxy.status``)."""

    log = Logger()

    def __init__(self, parts: ProxyParts, path: str, auth: ScraperAuth | None,
                 started: float) -> None:
        super().__init__(parts, path, auth)
        self._started = started
        self._version = package_version()

    def answer(self, request: AnyRequest) -> int:
        """Ask the coordinator for its clients (a shared one may take a moment)."""
        listed = maybeDeferred(self._coordinator.client_statuses)
        listed.addCallbacks(self._write, self._failed, (request,), {}, (request,))
        return NOT_DONE_YET

    def body(self, request: AnyRequest, snapshot: status.ProxyStatus) -> bytes:
        """Render the page; nothing on it may load or run anything."""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", status.CONTENT_SECURITY_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return status.render_page(snapshot)

    def _write(self, clients: list[ClientStatus], request: AnyRequest) -> None:
        if not cast(ProxyRequest, request).alive:
            return
        snapshot = status.proxy_status(
            self._coordinator, self._metrics, clients=clients, started=self._started,
            now=self._clock.seconds(), version=self._version)
        body = self.body(request, snapshot)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _failed(self, reason: Failure, request: AnyRequest) -> None:
        self.log.failure("Listing the clients for {path} failed", reason, path=self.path)
        finish_with(cast(ProxyRequest, request), 503, "the clients could not be listed")


class ClientsApiResource(StatusPageResource):
    """``GET /api/v1/clients``: what the status page shows, as JSON for tools."""

    def body(self, request: AnyRequest, snapshot: status.ProxyStatus) -> bytes:
        """Render the JSON view."""
        request.setHeader(b"content-type", b"application/json")
        return status.render_json(snapshot)


class StatusResource(_Instrumented):
    """``/-/healthy`` and ``/-/ready``: a fixed text while the proxy serves."""

    def __init__(self, parts: ProxyParts, path: str, message: str) -> None:
        super().__init__(parts, path)
        self._message = message

    def render_GET(self, request: AnyRequest) -> bytes:
        """Say that the proxy is up."""
        self.instrument(request)
        return text_response(request, 200, self._message)


class InstrumentedMetricsResource(_Instrumented):
    """``/metrics`` counted like the other endpoints, behind the scrapers' checks."""

    def __init__(self, parts: ProxyParts, path: str, auth: ScraperAuth | None = None) -> None:
        super().__init__(parts, path)
        self._auth = auth

    def render_GET(self, request: AnyRequest) -> bytes:
        """The proxy's metrics, or the refusal (decided where the client's are)."""
        self.instrument(request)
        return metrics_answer(request, self._metrics.registry, self._auth)


class NotFound(_Instrumented):
    """Anything else: 404 with a hint naming what this port serves."""

    def __init__(self, parts: ProxyParts, paths: list[str]) -> None:
        super().__init__(parts, OTHER_LABEL)
        self._message = ("not found: this is a PushProx proxy (use it as proxy_url; "
                         f"endpoints {' '.join(paths)})")

    def render(self, request: AnyRequest) -> bytes:
        """Say what this port serves."""
        self.instrument(request)
        return text_response(request, 404, self._message)


class Guard(enum.Enum):
    """Who may use an endpoint, checked by its resource."""

    #: Clients (``--client-auth``: tokens or certificate names).
    CLIENTS = "clients"
    #: Scrapers and people (``--scrape-auth``, ``--scrape-networks``).
    SCRAPERS = "scrapers"
    #: Anyone (health checks).
    ANYONE = "anyone"


@dataclass(frozen=True)
class _Assembly:
    """What the resources of the endpoints are made with."""

    parts: ProxyParts
    client_auth: ClientAuth | None
    scraper_auth: ScraperAuth | None
    #: When the proxy started (the status page says so).
    started: float

    def scrapers(self, endpoint: Endpoint) -> ScraperAuth | None:
        """The scrapers' checks, for an endpoint guarded by them."""
        return self.scraper_auth if endpoint.guard is Guard.SCRAPERS else None


@dataclass(frozen=True)
class Endpoint:
    """
    One endpoint reached by path: everything the site routes, counts and lists by.

    ``ENDPOINTS`` is the one place an endpoint is declared: the resource tree, the
    routing of the hot endpoints and the 404 text are made from it.
    """

    #: The path, and the ``path`` label its requests are counted under.
    path: str
    guard: Guard
    #: Makes its resource.
    make: Callable[[Endpoint, _Assembly], Resource]
    #: Routed at once by its first path segment (on the path of every scrape), with any
    #: path below it, without walking the resource tree; otherwise found in the tree.
    hot: bool = False
    #: The ``PushProxSite`` argument that switches it off, if one does.
    switch: str | None = None
    #: Its request body is handed to a ``Push`` while it arrives (hot endpoints only).
    streams: bool = False

    @property
    def segments(self) -> list[bytes]:
        """The path's segments, as twisted.web's tree walks them."""
        return self.path.encode("ascii")[1:].split(b"/")


#: The ``path`` label of requests to no endpoint.
OTHER_LABEL = "other"

#: The endpoints reached by path, in the order the 404 text lists them.  (A request
#: in proxy form, ``GET http://target/...``, is a scrape, whatever its path.)
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/", Guard.SCRAPERS, switch="clients_endpoint",
             make=lambda e, a: StatusPageResource(a.parts, e.path, a.scrapers(e), a.started)),
    Endpoint("/poll", Guard.CLIENTS, hot=True,
             make=lambda e, a: PollResource(a.parts, e.path, a.client_auth)),
    Endpoint("/push", Guard.CLIENTS, hot=True, streams=True,
             make=lambda e, a: PushResource(a.parts, e.path)),
    Endpoint("/clients", Guard.SCRAPERS, switch="clients_endpoint",
             make=lambda e, a: ClientsResource(a.parts, e.path, a.scrapers(e))),
    Endpoint("/api/v1/clients", Guard.SCRAPERS, switch="clients_endpoint",
             make=lambda e, a: ClientsApiResource(a.parts, e.path, a.scrapers(e), a.started)),
    Endpoint("/metrics", Guard.SCRAPERS, switch="metrics_endpoint",
             make=lambda e, a: InstrumentedMetricsResource(a.parts, e.path, a.scrapers(e))),
    Endpoint("/-/healthy", Guard.ANYONE,
             make=lambda e, a: StatusResource(a.parts, e.path, "Healthy")),
    Endpoint("/-/ready", Guard.ANYONE,
             make=lambda e, a: StatusResource(a.parts, e.path, "Ready")),
)

#: The hot endpoints by the one segment of their path.
_HOT = {endpoint.segments[0]: endpoint for endpoint in ENDPOINTS if endpoint.hot}


def hot_segment(path: bytes) -> bytes:
    """The segment a hot endpoint of ``path`` would be known by: its first one (a hot
    endpoint's path is one segment, never empty)."""
    return path[1:].partition(b"/")[0] if path[:1] == b"/" else b""


def hot_endpoint(path: bytes) -> Endpoint | None:
    """The hot endpoint that serves ``path`` (its own or one below it), if one does."""
    return _HOT.get(hot_segment(path))


def is_push_path(path: bytes) -> bool:
    """Whether ``path`` is served by the endpoint whose body streams to a ``Push``."""
    endpoint = hot_endpoint(path)
    return endpoint is not None and endpoint.streams


class ConnectRefused(Resource):
    """``CONNECT``: PushProx relays plain requests only."""

    isLeaf = True

    def render(self, request: AnyRequest) -> bytes:
        """Explain how to scrape HTTPS targets instead."""
        return text_response(
            request, 405, "CONNECT is not supported: scrape HTTPS targets with "
            "params: {_scheme: [https]} and an http:// proxy_url"
        )


#: The first byte of a TLS connection (a handshake record); no HTTP request starts so.
TLS_HANDSHAKE_RECORD = b"\x16"


class PushProxChannel(LlhttpChannel):
    """
    An HTTP channel whose header limit is the site's ``--max-header-size``, watched by
    TCP keepalive with the configured timing.

    Headers past it get a 431 naming the limit, and are counted; Twisted's own
    answer would be a bare 400, and a single line past 16 KiB would only be cut off.
    A client that starts a TLS handshake on this plain port is answered at once.
    """

    site: PushProxSite
    log = Logger()

    #: No byte has arrived yet (the first read is looked at for a TLS handshake).
    _first_read = True

    def connectionMade(self) -> None:
        """Watch the connection with TCP keepalive (a client's link may die silently)."""
        super().connectionMade()
        enable_keepalive(self.transport, self.site.config)

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data``; the first read of a TLS handshake is answered instead."""
        if self._first_read:
            self._first_read = False
            if data[:1] == TLS_HANDSHAKE_RECORD:
                # A client speaking TLS to this plain-HTTP port would otherwise wait for
                # a request line that never comes; a plain answer makes its handshake
                # fail now.
                self.log.info("Refused a TLS handshake on a plain-HTTP port from {peer}",
                              peer=str(self.getPeer()))
                self._answer_and_close(
                    400, b"Bad Request",
                    b"this port speaks plain HTTP, not TLS: use http:// in --proxy-url\n")
                return
        super().dataReceived(data)

    def lean_request(self, method: bytes, url: bytes, version: bytes,
                     headers: list[tuple[bytes, bytes]]) -> LeanRequest | None:
        """A ``HotRequest`` for the three requests of a scrape, None for the others."""
        resource = self.site.hot_resource(method, url)
        if resource is None:
            return None
        request = HotRequest(self, resource, method, url, version, headers)
        request.site = self.site
        return request

    def headers_too_large(self) -> None:
        """Answer 431 with the limit, and close."""
        self.site.metrics.limit_exceeded.labels("header_size").inc()
        body = b"request headers exceed the limit of %d bytes\n" % self.totalHeadersSize
        self._answer_and_close(431, b"Request Header Fields Too Large", body)

    def _answer_and_close(self, code: int, phrase: bytes, body: bytes) -> None:
        self.write(
            b"HTTP/1.1 %d %s\r\nServer: pushprox\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        self.loseConnection()


class _Directory(Resource):
    """A resource tree node whose unknown children are a helpful 404."""

    def __init__(self, not_found: Resource) -> None:
        super().__init__()
        self._not_found = not_found

    def getChild(self, path: bytes, request: AnyRequest) -> Resource:
        """Any child not put here."""
        return self._not_found

    def render(self, request: AnyRequest) -> bytes | int:
        """The node itself (``/api``, ``/-``) is not an endpoint either."""
        return cast(bytes, self._not_found.render(request))


class ConnectionRefusals:
    """
    Connections the proxy's ports could not take for lack of file descriptors: counted,
    logged once when refusing starts and once when connections are accepted again.

    Twisted's ports close such a connection at once (the peer sees a reset and, if it is
    a client, retries with backoff) and log a line of their own, without a traceback;
    ``twisted_internals.AcceptFailureObserver`` passes those reports here.
    """

    log = Logger()

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics
        #: Connections refused or left waiting since the last one accepted.
        self.refusing = 0

    def refused(self, peer: str) -> None:
        """A new connection from ``peer`` was closed at once."""
        self._metrics.connections_refused.inc()
        self._starts_refusing(f"closing new connections at once (the first from {peer})")

    def accept_failed(self, error: str) -> None:
        """``accept()`` failed with ``error``; the connection waits in the backlog."""
        self._metrics.accept_errors.labels(error).inc()
        self._starts_refusing(f"accept() fails with {error}, new connections wait")

    def _starts_refusing(self, what: str) -> None:
        if not self.refusing:
            self.log.warn(
                "Out of file descriptors: {what}; connections already open are served "
                "(raise ulimit -n, or lower --max-clients)",
                what=what, reason="out of file descriptors")
        self.refusing += 1

    def accepted(self) -> None:
        """A new connection was accepted: say so if some were refused before it."""
        if self.refusing:
            self.log.info(
                "Accepting new connections again after {count} refused or delayed for "
                "lack of file descriptors", count=self.refusing)
            self.refusing = 0


def _tree(resources: dict[str, Resource], not_found: Resource) -> Resource:
    """The resource tree of ``resources`` by path; any other path finds ``not_found``."""
    root = _Directory(not_found)
    for path, resource in resources.items():
        *directories, leaf = path.encode("ascii")[1:].split(b"/")
        node: Resource = root
        for name in directories:
            child = node.children.get(name)
            if child is None:
                child = _Directory(not_found)
                node.putChild(name, child)
            node = child
        node.putChild(leaf, resource)
    return root


class PushProxSite(Site):
    """The proxy's one site: scrapes by absolute URI, pushes by path, the rest as a tree."""

    requestFactory = PushProxRequest
    protocol = PushProxChannel  # type: ignore[assignment]

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
        peer_auth: PeerAuth | None = None,
        push_forwarder: PushForwarder | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.config = config or ProxyConfig()
        self.protocol = PushProxChannel.with_header_limit(self.config.max_header_size)
        self.metrics = metrics or ProxyMetrics()
        self.coordinator = coordinator
        #: Connections refused for lack of file descriptors (told by the ports' logs).
        self.refusals = ConnectionRefusals(self.metrics)
        self.client_auth = client_auth if client_auth is not None and client_auth.enabled else None
        scraper_auth = scraper_auth if scraper_auth is not None and scraper_auth.enabled else None
        self.metrics.watch(
            clients=coordinator.client_count,
            polls_waiting=coordinator.waiting_poll_count,
            scrapes_queued=coordinator.queued_scrape_count,
            scrapes_in_flight=coordinator.scrapes_in_flight,
            clients_silent=coordinator.silent_client_count,
        )
        #: Headers of the proxy's own answers; change the list in place to change them.
        self.headers: list[tuple[bytes, bytes]] = headers if headers is not None else []
        parts = ProxyParts(coordinator, self.config, self.metrics, clock, self.headers)
        self.peer_auth = peer_auth
        self._quiet = Waiters()
        self.push_forwarder = push_forwarder
        self._scrape = ScrapeResource(parts, scraper_auth, peer_auth)
        self._connect = ConnectRefused()
        switched_on = {"clients_endpoint": clients_endpoint, "metrics_endpoint": metrics_endpoint}
        served = [endpoint for endpoint in ENDPOINTS
                  if endpoint.switch is None or switched_on[endpoint.switch]]
        assembly = _Assembly(parts, self.client_auth, scraper_auth, clock.seconds())
        resources = {endpoint.path: endpoint.make(endpoint, assembly) for endpoint in served}
        #: The hot endpoints' resources, by the one segment of their path.
        self._hot: dict[bytes, Resource] = {
            endpoint.segments[0]: resources[endpoint.path] for endpoint in served if endpoint.hot}
        not_found = NotFound(parts, [endpoint.path for endpoint in ENDPOINTS])
        root = _tree(resources, not_found)
        super().__init__(root, reactor=reactor if reactor is not None else clock)
        self.displayTracebacks = False
        self.noisy = False

    def start_push(self, request: AnyRequest, length: int | None) -> Push:
        """The push that ``request`` carries, authenticated before its body arrives."""
        try:
            principal, from_peer = self._push_principal(request)
        except Denied as denied:
            return Push.refused(self.coordinator, self.config, denied)
        # The connection's transport: paused while Prometheus reads slowly.
        transport = cast(IPushProducer, request.transport)
        # A push a peer forwarded is claimed here or refused: never forwarded again.
        return Push(self.coordinator, self.config, principal, length, transport,
                    forwarder=None if from_peer else self.push_forwarder,
                    push_poll=request.getHeader(wire.PUSH_POLL_HEADER) is not None)

    def _push_principal(self, request: AnyRequest) -> tuple[str | None, bool]:
        """
        Who pushes, and whether a peer forwards it: a peer says for whom it forwards;
        a client proves who it is.
        """
        if self.peer_auth is not None and self.peer_auth.is_peer(
            request.getHeader(wire.PEER_TOKEN_HEADER)
        ):
            principal = request.getHeader(wire.PRINCIPAL_HEADER)
            return (principal.decode("utf-8") if principal else None), True
        if self.client_auth is None:
            return None, False
        return self.client_auth.push_principal(
            request.getHeader(b"authorization"), certificate_names(request)
        ), False

    #: Requests being answered now, counted when ``count_requests`` (a replica that
    #: drains waits for them; a single proxy need not pay for counting).
    in_progress = 0
    count_requests = False

    def when_quiet(self) -> Deferred[None]:
        """Fires once no request is being answered (at once if none is)."""
        return self._quiet.wait(ready=not self.in_progress)

    def _request_done(self, result: object) -> None:
        self.in_progress -= 1
        if not self.in_progress:
            self._quiet.fire()

    def buildProtocol(self, addr: Any) -> Any:
        """A channel for a new connection; after refusals, the sign that they are over."""
        if self.refusals.refusing:
            self.refusals.accepted()
        return super().buildProtocol(addr)

    def hot_resource(self, method: bytes, uri: bytes) -> Resource | None:
        """
        The resource of a hot request (a scrape in proxy form, a ``POST`` to a hot
        endpoint), which a ``HotRequest`` is made for; None for twisted.web's.
        """
        if uri[:1] != b"/":
            if uri[:7].lower() == b"http://" or uri[:8].lower() == b"https://":
                return self._scrape
            return None
        if method == b"POST":
            return self._hot.get(hot_segment(uri.partition(b"?")[0]))
        return None

    def admit(self, request: AnyRequest) -> None:
        """A request is about to be answered: count it while a replica drains."""
        if self.count_requests:
            self.in_progress += 1
            request.notifyFinish().addBoth(self._request_done)
            if self.coordinator.draining:
                # Leaving: whoever sent this comes back on a new connection, elsewhere.
                close_after(request)

    def getResourceFor(self, request: AnyRequest) -> IResource:
        """Route absolute-URI requests to the scrape resource, the rest by path."""
        request.site = self
        self.admit(request)
        uri = request.uri
        if uri[:1] != b"/" and (uri[:7].lower() == b"http://"
                                or uri[:8].lower() == b"https://"):
            return self._scrape
        if request.method == b"CONNECT":
            return self._connect
        # A hot endpoint: what the tree would find (a leaf), without walking it.
        hot = self._hot.get(hot_segment(request.path))
        if hot is not None:
            return hot
        return cast(IResource, super().getResourceFor(request))

    def log(self, request: Any) -> None:
        """No access log: scrapes are logged by their resource when asked to."""
