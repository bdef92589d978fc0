# -*- test-case-name: tests.test_proxy_link -*-
"""
The client's link to the proxy: keep-alive HTTP/1.1 connections, one request at a time
on each.

The client sends the proxy two kinds of request, ``POST /poll`` and ``POST /push``, and
reads each answer whole (a few hundred bytes, under a limit).  ``Agent`` would do, but it
costs more CPU per request than the rest of the client: it wraps every request and
response in several objects, parses headers in Python and hides the framing headers.
``ProxyLink`` does only what those two requests need, with llhttp (``httptools``) as the
parser, so that the proxy, ours or upstream's Go one, sees the same requests as before.

Ownership: ``ProxyLink`` owns its idle connections (``_idle``, a connection leaves it when
taken for a request or when it is lost) and every connection it opened (``_open``, until
it is lost).  A ``_Connection`` owns at most one ``_Exchange`` at a time, from the moment
the request is written until its answer is delivered or it fails; the exchange's
``Deferred`` is fired exactly once, by the connection or by its canceller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from typing import Protocol as TypingProtocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    RequestGenerationFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pushprox.shared.twisted_internals import send_now

_CONNECTION_DONE = Failure(ConnectionDone())
#: What a method, a path, a host or a header name must not hold.
_NOT_IN_A_TOKEN = re.compile(rb"[ \r\n\0]")
#: Status codes whose answers never have a body (RFC 9110 6.4.1).
_NO_BODY = frozenset({204, 304})


class AnswerTooLarge(Exception):
    """The proxy's answer is larger than any answer it should give."""


class BadAnswer(Exception):
    """The proxy's answer is not HTTP/1.1 that can be read; ``str()`` says why."""


class BodyLengthMismatch(Exception):
    """A request body producer wrote more or fewer bytes than its ``length`` said."""


@dataclass(frozen=True)
class RequestHead:
    """A request's line and its fixed headers (Host first), serialized once for many requests."""

    method: bytes
    #: The request line and header lines, without the framing header and the blank line.
    data: bytes


@dataclass(frozen=True)
class ProxyAnswer:
    """The proxy's whole answer to one request."""

    code: int
    phrase: bytes
    #: Every header as received, names in lower case, in order.
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (any case), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    def has(self, name: bytes) -> bool:
        """Whether header ``name`` (any case) is present."""
        wanted = name.lower()
        return any(key == wanted for key, _ in self.headers)


