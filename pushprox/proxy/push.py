# -*- test-case-name: tests.test_proxy -*-
"""
The one owner of a push: from its first body byte to its answer.

A ``Push`` reads a ``POST /push`` body while it arrives: it reads the pushed status
line and headers, claims the scrape from the coordinator, and hands the scrape an
answer (``IScrapeAnswer``): a ``StreamedAnswer`` that writes Prometheus' response
while the rest of the body arrives, or an ``ErrorAnswer`` when the client reported a
failure or the push is too large.  ``PushThrottle`` pauses the pushing client while
Prometheus reads slowly.  Nothing here holds a whole page.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushprox.proxy.channel import AnswerableRequest
from pushprox.proxy.coordinator import (
    ForeignScrape,
    ICoordinator,
    IScrapeAnswer,
    Scrape,
    UnknownScrape,
)
from pushprox.proxy.responses import finish_with
from pushprox.shared import wire
from pushprox.shared.auth import Denied


@dataclass(frozen=True)
class PushReply:
    """What the proxy that owns a forwarded push answered it: relayed to the client as is."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class ForwardedPush(Protocol):
    """A push on its way to the replica that owns its scrape (cluster mode)."""

    #: Fires with the owner's answer, or fails when the owner cannot be reached.
    reply: Deferred[PushReply]

    def feed(self, data: bytes) -> None:
        """The next bytes of the push body."""

    def finish(self) -> None:
        """The whole body has been fed."""

    def abort(self) -> None:
        """The client's push broke off: the owner must not take it as whole."""


class PushForwarder(Protocol):
    """Sends a push whose scrape another replica owns to that replica (cluster mode)."""

    def owner(self, scrape_id: str) -> Deferred[str | None] | str | None:
        """
        The peer URL of the replica that owns ``scrape_id``, when it is not this one;
        a Deferred when that must be asked of the shared store first.
        """

    def forward(self, peer: str, principal: str | None, push_poll: bool,
                transport: IPushProducer | None) -> ForwardedPush:
        """Start sending a push to ``peer``; ``transport`` is paused while it is slow."""


class PushLimits(Protocol):
    """The limits a push is read under."""

    @property
    def max_push_size(self) -> int:
        """Largest push body, in bytes."""

    @property
    def max_push_head_size(self) -> int:
        """Largest pushed status line plus headers, in bytes."""


@implementer(IPushProducer)
class PushThrottle:
    """
    Pauses reading a push while Prometheus' connection is backed up.

    Registered as the producer of Prometheus' request, it is paused and resumed by
    that request's transport, and pauses and resumes the pushing client's transport
    in turn: a slow scraper slows the client down instead of filling our memory.
    """

    def __init__(self, transport: IPushProducer | None) -> None:
        self._transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        """Stop reading the push."""
        if not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read the push again."""
        if self.paused and self._transport is not None:
            self.paused = False
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """Prometheus went away: let the push run to its end (it is discarded)."""
        self.resumeProducing()


@implementer(IScrapeAnswer)
class ErrorAnswer:
    """An answer of our own instead of the pushed response: a status and one line."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.failure: str | None = message

    def deliver(self, request: AnswerableRequest) -> None:
        """Answer with the status and the line."""
        assert self.failure is not None
        finish_with(request, self.status, self.failure)

    def write(self, data: bytes) -> None:
        """The pushed body is not relayed."""

    def finish(self) -> None:
        """Nothing more to send."""

    def abort(self) -> None:
        """Already answered whole."""


class _Stream(enum.Enum):
    WAITING = "waiting"  # not yet delivered to Prometheus' request: bytes are held
    STREAMING = "streaming"
    OVER = "over"  # finished, cut off, or Prometheus went away


