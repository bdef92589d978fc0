# -*- test-case-name: tests.test_twisted_hooks -*-
"""
Every place where pushprox relies on Twisted beyond its documented interfaces.

Twisted offers no public way to parse requests with another parser, to send an answer
before the reactor's next turn, to stream a request body to its handler while it
arrives, to know a request's line before its body, or to learn that a listening port
closed a new connection at once because the process had no file descriptor left.  The
hooks that make those possible live here, and only here, each with a docstring saying
why; ``tests/test_twisted_hooks.py`` checks each one against the installed Twisted and
fails with a message naming the hook when a release changes what it relies on.
Everything else in pushprox uses public API only.

They are on the path of every scrape, three requests each: the proxy's channel
(``LlhttpChannel``) parses in C and sends each answer with one system call, where
twisted.web parses a line at a time in Python and sends a reactor turn later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import httptools
from twisted.internet import tcp
from twisted.internet.interfaces import IAddress, ITransport
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as HTTPRequest
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

if TYPE_CHECKING:
    # Twisted exports this interface only from its private module; it is used in type
    # annotations only, never at run time.
    from twisted.internet._sslverify import IOpenSSLTrustRoot as IOpenSSLTrustRoot

__all__ = [
    "AcceptFailureObserver",
    "AcceptFailures",
    "BodySink",
    "EagerWrites",
    "IOpenSSLTrustRoot",
    "LlhttpChannel",
    "StreamingRequest",
    "close_after",
    "request_line",
    "send_now",
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
        #: The twisted.web request, once the message's turn has come.
        self.request: HTTPRequest | None = None


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


def _idle_tcp(transport: object) -> bool:
    """
    Whether ``transport`` is a plain TCP connection with nothing of its own to send.

    Hook: ``tcp.Connection`` keeps what it has not sent in ``dataBuffer`` (from
    ``offset``) and the private ``_tempDataLen``; only when both are empty may bytes go
    to ``writeSomeData`` (its public way to send at once) without overtaking them.  TLS
    connections (``startTLS``, or a TLS endpoint's wrapper) go through ``write``.
    """
    # getattr with defaults: should a Twisted release rename them, writes take
    # Twisted's way (the hook's test says so) instead of failing.
    return bool(isinstance(transport, tcp.Connection) and transport.connected
                and not transport.disconnecting and not getattr(transport, "TLS", True)
                and getattr(transport, "offset", None) == len(transport.dataBuffer)
                and getattr(transport, "_tempDataLen", None) == 0)


def send_now(transport: ITransport, data: bytes) -> None:
    """
    Send ``data`` with one ``send()`` now if ``transport`` can take it, else ``write`` it.

    Twisted's ``write`` adds the connection to the reactor's writers and sends a loop
    later (two ``epoll_ctl`` calls and a reactor turn).  A plain TCP connection with
    nothing unsent gets the bytes at once; whatever the socket does not take, TLS
    connections and any other transport go through ``write``, which keeps the order,
    pauses producers while its buffer is full, and finds a connection that is gone.
    """
    if _idle_tcp(transport):
        sent = cast(tcp.Connection, transport).writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


class EagerWrites:
    """
    A transport whose writes go out at once (``send_now``); all else is the transport's.

    For a protocol that writes a whole message in one call, such as ``Agent``'s
    ``HTTP11ClientProtocol`` a request without a body: set it as that protocol's
    ``transport`` once connected.
    """

    def __init__(self, transport: ITransport) -> None:
        self.wrapped = transport

    def write(self, data: bytes) -> None:
        """Send at once when possible."""
        send_now(self.wrapped, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Send all pieces at once, joined, when possible."""
        send_now(self.wrapped, b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class LlhttpChannel(HTTPChannel):
    """
    A twisted.web channel that parses requests with llhttp (httptools), in C.

    ``HTTPChannel`` parses a request line by line in Python (``LineReceiver``, then
    ``lineReceived`` and ``headerReceived`` per header line); on the proxy's hot path,
    three requests per scrape, that parsing was the largest single cost of a scrape.
    This channel hands every byte to llhttp, which calls back once per request line,
    header, body piece and message end, and creates the same ``Request`` objects,
    so that resources, responses, keep-alive, timeouts and producers stay twisted.web's.
    llhttp is also strict where it matters on the internet: conflicting
    ``Content-Length``/``Transfer-Encoding``, bad chunk framing, bare CR or LF and
    invalid header characters are refused (400), which closes request smuggling.

    Hooks: it fills in what ``HTTPChannel.lineReceived``, ``headerReceived``,
    ``allHeadersReceived``, ``allContentReceived`` and ``requestDone`` would, through
    the channel's private state (``requests``, ``_command``/``_path``/``_version``,
    ``_handlingRequest``, ``_networkProducer``, ``_waitingForTransport``), and it
    answers bad input through the name twisted.web uses for that,
    ``_respondToBadRequestAndDisconnect``; Twisted's responses and producers read the
    same state.  The idle timeout is not cancelled and set again around each request
    (``HTTPChannel`` does, through ``_savedTimeOut``): it re-arms itself while one is
    handled (``timeoutConnection``).

    Pipelining: a request is handed to twisted.web only once the one before it is
    answered (head-of-line, as ``HTTPChannel`` does).  A request parsed while another
    is handled waits with its body bytes, and the transport is paused meanwhile, so no
    more than one read of the socket waits in memory.

    The head is limited to ``totalHeadersSize`` bytes (request line plus header lines
    without their line ends, as ``HTTPChannel`` counts; bytes held by llhttp inside an
    unfinished head are bounded by the same limit plus one read) and ``maxHeaders``
    lines; past either, ``headers_too_large()`` answers.  Used directly as a Site's
    ``protocol``: the default factory wraps the channel in a private class whose only
    job is switching to HTTP/2, which pushprox does not serve.
    """

    _outbox = _Outbox()

    @classmethod
    def with_header_limit(cls: type[_Channel], limit: int) -> type[_Channel]:
        """A subclass allowing ``limit`` bytes of request line plus headers.

        A class attribute, so that neither a connection's memory nor a request's
        parsing pays for the setting.
        """
        return type(cls.__name__, (cls,), {"totalHeadersSize": limit, "_outbox": _Outbox(),
                                           "__module__": cls.__module__})

    def __init__(self) -> None:
        super().__init__()
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
        self._head_size = 0
        #: Bytes fed to llhttp while a head is unfinished (llhttp holds a partial one).
        self._head_fed = 0
        self._in_head = False
        self._paused_for_turn = False
        #: Nothing more is read: the connection closes after what is being answered.
        self._closing = False
        #: An answer to bad input that waits for the requests before it to be answered.
        self._refusal: Callable[[], None] | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        #: Response bytes written while input is handled, not yet sent.
        self._held: list[bytes] | None = None

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

    def headers_too_large(self) -> None:
        """A request's head exceeded ``totalHeadersSize`` (override to answer it)."""
        self._respondToBadRequestAndDisconnect()

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
            if self.requests:
                self.persistent = False
            else:
                self.loseConnection()
            return
        except httptools.HttpParserCallbackError as error:
            # An exception of twisted.web or of a resource, not bad input: let it reach
            # the reactor as if HTTPChannel had raised it (logged, connection closed).
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

    def _send100Continue(self) -> None:
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.loseConnection()

    def loseConnection(self) -> None:
        """Close once what was written is sent."""
        self._send_held()
        super().loseConnection()

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

    def timeoutConnection(self) -> None:
        """The idle timeout: it does not apply while a request is being handled."""
        if self._handlingRequest:
            self.setTimeout(self.timeOut)
        else:
            super().timeoutConnection()

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
        if self._handlingRequest or self._waiting:
            self._waiting.append(message)
            self._pause_for_turn()
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

    def _start(self, message: _Message) -> None:
        """Make the twisted.web request of ``message`` and give it its head."""
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        message.request = request
        headers = request.requestHeaders
        length: int | None = 0
        expect_continue = False
        for name, value in message.headers:
            headers.addRawHeader(name, value)
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                length = None
            elif lowered == b"expect":
                expect_continue = value.lower() == b"100-continue"
        self._command = message.method
        self._path = message.url
        self._version = message.version
        self.persistent = self.checkPersistence(request, message.version)
        request.gotLength(length)
        if expect_continue and message.version == b"HTTP/1.1":
            self._send100Continue()
        for piece in message.body:
            request.handleContentChunk(piece)
        message.body = []
        if message.complete:
            self._hand_over(message)

    def _hand_over(self, message: _Message) -> None:
        """All of the request has arrived: twisted.web renders it."""
        request = message.request
        assert request is not None
        self._handlingRequest = True
        del self._command, self._path, self._version
        request.requestReceived(message.method, message.url, message.version)

    def requestDone(self, request: HTTPRequest) -> None:
        """The first request is answered: the next waiting one gets its turn."""
        if request != self.requests[0]:
            raise TypeError
        del self.requests[0]
        self._handlingRequest = False
        if not self.persistent:
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
            if not self._waitingForTransport:
                self._networkProducer.resumeProducing()

    def _pause_for_turn(self) -> None:
        if not self._paused_for_turn:
            self._paused_for_turn = True
            self._networkProducer.pauseProducing()

    def _stop_reading(self) -> None:
        self._closing = True
        self._in_head = False

    def _refuse(self, answer: Callable[[], None]) -> None:
        """Answer bad input now, or once the requests before it are answered."""
        if self._closing:
            return
        self._stop_reading()
        if self._handlingRequest:  # the bad input came pipelined behind it
            self._refusal = answer
        else:
            answer()


def close_after(request: HTTPRequest) -> None:
    """
    Answer ``request`` with ``Connection: close`` and close its connection afterwards.

    twisted.web lets the client ask for that (``checkPersistence``), not the server: the
    channel's ``persistent`` flag, set before the request is rendered and read by
    ``requestDone`` once it is answered (``HTTPChannel``'s and ``LlhttpChannel``'s), is
    the only way.  A replica that leaves the cluster uses it so that every client and
    scraper comes back on a new connection, to another replica.
    """
    request.setHeader(b"connection", b"close")
    channel = request.channel
    if channel is not None:
        channel.persistent = False


def request_line(channel: object) -> tuple[bytes, bytes]:
    """
    The method and target of the request whose head a channel has just read.

    Hook: twisted.web keeps the request line in the channel's private ``_command`` and
    ``_path`` until the body has arrived, and only then hands it to the request; a
    request that must choose where its body goes needs it before.
    """
    return getattr(channel, "_command", b""), getattr(channel, "_path", b"")


class BodySink(Protocol):
    """Where a streamed request body goes while it arrives."""

    def feed(self, data: bytes) -> None:
        """The next bytes of the body."""

    def connection_lost(self) -> None:
        """The connection ended before the request was answered."""


class StreamingRequest(Request):
    """
    A request whose body may be handed to a sink while it arrives, not collected.

    Hooks: ``Request.gotLength`` is called once the head is complete and before any
    body byte, ``Request.handleContentChunk`` with every piece of the body, and
    ``Request.connectionLost`` when the peer goes; these are public methods of
    ``Request``, but that twisted.web calls them in this order and no other way is its
    implementation's, not an interface's.  ``connection_gone`` is what
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
        method, path = request_line(self.channel)
        self.body_sink = self.sink_for(method, path.partition(b"?")[0], length)
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


class AcceptFailures(Protocol):
    """What is told of the connections that Twisted's listening ports could not take."""

    def refused(self, peer: str) -> None:
        """A new connection from ``peer`` was closed at once: no file descriptor was left."""

    def accept_failed(self, error: str) -> None:
        """``accept()`` failed with ``error`` (``ENFILE``…): connections wait in the backlog."""


#: How Twisted's ports (``twisted.internet.tcp.Port.doRead``) report each connection
#: they close at once when ``accept()`` fails with EMFILE, and other ``accept()`` errors.
_REFUSED_FORMAT = "EMFILE recovery: Closed socket from {address}"
_ACCEPT_ERROR_FORMAT = "Could not accept new connection ({acceptError})"
#: The loggers of Twisted's listening ports (tcp, and unix, which inherits its doRead).
_PORT_NAMESPACE = "twisted.internet."


@implementer(ILogObserver)
class AcceptFailureObserver:
    """
    A log observer that tells ``AcceptFailures`` what Twisted's listening ports refused.

    Hook: when ``accept()`` fails with EMFILE, a Twisted port frees a descriptor it keeps
    in reserve, accepts every pending connection and closes it at once (the peer sees a
    reset, not a hang), and re-reserves the descriptor; other ``accept()`` errors leave
    the connections in the backlog.  Neither calls anything of the factory: the only
    trace is one log event per connection, whose format string and the port logger's
    namespace are Twisted's implementation, not an interface.  Add it to the global log
    publisher (where ports log); it must not open a file descriptor, and does not.
    """

    def __init__(self, failures: AcceptFailures) -> None:
        self._failures = failures

    def __call__(self, event: dict[str, Any]) -> None:
        """Pass on a port's report of a refused connection or a failed ``accept()``."""
        format = event.get("log_format")
        if format != _REFUSED_FORMAT and format != _ACCEPT_ERROR_FORMAT:
            return
        if not str(event.get("log_namespace", "")).startswith(_PORT_NAMESPACE):
            return
        if format == _REFUSED_FORMAT:
            self._failures.refused(_peer(event.get("address")))
        else:
            self._failures.accept_failed(str(event.get("acceptError", "unknown")))


def _peer(address: object) -> str:
    """``host:port`` of a socket address as ``accept()`` returns it."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
