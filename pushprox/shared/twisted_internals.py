# -*- test-case-name: tests.test_twisted_internals -*-
"""
Every place where pushprox relies on Twisted beyond its documented interfaces.

Twisted offers no public way to send bytes before the reactor's next turn when nothing
waits (``send_now``), to choose how ``Agent`` writes a request (``write_eagerly``), or to
learn that a listening port closed a new connection at once because the process had no
file descriptor left (``AcceptFailureObserver``); and it exports ``IOpenSSLTrustRoot``
only from a private module.  Those hooks live here, and only here, each with a docstring
saying why; ``tests/test_twisted_internals.py`` checks each one against the installed
Twisted and fails with a message naming the hook when a release changes what it relies
on.  Everything else in pushprox uses public API only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IProtocol,
    ITransport,
)
from twisted.logger import ILogObserver
from zope.interface import implementer

if TYPE_CHECKING:
    # Twisted exports this interface only from its private module; it is used in type
    # annotations only, never at run time.
    from twisted.internet._sslverify import IOpenSSLTrustRoot as IOpenSSLTrustRoot

__all__ = [
    "AcceptFailureObserver",
    "AcceptFailures",
    "EagerWrites",
    "IOpenSSLTrustRoot",
    "send_now",
    "write_eagerly",
]


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


def write_eagerly(protocol: IProtocol,
                  wrapper: Callable[[ITransport], object] = EagerWrites) -> IProtocol:
    """
    Give a connected ``protocol`` a transport whose writes go out at once (``EagerWrites``).

    Hook: ``Agent``'s ``HTTP11ClientProtocol`` offers no way to choose how its request
    is written; it writes through its ``transport`` attribute, looked up at each write,
    so replacing that attribute once connected (a callback of the endpoint's
    ``connect``) sends a request without a body in one ``send()`` instead of a reactor
    turn later.  Everything but the writes is still the transport's.
    """
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        protocol.transport = wrapper(transport)  # type: ignore[attr-defined]
    return protocol


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