def host_value(scheme: bytes, host: bytes, port: int) -> bytes:
    """The ``Host`` header for a URL's parts: the port only where it is not the default."""
    if (scheme, port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%s:%d" % (host, port)


def request_head(method: bytes, path: bytes, host: bytes,
                 headers: Sequence[tuple[bytes, bytes]]) -> RequestHead:
    """
    Serialize a request line with ``Host`` and ``headers``.

    A line break in a header value becomes a space, as Twisted's ``Headers`` makes it
    (a value from a URL's credentials could hold one); names, method, path and host
    are ours and are refused if malformed.
    """
    for part in (method, path, host, *(name for name, _ in headers)):
        if not part or _NOT_IN_A_TOKEN.search(part) is not None:
            raise ValueError(f"{part!r} is empty or holds a space or a line break")
    lines = [b"%s %s HTTP/1.1\r\n" % (method, path), b"Host: %s\r\n" % (host,)]
    lines += [b"%s: %s\r\n" % (name, _one_line(value)) for name, value in headers]
    return RequestHead(method=method, data=b"".join(lines))


def _one_line(value: bytes) -> bytes:
    if b"\r" not in value and b"\n" not in value:
        return value
    return value.replace(b"\r\n", b" ").replace(b"\r", b" ").replace(b"\n", b" ")


class _PooledConnection(TypingProtocol):
    """What a pool needs of its connections."""

    lost_reason: Failure | None

    def send(self, exchange: Any, *, reused: bool) -> None: ...

    def close(self) -> Deferred[None]: ...


_ConnectionT = TypeVar("_ConnectionT", bound=_PooledConnection)


class KeepAlivePool(Generic[_ConnectionT]):
    """
    Keep-alive connections to one server: the idle ones, and the new ones made for
    requests when none is idle; what ``ProxyLink`` and the target link share.

    An exchange (a request across the connections it may be sent on) has a ``deferred``
    fired exactly once, and ``connecting`` while a connection is made for it.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, max_idle: int) -> None:
        self._endpoint = endpoint
        self._max_idle = max_idle
        self._idle: list[_ConnectionT] = []
        #: Connections are closed after their request rather than kept.
        self._closing = False

    def _factory(self) -> IProtocolFactory:
        """The factory of this pool's connections."""
        raise NotImplementedError

    def _send(self, exchange: Any, *, fresh: bool = False) -> None:
        """Write ``exchange`` on the connection used last, else on a new one (``fresh``:
        always on a new one)."""
        if self._idle and not fresh:
            self._idle.pop().send(exchange, reused=True)
            return
        connecting = self._endpoint.connect(self._factory())
        exchange.connecting = connecting
        connecting.addCallbacks(self._connected, self._not_connected,
                                callbackArgs=(exchange,), errbackArgs=(exchange,))

    def _connected(self, protocol: IProtocol, exchange: Any) -> None:
        exchange.connecting = None
        connection = cast(_ConnectionT, protocol)
        if connection.lost_reason is not None:
            # Lost before this callback ran (a TLS handshake refused at once).
            if not exchange.deferred.called:
                exchange.deferred.errback(ResponseNeverReceived([connection.lost_reason]))
        elif exchange.deferred.called:
            self._give_back(connection)
        else:
            connection.send(exchange, reused=False)

    def _not_connected(self, failure: Failure, exchange: Any) -> None:
        exchange.connecting = None
        if not exchange.deferred.called:
            exchange.deferred.errback(failure)

    def _give_back(self, connection: _ConnectionT) -> None:
        """A connection whose request is over and that may serve another."""
        if self._closing or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle.append(connection)

    def _lost(self, connection: _ConnectionT) -> None:
        """A connection is gone."""
        if connection in self._idle:
            self._idle.remove(connection)

    def _close_idle(self) -> Deferred[None]:
        """Close the idle connections; later ones are closed after their request."""
        self._closing = True
        closing, self._idle = self._idle, []
        waits = [connection.close() for connection in closing]
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)


_PoolT = TypeVar("_PoolT", bound="KeepAlivePool[Any]")


