# -*- test-case-name: tests.test_proxy,tests.test_lean -*-
"""
The lean request: one of the proxy's hot requests, answered without twisted.web.

A scrape costs the proxy three requests (Prometheus' proxied ``GET``, the client's
``POST /poll`` and ``POST /push``).  twisted.web builds for each a ``Request`` with
two ``Headers`` objects, parses every request header into one, looks the resource up,
and assembles the response head through several header look-ups; for these three
requests, whose resources are ours and whose headers we know, doing without it saves
a fifth of the proxy's CPU per scrape (``bench/inprocess.py``).  A ``LeanRequest``
carries what those resources use: the request line, the raw headers as llhttp gave
them, the peer, the body (streamed to a sink or kept), and a response whose head is
written in one piece with its first body bytes through the channel's held-write path.
An exception in its resource is logged and answered 500 with one line.  Everything
else the proxy serves (the status page, ``/metrics``, ``/clients``, health, 404s,
other methods) stays twisted.web's.

It keeps twisted.web's behaviour where a peer can tell: the status line, the response
headers (a twisted.web ``Headers``, so names are written as twisted.web writes them),
the ``Date`` and ``Server`` headers, the default ``Content-Type``, chunked framing
when no length is known on HTTP/1.1, no body for ``HEAD``, 204 and 304, the body's
``Content-Length`` when the resource returns bytes, ``notifyFinish`` and the order in
which a request is finished and its channel told.
"""

from __future__ import annotations

import time
from io import BytesIO
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET

__all__ = ["BodySink", "LeanChannel", "LeanRequest"]

#: Status codes whose response has no body.
_NO_BODY_CODES = (204, 304)


class LeanChannel(Protocol):
    """What a ``LeanRequest`` needs of the channel it arrived on."""

    @property
    def transport(self) -> Any:
        """The connection."""

    def getPeer(self) -> IAddress:
        """The peer's address."""

    def getHost(self) -> IAddress:
        """Our address."""

    def write(self, data: bytes) -> None:
        """Response bytes, in order (held while input is handled)."""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The request produces its response."""

    def unregisterProducer(self) -> None:
        """The request's producer is done."""

    def requestDone(self, request: Any) -> None:
        """The request is answered: the next one may start."""

    def loseConnection(self) -> None:
        """Close once what was written is sent."""

    def close_after_answer(self) -> None:
        """Close the connection once the request being handled is answered."""


class BodySink(Protocol):
    """Where a streamed request body goes while it arrives."""

    def feed(self, data: bytes) -> None:
        """The next bytes of the body."""

    def connection_lost(self) -> None:
        """The connection ended before the request was answered."""


class _Clock:
    """The ``Date`` header's value, made once a second rather than once a request."""

    second = -1
    value = b""

    @classmethod
    def date(cls) -> bytes:
        """Now, as an HTTP date."""
        now = time.time()
        second = int(now)
        if second != cls.second:
            cls.value = datetimeToString(now)
            cls.second = second
        return cls.value


