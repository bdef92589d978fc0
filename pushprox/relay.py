# -*- test-case-name: tests.test_proxy -*-
"""
The streaming relay of a push to the Prometheus request it answers.

``PushStream`` reads a ``POST /push`` body while it arrives: it parses the pushed status
line and headers, claims the scrape from the coordinator, and hands a ``Relay`` to the
waiting scrape, which writes Prometheus' response from it while the rest of the body
arrives.  ``PushThrottle`` pauses the pushing client while Prometheus reads slowly.
Nothing here holds a whole page.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from pushprox import wire
from pushprox.auth import Denied
from pushprox.coordinator import ForeignScrape, ICoordinator, Scrape, UnknownScrape

SERVER = b"pushprox"
TEXT = b"text/plain; charset=utf-8"

# Headers of a pushed response that Prometheus must not see: ours, upstream's,
# and those that describe the push's framing rather than the response's.
_NOT_RELAYED = wire.HOP_BY_HOP | {
    b"content-length",
    wire.ID_HEADER.lower(),
    wire.TIMEOUT_HEADER.lower(),
    wire.UPSTREAM_TIMEOUT_HEADER.lower(),
}



class PushLimits(Protocol):
    """The limits a push is read under."""

    @property
    def max_push_size(self) -> int:
        """Largest push body, in bytes."""

    @property
    def max_push_head_size(self) -> int:
        """Largest pushed status line plus headers, in bytes."""


def text_response(request: Request, code: int, message: str) -> bytes:
    """Set ``code`` and return ``message`` as a one-line plain-text body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"server", SERVER)
    return message.encode("utf-8") + b"\n"


def request_alive(request: Request) -> bool:
    """Whether a request may still be answered: not finished, its peer still there."""
    return not request.finished and not cast(Any, request)._disconnected


def finish_with(request: Request, code: int, message: str) -> None:
    """Answer a request held open with NOT_DONE_YET, unless its peer has gone."""
    if request_alive(request):
        body = text_response(request, code, message)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()




@implementer(IPushProducer)
class PushThrottle:
    """
    Pauses reading a push while Prometheus' connection is backed up.

    Registered as the producer of Prometheus' request, it is paused and resumed by
    that request's transport, and pauses and resumes the pushing client's transport
    in turn: a slow scraper slows the client down instead of filling our memory.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        """Stop reading the push."""
        if not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read the push again."""
        if self.paused:
            self.paused = False
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """Prometheus went away: let the push run to its end (it is discarded)."""
        self.resumeProducing()


def client_failure(head: wire.ResponseHead | None) -> tuple[int, str] | None:
    """
    The answer for a response our client synthesized because it could not scrape.

    504 when it reports a target timeout, 502 otherwise; None for a real response.
    """
    if head is None:
        return None
    reason = head.header(wire.SCRAPE_ERROR_HEADER)
    if reason is None:
        return None
    text = reason.decode("utf-8", "replace")
    if head.header(wire.SCRAPE_ERROR_KIND_HEADER) == b"timeout":
        return 504, f"the target did not answer in time: {text}"
    return 502, f"the client could not scrape the target: {text}"


def scrape_answer(request: Request, body: bytes) -> bytes:
    """Set the headers of an answer that hands a client a scrape request ``body``."""
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