class LlhttpConnection(Protocol, Generic[_PoolT]):
    """
    One kept-alive HTTP/1.1 connection of a ``KeepAlivePool`` whose responses llhttp
    parses: what the links to the proxy and to the targets share.  It keeps the state of
    the response being read (status line, headers, framing, whether it is complete or
    failed), feeds llhttp, and ends the connection (lost, aborted or closed); the
    subclass says what becomes of a response's head and body.
    """

    def __init__(self, pool: _PoolT) -> None:
        self._pool = pool
        self._parser = HttpResponseParser(self)
        #: Has served a request before this one.
        self._reused = False
        self._lost = False
        #: Why the connection ended, once it has.
        self.lost_reason: Failure | None = None
        self._when_lost: list[Deferred[None]] = []
        self._reset()

    def _reset(self) -> None:
        """Ready to read a new response."""
        self._phrase = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: Bytes received while the head was not complete.
        self._head_size = 0
        self._code = 0
        self._answering = False
        self._headers_done = False
        self._until_close = False
        self._complete = False
        self._keep_alive = False
        #: Bytes that are not part of the current response arrived.
        self._stray = False
        self._error: Exception | None = None

    def _expecting(self) -> bool:
        """Whether a response is awaited now."""
        raise NotImplementedError

    def connectionMade(self) -> None:
        # Requests leave whole or in body-sized pieces, which must not wait for the
        # server's delayed ACK (Nagle's algorithm held a push's last piece up to 40 ms).
        tcp_transport = ITCPTransport(self.transport, None)
        if tcp_transport is not None:
            tcp_transport.setTcpNoDelay(True)

    def on_message_begin(self) -> None:
        if not self._expecting() or self._complete:
            self._stray = True
            raise _Stop()
        self._answering = True

    def on_status(self, status: bytes) -> None:
        self._phrase += status

    def _feed(self, data: bytes, malformed: Callable[[str], Exception]) -> None:
        """Parse ``data``; a malformed response sets ``_error`` to ``malformed(reason)``."""
        if not self._headers_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as error:
            if self._complete:
                self._stray = True
            elif self._error is None:
                self._error = malformed(str(error))

    def _gone(self, reason: Failure) -> None:
        """The connection ended: out of the pool, and whoever waits for its end told."""
        self._lost = True
        self.lost_reason = reason
        self._pool._lost(self)
        for waiting in self._when_lost:
            waiting.callback(None)
        self._when_lost.clear()

    def abort(self) -> None:
        """Drop the connection at once (a cancelled or failed request, a rogue server)."""
        if self.transport is not None and not self._lost:
            cast(ITCPTransport, self.transport).abortConnection()

    def close(self) -> Deferred[None]:
        """Close the connection politely; fires once it is closed."""
        if self._lost:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._when_lost.append(waiting)
        assert self.transport is not None
        self.transport.loseConnection()
        return waiting