@implementer(IScrapeAnswer)
class StreamedAnswer:
    """
    The pushed response on its way to Prometheus while the push arrives.

    Bytes that arrive before it is delivered are held (this only happens within one
    callback chain); once delivered they are written as they come, under the
    ``PushThrottle``'s flow control.
    """

    failure: str | None = None

    def __init__(self, head: wire.ResponseHead, throttle: PushThrottle) -> None:
        self.status = head.status
        self._head = head
        self._throttle: PushThrottle | None = throttle
        self._request: AnswerableRequest | None = None
        self._state = _Stream.WAITING
        self._pending: list[bytes] = []
        self._complete = False

    def deliver(self, request: AnswerableRequest) -> None:
        """Write the status and headers, then every body byte as it arrives."""
        prometheus = request
        if self._state is not _Stream.WAITING or not prometheus.alive:
            self._end()
            return
        head = self._head
        prometheus.setResponseCode(head.status, head.reason or None)
        headers = prometheus.responseHeaders
        headers.removeHeader(b"server")
        headers.removeHeader(b"date")
        for name, value in wire.without(head.headers, wire.NOT_RELAYED):
            headers.addRawHeader(name, value)
        if head.length is not None:
            headers.setRawHeaders(b"content-length", [b"%d" % head.length])
        prometheus.defaultContentType = None
        self._request = prometheus
        self._state = _Stream.STREAMING
        if self._throttle is not None:
            prometheus.registerProducer(self._throttle, True)
        pending, self._pending = self._pending, []
        for data in pending:
            prometheus.write(data)
        if self._complete:
            self.finish()

    def write(self, data: bytes) -> None:
        """Relay body bytes."""
        if self._state is _Stream.STREAMING and self._request is not None:
            self._request.write(data)
        elif self._state is _Stream.WAITING:
            self._pending.append(data)

    def finish(self) -> None:
        """The whole body has arrived."""
        self._complete = True
        if self._state is _Stream.STREAMING:
            request = self._end()
            if request is not None and request.alive:
                request.finish()

    def abort(self) -> None:
        """
        Cut Prometheus off: an incomplete answer must not look like a whole one.

        Also how the relay learns that Prometheus hung up (see ``IScrapeAnswer.abort``):
        the pushing client is let go on, its bytes are dropped.
        """
        request = self._end()
        if request is not None and request.alive:
            request.loseConnection()

    def _end(self) -> AnswerableRequest | None:
        """Stop relaying; returns the request that was being answered, if any."""
        request, self._request = self._request, None
        self._state = _Stream.OVER
        self._pending = []
        throttle, self._throttle = self._throttle, None
        if throttle is not None:
            throttle.resumeProducing()
            if request is not None and request.alive:
                request.unregisterProducer()
        return request


