"""
The Twisted behaviour that ``pushprox.twisted_hooks`` relies on, checked one hook a test.

Each test names the hook in its failure message: when a Twisted release changes what a
hook relies on, the message says which part of pushprox needs a new way.
"""

from __future__ import annotations

import errno
import importlib
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pushprox.twisted_hooks import (
    AcceptFailureObserver,
    BodySink,
    HeaderLimitChannel,
    StreamingRequest,
)

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


class RecordingSink:
    """A body sink that keeps what it is given."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = False

    def feed(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data.append(data)

    def connection_lost(self) -> None:
        """Note the loss."""
        self.lost = True


class RecordingRequest(StreamingRequest):
    """Streams the bodies of POSTs to /stream into a sink, noting the request lines seen."""

    seen: list[tuple[bytes, bytes, int | None]]

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """A sink for POST /stream, nothing otherwise."""
        site = cast(HookSite, cast(Any, self.channel).site)
        site.seen.append((method, path, length))
        if method == b"POST" and path == b"/stream":
            sink = RecordingSink()
            site.sinks.append(sink)
            return sink
        return None


class LimitedChannel(HeaderLimitChannel):
    """A channel that notes when a head exceeds its limit."""

    too_large = 0

    def headers_too_large(self) -> None:
        """Note it, and close."""
        self.too_large += 1
        self.loseConnection()


class Held(Resource):
    """Holds every request open and keeps it, with its collected body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        """Keep the request."""
        self.requests.append(request)
        return NOT_DONE_YET


class HookSite(Site):
    """A site built as pushprox builds its own: our channel as the protocol, no wrapper."""

    requestFactory = RecordingRequest

    def __init__(self) -> None:
        self.resource = Held()
        super().__init__(self.resource)
        self.protocol = LimitedChannel.with_header_limit(200)  # type: ignore[method-assign,assignment]
        self.seen: list[tuple[bytes, bytes, int | None]] = []
        self.sinks: list[RecordingSink] = []


class HookTests(SynchronousTestCase):
    """Each hook of pushprox.twisted_hooks against the installed Twisted."""

    def connect(self) -> tuple[HookSite, LimitedChannel, StringTransport]:
        """A site and one connection to it."""
        site = HookSite()
        channel = site.buildProtocol(CLIENT)
        self.assertIsInstance(
            channel, LimitedChannel,
            "twisted_hooks: Site.buildProtocol no longer builds the Site's protocol as it "
            "is; PushProxSite.protocol (our channel, without Twisted's HTTP/2 wrapper) "
            "needs another way in",
        )
        assert isinstance(channel, LimitedChannel)
        transport = StringTransport(peerAddress=CLIENT)
        channel.makeConnection(transport)
        return site, channel, transport

    def test_request_line_is_known_before_the_body(self) -> None:
        """gotLength sees the request line of each request, pipelined ones included."""
        site, channel, _ = self.connect()
        channel.dataReceived(
            b"POST /stream?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        # Twisted reads a pipelined request once the one before it is answered.
        site.resource.requests[0].finish()
        self.assertEqual(
            site.seen, [(b"POST", b"/stream", 3), (b"GET", b"/other", 0)],
            "twisted_hooks.request_line: HTTPChannel no longer keeps the request line in "
            "_command and _path when it calls Request.gotLength",
        )

    def test_streamed_body_goes_to_the_sink_not_content(self) -> None:
        """handleContentChunk hands every body byte to the sink, chunked or not."""
        site, channel, _ = self.connect()
        channel.dataReceived(
            b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        [sink] = site.sinks
        self.assertEqual(
            b"".join(sink.data), b"abcde",
            "twisted_hooks.StreamingRequest: Request.handleContentChunk no longer "
            "receives the decoded body",
        )
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"")

    def test_body_without_sink_is_collected(self) -> None:
        """Without a sink, the body is collected into request.content as Twisted does."""
        site, channel, _ = self.connect()
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"hello")

    def test_connection_lost_reaches_sink_and_request(self) -> None:
        """A peer gone mid-body tells the sink; the request knows it may not be answered."""
        site, channel, _ = self.connect()
        channel.dataReceived(b"POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        [sink] = site.sinks
        request = channel.requests[-1]
        assert isinstance(request, StreamingRequest)
        self.assertTrue(request.alive)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(
            sink.lost,
            "twisted_hooks.StreamingRequest: Request.connectionLost is no longer called "
            "for a request whose body was still arriving",
        )
        self.assertFalse(request.alive)

    def test_oversized_head_reaches_our_answer(self) -> None:
        """Headers past the limit reach headers_too_large, not Twisted's bare 400."""
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 190 + b"\r\n\r\n")
        self.assertEqual(
            channel.too_large, 1,
            "twisted_hooks.HeaderLimitChannel: an oversized head no longer reaches "
            "_respondToBadRequestAndDisconnect with _receivedHeaderSize past "
            "totalHeadersSize",
        )
        self.assertNotIn(b"400 Bad Request", transport.value())

    def test_one_line_past_the_limit_reaches_our_answer(self) -> None:
        """A single line longer than the limit is refused by us as well."""
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /" + b"a" * 300)
        self.assertEqual(
            channel.too_large, 1,
            "twisted_hooks.HeaderLimitChannel: LineReceiver.MAX_LENGTH no longer limits "
            "HTTPChannel's lines",
        )
        self.assertNotIn(b"400 Bad Request", transport.value())

    def test_other_bad_requests_keep_twisteds_answer(self) -> None:
        """A malformed request line that is not too large still gets Twisted's 400."""
        _, channel, transport = self.connect()
        channel.dataReceived(b"NONSENSE\r\n\r\n")
        self.assertEqual(channel.too_large, 0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request"),
                        transport.value())

    def test_limit_counts_every_request_afresh(self) -> None:
        """Each request on a connection gets the whole allowance."""
        site, channel, _ = self.connect()
        head = b"GET /other HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"b" * 120 + b"\r\n\r\n"
        channel.dataReceived(head)
        site.resource.requests[0].finish()
        channel.dataReceived(head)
        self.assertEqual((channel.too_large, len(site.seen)), (0, 2))

    def test_trust_root_interface_is_where_tls_expects_it(self) -> None:
        """The trust-root interface, used in type annotations, is still in _sslverify."""
        module = importlib.import_module("twisted.internet._sslverify")
        self.assertTrue(
            hasattr(module, "IOpenSSLTrustRoot"),
            "twisted_hooks.IOpenSSLTrustRoot: twisted.internet._sslverify no longer "
            "defines IOpenSSLTrustRoot; import it from its new home",
        )