class ProxyLink(KeepAlivePool["_Connection"]):
    """
    Keep-alive HTTP/1.1 connections to one server, and requests sent on them one at a time.

    A request takes an idle connection (the one used last) or opens one through the
    endpoint (TCP or TLS, whatever it was built with); when its whole answer has come,
    the connection goes back to the idle ones unless the server said ``Connection:
    close``, answered in HTTP/1.0 or delimited the body by closing.  A request on a
    reused connection that the server closes before any byte of the answer (it closed
    the idle connection as the request went out) is sent once more on a new connection,
    as ``Agent`` does, when its body can be sent again: bytes always, a producer only if
    it has not started.  Cancelling a request's ``Deferred`` drops its connection.

    With ``absolute_form`` the endpoint leads to an HTTP proxy that forwards the
    requests: their heads (``head``) carry the whole URL and ``proxy_authorization``.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, *, max_idle: int = 16,
                 absolute_form: bool = False,
                 proxy_authorization: bytes | None = None) -> None:
        super().__init__(endpoint, max_idle)
        self._absolute_form = absolute_form
        self._proxy_authorization = proxy_authorization
        self._open: set[_Connection] = set()

    def head(self, method: bytes, url: bytes,
             headers: Sequence[tuple[bytes, bytes]]) -> RequestHead:
        """The head of a ``method`` request of ``url`` as this link sends it: in origin
        form (``POST /poll``), or in absolute form to an HTTP proxy."""
        uri = URI.fromBytes(url)
        target = uri.originForm
        if self._absolute_form:
            target = uri.toBytes()
            if self._proxy_authorization is not None:
                headers = [*headers, (b"Proxy-Authorization", self._proxy_authorization)]
        return request_head(method, target, host_value(uri.scheme, uri.host, uri.port),
                            headers)

    def request(self, head: RequestHead, body: bytes | IBodyProducer, *,
                limit: int, written: Callable[[], None] | None = None
                ) -> Deferred[ProxyAnswer]:
        """
        Send ``head`` with ``body`` (bytes with ``Content-Length``; a producer with its
        ``length``, chunked when unknown); the whole answer, failing with
        ``AnswerTooLarge`` as soon as its body exceeds ``limit`` bytes.

        ``written`` is called each time the request is written on a connection (once
        connected: not while a connection is being made).
        """
        exchange = _Exchange(head, body, limit)
        exchange.written = written
        exchange.deferred = Deferred(exchange.cancel)
        self._send(exchange)
        return exchange.deferred

    def close(self) -> Deferred[None]:
        """
        Close the idle connections, and each busy one once its request is over; fires
        when the idle ones are closed.  Requests made later still work, each on a
        connection of its own that is closed after its answer.
        """
        return self._close_idle()

    def idle_connections(self) -> int:
        """How many connections wait for a request."""
        return len(self._idle)

    def open_connections(self) -> int:
        """How many connections are open (idle or busy)."""
        return len(self._open)

    # -- the connections' side --

    def _factory(self) -> IProtocolFactory:
        return QuietFactory(lambda: _Connection(self))

    def _opened(self, connection: _Connection) -> None:
        self._open.add(connection)

    def _lost(self, connection: _Connection) -> None:
        self._open.discard(connection)
        super()._lost(connection)

    def _retry(self, exchange: _Exchange) -> None:
        exchange.retried = True
        self._send(exchange, fresh=True)


class _Exchange:
    """One request and its answer, across the connections it may be sent on."""

    __slots__ = ("body", "body_done", "connecting", "connection", "deferred", "head",
                 "limit", "producing", "retried", "written")

    def __init__(self, head: RequestHead, body: bytes | IBodyProducer, limit: int) -> None:
        self.head = head
        self.body = body
        self.limit = limit
        self.deferred: Deferred[ProxyAnswer]
        #: The connection being made for this request.
        self.connecting: Deferred[Any] | None = None
        #: The connection this request was written on.
        self.connection: _Connection | None = None
        #: A producer's body has started (it cannot be sent again).
        self.producing = False
        #: The whole body is written.
        self.body_done = False
        #: Sent a second time after a reused connection was closed under it.
        self.retried = False
        #: Called when the request is written on a connection.
        self.written: Callable[[], None] | None = None

    def cancel(self, deferred: Deferred[ProxyAnswer]) -> None:
        """Fail with CancelledError, then stop connecting or drop the connection."""
        cancel_exchange(deferred, self.connecting, self.connection)

    def replayable(self) -> bool:
        """Whether the body can be sent again from its start."""
        return isinstance(self.body, bytes) or not self.producing


@implementer(IConsumer)
class _BodyWriter:
    """A producer's body on its way to the connection: chunked, or counted against its length."""

    def __init__(self, connection: _Connection, exchange: _Exchange,
                 length: int | None) -> None:
        self._connection = connection
        self._exchange = exchange
        #: Bytes still due under Content-Length; None when chunked.
        self.remaining = length

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The body's producer is registered with the transport already."""

    def unregisterProducer(self) -> None:
        """The connection unregisters the producer when the body ends."""

    def write(self, data: bytes) -> None:
        """Send ``data``, framed; a body longer than announced fails the request."""
        if self._exchange.connection is not self._connection or not data:
            return
        if self.remaining is None:
            self._connection.write(b"%x\r\n%s\r\n" % (len(data), data))
            return
        self.remaining -= len(data)
        if self.remaining < 0:
            self._connection.fail(Failure(RequestGenerationFailed([Failure(
                BodyLengthMismatch("the body is longer than its length said"))])))
            return
        self._connection.write(data)


class QuietFactory(Factory):
    """Builds a pool's connections with ``build``; quiet, since a pool opens many."""

    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._build()


def cancel_exchange(deferred: Deferred[Any], connecting: Deferred[Any] | None,
                    connection: LlhttpConnection[Any] | None) -> None:
    """
    Cancel a request: fail it with CancelledError, then stop connecting for it or drop
    the connection it was written on.
    """
    # Failed first, so that whatever the abort sets off cannot fire it otherwise.
    deferred.errback(Failure(CancelledError()))
    if connecting is not None:
        connecting.cancel()
    elif connection is not None:
        connection.abort()