class Push:
    """
    One ``POST /push``, from its first body byte to the answer the client gets.

    The client's answer is 200 when the response was relayed, 400 when the push is
    unreadable or cut short, 403 when the scrape belongs to another client, 404 for an
    unknown or expired scrape id, 413 when larger than the limits; ``refusal`` holds
    it as soon as it is decided, and the rest of the body is then discarded.
    """

    log = Logger()

    def __init__(
        self,
        coordinator: ICoordinator,
        limits: PushLimits,
        principal: str | None,
        declared_length: int | None,
        transport: IPushProducer | None = None,
        *,
        forwarder: PushForwarder | None = None,
        push_poll: bool = False,
    ) -> None:
        self._coordinator = coordinator
        self._forwarder = forwarder
        #: The client asks for the next scrape queued for it in the push's answer.
        self.push_poll = push_poll
        #: Set when the push is on its way to the replica that owns its scrape.
        self.forwarded: ForwardedPush | None = None
        #: While its owner is looked up: the bytes received, held (the client is paused).
        self._held: list[bytes] | None = None
        #: Fires once the owner is known (only set when it had to be looked up).
        self.settled: Deferred[None] | None = None
        self._owner_known = False
        self._lost = False
        self._limits = limits
        #: The authenticated client that pushes (None without client authentication).
        self.principal = principal
        self._declared_length = declared_length
        self._transport = transport
        self._head = wire.HeadReader(limits.max_push_head_size)
        self._received = 0
        self._scrape: Scrape | None = None
        self._answer: StreamedAnswer | ErrorAnswer | None = None
        self._body: wire.BodyReader | None = None
        #: The FQDN of the client whose scrape this push answers, once known.
        self.fqdn: str | None = None
        #: Why the push is refused, once that is decided.
        self.refusal: Denied | None = None
        #: The connection ended in the middle of a relay (see ``connection_lost``).
        self.broken_off = False

    @classmethod
    def refused(cls, coordinator: ICoordinator, limits: PushLimits, denied: Denied) -> Push:
        """A push that may not be made: its body is discarded, ``denied`` answers it."""
        push = cls(coordinator, limits, None, None)
        push.refusal = denied
        return push

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the push body."""
        if self._held is not None:
            self._held.append(data)
            return
        if self.forwarded is not None:
            self.forwarded.feed(data)
            return
        if self.refusal is not None:
            return
        limit = self._limits.max_push_size
        allowed = limit - self._received
        self._received += len(data)
        if len(data) > allowed:
            # Relay what fits so that the scrape is found and cut off too.
            self._take(data[:allowed])
            self._refuse(413, f"push body exceeds the limit of {limit} bytes")
            return
        self._take(data)

    def end(self) -> Denied | None:
        """The push body is complete: finish the relay; returns the refusal, if any."""
        if self.refusal is not None:
            return self.refusal
        if self.forwarded is not None:
            self.forwarded.finish()
            return None
        limit = self._limits.max_push_size
        if self._answer is None or self._body is None:
            if (self._declared_length or 0) > limit:
                self._refuse(413, f"push body of {self._declared_length} bytes exceeds the "
                             f"limit of {limit} bytes")
            else:
                self._refuse(400, "push body ended inside the response headers")
            return self.refusal
        missing = self._body.missing()
        if missing is not None:
            self._refuse(400, missing)
            return self.refusal
        self._answer.finish()
        self._release()
        return None

    def connection_lost(self) -> None:
        """
        The pushing client's connection ended before the end of its body.

        A relay under way is cut off (Prometheus' connection is closed, so that a
        Content-Length comes up short or the final chunk is missing: never a
        complete-looking answer); ``broken_off`` says so, for the proxy to count.  A
        push being forwarded to another replica is aborted there.
        """
        if self._held is not None:
            self._lost = True
            return
        if self.forwarded is not None:
            self.forwarded.abort()
            return
        if self.refusal is not None:
            return
        if self._scrape is not None and isinstance(self._answer, StreamedAnswer):
            self.broken_off = True
            self.log.warn(
                "Push of scrape {scrape_id} for {fqdn} broke off after {size} bytes: "
                "the scraper gets an incomplete answer",
                scrape_id=self._scrape.scrape_id, fqdn=self.fqdn, size=self._received)
        self._refuse(400, "push connection lost")

    # -- the steps --

    def _take(self, data: bytes) -> None:
        if self._answer is None:
            data = self._read_head(data)
        if self.refusal is not None or self._answer is None or self._body is None or not data:
            return
        try:
            pieces = self._body.feed(data)
        except wire.WireError as error:
            self._refuse(400, f"malformed push body: {error}")
            return
        for piece in pieces:
            self._answer.write(piece)

    def _read_head(self, data: bytes) -> bytes:
        """Read the pushed head, claim its scrape and answer it; returns the bytes after."""
        try:
            split = self._head.feed(data)
            if split is None:
                return b""
            head = wire.decode_response_head(split[0])
        except wire.HeadTooLarge as error:
            self._refuse(413, str(error))
            return b""
        except wire.WireError as error:
            self._refuse(400, f"malformed push: {error}")
            return b""
        if self._forwarder is not None and not self._owner_known:
            whole = split[0] + b"\r\n\r\n" + split[1]
            owner = self._forwarder.owner(head.scrape_id)
            if isinstance(owner, Deferred):
                self._hold(whole, owner)
                return b""
            if owner is not None:
                self._forward(owner, whole)
                return b""
        scrape = self._claim(head.scrape_id)
        if scrape is None:
            return b""
        self._scrape, self.fqdn = scrape, scrape.fqdn
        self._body = wire.BodyReader(head)
        self._answer = self._answer_for(head)
        self._coordinator.respond(scrape, self._answer)
        if self.refusal is not None:
            self._release()
        return split[1]

    def _forward(self, peer: str, data: bytes) -> None:
        assert self._forwarder is not None
        self.forwarded = self._forwarder.forward(peer, self.principal, self.push_poll,
                                                 self._transport)
        self.forwarded.feed(data)

    def _hold(self, data: bytes, owner: Deferred[str | None]) -> None:
        """Hold the push, the client paused, until its owner is known."""
        self._held = [data]
        self.settled = Deferred()
        if self._transport is not None:
            self._transport.pauseProducing()
        owner.addCallbacks(self._owner_found, self._owner_unknown)

    def _owner_unknown(self, failure: Failure) -> None:
        """The owner could not be looked up: refused 503, the client may push again."""
        self._held, self._owner_known = None, True
        if self._transport is not None and not self._lost:
            self._transport.resumeProducing()
        self.log.warn("A push whose owner could not be looked up is refused: {reason}",
                      reason=failure.getErrorMessage())
        self._refuse(503, "the proxy that owns this scrape cannot be looked up now: "
                     f"{failure.getErrorMessage()}")
        assert self.settled is not None
        self.settled.callback(None)

    def _owner_found(self, peer: str | None) -> None:
        held, self._held = self._held or [], None
        self._owner_known = True
        if self._transport is not None and not self._lost:
            self._transport.resumeProducing()
        data = b"".join(held)
        if peer is not None:
            self._forward(peer, data)
        else:
            # The head is read again, this time to be claimed here.
            self._head = wire.HeadReader(self._limits.max_push_head_size)
            self._take(data)
        if self._lost:
            self.connection_lost()
        assert self.settled is not None
        self.settled.callback(None)

    def _claim(self, scrape_id: str) -> Scrape | None:
        try:
            return self._coordinator.claim(scrape_id, self.principal)
        except UnknownScrape as error:
            self._refuse(404, str(error))
        except ForeignScrape as error:
            self._refuse(403, str(error))
        return None

    def _answer_for(self, head: wire.ResponseHead) -> StreamedAnswer | ErrorAnswer:
        """What Prometheus gets for this head: the response, or an error of ours."""
        too_large = self._too_large(head)
        if too_large is not None:
            limit = self._limits.max_push_size
            self.refusal = Denied(413, f"{too_large} exceeds the limit of {limit} bytes")
            return ErrorAnswer(
                502, f"{too_large} exceeds the limit of {limit} bytes (--max-push-size)"
            )
        failure = wire.client_failure(head)
        if failure is None:
            return StreamedAnswer(head, PushThrottle(self._transport))
        if failure.kind == "timeout":
            return ErrorAnswer(504, f"the target did not answer in time: {failure.reason}")
        return ErrorAnswer(502, f"the client could not scrape the target: {failure.reason}")

    def _too_large(self, head: wire.ResponseHead) -> str | None:
        """What exceeds the push size limit according to the head, if anything."""
        limit = self._limits.max_push_size
        if (head.length or 0) > limit:
            return f"the target's response of {head.length} bytes"
        if (self._declared_length or 0) > limit:
            return f"the client's push of {self._declared_length} bytes"
        return None

    def _refuse(self, code: int, message: str) -> None:
        if self.refusal is None:
            self.refusal = Denied(code, message)
        if self.forwarded is not None:
            self.forwarded.abort()
        if self._answer is not None:
            self._answer.abort()
        self._release()

    def _release(self) -> None:
        scrape, self._scrape = self._scrape, None
        if scrape is not None:
            self._coordinator.finish(scrape)