class LeanRequest:
    """
    A request served by one resource of ours, without twisted.web's ``Request``.

    The channel calls ``gotLength`` once the head is in (the request line known),
    ``handleContentChunk`` with each piece of the body, ``requestReceived`` once the
    body is complete, and ``connectionLost`` if the peer goes first.  The resource
    answers with the subset of twisted.web's ``Request`` interface the proxy's hot
    resources use (``getHeader``, ``setResponseCode``, ``setHeader``,
    ``responseHeaders``, ``write``, ``finish``, producers, ``notifyFinish``,
    ``loseConnection``).
    """

    log = Logger()

    #: The response's status.
    code = 200
    code_message = b"OK"
    #: The ``Content-Type`` of a body whose resource set none (twisted.web's default).
    defaultContentType: bytes | None = b"text/html"
    finished = False
    startedWriting = False
    chunked = False
    #: The peer hung up before the request was finished.
    connection_gone = False
    #: The sink of the body, chosen in ``gotLength``; None keeps it in ``content``.
    body_sink: BodySink | None = None
    #: Where the body is kept, unless it streams to a sink (None without a body).
    content: BytesIO | None = None
    #: The site (set by whoever routes the request).
    site: Any = None
    producer: IProducer | None = None
    _notifications: list[Deferred[None]] | None = None
    _no_body = False

    def __init__(self, channel: LeanChannel, resource: IResource, method: bytes, uri: bytes,
                 version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.channel: LeanChannel | None = channel
        self.transport = channel.transport
        self.method = method
        self.uri = uri
        self.path = uri.partition(b"?")[0]
        self.clientproto = version
        #: The request's headers as they arrived, in order.
        self.headers = headers
        self.responseHeaders = Headers()
        self.responseHeaders.setRawHeaders(b"Server", [b"pushprox"])
        self.responseHeaders.setRawHeaders(b"Date", [_Clock.date()])
        self._resource = resource

    # -- what the channel calls --

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """The sink of a body about to arrive, or None to keep it (override)."""
        return None

    def gotLength(self, length: int | None) -> None:
        """The head is in: choose where the body goes."""
        if length != 0:
            self.content = BytesIO()
        self.body_sink = self.sink_for(self.method, self.path, length)

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of the body."""
        if self.body_sink is not None:
            self.body_sink.feed(data)
        elif self.content is not None:
            self.content.write(data)

    def requestReceived(self, method: bytes, uri: bytes, version: bytes) -> None:
        """The whole request has arrived: its resource answers it."""
        if self.content is not None:
            self.content.seek(0)
        try:
            body = self._resource.render(self)
        except Exception:
            self.log.failure("Answering {method} {uri} failed", method=self.method,
                             uri=self.uri[:200])
            if not self.startedWriting and self.alive:
                self.setResponseCode(500)
                self.setHeader(b"content-type", b"text/plain; charset=utf-8")
                body = b"internal error\n"
            else:
                self.loseConnection()
                return
        if body is NOT_DONE_YET:
            return
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def connectionLost(self, reason: Failure) -> None:
        """The peer went: tell a sink still reading the body, and who asked."""
        self.connection_gone = True
        if self.body_sink is not None and not self.finished:
            self.body_sink.connection_lost()
        self.channel = None
        notifications, self._notifications = self._notifications, None
        for notification in notifications or ():
            notification.errback(reason)

    # -- what a resource uses --

    @property
    def alive(self) -> bool:
        """Whether the request may still be answered: not finished, its peer still there."""
        return not self.finished and not self.connection_gone

    def getHeader(self, name: bytes) -> bytes | None:
        """The last value of the request header ``name``, as twisted.web's ``getHeader``."""
        name = name.lower()
        found = None
        for header, value in self.headers:
            if header.lower() == name:
                found = value
        return found

    def getClientAddress(self) -> IAddress:
        """The peer's address."""
        channel = self.channel
        if channel is None:
            raise RuntimeError("the connection of this request is gone")
        return channel.getPeer()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """The response's status."""
        self.code = code
        self.code_message = message if message else RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: bytes, value: bytes) -> None:
        """Set a response header, replacing any of that name."""
        self.responseHeaders.setRawHeaders(name, [value])

    def notifyFinish(self) -> Deferred[None]:
        """Fires once the request is finished, fails if its peer goes first."""
        notification: Deferred[None] = Deferred()
        if self.finished:
            notification.callback(None)
        elif self.connection_gone:
            notification.errback(Failure(RuntimeError("the connection is gone")))
        else:
            if self._notifications is None:
                self._notifications = []
            self._notifications.append(notification)
        return notification

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The response is produced by ``producer``, paused while the peer is slow."""
        if self.producer is not None:
            raise ValueError(f"registering producer {producer!r} before the previous one "
                             f"({self.producer!r}) was unregistered")
        self.producer = producer
        if self.channel is not None:
            self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """The producer is done."""
        self.producer = None
        if self.channel is not None:
            self.channel.unregisterProducer()

    def write(self, data: bytes) -> None:
        """Response body bytes; the first write sends the head with them."""
        if self.finished:
            raise RuntimeError("write after finish")
        channel = self.channel
        if channel is None:
            return
        if not self.startedWriting:
            self.startedWriting = True
            head = self._head()
            if self._no_body:
                channel.write(head)
            elif self.chunked:
                channel.write(head + b"%x\r\n%s\r\n" % (len(data), data) if data else head)
            else:
                channel.write(head + data)
            return
        if data and not self._no_body:
            channel.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def finish(self) -> None:
        """The response is complete: the channel may go on with the next request."""
        if self.finished:
            return  # as twisted.web, which only warns
        channel = self.channel
        if channel is None:
            raise RuntimeError("finish after the connection was lost")
        if not self.startedWriting:
            self.write(b"")
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        self.finished = True
        if self.producer is not None:
            self.unregisterProducer()
        channel.requestDone(self)
        self.channel = None
        self.content = None
        notifications, self._notifications = self._notifications, None
        for notification in notifications or ():
            notification.callback(None)

    def loseConnection(self) -> None:
        """Close the connection (an answer cut short)."""
        if self.channel is not None:
            self.channel.loseConnection()

    # -- the response head --

    def _head(self) -> bytes:
        """The status line and headers, decided as twisted.web decides them."""
        headers = self.responseHeaders
        code = self.code
        length = headers.getRawHeaders(b"content-length")
        if (code not in _NO_BODY_CODES and self.defaultContentType is not None
                and not headers.hasHeader(b"content-type")
                and not (length and length[0] == b"0")):
            headers.setRawHeaders(b"Content-Type", [self.defaultContentType])
        version = self.clientproto
        if self.method == b"HEAD" or code in _NO_BODY_CODES:
            self._no_body = True
        elif version == b"HTTP/1.1" and length is None:
            headers.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
            self.chunked = True
        lines = [b"%s %d %s\r\n" % (version, code, self.code_message)]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

