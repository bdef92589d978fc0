"""
The places where ``pushprox.shared.twisted_internals`` relies on Twisted beyond its
documented interfaces, each checked against the installed Twisted.

Each test names the reliance in its failure message: when a Twisted release changes what
one relies on, the message says which part of pushprox needs a new way.
"""

from __future__ import annotations

import errno
import importlib
from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientCreator, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from pushprox.proxy.channel import LlhttpChannel
from pushprox.shared.twisted_internals import (
    AcceptFailureObserver,
    EagerWrites,
    _idle_tcp,
    write_eagerly,
)

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
#: The real reactor, for the tests that need loopback sockets (untyped in Twisted).
reactor: Any = global_reactor


class SslVerifyTests(SynchronousTestCase):
    """The TLS names pushprox imports from Twisted's private ``_sslverify``."""

    def test_trust_root_interface_is_where_tls_expects_it(self) -> None:
        """The trust-root interface, used in type annotations, is still in _sslverify."""
        module = importlib.import_module("twisted.internet._sslverify")
        self.assertTrue(
            hasattr(module, "IOpenSSLTrustRoot"),
            "twisted_internals.IOpenSSLTrustRoot: twisted.internet._sslverify no longer "
            "defines IOpenSSLTrustRoot; import it from its new home",
        )


