"""
An in-memory network on one clock, so that a proxy, a client and targets run together
in a test without sockets, deterministically.

L{MemoryNetwork} is a L{MemoryReactorClock} whose TCP works: C{listenTCP} and
C{listenSSL} serve a factory on a port; C{connectTCP}, which C{HostnameEndpoint},
C{TCP4ClientEndpoint} and so every C{Agent} use, reaches whatever listens on that port,
or fails with the error a closed port gives.  Every host name resolves to 127.0.0.1
(the memory reactor's resolver), so a port alone names a server.  The two ends of a
connection are C{twisted.test.iosim} C{FakeTransport}s; bytes move between them, and
timers fire, only inside L{MemoryNetwork.flush} and L{MemoryNetwork.advance}.  TLS is
real (pyOpenSSL in memory): C{listenSSL} wraps the server side in a
C{TLSMemoryBIOFactory}, and L{MemoryNetwork.endpoint} the client side.

Flow control is not played: a C{FakeTransport} ignores C{pauseProducing}, so every
byte written arrives (the proxy's flow-control tests drive it on C{StringTransport}).
"""

from __future__ import annotations

import errno
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import CannotListenError, getConnectError
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from pushprox.client.link import ProxyLink
from pushprox.client.service import ClientConfig, ClientService, make_connections
from pushprox.client.target_link import TargetLink
from tests.helpers import HTTPResponse, IncompleteMessage, parse_response

#: Where every connection comes from and goes to.
HOST = "127.0.0.1"


