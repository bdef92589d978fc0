"""
HTTP messages as bytes: requests written by hand (proxy form included, as Prometheus sends
them), responses read with ``pushprox.shared.wire``, over a blocking socket or on the reactor.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from pushprox.shared import wire
from tests.harness.waiting import LOCALHOST

#: ``wire.decode_response_head`` reads pushed heads, which always carry an Id; this one
#: is appended to a plain response's head and dropped again.
_PLACEHOLDER_ID = b"Id: -"


@dataclass(frozen=True)
class HTTPResponse:
    """An HTTP response read off the wire, body de-chunked, nothing else decoded."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return wire.header_value(self.headers, name)

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def comparable_headers(self, ignore: Iterable[bytes] = ()) -> list[tuple[bytes, bytes]]:
        """Headers with lowercased names, sorted, without those in ``ignore``."""
        skip = {name.lower() for name in ignore}
        return sorted((key.lower(), value) for key, value in self.headers
                      if key.lower() not in skip)

    @property
    def text(self) -> str:
        """The body as text, for messages in assertions."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body read as JSON."""
        return json.loads(self.body)


class IncompleteMessage(Exception):
    """More bytes are needed before the message can be read."""


def parse_response(data: bytes, *, at_eof: bool = False, head_only: bool = False) -> HTTPResponse:
    """
    Read one HTTP/1.x response from the start of ``data``.

    Raises IncompleteMessage when the response is not all there yet; a body without
    Content-Length or chunking runs to the end of the connection (``at_eof``).  A
    malformed message raises ``wire.WireError``.
    """
    return _parse_one(data, at_eof=at_eof, head_only=head_only)[0]


def parse_responses(data: bytes, *, at_eof: bool = False) -> list[HTTPResponse]:
    """
    Every HTTP/1.x response in ``data``, in order: the answers of one connection.

    As ``parse_response``: IncompleteMessage when the last one is not all there, a body
    without Content-Length or chunking running to the end (``at_eof``).
    """
    found: list[HTTPResponse] = []
    while data:
        response, data = _parse_one(data, at_eof=at_eof, head_only=False)
        found.append(response)
    return found


def response_so_far(data: bytes) -> tuple[HTTPResponse, bool]:
    """
    The response at the start of ``data`` as far as it has arrived, and whether it is
    all there (a body that runs to the end of the connection never is).

    For answers still being written (a relay in progress); IncompleteMessage until the
    head is complete.
    """
    split = wire.split_head(data)
    if split is None:
        raise IncompleteMessage()
    head_bytes, rest = split
    head = wire.decode_response_head(head_bytes + b"\r\n" + _PLACEHOLDER_ID)
    headers = head.headers[:-1]
    if head.status in (204, 304) or 100 <= head.status < 200:
        return HTTPResponse(head.status, head.reason, headers, b"", False), True
    if head.framing is wire.BodyFraming.CHUNKED:
        decoder = wire.ChunkedDecoder()
        body = b"".join(decoder.feed(rest))
        return HTTPResponse(head.status, head.reason, headers, body, True), decoder.finished
    if head.framing is wire.BodyFraming.TO_END:
        return HTTPResponse(head.status, head.reason, headers, rest, False), False
    length = head.length or 0
    return (HTTPResponse(head.status, head.reason, headers, rest[:length], False),
            len(rest) >= length)


def _parse_one(data: bytes, *, at_eof: bool, head_only: bool) -> tuple[HTTPResponse, bytes]:
    """The response at the start of ``data``, and the bytes after it."""
    split = wire.split_head(data)
    if split is None:
        raise IncompleteMessage()
    head_bytes, rest = split
    head = wire.decode_response_head(head_bytes + b"\r\n" + _PLACEHOLDER_ID)
    chunked = False
    if head_only or head.status in (204, 304) or 100 <= head.status < 200:
        body, after = b"", rest
    elif head.framing is wire.BodyFraming.CHUNKED:
        chunked = True
        decoder = wire.ChunkedDecoder()
        body = b"".join(decoder.feed(rest))
        if not decoder.finished:
            raise IncompleteMessage()
        after = decoder.unread
    elif head.framing is wire.BodyFraming.TO_END:
        if not at_eof:
            raise IncompleteMessage()
        body, after = rest, b""
    else:
        length = head.length or 0
        if len(rest) < length:
            raise IncompleteMessage()
        body, after = rest[:length], rest[length:]
    return HTTPResponse(head.status, head.reason, head.headers[:-1], body, chunked), after


