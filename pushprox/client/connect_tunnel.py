# -*- test-case-name: tests.test_connect_tunnel -*-
"""
Connections through an HTTP proxy's ``CONNECT`` tunnel, as a client endpoint.

``TunnelEndpoint`` connects to the HTTP proxy, asks it ``CONNECT host:port``, and once
the proxy answers ``2xx`` hands the connection to the protocol it was asked to connect:
from then on the bytes are the destination's.  Wrapped in ``wrapClientTLS`` it makes a
TLS connection to the destination through the proxy, which sees only ciphertext.

Ownership: a ``_Tunnel`` owns its connection from ``connectionMade`` until the proxy's
answer; after a ``2xx`` the wrapped protocol owns it (the tunnel only passes bytes and the
connection's end on), after anything else the tunnel drops it and fails ``connect``.  Its
deadline timer is cancelled when the answer comes or the connection ends.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

_CONNECTION_DONE = Failure(ConnectionDone())
#: Largest answer head of the proxy to a CONNECT.
MAX_ANSWER_HEAD = 16 * 1024


class TunnelError(Exception):
    """The HTTP proxy did not open the tunnel; ``str()`` says why."""


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """Connections to ``host:port`` through the HTTP proxy reached by ``proxy_endpoint``."""

    def __init__(self, reactor: IReactorTime, proxy_endpoint: IStreamClientEndpoint,
                 host: str, port: int, *, authorization: bytes | None = None,
                 proxy_shown: str = "the HTTP proxy", timeout: float = 30.0) -> None:
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}".encode("ascii")
        if authorization is not None:
            request += b"\r\nProxy-Authorization: " + authorization
        self._request = request + b"\r\n\r\n"
        self._reactor = reactor
        self._proxy_endpoint = proxy_endpoint
        self._authority = authority
        self._proxy_shown = proxy_shown
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect to the proxy, open the tunnel, then connect ``protocolFactory``'s protocol."""
        tunnel: _Tunnel | None = None
        connecting: Deferred[IProtocol] | None = None

        def cancel(_: Deferred[IProtocol]) -> None:
            if tunnel is not None and tunnel.transport is not None:
                tunnel.give_up(CancelledError())
            elif connecting is not None:
                connecting.cancel()

        ready: Deferred[IProtocol] = Deferred(cancel)
        factory = _TunnelFactory(self, protocolFactory, ready)
        connecting = self._proxy_endpoint.connect(factory)

        def connected(protocol: IProtocol) -> None:
            nonlocal tunnel
            tunnel = cast(_Tunnel, protocol)

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        connecting.addCallbacks(connected, failed)
        return ready

    def _describe(self, what: str) -> str:
        return f"{self._proxy_shown}, asked to CONNECT {self._authority}, {what}"


class _TunnelFactory(Factory):
    """Builds the one ``_Tunnel`` of a ``connect``."""

    noisy = False

    def __init__(self, endpoint: TunnelEndpoint, wrapped: IProtocolFactory,
                 ready: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._wrapped = wrapped
        self._ready = ready

    def buildProtocol(self, addr: Any) -> _Tunnel:
        return _Tunnel(self._endpoint, self._wrapped, self._ready, addr)


class _Tunnel(Protocol):
    """One connection to the proxy: the CONNECT, its answer, then the tunnelled bytes."""

    def __init__(self, endpoint: TunnelEndpoint, wrapped_factory: IProtocolFactory,
                 ready: Deferred[IProtocol], addr: Any) -> None:
        self._endpoint = endpoint
        self._wrapped_factory = wrapped_factory
        self._ready = ready
        self._addr = addr
        self._head = b""
        self._wrapped: IProtocol | None = None
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        endpoint = self._endpoint
        self._deadline = endpoint._reactor.callLater(
            endpoint._timeout, self.give_up,
            TunnelError(endpoint._describe(f"did not answer within {endpoint._timeout:g}s")))
        assert self.transport is not None
        self.transport.write(endpoint._request)

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self._ready.called:
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_ANSWER_HEAD:
                self.give_up(TunnelError(self._endpoint._describe(
                    f"answered with a head over {MAX_ANSWER_HEAD} bytes")))
            return
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, status = status_line.partition(" ")
        code = status.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
            self.give_up(TunnelError(self._endpoint._describe(
                f"answered what is not HTTP: {status_line[:80]!r}")))
            return
        if not code.startswith("2"):
            # 407 is the code for it; tinyproxy answers CONNECT with 401.
            hint = (": it wants (other) credentials, http://USER:PASSWORD@HOST:PORT"
                    if code in ("401", "407") else "")
            self.give_up(TunnelError(self._endpoint._describe(
                f"refused the tunnel with {status.strip()[:80]}{hint}")))
            return
        self._stop_deadline()
        wrapped = self._wrapped_factory.buildProtocol(self._addr)
        if wrapped is None:
            self.give_up(TunnelError("the protocol factory refused the connection"))
            return
        self._wrapped = wrapped
        assert self.transport is not None
        wrapped.makeConnection(self.transport)
        self._ready.callback(wrapped)
        if rest:
            wrapped.dataReceived(rest)

    def give_up(self, error: Exception) -> None:
        """Fail ``connect`` with ``error`` and drop the connection to the proxy."""
        self._stop_deadline()
        if not self._ready.called:
            self._ready.errback(Failure(error))
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._stop_deadline()
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(Failure(TunnelError(self._endpoint._describe(
                f"closed the connection before answering: {reason.getErrorMessage()}"))))

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
