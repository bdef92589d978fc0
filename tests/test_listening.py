"""
Tests for L{pushprox.shared.program.BacklogAcceptingListener}: a listener stopped while
connections wait in its backlog answers them instead of resetting them.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pushprox.shared.program import BacklogAcceptingListener

pytestmark = pytest.mark.processes


class Answering(Protocol):
    """Says one line and closes, as a draining proxy answers with Connection: close."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"answered\n")
        self.transport.loseConnection()


class BacklogTests(TestCase):
    """Real sockets on 127.0.0.1, the real reactor."""

    async def read_all(self, client: socket.socket) -> bytes:
        """Everything the client receives until the server closes (reset: raises)."""
        client.setblocking(False)
        received = b""
        for _ in range(200):
            try:
                data = client.recv(4096)
            except BlockingIOError:
                await deferLater(reactor, 0.01, lambda: None)
                continue
            if not data:
                return received
            received += data
        raise AssertionError(f"the connection was neither answered nor closed: {received!r}")

    def test_a_connection_waiting_in_the_backlog_is_answered(self) -> Deferred[None]:
        """
        A connection the kernel completed but the process has not accepted yet, when the
        listener stops: answered (a reset would make a balancer drop a request).
        """
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listener = BacklogAcceptingListener(endpoint, Factory.forProtocol(Answering))
        listener.startService()
        address = listener.address()
        assert address is not None
        # Connected in the kernel, in the backlog: the reactor has not run since.
        port: int = address.port  # type: ignore[attr-defined]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        stopped = listener.stopService()
        assert stopped is not None
        self.assertIsNone(listener.address())

        async def check() -> None:
            await stopped
            self.assertEqual(await self.read_all(client), b"answered\n")

        return Deferred.fromCoroutine(check())

    def test_stopped_before_listening_is_quiet(self) -> None:
        """Never started: stopping has nothing to close."""
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listener = BacklogAcceptingListener(endpoint, Factory.forProtocol(Answering))
        self.assertIsNone(listener.stopService())