def http_request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str | None = None,
) -> bytes:
    """
    An HTTP/1.1 request.  An absolute ``target`` makes it a proxy-form request (as
    Prometheus sends with ``proxy_url``) with the Host header taken from it.
    """
    if host is None:
        match = re.match(r"^[a-z]+://([^/?#]+)", target)
        host = match.group(1) if match else LOCALHOST
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def prometheus_headers(timeout: float = 10.0, *, gzip: bool = True) -> list[tuple[str, str]]:
    """The headers Prometheus sends with every scrape."""
    headers = [
        ("User-Agent", "Prometheus/2.53.0"),
        ("Accept", "application/openmetrics-text;version=1.0.0;q=0.5,"
                   "text/plain;version=0.0.4;q=0.4,*/*;q=0.1"),
        ("X-Prometheus-Scrape-Timeout-Seconds", f"{timeout:g}"),
    ]
    if gzip:
        headers.append(("Accept-Encoding", "gzip"))
    return headers


def scrape_request(url: str, timeout: float = 10.0, *, close: bool = False,
                   headers: Sequence[tuple[str, str]] | None = None) -> bytes:
    """
    A scrape of ``url`` as Prometheus sends it to a proxy (proxy form, its headers for
    ``timeout``, or ``headers`` instead); ``close`` asks for the connection to close after.
    """
    sent = prometheus_headers(timeout) if headers is None else list(headers)
    if close:
        sent = [*sent, ("Connection", "close")]
    return http_request_bytes("GET", url, sent)


class ClosedBeforeResponse(AssertionError):
    """The server closed or reset the connection before any byte of the next response."""


class RawConnection:
    """A blocking client socket (TLS with ``tls``) that sends bytes and reads responses."""

    def __init__(self, port: int, *, host: str = LOCALHOST, timeout: float = 15.0,
                 tls: ssl.SSLContext | None = None,
                 receive_buffer: int | None = None) -> None:
        if receive_buffer is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        else:
            # Set before connecting: the window offered in the handshake depends on it.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname=host)
        self._buffer = b""
        #: How many responses were read whole on this connection.
        self.responses_read = 0

    def send(self, data: bytes) -> None:
        """Write ``data`` as is."""
        self.sock.sendall(data)

    def read_response(self, *, timeout: float = 15.0, head_only: bool = False) -> HTTPResponse:
        """Read the next whole response (its framing decides where it ends)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = parse_response(self._buffer, head_only=head_only)
            except IncompleteMessage:
                pass
            else:
                self._buffer = b""  # one response at a time, no pipelining
                self.responses_read += 1
                return response
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no whole response within {timeout:g}s; "
                                     f"got {self._buffer[:300]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                if self._buffer:
                    raise
                raise ClosedBeforeResponse("connection reset before a response") from None
            if not data and not self._buffer:
                raise ClosedBeforeResponse("connection closed before a response")
            if not data:
                try:
                    self.responses_read += 1
                    return parse_response(self._buffer, at_eof=True, head_only=head_only)
                except IncompleteMessage:
                    raise AssertionError(
                        f"connection closed inside a response: {self._buffer[:300]!r}"
                    ) from None
            self._buffer += data

    def read_head(self, *, timeout: float = 15.0) -> HTTPResponse:
        """
        Read until the head of the next response has arrived: the response as far as it
        has (the rest stays to be read, by ``read_until_closed``).
        """
        deadline = time.monotonic() + timeout
        while wire.split_head(self._buffer) is None:
            if not self._receive(deadline):
                raise AssertionError(
                    f"connection closed inside a response head: {self._buffer[:300]!r}")
        return response_so_far(self._buffer)[0]

    def read_until_closed(self, *, timeout: float = 15.0) -> tuple[HTTPResponse, bool]:
        """
        Read until the peer closes the connection: the response as far as it arrived (a
        body cut short stays short), and whether the connection ended with a reset.
        """
        deadline = time.monotonic() + timeout
        try:
            while self._receive(deadline):
                pass
        except ConnectionResetError:
            reset = True
        else:
            reset = False
        try:
            response = response_so_far(self._buffer)[0]
        except IncompleteMessage:
            raise AssertionError(
                f"connection closed inside a response head: {self._buffer[:300]!r}") from None
        self._buffer = b""
        return response, reset

    def _receive(self, deadline: float) -> bool:
        """Add what arrives before ``deadline`` to the buffer; False once the peer closed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"nothing more within the time given; "
                                 f"got {self._buffer[:300]!r}")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        self._buffer += data
        return bool(data)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def raw_http(port: int, request: bytes, *, timeout: float = 15.0,
             host: str = LOCALHOST, tls: ssl.SSLContext | None = None) -> HTTPResponse:
    """Send ``request`` on a new connection and read one response."""
    with RawConnection(port, host=host, timeout=timeout, tls=tls) as connection:
        connection.send(request)
        return connection.read_response(timeout=timeout)


