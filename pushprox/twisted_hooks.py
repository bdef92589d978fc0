# -*- test-case-name: tests.test_twisted_hooks -*-
"""
Every place where pushprox relies on Twisted beyond its documented interfaces.

Twisted offers no public way to stream a request body to its handler while it
arrives, to know a request's line before its body, to answer oversized headers
with anything but a bare 400, or to learn that a listening port closed a new
connection at once because the process had no file descriptor left.  The hooks that
make those possible live here, and only here, each with a docstring saying why;
``tests/test_twisted_hooks.py`` checks each one against the installed Twisted and fails
with a message naming the hook when a release changes what it relies on.  Everything
else in pushprox uses public API only.

Where a public way exists but costs a Python call per header line (counting head bytes
or catching the request line in ``lineReceived``), the private attribute is read here
instead: these hooks are on the path of every scrape, three requests each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
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
    "HeaderLimitChannel",
    "IOpenSSLTrustRoot",
    "StreamingRequest",
    "request_line",
]


_Channel = TypeVar("_Channel", bound="HeaderLimitChannel")


class HeaderLimitChannel(HTTPChannel):
    """
    An HTTP channel that answers an oversized request head itself.

    Hook: twisted.web counts a head's bytes in the private ``_receivedHeaderSize`` and,
    past ``totalHeadersSize``, calls the private ``_respondToBadRequestAndDisconnect``,
    which writes a bare 400; that method is also what every other malformed request
    gets.  The override tells the two apart by the count and sends the oversized head
    to ``headers_too_large()``.  A single line past ``MAX_LENGTH`` reaches the public
    ``lineLengthExceeded``.  Counting the bytes here instead would cost a Python call per
    header line of every request, on the path of every scrape.

    Used directly as a Site's ``protocol``: the default factory wraps the channel in a
    private class whose only job is switching to HTTP/2, which pushprox does not serve.
    """

    @classmethod
    def with_header_limit(cls: type[_Channel], limit: int) -> type[_Channel]:
        """A subclass allowing ``limit`` bytes of request line plus headers.

        Class attributes, so that neither a connection's memory nor a line's parsing
        pays for the setting.
        """
        return type(cls.__name__, (cls,), {"totalHeadersSize": limit, "MAX_LENGTH": limit,
                                           "__module__": cls.__module__})

    def headers_too_large(self) -> None:
        """A request's head exceeded ``totalHeadersSize`` (override to answer it)."""
        self._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line longer than ``MAX_LENGTH``: the head is too large as well."""
        self.headers_too_large()

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.headers_too_large()
        else:
            super()._respondToBadRequestAndDisconnect()


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
        super().gotLength(0 if self.body_sink is not None else length)

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