class Relay:
    """
    The response to one scrape on its way from a push to Prometheus.

    The push side creates it once the pushed status line and headers are read,
    feeds it body bytes as they arrive, and finishes or aborts it; the scrape side
    attaches Prometheus' request to it.  Bytes that arrive before the attachment
    are held (this only happens within one callback chain).
    """

    def __init__(self, head: wire.ResponseHead | None, error: tuple[int, str] | None = None,
                 throttle: PushThrottle | None = None):
        self.head = head
        #: The error Prometheus gets instead of the pushed response, if any.
        self.error = error if error is not None else client_failure(head)
        self._throttle = throttle
        self._request: Request | None = None
        self._pending: list[bytes] = []
        self._discarding = False
        self.finished = False

    @classmethod
    def failure(cls, code: int, message: str) -> Relay:
        """A relay that answers the scrape with an error instead of the push."""
        return cls(None, (code, message))

    def attach(self, request: Request) -> int:
        """Start answering ``request``; returns the status code given to it."""
        if not request_alive(request):
            self._discarding = True
            return 0
        if self.error is not None or self.head is None:
            code, message = self.error or (502, "no response")
            finish_with(request, code, message)
            self._discarding = True
            return code
        head = self.head
        request.setResponseCode(head.status, head.reason or None)
        headers = request.responseHeaders
        headers.removeHeader(b"server")
        headers.removeHeader(b"date")
        for name, value in head.headers:
            if name.lower() not in _NOT_RELAYED:
                headers.addRawHeader(name, value)
        if head.length is not None:
            headers.setRawHeaders(b"content-length", [b"%d" % head.length])
        request.defaultContentType = None
        self._request = request
        request.notifyFinish().addErrback(self._scraper_gone)
        if self._throttle is not None:
            request.registerProducer(self._throttle, True)
        for data in self._pending:
            request.write(data)
        self._pending.clear()
        if self.finished:
            request.finish()
        return head.status

    def _scraper_gone(self, reason: Failure) -> None:
        self._discarding = True
        self._request = None
        self._release_throttle()

    def _release_throttle(self) -> None:
        throttle, self._throttle = self._throttle, None
        if throttle is None:
            return
        throttle.resumeProducing()
        request = self._request
        if request is not None and request_alive(request):
            request.unregisterProducer()

    def write(self, data: bytes) -> None:
        """Relay body bytes."""
        if self._discarding or not data:
            return
        if self._request is None:
            self._pending.append(data)
        else:
            self._request.write(data)

    def finish(self) -> None:
        """The whole body has been relayed."""
        self.finished = True
        self._release_throttle()
        if self._request is not None and request_alive(self._request):
            self._request.finish()

    def abort(self) -> None:
        """Cut Prometheus off: an incomplete answer must not look like a whole one."""
        self._discarding = True
        self._release_throttle()
        request, self._request = self._request, None
        if request is not None and request_alive(request):
            request.loseConnection()