class _Connection(LlhttpConnection[ProxyLink]):
    """One connection to the proxy: writes a request, parses its answer with llhttp."""

    def __init__(self, link: ProxyLink) -> None:
        self._exchange: _Exchange | None = None
        self._writer: _BodyWriter | None = None
        #: Request bytes gathered while a request is being started, sent as one.
        self._gathered: list[bytes] | None = None
        self._starting = False
        super().__init__(link)

    def _reset(self) -> None:
        super()._reset()
        self._parts: list[bytes] = []
        self._size = 0

    def _expecting(self) -> bool:
        return self._exchange is not None

    # -- sending --

    def connectionMade(self) -> None:
        super().connectionMade()
        self._pool._opened(self)

    def write(self, data: bytes) -> None:
        """Request bytes: gathered while a request is being started, else sent now."""
        if self._gathered is not None:
            self._gathered.append(data)
            if not self._starting:
                self._send_gathered()
        else:
            assert self.transport is not None
            send_now(self.transport, data)

    def send(self, exchange: _Exchange, *, reused: bool) -> None:
        """Write ``exchange``'s request; its answer is awaited from now.

        The request's head leaves with its body's first bytes, in one ``send()`` and at
        once (``twisted_internals.send_now``): so the proxy reads a push in one piece.
        """
        self._gathered = []
        self._starting = True
        try:
            self._start(exchange, reused)
        finally:
            self._starting = False
            waits_for_body = (self._gathered is not None and len(self._gathered) == 1
                              and self._writer is not None)
            if not waits_for_body:
                self._send_gathered()

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered and self.transport is not None and not self._lost:
            send_now(self.transport, b"".join(gathered))

    def _start(self, exchange: _Exchange, reused: bool) -> None:
        assert self._exchange is None and self.transport is not None
        self._reset()
        self._reused = reused
        self._exchange = exchange
        exchange.connection = self
        if exchange.written is not None:
            exchange.written()
        body = exchange.body
        if isinstance(body, bytes):
            self.write(b"%sContent-Length: %d\r\n\r\n%s"
                       % (exchange.head.data, len(body), body))
            exchange.body_done = True
            return
        length = None if body.length is UNKNOWN_LENGTH else int(body.length)
        framing = (b"Transfer-Encoding: chunked\r\n\r\n" if length is None
                   else b"Content-Length: %d\r\n\r\n" % length)
        self.write(exchange.head.data + framing)
        self._writer = _BodyWriter(self, exchange, length)
        # As Agent does: the transport pauses the producer while its buffer is full.
        cast(IConsumer, self.transport).registerProducer(body, True)
        exchange.producing = True
        body.startProducing(self._writer).addCallbacks(
            self._body_written, self._body_failed, callbackArgs=(exchange,),
            errbackArgs=(exchange,))

    def _body_written(self, _: object, exchange: _Exchange) -> None:
        if exchange.connection is not self or self._writer is None:
            return  # abandoned: the request is over, failed or cancelled
        writer = self._writer
        assert writer is not None and self.transport is not None
        self._stop_body(stop_producer=False)
        if self._gathered is not None and not self._starting:
            self._send_gathered()  # an empty body: the head waited for nothing
        if writer.remaining is None:
            self.write(b"0\r\n\r\n")
        elif writer.remaining != 0:
            self.fail(Failure(RequestGenerationFailed([Failure(BodyLengthMismatch(
                f"the body is {writer.remaining} bytes shorter than its length said"))])))
            return
        exchange.body_done = True
        if self._complete:
            self._deliver()

    def _body_failed(self, failure: Failure, exchange: _Exchange) -> None:
        if exchange.connection is not self or self._writer is None:
            return  # abandoned: the request is over, failed or cancelled
        self._stop_body(stop_producer=False)
        self.fail(Failure(RequestGenerationFailed([failure])))

    def _stop_body(self, *, stop_producer: bool) -> None:
        """The body is over (or abandoned): the transport no longer drives its producer."""
        exchange = self._exchange
        if self._writer is None or exchange is None:
            return
        self._writer = None
        if self.transport is not None and not self._lost:
            cast(IConsumer, self.transport).unregisterProducer()
        body = exchange.body
        if stop_producer and not isinstance(body, bytes):
            body.stopProducing()

    # -- the answer, from llhttp --

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._code = code = self._parser.get_status_code()
        self._headers_done = True
        framed = any(name in (b"content-length", b"transfer-encoding")
                     for name, _ in self._headers)
        self._until_close = not (framed or code in _NO_BODY or 100 <= code < 200)

    def on_body(self, data: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._size += len(data)
        if self._size > exchange.limit:
            self._error = AnswerTooLarge(f"answer exceeds {exchange.limit} bytes")
            raise _Stop()
        self._parts.append(data)

    def on_message_complete(self) -> None:
        if 100 <= self._code < 200:
            # An interim answer (100 Continue): the real one follows.
            self._reset()
            self._answering = True
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    # -- Protocol --

    def dataReceived(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.deferred.called:
            # Nothing was asked: a server that talks out of turn is not trusted again.
            self.abort()
            return
        self._feed(data, lambda reason: BadAnswer(f"malformed answer from the proxy: {reason}"))
        if not self._headers_done and self._head_size > exchange.limit:
            # Header lines without end: the limit holds for them too.
            self._error = self._error or AnswerTooLarge(
                f"answer exceeds {exchange.limit} bytes")
        if self._complete:
            if exchange.body_done:
                self._deliver()
            else:
                self._deliver_early()
        elif self._error is not None:
            problem = self._error
            self.fail(Failure(problem if isinstance(problem, AnswerTooLarge)
                              else ResponseFailed([Failure(problem)])))

    def _answer(self) -> ProxyAnswer:
        return ProxyAnswer(code=self._code, phrase=self._phrase,
                           headers=tuple(self._headers), body=b"".join(self._parts))

    def _deliver(self) -> None:
        """The whole answer is here and the whole request was sent."""
        exchange = self._exchange
        assert exchange is not None
        self._exchange = None
        exchange.connection = None
        answer = self._answer()
        # Given back before the answer goes out, so that the request its caller makes
        # next finds this connection idle.
        if self._keep_alive and not self._stray and not self._lost:
            self._pool._give_back(self)
        else:
            self.close()
        if not exchange.deferred.called:
            exchange.deferred.callback(answer)

    def _deliver_early(self) -> None:
        """The server answered before the body was all sent: the answer holds, the
        connection does not (the server will not read the rest)."""
        self._stop_body(stop_producer=True)
        self._keep_alive = False
        exchange = self._exchange
        assert exchange is not None
        exchange.body_done = True
        self._deliver()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._gone(reason)
        exchange = self._exchange
        if exchange is None:
            return
        self._stop_body(stop_producer=True)
        if exchange.deferred.called:
            self._exchange = None
            exchange.connection = None
            return
        if self._headers_done and self._until_close and self._error is None:
            # The answer's end is the connection's end.
            if not exchange.body_done:
                exchange.body_done = True
            self._deliver()
            return
        self._exchange = None
        exchange.connection = None
        if not self._answering and not self._headers_done:
            if (self._reused and not exchange.retried and exchange.replayable()
                    and reason.check(ConnectionDone, ConnectionLost) is not None):
                # The server closed this idle connection as the request went out.
                exchange.producing = False
                exchange.body_done = False
                self._pool._retry(exchange)
                return
            exchange.deferred.errback(ResponseNeverReceived([reason]))
            return
        exchange.deferred.errback(ResponseFailed([reason]))

    # -- ending --

    def fail(self, failure: Failure) -> None:
        """Fail the current request with ``failure`` and drop the connection."""
        exchange = self._exchange
        self._stop_body(stop_producer=True)
        self._exchange = None
        if exchange is not None:
            exchange.connection = None
            if not exchange.deferred.called:
                exchange.deferred.errback(failure)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (a cancelled or failed request, a rogue server)."""
        self._stop_body(stop_producer=True)
        super().abort()


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp; the reason is kept on the connection."""
