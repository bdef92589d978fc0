# -*- test-case-name: tests.test_twisted_hooks -*-
"""
Every place where pushprox relies on twisted.web beyond its documented interfaces.

Twisted offers no public way to stream a request body to its handler while it
arrives, to know a request's line before its body, or to answer oversized headers
with anything but a bare 400.  The hooks that make those possible live here, and only
here, each with a docstring saying why; ``tests/test_twisted_hooks.py`` checks each one
against the installed Twisted and fails with a message naming the hook when a release
changes what it relies on.  Everything else in pushprox uses public API only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

if TYPE_CHECKING:
    # Twisted exports this interface only from its private module; it is used in type
    # annotations only, never at run time.
    from twisted.internet._sslverify import IOpenSSLTrustRoot as IOpenSSLTrustRoot

__all__ = ["BodySink", "IOpenSSLTrustRoot", "RequestLineChannel", "StreamingRequest"]


class RequestLineChannel(HTTPChannel):
    """
    An HTTP channel that knows each request's line before its body, and limits its head.

    Hooks: ``HTTPChannel`` is a ``LineReceiver`` that passes the request line and every
    header line to ``lineReceived`` and calls ``allHeadersReceived`` once the head is
    complete.  The request line is kept (``request_line``) so that a request can
    choose where its body goes before the body arrives; Twisted keeps it only in private
    attributes.  Header bytes are counted here, against ``header_limit()``, so that an
    oversized head reaches ``headers_too_large()`` (Twisted's own check answers a bare
    400 from a private method).

    Used directly as a Site's ``protocol``: the default factory wraps the channel in a
    private class whose only job is switching to HTTP/2, which pushprox does not serve.
    """

    #: Method and target of the request whose head is being read or was read last.
    request_line: tuple[bytes, bytes] = (b"", b"")
    _head_bytes = 0

    def header_limit(self) -> int:
        """The request line plus headers allowed, in bytes (override)."""
        return HTTPChannel.totalHeadersSize

    @property
    def totalHeadersSize(self) -> int:  # type: ignore[override]
        """Twisted's own limit, kept from striking before ours."""
        return self.header_limit()

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        """One line may use the whole allowance, no more."""
        return self.header_limit()

    def headers_too_large(self) -> None:
        """A request's head exceeded ``header_limit()`` (override to answer it)."""
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # type: ignore[union-attr]
        self.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        """Count the head's bytes, note the request line, then parse as Twisted does."""
        first = self._head_bytes == 0 and bool(line)
        self._head_bytes += len(line)
        if self._head_bytes > self.header_limit():
            self.headers_too_large()
            return
        if first:
            method, _, rest = line.partition(b" ")
            self.request_line = (method, rest.partition(b" ")[0])
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line longer than ``MAX_LENGTH``: the head is too large as well."""
        self.headers_too_large()

    def allHeadersReceived(self) -> None:
        """The head is complete: the next line starts the next request."""
        self._head_bytes = 0
        super().allHeadersReceived()


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
        channel = self.channel
        method, path = (
            channel.request_line if isinstance(channel, RequestLineChannel) else (b"", b"")
        )
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