class EagerWritesTests(SynchronousTestCase):
    """The transport wrapper the client puts on its target connections."""

    def test_writes_reach_the_transport_and_the_rest_is_its_own(self) -> None:
        """Writes (joined) reach a non-TCP transport by its write; other calls pass."""
        transport = StringTransport(peerAddress=CLIENT)
        eager = EagerWrites(transport)
        eager.write(b"GET / HTTP/1.1\r\n")
        eager.writeSequence([b"Host: a\r\n", b"\r\n"])
        self.assertEqual(transport.value(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(eager.getPeer(), CLIENT)
        eager.loseConnection()
        self.assertTrue(transport.disconnecting)


class SmallAnswer(Resource):
    """A few bytes naming the path."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        """``small PATH``."""
        return b"small " + request.path


@pytest.mark.processes
class HeldWritesOverTCPTests(TestCase):
    """The held answers over a real loopback connection, where they go to the socket."""

    def setUp(self) -> None:
        site = Site(SmallAnswer(), timeout=None)
        site.protocol = LlhttpChannel.with_header_limit(1000)  # type: ignore[method-assign,assignment]
        self.channels: list[LlhttpChannel] = []
        build = site.buildProtocol

        def keep(address: IAddress) -> Any:
            channel = build(address)
            self.channels.append(channel)
            return channel

        site.buildProtocol = keep  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.port_number: int = self.port.getHost().port

    def test_idle_connection_takes_bytes_at_once(self) -> Deferred[None]:
        """A fresh TCP connection of Twisted's shows nothing unsent: the fast way is open."""
        connected: Deferred[Protocol] = ClientCreator(reactor, Protocol).connectTCP(
            "127.0.0.1", self.port_number)

        def check(client: Protocol) -> Deferred[None]:
            waited: Deferred[None] = Deferred()
            reactor.callLater(0.05, waited.callback, None)

            def look(_: None) -> None:
                [channel] = self.channels
                self.assertTrue(
                    _idle_tcp(channel.transport),
                    "twisted_internals._idle_tcp: tcp.Connection no longer keeps its unsent "
                    "bytes in dataBuffer/offset/_tempDataLen; answers now take Twisted's "
                    "write (one reactor turn and two epoll_ctl calls more each)",
                )
                assert client.transport is not None
                client.transport.loseConnection()

            return waited.addCallback(look)

        return connected.addCallback(check)

    def test_answer_goes_behind_bytes_twisted_still_holds(self) -> Deferred[None]:
        """Bytes Twisted has not sent yet leave first; a held answer never overtakes them."""
        received = Deferred[bytes]()

        class Reader(Protocol):
            data = b""

            def dataReceived(self, data: bytes) -> None:
                self.data += data
                if b"EARLIER" in self.data and b"small /a" in self.data:
                    assert self.transport is not None
                    self.transport.loseConnection()
                    received.callback(self.data)

        def answer(client: Reader) -> Deferred[bytes]:
            waited: Deferred[None] = Deferred()
            reactor.callLater(0.05, waited.callback, None)

            def now(_: None) -> Deferred[bytes]:
                [channel] = self.channels
                assert channel.transport is not None
                # Twisted buffers this until the reactor's next turn...
                channel.transport.write(b"EARLIER ")
                # ...and this answer is made and flushed before that turn.
                channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                return received

            return waited.addCallback(now)

        def check(data: bytes) -> None:
            self.assertTrue(data.startswith(b"EARLIER HTTP/1.1 200 OK"), data[:40])

        connected: Deferred[Reader] = ClientCreator(reactor, Reader).connectTCP(
            "127.0.0.1", self.port_number)
        return connected.addCallback(answer).addCallback(check)


class RecordingEagerWrites(EagerWrites):
    """``EagerWrites`` that keeps what goes through it."""

    written: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Keep, then send."""
        self.written.append(data)
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Keep, then send."""
        pieces = list(data)
        self.written.extend(pieces)
        super().writeSequence(pieces)


@implementer(IAgentEndpointFactory)
class EagerEndpoints:
    """Endpoints whose connected protocols get ``RecordingEagerWrites``."""

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """A TCP endpoint that swaps the transport once connected."""
        inner = TCP4ClientEndpoint(reactor, uri.host.decode(), uri.port)

        @implementer(IStreamClientEndpoint)
        class Eager:
            def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
                return inner.connect(factory).addCallback(write_eagerly,
                                                          RecordingEagerWrites)

        return Eager()


def body_of(response: IResponse) -> Deferred[bytes]:
    """The whole body of ``response``."""
    done: Deferred[bytes] = Deferred()

    class Collect(Protocol):
        data = b""

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            done.callback(self.data)

    response.deliverBody(Collect())
    return done


@pytest.mark.processes
class WriteEagerlyTests(TestCase):
    """Agent's protocol writes through the transport ``write_eagerly`` gives it."""

    def test_agent_request_goes_through_the_swapped_transport(self) -> Deferred[None]:
        """A real Agent over loopback: its request leaves through ``EagerWrites``."""
        site = Site(SmallAnswer(), timeout=None)
        site.protocol = LlhttpChannel.with_header_limit(1000)  # type: ignore[method-assign,assignment]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        RecordingEagerWrites.written = []
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, EagerEndpoints(), pool=pool)
        url = b"http://127.0.0.1:%d/eager" % port.getHost().port

        def check(body: bytes) -> None:
            self.assertEqual(body, b"small /eager")
            self.assertTrue(
                b"".join(RecordingEagerWrites.written).startswith(b"GET /eager HTTP/1.1\r\n"),
                "twisted_internals.write_eagerly: Agent's HTTP11ClientProtocol no longer writes "
                "its request through its transport attribute; the client's target "
                "requests now leave a reactor turn later",
            )

        requesting: Deferred[IResponse] = agent.request(b"GET", url)
        return requesting.addCallback(body_of).addCallback(check)



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


@pytest.mark.processes
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
            "twisted_internals.AcceptFailureObserver: a Twisted port no longer logs "
            "'EMFILE recovery: Closed socket from {address}' for each connection it "
            "closes on EMFILE; pushprox_connections_refused_total needs another way in",
        )

    def test_other_accept_errors_are_reported(self) -> None:
        """ENFILE and the like leave the connection waiting; the error is told."""
        record = self.read_port([OSError(errno.ENFILE, "file table overflow")])
        self.assertEqual(
            (record.peers, record.errors), ([], ["ENFILE"]),
            "twisted_internals.AcceptFailureObserver: a Twisted port no longer logs "
            "'Could not accept new connection ({acceptError})'; "
            "pushprox_accept_errors_total needs another way in",
        )