class PushStream:
    """
    Reads a ``POST /push`` body as it arrives and relays it to its scrape.

    Pushes are answered 200 when relayed, 400 when unreadable, 403 when the scrape
    belongs to another client, 404 for an unknown or expired scrape id, 413 when
    larger than the limit.
    """

    log = Logger()

    def __init__(
        self,
        coordinator: ICoordinator,
        config: PushLimits,
        identity: str | None,
        declared_length: int | None,
        transport: Any = None,
    ) -> None:
        self._transport = transport
        self._coordinator = coordinator
        self._config = config
        self._identity = identity
        self._head_buffer = b""
        self._received = 0
        self._scrape: Scrape | None = None
        self._relay: Relay | None = None
        self._decoder: wire.ChunkedDecoder | None = None
        self._body_left: int | None = None
        #: The answer to the push once it is decided early (an error).
        self.outcome: tuple[int, str] | None = None
        self._declared_length = declared_length
        self.denied: Denied | None = None

    @classmethod
    def refused(cls, coordinator: ICoordinator, config: PushLimits,
                denied: Denied) -> PushStream:
        """A stream that discards the body of a push that may not be made."""
        stream = cls(coordinator, config, None, None)
        stream.outcome = (denied.code, denied.message)
        stream.denied = denied
        return stream

    #: The FQDN and principal of the client whose scrape this push answered.
    fqdn: str | None = None

    @property
    def identity(self) -> str | None:
        """The principal that pushed."""
        return self._identity

    def _reject(self, code: int, message: str) -> None:
        if self.outcome is None:
            self.outcome = (code, message)
        if self._relay is not None:
            self._relay.abort()
        self._release()

    def _release(self) -> None:
        scrape, self._scrape = self._scrape, None
        if scrape is not None:
            self._coordinator.finish(scrape)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the push body."""
        if self.outcome is not None:
            return
        allowed = self._config.max_push_size - self._received
        self._received += len(data)
        if len(data) > allowed:
            # Relay what fits so that the scrape is found and cut off too.
            self._take(data[:allowed])
            self._reject(
                413, f"push body exceeds the limit of {self._config.max_push_size} bytes"
            )
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        if self.outcome is not None:
            return
        if self._relay is None:
            data = self._read_head(data)
            if self._relay is None or not data:
                return
        try:
            self._relay_body(data)
        except wire.WireError as error:
            self._reject(400, f"malformed push body: {error}")

    def _read_head(self, data: bytes) -> bytes:
        buffer = self._head_buffer + data
        end, sep = buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            end, sep = buffer.find(b"\n\n"), 2
        if end < 0:
            if len(buffer) > self._config.max_push_head_size:
                self._reject(413, "pushed response headers exceed the limit of "
                             f"{self._config.max_push_head_size} bytes")
            else:
                self._head_buffer = buffer
            return b""
        self._head_buffer = b""
        try:
            head = wire.decode_response_head(buffer[:end])
            self._scrape = self._coordinator.claim(head.scrape_id, self._identity)
            self.fqdn = self._scrape.fqdn
        except wire.WireError as error:
            self._reject(400, f"malformed push: {error}")
            return b""
        except UnknownScrape as error:
            self._reject(404, str(error))
            return b""
        except ForeignScrape as error:
            self._reject(403, str(error))
            return b""
        relay = Relay(head, throttle=PushThrottle(self._transport))
        limit = self._config.max_push_size
        if (head.length or 0) > limit:
            what = f"the target's response of {head.length} bytes"
        elif (self._declared_length or 0) > limit:
            what = f"the client's push of {self._declared_length} bytes"
        else:
            what = None
        if what is not None:
            relay = Relay.failure(
                502, f"{what} exceeds the limit of {limit} bytes (--max-push-size)"
            )
            self.outcome = (413, f"{what} exceeds the limit of {limit} bytes")
        self._relay = relay
        if head.framing is wire.BodyFraming.CHUNKED:
            self._decoder = wire.ChunkedDecoder()
        self._body_left = head.length
        self._coordinator.respond(self._scrape, relay, relay.abort)
        if self.outcome is not None:
            self._release()
        return buffer[end + sep :]

    def _relay_body(self, data: bytes) -> None:
        assert self._relay is not None
        if self._decoder is not None:
            for piece in self._decoder.feed(data):
                self._relay.write(piece)
        elif self._body_left is not None:
            piece = data[: self._body_left]
            self._body_left -= len(piece)
            self._relay.write(piece)
        else:
            self._relay.write(data)

    def end(self) -> tuple[int, str]:
        """The push body is complete: finish the relay; returns the push's answer."""
        if self.outcome is not None:
            return self.outcome
        if self._relay is None and (self._declared_length or 0) > self._config.max_push_size:
            self._reject(413, f"push body of {self._declared_length} bytes exceeds the "
                         f"limit of {self._config.max_push_size} bytes")
        elif self._relay is None:
            self._reject(400, "push body ended inside the response headers")
        elif self._decoder is not None and not self._decoder.finished:
            self._reject(400, "push body ended inside a chunked response body")
        elif self._body_left:
            self._reject(400, f"push body ended {self._body_left} bytes short of "
                         "its Content-Length")
        else:
            self._relay.finish()
            self._release()
            self.outcome = (200, "")
        assert self.outcome is not None
        return self.outcome

    def connection_lost(self) -> None:
        """The pushing client hung up before the end of its body."""
        if self.outcome is None:
            self._reject(400, "push connection lost")
