# -*- test-case-name: tests.test_client -*-
"""
The client: poll the proxy, scrape the target it names, push the answer back.

``ClientService`` keeps one long poll open to the proxy.  Each poll answer is a
scrape request; the client checks it against its allow-list, scrapes the target through
its ``TargetLink`` (so that compression and headers pass through untouched), and
streams the target's response into a ``POST /push`` while it arrives.  It polls again
as soon as a request arrives, so scrapes run concurrently.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone, DNSLookupError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
)
from zope.interface import implementer

from pushprox.client.link import ProxyLink
from pushprox.client.outbound_proxy import HttpProxy
from pushprox.client.target_link import TargetLink
from pushprox.shared import wire
from pushprox.shared.config import ClientConfig as ClientConfig
from pushprox.shared.config import KeepAliveConfig
from pushprox.shared.keepalive import enable_keepalive
from pushprox.shared.metrics import ClientMetrics
from pushprox.shared.twisted_internals import write_eagerly

USER_AGENT = b"pushprox-client/0.1.0"
#: A poll still held this many seconds after it was written on a connection was
#: accepted: the client is registered (the proxy answers a refused poll at once).
REGISTERED_AFTER = 1.0
#: Largest poll answer read; a scrape request is a few hundred bytes.
MAX_POLL_ANSWER = 256 * 1024


_CONNECTION_DONE = Failure(ConnectionDone())


class ScrapeRefused(Exception):
    """A scrape request the client will not carry out; ``str()`` says why."""


@dataclass(frozen=True)
class Target:
    """Where a checked scrape request goes: the URL to connect to, the headers to send."""

    url: bytes
    #: The ``Host`` header (as Prometheus meant it) and the other headers.
    host_header: bytes
    header_list: tuple[tuple[bytes, bytes], ...]
    #: ``url``'s parts: where to connect, what to ask for there.
    scheme: bytes = b"http"
    host: bytes = b""
    port: int = 80
    path: bytes = b"/"

    @property
    def headers(self) -> Headers:
        """Every header to send, Host among them."""
        headers = Headers()
        for name, value in self.header_list:
            headers.addRawHeader(name, value)
        headers.setRawHeaders(b"host", [self.host_header])
        return headers


def plan_target(request: wire.ScrapeRequest, config: ClientConfig) -> Target:
    """
    Check a scrape request against the allow-list and work out the target URL.

    Raises ScrapeRefused for another host than our FQDN, a port or path that is
    not allowed (unless ``allow_any``), or a method other than GET.
    """
    url = urlsplit(request.url.decode("latin-1"))
    _check_host(request.url, config)
    if request.method not in (b"GET", b"HEAD"):
        raise ScrapeRefused(f"method {request.method.decode('latin-1')} is not scraped")
    scheme, query = _scheme_and_query(url)
    try:
        port = url.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ScrapeRefused(f"malformed port in {url.netloc}") from None
    path = url.path or "/"
    if not config.allow_any:
        _check_allowed(port, path, config)
    host = config.target_host or url.hostname or ""
    connect_host = f"[{host}]" if ":" in host else host
    target_url = urlunsplit((scheme, f"{connect_host}:{port}", path, query, ""))
    origin_form = f"{path}?{query}" if query else path
    return Target(url=target_url.encode("latin-1"),
                  host_header=wire.url_authority(request.url),
                  header_list=_target_headers(request, config),
                  scheme=scheme.encode("ascii"), host=host.encode("latin-1"), port=port,
                  path=origin_form.encode("latin-1"))


def _check_host(url: bytes, config: ClientConfig) -> None:
    """Only our own FQDN is scraped."""
    host = wire.url_fqdn(url)
    if host is None or host != wire.normalize_fqdn(config.fqdn.encode("ascii", "replace")):
        shown = wire.authority_host(wire.url_authority(url)).decode("latin-1").lower()
        raise ScrapeRefused(f"target host {shown} is not this client's FQDN {config.fqdn}")


def _scheme_and_query(url: SplitResult) -> tuple[str, str]:
    """The scheme to scrape with (Prometheus' ``_scheme`` parameter wins) and the query
    without that parameter."""
    query = [item for item in url.query.split("&") if item]
    schemes = [item.partition("=")[2] for item in query if item.startswith("_scheme=")]
    scheme = schemes[-1] if schemes else url.scheme
    if scheme not in ("http", "https"):
        raise ScrapeRefused(f"scheme {scheme} is not scraped")
    return scheme, "&".join(item for item in query if not item.startswith("_scheme="))


def _check_allowed(port: int, path: str, config: ClientConfig) -> None:
    """The port and path must be on the allow-list."""
    if port not in config.allow_ports:
        raise ScrapeRefused(
            f"port {port} is not allowed (allowed: "
            f"{', '.join(map(str, sorted(config.allow_ports))) or 'none'}; "
            "see --allow-port)"
        )
    if path not in config.allow_paths:
        raise ScrapeRefused(f"path {path} is not allowed (see --allow-path)")


def _target_headers(request: wire.ScrapeRequest,
                    config: ClientConfig) -> tuple[tuple[bytes, bytes], ...]:
    """Prometheus' headers for the target but Host, with our token."""
    headers = wire.without(request.headers, wire.NOT_SENT_TO_TARGET)
    if config.target_bearer_token:
        headers = [(name, value) for name, value in headers
                   if name.lower() != b"authorization"]
        headers.append(
            (b"Authorization", b"Bearer " + config.target_bearer_token.encode("utf-8")))
    return tuple(headers)


class Backoff:
    """
    Exponential backoff from ``initial`` to ``maximum`` by 1.5, with "equal jitter".

    The growth is Twisted's ``backoffPolicy``; its jitter, though, adds up to a whole
    second at every step, which would stretch a 250 ms retry fivefold and overshoot the
    maximum.  Each wait here is between half and all of its step instead.
    """

    FACTOR = 1.5

    def __init__(self, initial: float, maximum: float,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._step = backoffPolicy(initial, maximum, self.FACTOR, jitter=lambda: 0.0)
        self._rand = rand
        self._attempt = 0

    def reset(self) -> None:
        """Start again from the initial wait."""
        self._attempt = 0

    def next(self) -> float:
        """The next wait: between half and all of the current step."""
        step = self._step(self._attempt)
        self._attempt += 1
        return step * (0.5 + self._rand() / 2)


class ClientService(Service):
    """Polls the proxy, scrapes targets, pushes their responses; retries with backoff."""

    log = Logger()

    def __init__(
        self,
        config: ClientConfig,
        *,
        reactor: IReactorTime,
        proxy_link: ProxyLink,
        target_link: TargetLink,
        metrics: ClientMetrics | None = None,
        pools: Iterable[HTTPConnectionPool] = (),
        rand: Callable[[], float] = random.random,
        owns_connections: bool = True,
        fallback_links: Sequence[ProxyLink] = (),
    ) -> None:
        self.config = config
        self.metrics = metrics or ClientMetrics()
        self._clock = reactor
        self._target_link = target_link
        self._pools = list(pools)
        #: Whether stopping closes the links and pools (else their owner does).
        self._owns_connections = owns_connections
        self._backoff = Backoff(config.retry_initial_wait, config.retry_max_wait, rand)
        urls = config.proxy_urls or (config.proxy_url,)
        links = [proxy_link, *fallback_links]
        #: The proxy URLs in order of preference; ``_route`` is the one polled now.
        self._routes = [_Route(config, url, link) for url, link in zip(urls, links, strict=True)]
        self._route = self._routes[0]
        #: When to try the first URL again, while polling another.
        self._failback_at: float | None = None
        self._fqdn_bytes = config.fqdn.encode("ascii")
        #: What the poll loop awaits right now (a poll or a backoff), cancelled on stop.
        self._waiting: set[Deferred[Any]] = set()
        self._scrapes: set[Deferred[None]] = set()
        self._failing: str | None = None
        #: A poll was held or answered since the last failure (and that was logged).
        self._registered = False
        self._failures = 0

    # -- the poll loop --

    def use_tokens(self, *, proxy_token: str | None, target_bearer_token: str | None) -> None:
        """Send these tokens from the next request on (re-read token files)."""
        self.config = replace(self.config, proxy_token=proxy_token,
                                          target_bearer_token=target_bearer_token)
        for route in self._routes:
            route.make_heads(self.config)

    def startService(self) -> None:
        """Start polling."""
        super().startService()
        self.metrics.proxy_url_in_use.labels(self._route.shown).inc()
        self.log.info("Polling {url} as {fqdn}", url=self._route.poll_url.decode(),
                      fqdn=self.config.fqdn)
        loop = Deferred.fromCoroutine(self._poll_loop())
        loop.addErrback(lambda f: self.log.failure("Poll loop stopped unexpectedly", f))

    async def _poll_loop(self) -> None:
        """Poll, hand each scrape request over, poll again; back off on errors."""
        while self.running:
            if (self._failback_at is not None
                    and self._clock.seconds() >= self._failback_at):
                self._switch_to(0, "the first proxy URL is tried again")
            route = self._route
            held = _HeldPoll(self._clock, None if self._registered else self._note_registered)
            try:
                request = await self._wait(self._bounded(route, Deferred.fromCoroutine(
                    self._poll_once(route, held.written))))
            except CancelledError:
                return
            except Exception as error:
                # The poll was refused or never reached the proxy: not registered, even
                # if the backoff below outlasts REGISTERED_AFTER.
                held.cancel()
                self._registered = False
                if not self.running:
                    return  # stopService cancelled the poll
                self.metrics.poll_errors.inc()
                self._note_failure(route, error)
                self._fail_over(route)
                try:
                    await self._wait(deferLater(self._clock, self._backoff.next(), lambda: None))
                except CancelledError:
                    return
                continue
            finally:
                held.cancel()
            self._note_success(route)
            if not self._registered:
                self._note_registered()
            if request is not None:
                self._start_scrape(request, route)

    def _fail_over(self, failed: _Route) -> None:
        """After a failed poll, poll the next proxy URL (the first after the last)."""
        if len(self._routes) == 1 or failed is not self._route:
            return
        following = (self._routes.index(failed) + 1) % len(self._routes)
        self._switch_to(following, f"{failed.shown} failed")

    def _switch_to(self, index: int, why: str) -> None:
        """Poll the proxy URL ``index`` from now on; log it and count it."""
        previous, self._route = self._route, self._routes[index]
        self._failback_at = (None if index == 0 else
                             self._clock.seconds() + self.config.proxy_failback_after)
        if previous is self._route:
            return
        self.metrics.proxy_url_in_use.labels(previous.shown).dec()
        self.metrics.proxy_url_in_use.labels(self._route.shown).inc()
        self._registered = False
        self._failing = None
        self.log.info("Polling {url} as {fqdn} from now on ({why})",
                      url=self._route.poll_url.decode(), fqdn=self.config.fqdn, why=why)

    async def _wait(self, deferred: Deferred[Any]) -> Any:
        self._waiting.add(deferred)
        try:
            return await deferred
        finally:
            self._waiting.discard(deferred)

    def _bounded(self, route: _Route, poll: Deferred[Any]) -> Deferred[Any]:
        """
        Give up on a poll that a pushprox proxy should have answered by now.

        Such a proxy answers an idle poll after ``poll_timeout``; no answer long after
        that means the connection died silently (a NAT or firewall dropped its state),
        and waiting on would leave the client unreachable until TCP notices, if ever.
        An upstream proxy holds polls without bound, so they get no deadline.
        """
        if not route.bounded_polls:
            return poll
        limit = self.config.poll_timeout + self.config.poll_grace

        def presumed_dead(result: object, timeout: float) -> object:
            if isinstance(result, Failure) and result.check(CancelledError):
                raise PollError(f"no answer to a poll within {timeout:g}s: the "
                                "connection is presumed dead")
            return result

        return poll.addTimeout(limit, self._clock, onTimeoutCancel=presumed_dead)

    async def _poll_once(self, route: _Route,
                         written: Callable[[], None]) -> wire.ScrapeRequest | None:
        answer = await route.link.request(route.poll_head, self._fqdn_bytes,
                                          limit=MAX_POLL_ANSWER, written=written)
        body = answer.body
        extensions = wire.decode_extensions(answer.values(wire.EXTENSIONS_HEADER))
        route.push_poll = wire.PUSH_POLL_EXTENSION in extensions
        route.bounded_polls = wire.POLL_TIMEOUT_EXTENSION in extensions
        if answer.code == 204:
            return None
        if answer.code != 200:
            raise PollError(f"poll answered {answer.code}: {_snippet(body)}")
        try:
            return wire.decode_scrape_request(body)
        except wire.WireError as error:
            raise PollError(f"poll answer is not a scrape request ({error}): "
                            f"{_snippet(body)}") from None

    def _note_failure(self, route: _Route, error: Exception) -> None:
        self._failures += 1
        state = describe_failure(Failure(error))
        if "SSL" in state and route.poll_url.startswith(b"https:"):
            state = (f"the TLS handshake with the proxy failed ({state}): does it serve "
                     "HTTPS at this URL? (a plain-HTTP proxy wants http:// in --proxy-url)")
        if state != self._failing:
            self.log.warn("Polling {url} failed, retrying with backoff: {reason}",
                          url=route.poll_url.decode(), reason=state, fqdn=self.config.fqdn)
            self._failing = state

    def _note_registered(self) -> None:
        """A poll is held (or answered): the proxy took this client's registration."""
        self._registered = True
        self.log.info("Registered with the proxy at {url} as {fqdn}",
                      url=self._route.poll_url.decode(), fqdn=self.config.fqdn)

    def _note_success(self, route: _Route) -> None:
        self._backoff.reset()
        if self._failing is not None:
            self.log.info("Polling {url} works again after {n} failed attempts",
                          url=route.poll_url.decode(), n=self._failures)
            self._failing = None
            self._failures = 0

    # -- scrapes --

    def _start_scrape(self, request: wire.ScrapeRequest, route: _Route) -> None:
        self.metrics.scrapes.inc()
        if len(self._scrapes) >= self.config.max_concurrent_scrapes:
            self.metrics.scrape_errors.inc()
            self._push_error(request, route, f"client is already running "
                             f"{len(self._scrapes)} scrapes, the limit", "overload")
            return
        run = _ScrapeRun(request, route,
                         request.timeout or self.config.scrape_default_timeout,
                         self._clock.seconds())
        scrape = Deferred.fromCoroutine(self._scrape(run))
        scrape.addTimeout(run.timeout, self._clock, onTimeoutCancel=_timed_out)
        self._scrapes.add(scrape)

        def done(result: object) -> None:
            self._scrapes.discard(scrape)
            self.metrics.scrape_duration.observe(self._clock.seconds() - run.started)
            if isinstance(result, Failure):
                self._scrape_failed(run, result)

        scrape.addBoth(done)

    async def _scrape(self, run: _ScrapeRun) -> None:
        request = run.request
        target = plan_target(request, self.config)
        response = await self._target_link.get(
            scheme=target.scheme, method=request.method, url=target.url, host=target.host,
            port=target.port, path=target.path, host_header=target.host_header,
            headers=target.header_list)
        head = wire.encode_response_head(
            status=response.code, reason=response.phrase, headers=response.headers,
            scrape_id=request.scrape_id, length=response.body_length)
        run.pushing = True
        try:
            await self._push(request, run.route, response.push_body(head))
        finally:
            # A push that failed or was cut off before reading the body leaves the
            # target's connection to nobody.
            response.discard()
        if self.config.log_scrapes:
            self.log.info("Scraped {url} for scrape {scrape_id}: {status}",
                          url=request.url.decode("latin-1"), scrape_id=request.scrape_id,
                          status=response.code, fqdn=self.config.fqdn)

    def _scrape_failed(self, run: _ScrapeRun, failure: Failure) -> None:
        if failure.check(_PushFailed):
            return
        self.metrics.scrape_errors.inc()
        request = run.request
        if not self.running:
            reason, kind = "the client is shutting down", "shutdown"
        elif failure.check(TimeoutError):
            reason, kind = f"timeout after {run.timeout:g}s", "timeout"
        elif failure.check(ScrapeRefused):
            reason, kind = f"refused: {failure.value}", "refused"
        else:
            reason, kind = describe_failure(failure), "unreachable"
            if failure.check(DNSLookupError) and self.config.target_host is None:
                reason += (f" (the client connects to {self.config.fqdn} itself; "
                           "--target-host 127.0.0.1, or the target's address, connects "
                           "there while Prometheus keeps the name)")
        message = f"failed to scrape {request.url.decode('latin-1')}: {reason}"
        self.log.warn("Scrape {scrape_id} failed: {reason}",
                      scrape_id=request.scrape_id, reason=message, fqdn=self.config.fqdn,
                      url=request.url.decode("latin-1"))
        if run.pushing:
            # The push had begun: the proxy saw it break off and told Prometheus.
            return
        self._push_error(request, run.route, message, kind)

    def _push_error(self, request: wire.ScrapeRequest, route: _Route, message: str,
                    kind: str) -> None:
        body = wire.encode_error_response(scrape_id=request.scrape_id, reason=message,
                                          kind=kind)
        pushed = Deferred.fromCoroutine(self._push(request, route, body))
        pushed.addErrback(lambda f: f.trap(_PushFailed))

    async def _push(self, request: wire.ScrapeRequest, route: _Route,
                    body: bytes | IBodyProducer) -> None:
        """Push to the proxy that handed the scrape out: only it knows its id."""
        head = route.push_poll_head if route.push_poll else route.push_head
        try:
            answer = await route.link.request(head, body, limit=MAX_POLL_ANSWER)
        except CancelledError:
            raise
        except Exception as error:
            self.metrics.push_errors.inc()
            self._push_log("Push of scrape {scrape_id} failed: {reason}",
                           scrape_id=request.scrape_id, reason=error, fqdn=self.config.fqdn)
            raise _PushFailed() from error
        if answer.code != 200:
            self.metrics.push_errors.inc()
            self._push_log("Push of scrape {scrape_id} refused with {status}: {answer}",
                           scrape_id=request.scrape_id, status=answer.code,
                           answer=_snippet(answer.body), fqdn=self.config.fqdn)
            raise _PushFailed()
        if answer.body and answer.has(wire.NEXT_SCRAPE_HEADER):
            self._take_next(answer.body, route)

    def _push_log(self, format: str, **fields: Any) -> None:
        """A push that failed: a warning, but routine while this client stops (a proxy
        stopping at the same time refuses it with 503, a closed link drops it)."""
        if self.running:
            self.log.warn(format, **fields)
        else:
            self.log.debug(format + " (the client is stopping)", **fields)

    def _take_next(self, answer: bytes, route: _Route) -> None:
        """Start the scrape a push answer handed over, as if a poll had brought it."""
        try:
            request = wire.decode_scrape_request(answer)
        except wire.WireError as error:
            self.metrics.poll_errors.inc()
            self.log.warn("Push answer is not a scrape request ({reason}): {answer}",
                          reason=str(error), answer=_snippet(answer))
            return
        if not self.running:
            self._push_error(request, route, "the client is shutting down", "shutdown")
            return
        self._start_scrape(request, route)

    # -- stopping --

    def stopService(self) -> Deferred[None]:
        """Stop polling, give running scrapes a grace period, then close connections."""
        super().stopService()
        self.metrics.proxy_url_in_use.labels(self._route.shown).dec()
        for waiting in list(self._waiting):
            waiting.cancel()
        in_flight = list(self._scrapes)
        if in_flight:
            self.log.info("Waiting up to {grace}s for {n} scrapes to finish",
                          grace=self.config.shutdown_grace, n=len(in_flight))
        grace = deferLater(self._clock, self.config.shutdown_grace, lambda: None)
        everything: Deferred[Any] = (
            DeferredList(in_flight, consumeErrors=True) if in_flight else succeed(None)
        )

        def cut_off(_: object) -> None:
            for scrape in list(self._scrapes):
                scrape.cancel()

        grace.addCallback(cut_off)
        first = DeferredList([everything, grace], fireOnOneCallback=True, consumeErrors=True)

        def close(_: object) -> Deferred[Any]:
            if grace.called is False:
                grace.cancel()
            if not self._owns_connections:
                return succeed(None)
            return DeferredList([*(route.link.close() for route in self._routes),
                                 self._target_link.close(),
                                 *(pool.closeCachedConnections() for pool in self._pools)])

        first.addCallback(close)
        return first.addCallback(lambda _: None)


class _HeldPoll:
    """
    Calls ``registered`` once a poll has been on a connection for REGISTERED_AFTER
    seconds unanswered: a proxy that refuses a poll does so at once, and one that is
    down or unreachable never sees it (a connection that is still being made, to a
    host that drops packets, does not count).
    """

    def __init__(self, clock: IReactorTime, registered: Callable[[], None] | None) -> None:
        self._clock = clock
        self._registered = registered
        self._call: IDelayedCall | None = None

    def written(self) -> None:
        """The poll is on a connection: start counting (once)."""
        if self._registered is not None and self._call is None:
            self._call = self._clock.callLater(REGISTERED_AFTER, self._registered)

    def cancel(self) -> None:
        """The poll is over: count no more."""
        if self._call is not None and self._call.active():
            self._call.cancel()


class _Route:
    """One proxy URL: its link, the heads of its requests, what its proxy said it does."""

    def __init__(self, config: ClientConfig, url: str, link: ProxyLink) -> None:
        self.link = link
        self.poll_url = config.endpoint("poll", url)
        #: The URL as shown in logs and metrics: without credentials.
        self.shown = config.endpoint("", url).decode("ascii")
        self._url = url
        self.make_heads(config)
        #: Whether the proxy answers pushes with the next queued scrape (it said so).
        self.push_poll = False
        #: Whether the proxy answers idle polls after poll_timeout (it said so).
        self.bounded_polls = False

    def make_heads(self, config: ClientConfig) -> None:
        """The heads of polls and pushes, written once for every request (and again when
        a token file is re-read)."""
        link, url = self.link, self._url
        push_url = config.endpoint("push", url)
        headers = [(b"User-Agent", USER_AGENT)]
        auth = config.proxy_authorization(url)
        if auth is not None:
            headers.append((b"Authorization", auth))
        self.poll_head = link.head(b"POST", self.poll_url, [
            *headers,
            (wire.POLL_TIMEOUT_HEADER, wire.format_timeout(config.poll_timeout)),
            # Sent even when empty, so that labels dropped from the command line go away.
            (wire.LABELS_HEADER, wire.encode_labels(config.labels)),
        ])
        self.push_head = link.head(b"POST", push_url, headers)
        self.push_poll_head = link.head(b"POST", push_url,
                                        [*headers, (wire.PUSH_POLL_HEADER, b"1")])


@dataclass
class _ScrapeRun:
    """One scrape in the client, from the poll answer to the end of its push."""

    request: wire.ScrapeRequest
    #: The proxy URL whose poll brought the scrape, where its answer goes.
    route: _Route
    timeout: float
    started: float
    #: The push of the target's response has begun.
    pushing: bool = False


def _timed_out(result: object, timeout: float) -> object:
    """A scrape cut off by its timeout failed by timing out, whatever the cut raised."""
    if isinstance(result, Failure) and not result.check(_PushFailed):
        raise TimeoutError(timeout, "scrape")
    return result


class PollError(Exception):
    """The proxy answered a poll with something other than a scrape request."""


class _PushFailed(Exception):
    """A push failed; it has been counted and logged."""


def describe_failure(failure: Failure) -> str:
    """One line naming what went wrong, with the reasons Agent wraps unwrapped."""
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(describe_failure(reason) for reason in reasons
                         if isinstance(reason, Failure))
    assert failure.type is not None
    message = failure.getErrorMessage()
    return f"{failure.type.__name__}: {message}" if message else failure.type.__name__


def _snippet(body: bytes) -> str:
    text = body[:120].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty)"


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    Endpoints for an Agent, made once per scheme, host and port.

    Agent builds a new endpoint for every request, which IDNA-encodes the host
    name each time; a client talks to one proxy and a few targets, so the endpoints
    are kept (a bounded number of them).
    """

    MAX_ENDPOINTS = 256

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS | None,
                 keepalive: KeepAliveConfig | None = None, *,
                 eager_writes: bool = False,
                 connect_to: Callable[[str, int], IStreamClientEndpoint] | None = None
                 ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._keepalive = keepalive
        self._eager_writes = eager_writes
        #: Makes the endpoint of a host and port, under TLS for https:// URLs.
        self._connect_to = connect_to or (
            lambda host, port: HostnameEndpoint(reactor, host, port))
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """The endpoint for ``uri``'s scheme, host and port."""
        return self.endpoint(uri.scheme, uri.host, uri.port)

    def endpoint(self, scheme: bytes, host: bytes, port: int) -> IStreamClientEndpoint:
        """The endpoint for a URL's ``scheme``, ``host`` and ``port``."""
        key = (scheme, host, port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._connect_to(host.decode("ascii"), port)
            if scheme == b"https":
                # Imported at the first https:// target: a client without TLS options runs
                # without TLS libraries until then (pushprox.shared.footprint).
                from pushprox.shared import tls

                policy = self._policy
                if policy is None:
                    policy = self._policy = tls.https_policy(cacert=None, cert=None, key=None)
                endpoint = tls.client_tls_endpoint(policy.creatorForNetloc(host, port),
                                                   endpoint, clock=self._reactor)
            elif scheme != b"http":
                from twisted.web.error import SchemeNotSupported

                raise SchemeNotSupported(f"unsupported scheme {scheme!r}")
            if len(self._endpoints) >= self.MAX_ENDPOINTS:
                self._endpoints.clear()
            endpoint = _QuietEndpoint(endpoint, self._keepalive, self._eager_writes)
            self._endpoints[key] = endpoint
        return endpoint


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """
    An endpoint whose connections' factories do not log, with TCP keepalive if asked,
    and with writes sent at once if asked.

    Every pooled connection's factory would otherwise log "Starting factory" at
    info; ``noisy`` is the public switch of any ``Factory``.  With ``eager_writes``
    the connected protocol's transport is wrapped (``twisted_internals.write_eagerly``):
    Agent writes a request without a body in one call, which then leaves at once rather
    than a reactor turn later.
    """

    def __init__(self, endpoint: IStreamClientEndpoint,
                 keepalive: KeepAliveConfig | None = None,
                 eager_writes: bool = False) -> None:
        self._endpoint = endpoint
        self._keepalive = keepalive
        self._eager_writes = eager_writes

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect with ``protocolFactory`` told to be quiet."""
        if hasattr(protocolFactory, "noisy"):
            protocolFactory.noisy = False
        connecting = self._endpoint.connect(protocolFactory)
        keepalive = self._keepalive
        if keepalive is not None:

            def watch(protocol: IProtocol) -> IProtocol:
                enable_keepalive(getattr(protocol, "transport", None), keepalive)
                return protocol

            connecting.addCallback(watch)
        if self._eager_writes:
            connecting.addCallback(write_eagerly)
        return connecting


def make_connections(
    reactor: Any,
    proxy_url: bytes,
    *,
    proxy_policy: IPolicyForHTTPS | None = None,
    target_policy: IPolicyForHTTPS | None = None,
    keepalive: KeepAliveConfig | None = None,
    http_proxy: HttpProxy | None = None,
    target_http_proxy: HttpProxy | None = None,
) -> tuple[ProxyLink, TargetLink, list[HTTPConnectionPool]]:
    """
    The link to the proxy at ``proxy_url`` (with ``keepalive``), the link to the
    targets (with an Agent for ``https://`` targets) and that Agent's persistent pool.

    The link connects through the endpoint Agent would use for that URL: the same
    TLS policy, certificate and name checks, and TCP keepalive.  With ``http_proxy``
    it goes through that HTTP proxy: in a ``CONNECT`` tunnel for an ``https://`` URL
    (the TLS session is with the PushProx proxy, end to end), with requests in absolute
    form for an ``http://`` one, as Go's net/http does.  Targets are reached directly,
    or, only when asked, through ``target_http_proxy``: in a ``CONNECT`` tunnel each, so
    that ``http://`` and ``https://`` targets take one way.
    """
    link = make_proxy_link(reactor, proxy_url, policy=proxy_policy, keepalive=keepalive,
                           http_proxy=http_proxy)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    connect_to = None if target_http_proxy is None else _tunnels(reactor, target_http_proxy)
    target_endpoints = CachedEndpoints(reactor, target_policy, eager_writes=True,
                                       connect_to=connect_to)
    target_agent = Agent.usingEndpointFactory(reactor, target_endpoints, pool=pool)
    plain_endpoints = CachedEndpoints(reactor, target_policy, connect_to=connect_to)
    return link, TargetLink(plain_endpoints.endpoint, target_agent), [pool]


def make_proxy_link(reactor: Any, url: bytes, *, policy: IPolicyForHTTPS | None = None,
                    keepalive: KeepAliveConfig | None = None,
                    http_proxy: HttpProxy | None = None) -> ProxyLink:
    """The link to the PushProx proxy at ``url``, direct or through ``http_proxy`` (see
    ``make_connections``)."""
    uri = URI.fromBytes(url)
    if http_proxy is None:
        return ProxyLink(CachedEndpoints(reactor, policy, keepalive).endpointForURI(uri))
    if uri.scheme == b"http":
        endpoint = CachedEndpoints(
            reactor, policy, keepalive,
            connect_to=lambda host, port: HostnameEndpoint(reactor, http_proxy.host,
                                                           http_proxy.port))
        return ProxyLink(endpoint.endpointForURI(uri), absolute_form=True,
                         proxy_authorization=http_proxy.authorization)
    endpoint = CachedEndpoints(reactor, policy, keepalive,
                               connect_to=_tunnels(reactor, http_proxy))
    return ProxyLink(endpoint.endpointForURI(uri))


def _tunnels(reactor: Any, http_proxy: HttpProxy) -> Callable[[str, int],
                                                                  IStreamClientEndpoint]:
    """Endpoints of a host and port through ``http_proxy``'s CONNECT tunnels."""
    from pushprox.client.connect_tunnel import TunnelEndpoint

    def tunnel(host: str, port: int) -> IStreamClientEndpoint:
        return TunnelEndpoint(reactor, HostnameEndpoint(reactor, http_proxy.host,
                                                        http_proxy.port),
                              host, port, authorization=http_proxy.authorization,
                              proxy_shown=f"HTTP proxy {http_proxy.shown}")

    return tunnel

