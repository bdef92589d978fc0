"""Tests for ``pushprox.client.connect_tunnel``: CONNECT through an HTTP proxy, on fakes.

The proxy's side is a ``StringTransport``: the test reads the CONNECT the tunnel wrote and
plays the proxy's answer, then the destination's bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pushprox.client.connect_tunnel import TunnelEndpoint, TunnelError

ADDRESS = IPv4Address("TCP", "127.0.0.1", 3128)
_CONNECTION_DONE = Failure(ConnectionDone())


@implementer(IStreamClientEndpoint)
class FakeProxyEndpoint:
    """Connects at once, to a ``StringTransport``; or, ``pending``, never."""

    def __init__(self, *, pending: bool = False) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None
        self._pending = pending
        self.cancelled = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self._pending:
            def cancel(d: Deferred[IProtocol]) -> None:
                self.cancelled = True
            return Deferred(cancel)
        protocol = protocolFactory.buildProtocol(ADDRESS)
        assert protocol is not None
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)


class Recorder(Protocol):
    """The destination's protocol: records what it gets."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.lost = reason


class TunnelEndpointTests(SynchronousTestCase):
    """The CONNECT, its answers, and the bytes after it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = FakeProxyEndpoint()
        self.endpoint = TunnelEndpoint(self.clock, self.proxy, "pushprox.example", 8443,
                                       authorization=b"Basic YTpi",
                                       proxy_shown="HTTP proxy http://corp:3128")
        self.connecting = self.endpoint.connect(Factory.forProtocol(Recorder))

    def answer(self, data: bytes) -> None:
        self.proxy.protocol.dataReceived(data)

    def test_connect_request(self) -> None:
        """One CONNECT with Host and Proxy-Authorization, nothing before the answer."""
        self.assertEqual(self.proxy.transport.value(),
                         b"CONNECT pushprox.example:8443 HTTP/1.1\r\n"
                         b"Host: pushprox.example:8443\r\n"
                         b"Proxy-Authorization: Basic YTpi\r\n\r\n")
        self.assertNoResult(self.connecting)

    def test_established_tunnel_carries_the_bytes_both_ways(self) -> None:
        """After 200 the destination's protocol has the connection; early bytes reach it."""
        self.answer(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n")
        self.assertNoResult(self.connecting)
        self.answer(b"\r\nfirst")
        recorder = self.successResultOf(self.connecting)
        assert isinstance(recorder, Recorder)
        self.assertIs(recorder.transport, self.proxy.transport)
        self.answer(b"second")
        self.assertEqual(recorder.received, [b"first", b"second"])
        self.proxy.transport.clear()
        recorder.transport.write(b"to the destination")  # type: ignore[union-attr]
        self.assertEqual(self.proxy.transport.value(), b"to the destination")
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(recorder.lost)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_refusal_fails_with_the_status_and_drops_the_connection(self) -> None:
        """407: a TunnelError naming the proxy, the destination and the status."""
        self.answer(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
        failure = self.failureResultOf(self.connecting, TunnelError)
        self.assertEqual(str(failure.value),
                         "HTTP proxy http://corp:3128, asked to CONNECT pushprox.example:8443, "
                         "refused the tunnel with 407 Proxy Authentication Required: it wants "
                         "(other) credentials, http://USER:PASSWORD@HOST:PORT")
        self.assertTrue(self.proxy.transport.disconnecting)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_not_http_and_endless_heads_are_refused(self) -> None:
        """An answer that is not HTTP, or a head without end, fails the connect."""
        self.answer(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertIn("answered what is not HTTP",
                      str(self.failureResultOf(self.connecting, TunnelError).value))
        endless = TunnelEndpoint(self.clock, FakeProxyEndpoint(), "h", 1)
        connecting = endless.connect(Factory.forProtocol(Recorder))
        tunnel = endless._proxy_endpoint.protocol  # type: ignore[attr-defined]
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000)
        self.assertIn("head over 16384 bytes",
                      str(self.failureResultOf(connecting, TunnelError).value))

    def test_silent_proxy_times_out(self) -> None:
        """No answer within the timeout: a TunnelError, the connection dropped."""
        self.clock.advance(30)
        self.assertIn("did not answer within 30s",
                      str(self.failureResultOf(self.connecting, TunnelError).value))
        self.assertTrue(self.proxy.transport.disconnecting)

    def test_closed_before_answering(self) -> None:
        """The proxy hangs up before its answer: a TunnelError saying so."""
        self.proxy.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("closed the connection before answering",
                      str(self.failureResultOf(self.connecting, TunnelError).value))
        self.assertFalse(self.clock.getDelayedCalls())

    def test_cancel_while_waiting_for_the_answer(self) -> None:
        """Cancelling drops the connection to the proxy."""
        self.connecting.cancel()
        self.failureResultOf(self.connecting, CancelledError)
        self.assertTrue(self.proxy.transport.disconnecting)
        self.assertFalse(self.clock.getDelayedCalls())


class ConnectingToTheProxyTests(SynchronousTestCase):
    """Before the proxy's connection exists."""

    def test_cancel_while_connecting_cancels_the_connection_attempt(self) -> None:
        """The proxy endpoint's attempt is cancelled."""
        proxy = FakeProxyEndpoint(pending=True)
        connecting = TunnelEndpoint(Clock(), proxy, "h", 1).connect(
            Factory.forProtocol(Recorder))
        connecting.cancel()
        self.assertTrue(proxy.cancelled)
        self.failureResultOf(connecting, CancelledError)

    def test_refused_connection_to_the_proxy(self) -> None:
        """The proxy endpoint's failure is the connect's failure."""

        @implementer(IStreamClientEndpoint)
        class Refused:
            def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
                failed: Deferred[IProtocol] = Deferred()
                failed.errback(ConnectionRefusedError())
                return failed

        connecting = TunnelEndpoint(Clock(), Refused(), "h", 1).connect(
            Factory.forProtocol(Recorder))
        self.failureResultOf(connecting, ConnectionRefusedError)