class RecordingFailures:
    """Keeps what an ``AcceptFailureObserver`` tells."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.errors: list[str] = []

    def refused(self, peer: str) -> None:
        """Keep the peer."""
        self.peers.append(peer)

    def accept_failed(self, error: str) -> None:
        """Keep the error."""
        self.errors.append(error)


class _ClosedSocket:
    """An accepted socket that only knows how to be closed."""

    closed = False

    def close(self) -> None:
        """Note it."""
        self.closed = True


class FailingListener:
    """A listening socket whose ``accept()`` raises, returns and raises as scripted."""

    def __init__(self, script: list[OSError | tuple[_ClosedSocket, tuple[str, int]]]) -> None:
        self.script = script

    def accept(self) -> tuple[_ClosedSocket, tuple[str, int]]:
        """The next step of the script; EAGAIN once it is done."""
        step = self.script.pop(0) if self.script else OSError(errno.EAGAIN, "again")
        if isinstance(step, OSError):
            raise step
        return step


class AcceptFailureTests(SynchronousTestCase):
    """What AcceptFailureObserver reads from a real Twisted port whose accept() fails."""

    def read_port(self, script: list[OSError | tuple[_ClosedSocket, tuple[str, int]]]
                  ) -> RecordingFailures:
        """Run a real ``tcp.Port.doRead`` over a listener following ``script``."""
        record = RecordingFailures()
        observer = AcceptFailureObserver(record)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
        port.startListening()
        real_socket = port.socket
        port.socket = FailingListener(script)

        def stop() -> None:
            port.socket = real_socket
            port.stopListening()
            reactor.advance(0)

        self.addCleanup(stop)
        port.doRead()
        return record

    def test_connection_closed_for_lack_of_descriptors_is_reported(self) -> None:
        """EMFILE: the port closes the pending connection at once and its peer is told."""
        pending = _ClosedSocket()
        record = self.read_port([OSError(errno.EMFILE, "too many open files"),
                                 (pending, ("127.0.0.1", 40123))])
        self.assertTrue(pending.closed, "Twisted no longer closes a connection on EMFILE")
        self.assertEqual(
            (record.peers, record.errors), (["127.0.0.1:40123"], []),
            "twisted_hooks.AcceptFailureObserver: a Twisted port no longer logs "
            "'EMFILE recovery: Closed socket from {address}' for each connection it "
            "closes on EMFILE; pushprox_connections_refused_total needs another way in",
        )

    def test_other_accept_errors_are_reported(self) -> None:
        """ENFILE and the like leave the connection waiting; the error is told."""
        record = self.read_port([OSError(errno.ENFILE, "file table overflow")])
        self.assertEqual(
            (record.peers, record.errors), ([], ["ENFILE"]),
            "twisted_hooks.AcceptFailureObserver: a Twisted port no longer logs "
            "'Could not accept new connection ({acceptError})'; "
            "pushprox_accept_errors_total needs another way in",
        )
