# -*- test-case-name: tests.test_channel,tests.test_channel_contract,tests.test_lean -*-
"""
The proxy's HTTP server channel.

``LlhttpChannel`` serves twisted.web ``Request``s from a channel of its own, as Twisted's
HTTP/2 stream does: it parses in C (llhttp) and sends each answer with one system call,
where ``HTTPChannel`` parses a line at a time in Python and sends a reactor turn later;
they are on the path of every scrape, three requests each.  What it provides is what
``Request`` uses of a channel; ``tests/test_channel_contract.py`` checks that against the
installed Twisted.  ``StreamingRequest`` hands a request's body to a handler while it
arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any, TypeVar, cast

import httptools
from twisted.internet import protocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProducer,
    IPullProducer,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.task import CooperativeTask, TaskDone, TaskFailed, TaskStopped, cooperate
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from pushprox.proxy.lean import BodySink, LeanRequest
from pushprox.shared.twisted_internals import send_now

__all__ = [
    "AnswerableRequest",
    "BodySink",
    "LeanRequest",
    "LlhttpChannel",
    "StreamingRequest",
    "close_after",
]



_Channel = TypeVar("_Channel", bound="LlhttpChannel")

#: The request-line spelling of each HTTP version served (HTTP/0.9 is not).
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class _Message:
    """One request as llhttp parses it, before and while twisted.web handles it."""

    __slots__ = ("body", "complete", "headers", "method", "request", "url", "version")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = b"HTTP/1.1"
        #: Body bytes that arrived before the message's turn (pipelining).
        self.body: list[bytes] = []
        self.complete = False
        #: The request, once the message's turn has come.
        self.request: HTTPRequest | LeanRequest | None = None


class _Outbox:
    """
    The channels of one site that hold response bytes until the input being handled is.

    A response written while a channel handles a read (the poll answered when a scrape
    arrives, the scrape answered when the push arrives, the push's own answer) is held,
    and sent when the outermost ``dataReceived`` returns: all its pieces in one
    ``send()``, straight to the socket when Twisted holds nothing of that connection.
    Twisted's own ``write`` would add the connection to the reactor's writers and send
    one loop later: two ``epoll_ctl`` calls and a reactor turn per response.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.holding: list[LlhttpChannel] = []

    def send(self) -> None:
        """Send what every channel holds."""
        while self.holding:
            self.holding.pop()._send_held()


@implementer(IPushProducer)
class _PullAsPush:
    """
    A pull producer driven as a push producer: asked for data each turn of a
    cooperative task until paused, stopped or unregistered.

    What ``twisted.web`` does for a ``Request`` that registers a pull producer, written
    here with ``twisted.internet.task.cooperate`` (public) rather than Twisted's private
    adapter.
    """

    log = Logger()

    def __init__(self, producer: IPullProducer, consumer: LlhttpChannel) -> None:
        self._producer = producer
        self._consumer = consumer
        self._task: CooperativeTask[Iterator[None]] | None = None
        self._paused = False

    def _pull(self) -> Iterator[None]:
        while True:
            try:
                self._producer.resumeProducing()
            except Exception:
                self.log.failure("A pull producer failed: {producer!r}",
                                 producer=self._producer)
                self._consumer.unregisterProducer()
                return
            yield None

    def start(self) -> None:
        """Start pulling."""
        task = self._task = cooperate(self._pull())
        task.whenDone().addErrback(lambda failure: failure.trap(TaskStopped))

    def stop(self) -> None:
        """Stop pulling (the producer was unregistered)."""
        task, self._task = self._task, None
        if task is not None:
            with suppress(TaskDone, TaskFailed, TaskStopped):
                task.stop()

    def pauseProducing(self) -> None:
        """The consumer's buffer is full."""
        if self._task is not None and not self._paused:
            self._paused = True
            with suppress(TaskDone, TaskFailed, TaskStopped):
                self._task.pause()

    def resumeProducing(self) -> None:
        """The consumer's buffer drained."""
        if self._task is not None and self._paused:
            self._paused = False
            with suppress(TaskDone, TaskFailed, TaskStopped):
                self._task.resume()

    def stopProducing(self) -> None:
        """No more data is wanted: stop pulling, and tell the producer."""
        self.stop()
        self._producer.stopProducing()


@implementer(IPushProducer)
class LlhttpChannel(protocol.Protocol, TimeoutMixin):
    """
    The proxy's HTTP/1.1 server channel: llhttp (httptools) parses, in C; twisted.web's
    ``Request`` answers.

    Written, as Twisted's own HTTP/2 stream (``twisted.web._http2.H2Stream``) is,
    against what ``twisted.web.server.Request`` needs of its channel (``transport``,
    ``site``, ``factory``, ``getPeer``/``getHost``, ``isSecure``, ``write``,
    ``writeSequence``, ``writeHeaders``, ``registerProducer``/``unregisterProducer``,
    ``requestDone``, ``loseConnection`` and ``_respondToBadRequestAndDisconnect``), and
    not as a subclass of ``HTTPChannel``: its state is its own and no private name of
    ``HTTPChannel`` is read or written.  ``tests/test_channel_contract.py`` checks that
    list against the installed ``Request``.

    ``HTTPChannel`` parses a request line by line in Python; on the proxy's hot path,
    three requests per scrape, that parsing was the largest single cost of a scrape.
    Here llhttp calls back once per request line, header, body piece and message end.
    llhttp is also strict where it matters on the internet: conflicting
    ``Content-Length``/``Transfer-Encoding``, bad chunk framing, bare CR or LF and
    invalid header characters are refused (400), which closes request smuggling.

    The request line is handed to the request before its body: its ``method``,
    ``uri`` and ``clientproto`` are set before ``gotLength`` is called (twisted.web
    sets them again, to the same values, in ``requestReceived``).

    Pipelining: a request is handed to twisted.web only once the one before it is
    answered (head-of-line, as ``HTTPChannel`` does).  A request parsed while another
    is handled waits with its body bytes, and the transport is paused meanwhile, so no
    more than one read of the socket waits in memory.

    The head is limited to ``totalHeadersSize`` bytes (request line plus header lines
    without their line ends, as ``HTTPChannel`` counts; bytes held by llhttp inside an
    unfinished head are bounded by the same limit plus one read) and ``maxHeaders``
    lines; past either, ``headers_too_large()`` answers.  The idle timeout
    (``timeOut``, set by the site) does not end a connection while one of its requests
    is being answered; a connection that does not close within ``abortTimeout``
    seconds of its timeout is aborted.

    Used directly as a Site's ``protocol``: ``Site.buildProtocol`` sets ``site``,
    ``factory``, ``requestFactory``, ``timeOut`` and ``callLater``.
    """

    #: Bytes allowed for a request's line and headers (without their line ends).
    totalHeadersSize = 16384
    #: Header lines allowed in a request.
    maxHeaders = 500
    #: Seconds given to a timed-out connection to close before it is aborted.
    abortTimeout: float | None = 15
    #: What makes a request: ``Site.buildProtocol`` sets the site's own.
    requestFactory: Callable[[LlhttpChannel], HTTPRequest] = Request
    #: The site (``Site.buildProtocol`` sets it; ``server.Request`` reads it).
    site: Any = None
    _log = Logger()
    _outbox = _Outbox()

    @classmethod
    def with_header_limit(cls: type[_Channel], limit: int) -> type[_Channel]:
        """A subclass allowing ``limit`` bytes of request line plus headers.

        A class attribute, so that neither a connection's memory nor a request's
        parsing pays for the setting.
        """
        return type(cls.__name__, (cls,), {"totalHeadersSize": limit, "_outbox": _Outbox(),
                                           "__module__": cls.__module__})

    # What a connection keeps, as class defaults: a held poll's connection (one per
    # client) sets few of them.
    #: The request of this connection (its body arriving, or being answered), twisted.web's
    #: or a lean one; head-of-line, so there is never more than one.
    request: HTTPRequest | LeanRequest | None = None
    #: The request's whole body has arrived and twisted.web is answering it.
    _answering = False
    #: The connection stays open after the request's answer.
    _keep_alive = True
    #: The head's size as ``HTTPChannel`` counts it.
    _head_size = 0
    #: Bytes fed to llhttp while a head is unfinished (llhttp holds a partial one).
    _head_fed = 0
    _in_head = False
    #: Reading is paused because a request waits for the one before it.
    _paused_for_turn = False
    #: The transport asked us to pause: its send buffer is full.
    _transport_full = False
    #: Nothing more is read: the connection closes after what is being answered.
    _closing = False
    #: An answer to bad input that waits for the request before it to be answered.
    _refusal: Callable[[], None] | None = None
    _peer: IAddress | None = None
    _host: IAddress | None = None
    #: Response bytes written while input is handled, not yet sent.
    _held: list[bytes] | None = None
    #: What the request registered to produce its response, as a push producer.
    _request_producer: IPushProducer | None = None
    _pulling: _PullAsPush | None = None
    #: Aborts a timed-out connection that did not close.
    _aborting: IDelayedCall | None = None
    #: Registered with the transport as its producer (until the connection closes).
    _following_transport = False

    def __init__(self) -> None:
        #: llhttp's state, while a request is being read; made again for the next one
        #: (160 ns), so that a connection waiting between requests, a held poll's most
        #: of all, does not keep its 560 bytes.
        self._parser: httptools.HttpRequestParser | None = None
        #: The message llhttp is parsing, from its first byte to its end.
        self._parsing: _Message | None = None
        #: Messages parsed (or being parsed) while an earlier one is handled.
        #: (A list: an empty deque is 760 bytes, and a held poll's connection, one
        #: per client, almost never has a request waiting behind it.)
        self._waiting: list[_Message] = []

    # -- the connection --

    def connectionMade(self) -> None:
        """Start the idle timeout; follow the transport's flow control."""
        transport = self.transport
        assert transport is not None
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        self.setTimeout(self.timeOut)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._following_transport = True

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data``; llhttp calls the ``on_*`` methods back; then send the answers."""
        if self._closing:
            return
        self.resetTimeout()
        outbox = self._outbox
        outbox.depth += 1
        try:
            self._parse(data)
        finally:
            outbox.depth -= 1
            if not outbox.depth:
                outbox.send()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The peer went: the request of this connection, if any, is told."""
        self.setTimeout(None)
        self._closing = True
        self._waiting = []
        self._parser = None
        request = self.request
        if request is not None:
            request.connectionLost(reason)
        if self._aborting is not None:
            self._aborting.cancel()
            self._aborting = None

    def timeoutConnection(self) -> None:
        """The idle timeout: it does not apply while a request is being answered."""
        if self._answering:
            self.setTimeout(self.timeOut)
            return
        self._log.info("Timing out client: {peer}", peer=str(self.getPeer()))
        if self.abortTimeout is not None:
            self._aborting = cast(IDelayedCall,
                                  self.callLater(self.abortTimeout, self._abort))
        self.loseConnection()

    def _abort(self) -> None:
        self._aborting = None
        self._log.info("Forcibly timing out client: {peer}", peer=str(self.getPeer()))
        transport = self.transport
        assert transport is not None
        transport.abortConnection()  # type: ignore[attr-defined]

    # -- what a Request needs of its channel --

    def getPeer(self) -> IAddress:
        """The peer's address, asked of the transport once (every request reads it)."""
        if self._peer is None:
            assert self.transport is not None
            self._peer = self.transport.getPeer()
        return self._peer

    def getHost(self) -> IAddress:
        """Our address, asked of the transport once (a ``getsockname`` call each time)."""
        if self._host is None:
            assert self.transport is not None
            self._host = self.transport.getHost()
        return self._host

    def isSecure(self) -> bool:
        """Whether the connection is TLS."""
        return ISSLTransport(self.transport, None) is not None

    def write(self, data: bytes) -> None:
        """Response bytes of a request (``Request`` writes through its channel)."""
        if self._outbox.depth:
            self._hold((data,))
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Several pieces of response, in order."""
        if self._outbox.depth:
            self._hold(iovec)
        else:
            self.transport.writeSequence(iovec)  # type: ignore[union-attr]

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes,
                     headers: Headers) -> None:
        """A response's status line and headers (as ``HTTPChannel`` writes them)."""
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.writeSequence(head)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The request produces its response: it is paused while the transport is full."""
        if self._request_producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because producer "
                               f"{self._request_producer!r} was never unregistered.")
        if streaming:
            pushing = cast(IPushProducer, producer)
        else:
            self._pulling = _PullAsPush(cast(IPullProducer, producer), self)
            self._pulling.start()
            pushing = self._pulling
        self._request_producer = pushing
        if self._transport_full:
            pushing.pauseProducing()

    def unregisterProducer(self) -> None:
        """The request's producer is done."""
        if self._pulling is not None:
            self._pulling.stop()
            self._pulling = None
        self._request_producer = None

    def close_after_answer(self) -> None:
        """Close the connection once the request being handled is answered."""
        self._keep_alive = False

    def requestDone(self, request: HTTPRequest | LeanRequest) -> None:
        """The request is answered: the next waiting one gets its turn."""
        if request is not self.request:
            raise TypeError("requestDone of a request that is not this channel's")
        self.request = None
        self._answering = False
        if not self._keep_alive:
            self._stop_reading()
            self.loseConnection()
            return
        self.resetTimeout()
        if self._waiting:
            self._start(self._waiting.pop(0))
        elif self._refusal is not None:
            self._refusal()
            return
        if not self._waiting and self._paused_for_turn:
            self._paused_for_turn = False
            if not self._transport_full:
                self._resume_reading()

    def loseConnection(self) -> None:
        """Close once what was written is sent."""
        self._send_held()
        transport = self.transport
        assert transport is not None
        if self._following_transport:
            self._following_transport = False
            transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        Answer 400 and close: bad input.

        The name is ``Request``'s: it calls it on its channel when a
        ``multipart/form-data`` body cannot be parsed.
        """
        self.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.loseConnection()

    # -- the transport's flow control (IPushProducer) --

    def pauseProducing(self) -> None:
        """The transport's buffer is full: pause the request's producer, and reading."""
        self._transport_full = True
        if self._request_producer is not None:
            self._request_producer.pauseProducing()
        # A client that does not read its answers is not read either; while a request
        # is answered, reading goes on (its peer's going is seen at once).
        if not self._answering:
            self._pause_reading()

    def resumeProducing(self) -> None:
        """The transport's buffer drained: resume the request's producer, and reading."""
        self._transport_full = False
        if self._request_producer is not None:
            self._request_producer.resumeProducing()
        if not self._answering and not self._paused_for_turn:
            self._resume_reading()

    def stopProducing(self) -> None:
        """The transport is gone: so is the request's producer's consumer."""
        if self._request_producer is not None:
            self._request_producer.stopProducing()

    def _pause_reading(self) -> None:
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.pauseProducing()

    def _resume_reading(self) -> None:
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.resumeProducing()

    # -- answers of our own --

    def headers_too_large(self) -> None:
        """A request's head exceeded ``totalHeadersSize`` (override to answer it)."""
        self._respondToBadRequestAndDisconnect()

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade and CONNECT are not served: the request is answered as any other
            # and the connection closes after it; what followed its head is dropped.
            self._stop_reading()
            if self.request is not None:
                self._keep_alive = False
            else:
                self.loseConnection()
            return
        except httptools.HttpParserCallbackError as error:
            # An exception of twisted.web or of a resource, not bad input: let it reach
            # the reactor as any protocol's exception does (logged, connection closed).
            raise (error.__cause__ or error.__context__ or error) from None
        except httptools.HttpParserError:
            self._refuse(self._respondToBadRequestAndDisconnect)
            return
        if self._in_head and not self._closing:
            self._head_fed += len(data)
            if self._head_fed > self.totalHeadersSize:
                self._refuse(self.headers_too_large)
        if self._parsing is None:
            self._parser = None  # between requests: llhttp holds nothing of them

    # -- writing: coalesced while input is handled, then sent at once --

    def _hold(self, pieces: Iterable[bytes]) -> None:
        if self._held is None:
            self._held = []
            self._outbox.holding.append(self)
        self._held.extend(pieces)

    def _send_held(self) -> None:
        """Send what was held: straight to the socket when nothing waits before it."""
        held = self._held
        if not held:
            return
        self._held = None
        assert self.transport is not None
        send_now(self.transport, b"".join(held))

    # -- llhttp's callbacks --

    def on_message_begin(self) -> None:
        """A new request starts."""
        self._parsing = _Message()
        # As HTTPChannel counts: each line without its CRLF; the request line's method
        # is added once llhttp names it, its spaces and version now.
        self._head_size = len(b"  HTTP/1.1")
        self._head_fed = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        """(Part of) the request target."""
        message = self._parsing
        assert message is not None
        message.url += url
        self._head_size += len(url)
        if self._head_size > self.totalHeadersSize:
            self._refuse(self.headers_too_large)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line, name and value whole."""
        message = self._parsing
        assert message is not None
        message.headers.append((name, value))
        self._head_size += len(name) + len(value) + 2
        if self._head_size > self.totalHeadersSize or len(message.headers) > self.maxHeaders:
            self._refuse(self.headers_too_large)

    def on_headers_complete(self) -> None:
        """The head is complete: the request may start, if it is its turn."""
        message = self._parsing
        assert message is not None
        self._in_head = False
        if self._closing:
            return
        parser = self._parser
        assert parser is not None
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:  # HTTP/0.9: no headers, no status line; not served
            self._refuse(self._respondToBadRequestAndDisconnect)
            return
        message.method = parser.get_method()
        message.version = version
        self._head_size += len(message.method)
        if self._head_size > self.totalHeadersSize:
            self._refuse(self.headers_too_large)
            return
        if self.request is not None or self._waiting:
            self._waiting.append(message)
            if not self._paused_for_turn:
                self._paused_for_turn = True
                self._pause_reading()
        else:
            self._start(message)

    def on_body(self, data: bytes) -> None:
        """A piece of the body (chunk framing already removed)."""
        message = self._parsing
        assert message is not None
        if message.request is not None:
            message.request.handleContentChunk(data)
        elif not self._closing:
            message.body.append(data)

    def on_message_complete(self) -> None:
        """The request is complete: hand it over if it has started."""
        message = self._parsing
        assert message is not None
        self._parsing = None
        message.complete = True
        if message.request is not None and not self._closing:
            self._hand_over(message)

    # -- a request's turn --

    def lean_request(self, method: bytes, url: bytes, version: bytes,
                     headers: list[tuple[bytes, bytes]]) -> LeanRequest | None:
        """A lean request for this request line, or None for twisted.web's (override)."""
        return None

    def _start(self, message: _Message) -> None:
        """Make the request of ``message`` and give it its head."""
        length: int | None = 0
        expect_continue = False
        connection: bytes | None = None
        cookies = False
        for name, value in message.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                length = None
            elif lowered == b"expect":
                expect_continue = value.lower() == b"100-continue"
            elif lowered == b"connection":
                connection = value if connection is None else connection
            elif lowered == b"cookie":
                cookies = True
        version = message.version
        request: HTTPRequest | LeanRequest | None = self.lean_request(
            message.method, message.url, version, message.headers)
        if request is None:
            request = self.requestFactory(self)
            headers = request.requestHeaders
            for name, value in message.headers:
                headers.addRawHeader(name, value)
            # The request line, before the body: a request may choose where its body goes.
            request.method = message.method
            request.uri = message.url
            request.clientproto = version
            if cookies:
                request.parseCookies()
        self.request = message.request = request
        self._keep_alive = version == b"HTTP/1.1" and not _says_close(connection)
        if connection is not None and version == b"HTTP/1.1" and not self._keep_alive:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        request.gotLength(length)
        if expect_continue and version == b"HTTP/1.1":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        for piece in message.body:
            request.handleContentChunk(piece)
        message.body = []
        if message.complete:
            self._hand_over(message)

    def _hand_over(self, message: _Message) -> None:
        """All of the request has arrived: twisted.web renders it."""
        request = message.request
        assert request is not None
        self._answering = True
        request.requestReceived(message.method, message.url, message.version)

    def _stop_reading(self) -> None:
        self._closing = True
        self._in_head = False

    def _refuse(self, answer: Callable[[], None]) -> None:
        """Answer bad input now, or once the request before it is answered."""
        if self._closing:
            return
        self._stop_reading()
        if self._answering:  # the bad input came pipelined behind it
            self._refusal = answer
        else:
            answer()


def close_after(request: HTTPRequest | LeanRequest) -> None:
    """
    Answer ``request`` with ``Connection: close`` and close its connection afterwards.

    twisted.web lets the client ask for that (``checkPersistence``), not the server.  Our
    channel offers ``close_after_answer``; on twisted.web's own ``HTTPChannel`` (what
    serves what ours does not) the hook is its ``persistent`` flag, set before the request
    is rendered and read by ``requestDone`` once it is answered.  A replica that leaves
    the cluster uses it so that every client and scraper comes back on a new
    connection, to another replica.
    """
    request.setHeader(b"connection", b"close")
    if isinstance(request, LeanRequest):
        if request.channel is not None:
            request.channel.close_after_answer()
        return
    channel = request.channel
    if isinstance(channel, LlhttpChannel):
        channel.close_after_answer()
    elif channel is not None:
        channel.persistent = False


def _says_close(connection: bytes | None) -> bool:
    """Whether a ``Connection`` header's first value asks to close after the answer."""
    if connection is None:
        return False
    return any(token.strip().lower() == b"close" for token in connection.split(b","))


class StreamingRequest(Request):
    """
    A request whose body may be handed to a sink while it arrives, not collected.

    Served by ``LlhttpChannel``, which sets the request's line and calls
    ``Request.gotLength`` once the head is complete and before any body byte,
    ``Request.handleContentChunk`` with every piece of the body, and
    ``Request.connectionLost`` when the peer goes.  ``connection_gone`` is what
    ``notifyFinish()`` reports, kept as a flag so that a request can be asked.
    """

    #: The sink of this request's body, chosen in ``gotLength``; None collects it.
    body_sink: BodySink | None = None
    #: The peer hung up before the request was finished.
    connection_gone = False

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """The sink of a body about to arrive, or None to collect it (override)."""
        return None

    @property
    def alive(self) -> bool:
        """Whether the request may still be answered: not finished, its peer still there."""
        return not self.finished and not self.connection_gone

    def gotLength(self, length: int | None) -> None:
        """Choose where the body goes, knowing the request line."""
        self.body_sink = self.sink_for(self.method, self.uri.partition(b"?")[0], length)
        # http.Request's, not server.Request's: that one looks for an optional
        # ``site.getContentFile`` through an AttributeError raised on every request.
        # (Imported by name: an attribute of the module ``twisted.web.http`` goes through
        # its deprecation proxy, a few microseconds each time.)
        HTTPRequest.gotLength(self, 0 if self.body_sink is not None else length)

    def handleContentChunk(self, data: bytes) -> None:
        """Hand body bytes to the sink, if there is one."""
        if self.body_sink is not None:
            self.body_sink.feed(data)
        else:
            super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        """Remember that the peer went, and tell a sink still reading the body."""
        self.connection_gone = True
        if self.body_sink is not None and not self.finished:
            self.body_sink.connection_lost()
        super().connectionLost(reason)




#: A request a scrape's answer is delivered to: twisted.web's (streaming) or a lean one.
AnswerableRequest = StreamingRequest | LeanRequest