@implementer(IListeningPort)
class _Listener:
    """A port of the network served by a factory until it stops listening."""

    def __init__(self, network: MemoryNetwork, port: int, factory: IProtocolFactory) -> None:
        self._network = network
        self._port = port
        self.factory = factory

    def startListening(self) -> None:
        """Listening started when the network made this port."""

    def stopListening(self) -> None:
        """Refuse new connections; the ones made stay."""
        self._network.stop_listening(self._port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", HOST, self._port)


@implementer(IConnector)
class _Connector:
    """A connection attempt; it succeeds or fails at the network's next flush."""

    def __init__(self, factory: ClientFactory, port: int) -> None:
        self.factory = factory
        self.port = port
        self.stopped = False
        self.transport: FakeTransport | None = None

    def stopConnecting(self) -> None:
        self.stopped = True

    def disconnect(self) -> None:
        if self.transport is None:
            self.stopped = True
        else:
            self.transport.loseConnection()

    def connect(self) -> None:
        raise NotImplementedError("a memory connection is not made again")

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", HOST, self.port)


@dataclass
class _Connection:
    """Both ends of an established connection and the pump between them."""

    pump: IOPump
    client: FakeTransport
    server: FakeTransport
    port: int

    @property
    def closed(self) -> bool:
        return bool(self.client.disconnected and self.server.disconnected)

    def __str__(self) -> str:
        client = self.client.getHost()
        return (f"{client.host}:{client.port} -> port {self.port} "
                f"({type(self.server.protocol).__name__})")


@implementer(IReactorFromThreads)
class MemoryNetwork(MemoryReactorClock):
    """A reactor whose clock is a L{Clock} and whose TCP connections live in memory."""

    #: How many rounds of moving bytes and firing due timers a flush may take.
    MAX_ROUNDS = 100_000

    def __init__(self) -> None:
        super().__init__()
        self._listeners: dict[int, IProtocolFactory] = {}
        self._connecting: list[_Connector] = []
        self._connections: list[_Connection] = []
        self._client_ports = itertools.count(40000)

    # -- IReactorTCP, IReactorSSL, IReactorFromThreads --

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> _Listener:
        """Serve ``factory`` on ``port`` (a real number: there is no kernel to pick one)."""
        if port == 0 or port in self._listeners:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))
        self._listeners[port] = factory
        # As a real port does: a Site starts its access log here.
        factory.doStart()
        return _Listener(self, port, factory)

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: Any,
                  backlog: int = 50, interface: str = "") -> _Listener:
        """Serve ``factory`` on ``port`` behind TLS with ``contextFactory``."""
        listener = self.listenTCP(port, factory, backlog, interface)
        self._listeners[port] = TLSMemoryBIOFactory(contextFactory, False, factory, clock=self)
        return listener

    def stop_listening(self, port: int) -> None:
        """Refuse new connections to ``port``."""
        factory = self._listeners.pop(port)
        if isinstance(factory, TLSMemoryBIOFactory):
            factory = factory.wrappedFactory
        factory.doStop()

    def connectTCP(self, host: str, port: int, factory: ClientFactory, timeout: float = 30,
                   bindAddress: Any = None) -> _Connector:
        """Start connecting to ``port``; the connection is made at the next flush."""
        connector = _Connector(factory, port)
        factory.startedConnecting(connector)
        self._connecting.append(connector)
        return connector

    def callFromThread(self, callable: Callable[..., Any], *args: object,
                       **kwargs: object) -> None:
        """Run ``callable`` at the next flush (signal handlers hand work over this way)."""
        self.callLater(0, callable, *args, **kwargs)

    # -- running --

    def flush(self) -> None:
        """Make pending connections, move bytes and fire due timers until nothing moves."""
        for _ in range(self.MAX_ROUNDS):
            if not self._round():
                return
        raise AssertionError("the network never settles: something keeps writing or "
                             "scheduling timers for now")

    def advance(self, amount: float) -> None:
        """
        Let ``amount`` seconds pass: every timer due meanwhile fires at its own time,
        and the network settles after each (so a timer's consequences come before the
        next timer, as on a real reactor).
        """
        end = self.seconds() + amount
        self.flush()
        for _ in range(self.MAX_ROUNDS):
            due = min((call.getTime() for call in self.getDelayedCalls()), default=math.inf)
            if due > end:
                break
            self._move_clock_to(due)
            self.flush()
        else:
            raise AssertionError(f"timers keep firing before {end:g}s")
        self._move_clock_to(end)
        self.flush()

    def _move_clock_to(self, when: float) -> None:
        step = max(when - self.seconds(), 0.0)
        if self.seconds() + step < when:  # float rounding must not leave ``when`` ahead
            step = math.nextafter(step, math.inf)
        super().advance(step)

    def _round(self) -> bool:
        moved = False
        while self._connecting:
            self._complete(self._connecting.pop(0))
            moved = True
        if any(call.getTime() <= self.seconds() for call in self.getDelayedCalls()):
            super().advance(0)
            moved = True
        for connection in list(self._connections):
            if connection.pump.pump(advanceClock=False):
                moved = True
            if connection.closed:
                self._connections.remove(connection)
        return moved

    def _complete(self, connector: _Connector) -> None:
        if connector.stopped:
            return
        server_factory = self._listeners.get(connector.port)
        if server_factory is None:
            refused = getConnectError((errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
            connector.factory.clientConnectionFailed(connector, Failure(refused))
            return
        client_address = IPv4Address("TCP", HOST, next(self._client_ports))
        server_address = IPv4Address("TCP", HOST, connector.port)
        server_protocol = server_factory.buildProtocol(client_address)
        client_protocol = connector.factory.buildProtocol(server_address)
        assert server_protocol is not None and client_protocol is not None
        server = FakeTransport(server_protocol, isServer=True, hostAddress=server_address,
                               peerAddress=client_address)
        client = FakeTransport(client_protocol, isServer=False, hostAddress=client_address,
                               peerAddress=server_address)
        connector.transport = client
        pump = connect(server_protocol, server, client_protocol, client, greet=False)
        self._connections.append(_Connection(pump, client, server, connector.port))

    # -- looking --

    def open_connections(self) -> list[str]:
        """The connections not closed at both ends, described."""
        return [str(connection) for connection in self._connections if not connection.closed]

    # -- the other side: connecting by hand --

    def endpoint(self, port: int, *,
                 tls: IOpenSSLClientConnectionCreator | None = None) -> IStreamClientEndpoint:
        """An endpoint to ``port``, over TLS with ``tls`` when given."""
        endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(self, HOST, port)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint, clock=self)
        return endpoint

    def exchange(self, port: int, request: bytes, *,
                 tls: IOpenSSLClientConnectionCreator | None = None) -> Exchange:
        """Send ``request`` on a new connection to ``port`` and flush."""
        exchange = Exchange(request)
        connectProtocol(self.endpoint(port, tls=tls), exchange)
        self.flush()
        return exchange


class Exchange(Protocol):
    """One request written as bytes on its own connection, and what came back."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.received = b""
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._parse(at_eof=False) is not None:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True

    def _parse(self, *, at_eof: bool) -> HTTPResponse | None:
        try:
            return parse_response(self.received, at_eof=at_eof)
        except IncompleteMessage:
            return None

    @property
    def answered(self) -> bool:
        """Whether a whole response has arrived."""
        return self._parse(at_eof=self.closed) is not None

    def response(self) -> HTTPResponse:
        """The response; fails when it has not arrived whole."""
        response = self._parse(at_eof=self.closed)
        if response is None:
            raise AssertionError(f"no whole response (connection "
                                 f"{'closed' if self.closed else 'open'}): "
                                 f"{self.received[:300]!r}")
        return response


# -- the client's connections --


def client_connections(network: MemoryNetwork, config: ClientConfig, *,
                       proxy_policy: IPolicyForHTTPS | None = None
                       ) -> tuple[ProxyLink, TargetLink, list[HTTPConnectionPool]]:
    """The link to ``config``'s proxy, the target link and its Agent's pool, built by
    C{make_connections} on ``network``."""
    return make_connections(network, config.endpoint("poll"), proxy_policy=proxy_policy)


# -- a clock that knows whose timers are whose --


@implementer(IReactorTime)
class TrackingClock:
    """A clock that remembers the delayed calls made through it (one component's timers)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: list[IDelayedCall] = []

    def seconds(self) -> float:
        return float(self._clock.seconds())

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object,
                  **kwargs: object) -> IDelayedCall:
        call = self._clock.callLater(delay, callable, *args, **kwargs)
        self._calls = [*self.pending(), call]
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return self.pending()

    def pending(self) -> list[IDelayedCall]:
        """The delayed calls made through this clock that have not run yet."""
        return [call for call in self._calls if call.active()]


def stop_client(network: MemoryNetwork, service: ClientService) -> Deferred[None]:
    """Stop ``service``, driving ``network`` through its grace period; the stop's Deferred."""
    stopped: Deferred[None] = service.stopService()
    network.flush()
    if not stopped.called:
        network.advance(service.config.shutdown_grace)
    return stopped