def http_get(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
) -> HTTPResponse:
    """GET ``url`` directly (an https URL with ``tls``); every status is a response."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    assert (parts.scheme == "https") == (tls is not None), (url, tls)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    request = http_request_bytes("GET", target, headers, host=parts.netloc)
    return raw_http(parts.port, request, timeout=timeout, host=parts.hostname, tls=tls)


def scrape_via_proxy(
    proxy_port: int,
    url: str,
    *,
    timeout: float = 10.0,
    headers: Sequence[tuple[str, str]] | None = None,
    read_timeout: float | None = None,
) -> HTTPResponse:
    """GET ``url`` through the proxy as Prometheus does (proxy form, its headers)."""
    request = scrape_request(url, timeout, headers=headers)
    return raw_http(proxy_port, request, timeout=read_timeout or timeout + 10)


# -- on the reactor --


def track_connections(factory: Any) -> set[Any]:
    """The set of protocols ``factory`` builds that are still connected (kept up to date)."""
    live: set[Any] = set()
    build = factory.buildProtocol

    def build_tracked(addr: Any) -> Any:
        protocol = build(addr)
        if protocol is not None:
            live.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> Any:
                live.discard(protocol)
                return lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    factory.buildProtocol = build_tracked
    return live


class _RawHTTPClient(Protocol):
    """Sends one request, reads one response, closes, then reports it."""

    def __init__(self, request: bytes, done: Deferred[HTTPResponse]) -> None:
        self._request = request
        self._done = done
        self._buffer = b""
        self._response: HTTPResponse | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self._response is None:
            try:
                self._response = parse_response(self._buffer)
            except IncompleteMessage:
                return
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._response is None:
            try:
                self._response = parse_response(self._buffer, at_eof=True)
            except IncompleteMessage:
                self._done.errback(AssertionError(
                    f"connection closed inside a response: {self._buffer[:300]!r}"))
                return
        self._done.callback(self._response)


async def raw_http_request(reactor: IReactorTCP, port: int, request: bytes) -> HTTPResponse:
    """
    Send ``request`` bytes to 127.0.0.1:port and read one response, on the reactor.

    The connection is closed (and gone from the reactor) before the response is returned.
    """
    done: Deferred[HTTPResponse] = Deferred()
    await connectProtocol(TCP4ClientEndpoint(reactor, LOCALHOST, port),
                          _RawHTTPClient(request, done))
    return await done
