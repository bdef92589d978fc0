# -*- test-case-name: tests.test_wire -*-
"""
The PushProx protocol's whole vocabulary: its messages, header names, header rules.

A poll answer carries the scrape request in proxy form (request line with an absolute
URI, headers, ``Id``); a push body carries the target's whole response (status line,
headers with ``Id``, body).  Beside encoding and decoding those two messages, this
module holds every header name (upstream's and our extensions'), which headers may
cross which hop, and the parsers of timeouts, hosts, labels and extensions.  These are
pure functions on bytes: no I/O, no Twisted, so that they can be tested against the
byte-exact recordings of the upstream Go implementation and fuzzed.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

Headers = Sequence[tuple[bytes, bytes]]

# -- header names --

ID_HEADER = b"Id"
TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout-Seconds"
#: Upstream's client writes this misspelled header into its pushes.
UPSTREAM_TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout"
# Our extensions' headers; an upstream peer ignores every one of them.
_EXTENSION = b"X-PushProx-"
#: Our client asks the proxy to answer an idle poll after this many seconds.
POLL_TIMEOUT_HEADER = _EXTENSION + b"Poll-Timeout"
#: A pushprox proxy lists the extensions it speaks on every poll answer; upstream
#: proxies send nothing, and then our client behaves exactly as an upstream client.
EXTENSIONS_HEADER = _EXTENSION + b"Extensions"
#: Our client asks, on a push, for the next scrape queued for it in the push's answer.
PUSH_POLL_HEADER = _EXTENSION + b"Push-Poll"
#: Marks a push answer whose body is the next scrape request.
NEXT_SCRAPE_HEADER = _EXTENSION + b"Next-Scrape"
#: Labels a client asks ``/clients`` to list it with.
LABELS_HEADER = _EXTENSION + b"Labels"
#: Our client marks a response it synthesized because the target could not be
#: scraped; the value is the one-line reason.
SCRAPE_ERROR_HEADER = _EXTENSION + b"Scrape-Error"
#: What kind of failure that was: ``timeout`` (the proxy answers 504), ``refused``,
#: ``unreachable``, ``overload`` or ``shutdown`` (502).
SCRAPE_ERROR_KIND_HEADER = _EXTENSION + b"Scrape-Error-Kind"

#: Between replicas of a cluster only: the shared secret that makes a replica a peer.
PEER_TOKEN_HEADER = _EXTENSION + b"Peer-Token"
#: Between replicas: the request was forwarded by a peer and must not be forwarded again.
HOP_HEADER = _EXTENSION + b"Hop"
#: Between replicas: the authenticated client a forwarded push comes from.
PRINCIPAL_HEADER = _EXTENSION + b"Principal"

#: The extension that bounds idle polls (``POLL_TIMEOUT_HEADER``).
POLL_TIMEOUT_EXTENSION = b"poll-timeout"
#: The extension that answers a push with the next queued scrape (``PUSH_POLL_HEADER``).
PUSH_POLL_EXTENSION = b"push-poll"

# -- which headers cross which hop (all names lower case) --

#: Hop-by-hop headers (RFC 9110 7.6.1) and proxy credentials: never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: The headers the protocol itself writes into the embedded messages.
PROTOCOL_HEADERS = frozenset(
    {ID_HEADER.lower(), TIMEOUT_HEADER.lower(), UPSTREAM_TIMEOUT_HEADER.lower()}
)
#: What replicas of a cluster tell each other; never passed on to anyone else.
PEER_HEADERS = frozenset(
    {PEER_TOKEN_HEADER.lower(), HOP_HEADER.lower(), PRINCIPAL_HEADER.lower()}
)
#: Prometheus' headers a poll answer does not copy: they are replaced or hop-by-hop.
NOT_SENT_TO_CLIENT = HOP_BY_HOP | PROTOCOL_HEADERS | PEER_HEADERS | {b"host"}
#: Scrape request headers the client does not send to its target.
NOT_SENT_TO_TARGET = HOP_BY_HOP | {b"host", ID_HEADER.lower()}
#: Target response headers a push does not copy: its framing is the push's own.
NOT_PUSHED = HOP_BY_HOP | {b"content-length", ID_HEADER.lower()}
#: Pushed response headers that Prometheus must not see: ours, upstream's, and those
#: that describe the push's framing rather than the response's.
NOT_RELAYED = HOP_BY_HOP | PROTOCOL_HEADERS | PEER_HEADERS | {b"content-length"}

_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# A host name or an IP address literal, as it may appear in a URL or a poll body.
_FQDN = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_.:\[\]-]*[a-z0-9_\]])?$")


class WireError(ValueError):
    """An embedded HTTP message could not be read; the text says why, in one line."""


class BodyFraming(enum.Enum):
    """How the body of an embedded response is delimited."""

    LENGTH = "length"
    CHUNKED = "chunked"
    TO_END = "to-end"


@dataclass(frozen=True, slots=True)
class ScrapeRequest:
    """A scrape request as the proxy hands it to a client in a poll answer."""

    scrape_id: str
    method: bytes
    url: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    #: The scrape timeout in seconds, or None when the header is missing or unreadable.
    timeout: float | None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and headers of a target response carried in a push."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    scrape_id: str
    framing: BodyFraming
    #: The body's length when ``framing`` is LENGTH.
    length: int | None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (case-insensitive), or None."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def without(
    headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` minus those named in ``names`` (lower case), order kept."""
    return [(name, value) for name, value in headers if name.lower() not in names]


def parse_seconds(raw: bytes | None) -> float | None:
    """A finite number of seconds in ``raw``, or None when missing or unreadable."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    # Rejects nan and infinities.
    return seconds if -math.inf < seconds < math.inf else None


def parse_timeout(raw: bytes | None) -> float | None:
    """A positive finite timeout in seconds, or None when missing or unreadable."""
    seconds = parse_seconds(raw)
    return seconds if seconds is not None and seconds > 0 else None


def format_timeout(seconds: float) -> bytes:
    """A timeout as Prometheus writes it: decimal seconds, no exponent."""
    return (b"%.6f" % seconds).rstrip(b"0").rstrip(b".") or b"0"


def _clean_value(value: bytes) -> bytes:
    # A header value with a line break would let a peer inject headers.
    return value.replace(b"\r", b" ").replace(b"\n", b" ")


def _header_lines(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + _clean_value(value) + b"\r\n" for name, value in headers]


def url_authority(url: bytes) -> bytes:
    """The ``host[:port]`` of an absolute URL, without user information."""
    authority = url.partition(b"//")[2]
    for end in (b"/", b"?", b"#"):
        authority = authority.partition(end)[0]
    return authority.rpartition(b"@")[2]


def authority_host(authority: bytes) -> bytes:
    """The host of a ``host[:port]`` authority; an IPv6 literal keeps its brackets."""
    if authority.startswith(b"["):
        return authority[: authority.find(b"]") + 1]
    return authority.partition(b":")[0]


def normalize_fqdn(raw: bytes) -> str | None:
    """The host name in ``raw`` lowercased, without a trailing dot, or None if it is none."""
    if len(raw) <= _CACHED_LENGTH:
        return _normalize_fqdn_cached(raw)
    return _normalize_fqdn(raw)


def _normalize_fqdn(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii").strip().lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    return text if _FQDN.match(text) else None


def url_fqdn(url: bytes) -> str | None:
    """The FQDN a scrape of the absolute ``url`` is for, or None when it names none."""
    if len(url) <= _CACHED_LENGTH:
        return _url_fqdn_cached(url)
    return _url_fqdn(url)


# Every scrape and every poll asks for the same few names again: the answers are kept,
# for inputs no longer than a host name may be (a bounded memory, whatever is sent).
_CACHED_LENGTH = 255
_normalize_fqdn_cached = functools.lru_cache(maxsize=1024)(_normalize_fqdn)


def _url_fqdn(url: bytes) -> str | None:
    return _normalize_fqdn(authority_host(url_authority(url)))


_url_fqdn_cached = functools.lru_cache(maxsize=1024)(_url_fqdn)


def encode_scrape_request(
    *,
    method: bytes,
    url: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    scrape_id: str,
    timeout: float,
) -> bytes:
    """
    Serialize a scrape request in proxy form, as the proxy answers a poll.

    ``headers`` are Prometheus' headers; ``Host``, ``Id``, the timeout headers and
    hop-by-hop headers among them are replaced, so a client always learns the timeout
    the proxy applies (upstream clients refuse a request without it).
    """
    lines = [method + b" " + url + b" HTTP/1.1\r\n", b"Host: " + url_authority(url) + b"\r\n"]
    lines.extend(_header_lines(without(headers, NOT_SENT_TO_CLIENT)))
    lines.append(ID_HEADER + b": " + scrape_id.encode("ascii") + b"\r\n")
    lines.append(TIMEOUT_HEADER + b": " + format_timeout(timeout) + b"\r\n\r\n")
    return b"".join(lines)


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """
    Split a message after its head: the status or request line and headers (without
    the blank line), and the rest; None while the blank line has not arrived.
    """
    end, sep_len = data.find(b"\r\n\r\n"), 4
    if end < 0:
        end, sep_len = data.find(b"\n\n"), 2
    if end < 0:
        return None
    return data[:end], data[end + sep_len :]


def _head_lines(head: bytes) -> tuple[bytes, list[bytes]]:
    first, *lines = head.replace(b"\r\n", b"\n").split(b"\n")
    return first, lines


def _parse_headers(lines: list[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            raise WireError(f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip(b" \t")))
    return tuple(headers)


def _scrape_id(headers: Headers) -> str:
    raw = header_value(headers, ID_HEADER)
    if not raw:
        raise WireError("message has no Id header")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("Id header is not ASCII") from None


def decode_scrape_request(data: bytes) -> ScrapeRequest:
    """Read a scrape request from the body of a poll answer."""
    split = split_head(data)
    if split is None:
        raise WireError("message has no end of headers")
    first, lines = _head_lines(split[0])
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise WireError(f"malformed request line {first[:60]!r}")
    method, url, _version = parts
    if not _TOKEN_CHARS.issuperset(method) or not method:
        raise WireError(f"malformed method {method[:20]!r}")
    if not url.isascii():
        raise WireError(f"request URI is not ASCII: {url[:60]!r}")
    try:
        target = urlsplit(url)
        hostname = target.hostname
    except ValueError as error:
        raise WireError(f"malformed request URI {url[:60]!r}: {error}") from None
    if target.scheme not in (b"http", b"https") or not hostname:
        raise WireError(f"request URI is not absolute: {url[:60]!r}")
    headers = _parse_headers(lines)
    return ScrapeRequest(
        scrape_id=_scrape_id(headers),
        method=method,
        url=url,
        headers=headers,
        timeout=parse_timeout(header_value(headers, TIMEOUT_HEADER)),
    )


def decode_response_head(head: bytes) -> ResponseHead:
    """
    Read the status line and headers of a pushed response (without the blank line).

    Both forms of the upstream Go client are accepted: ``HTTP/1.1`` with a
    Content-Length or chunked body, and its synthesized ``HTTP/0.0 500`` whose body
    runs to the end of the push.
    """
    first, lines = _head_lines(head)
    version, _, rest = first.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/") or len(code) != 3 or not code.isdigit():
        raise WireError(f"malformed status line {first[:60]!r}")
    headers = _parse_headers(lines)
    transfer = header_value(headers, b"transfer-encoding")
    length_value = header_value(headers, b"content-length")
    length: int | None = None
    if transfer is not None and transfer.strip().lower() == b"chunked":
        framing = BodyFraming.CHUNKED
    elif transfer is not None:
        raise WireError(f"unsupported Transfer-Encoding {transfer[:30]!r}")
    elif length_value is not None:
        digits = length_value.strip()
        # Twenty digits are more than any body; more would be slow to convert.
        if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
            raise WireError(f"malformed Content-Length {length_value[:30]!r}")
        framing = BodyFraming.LENGTH
        length = int(digits)
    else:
        framing = BodyFraming.TO_END
    return ResponseHead(
        status=int(code),
        reason=reason,
        headers=headers,
        scrape_id=_scrape_id(headers),
        framing=framing,
        length=length,
    )


def encode_response_head(
    *,
    status: int,
    reason: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    scrape_id: str,
    length: int | None,
) -> bytes:
    """
    Serialize a target's status line and headers for a push.

    The body follows as is: with ``length`` it is framed by Content-Length, without
    it the body runs to the end of the push (readable by upstream proxies, which use
    Go's ``http.ReadResponse``).
    """
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _clean_value(reason))]
    lines.extend(_header_lines(without(headers, NOT_PUSHED)))
    if length is not None:
        lines.append(b"Content-Length: %d\r\n" % (length,))
    lines.append(ID_HEADER + b": " + scrape_id.encode("ascii") + b"\r\n\r\n")
    return b"".join(lines)


def encode_error_response(*, scrape_id: str, reason: str, kind: str = "unreachable") -> bytes:
    """
    A whole push body saying that the target could not be scraped.

    Status 500 as upstream writes it (so an upstream proxy relays what it always
    did), marked with ``X-PushProx-Scrape-Error`` so that our proxy answers 502.
    """
    body = reason.encode("utf-8", "replace")
    head = encode_response_head(
        status=500,
        reason=b"Internal Server Error",
        headers=[
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (SCRAPE_ERROR_HEADER, body[:1000]),
            (SCRAPE_ERROR_KIND_HEADER, kind.encode("ascii")),
        ],
        scrape_id=scrape_id,
        length=len(body),
    )
    return head + body


@dataclass(frozen=True, slots=True)
class ClientFailure:
    """What our client reported instead of a target's response (``SCRAPE_ERROR_HEADER``)."""

    #: ``timeout``, ``refused``, ``unreachable``, ``overload`` or ``shutdown``.
    kind: str
    reason: str


def client_failure(head: ResponseHead) -> ClientFailure | None:
    """The failure our client reports in a pushed response, or None for a real response."""
    reason = head.header(SCRAPE_ERROR_HEADER)
    if reason is None:
        return None
    kind = head.header(SCRAPE_ERROR_KIND_HEADER) or b"unreachable"
    return ClientFailure(kind=kind.decode("latin-1"), reason=reason.decode("utf-8", "replace"))


class HeadTooLarge(WireError):
    """A message head grew past its limit before its blank line arrived."""


class HeadReader:
    """Collects the head of a message arriving in pieces, up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """
        Take the next bytes: the head and what follows it once the blank line has
        arrived, else None.  Raises HeadTooLarge past the limit.
        """
        buffer = self._buffer + data
        split = split_head(buffer)
        if split is not None:
            self._buffer = b""
            return split
        if len(buffer) > self._limit:
            raise HeadTooLarge(f"pushed response headers exceed the limit of {self._limit} bytes")
        self._buffer = buffer
        return None


class BodyReader:
    """Takes a pushed response's body out of the push, by the framing of its head."""

    def __init__(self, head: ResponseHead) -> None:
        self._decoder = ChunkedDecoder() if head.framing is BodyFraming.CHUNKED else None
        #: Bytes still expected when the head gave a Content-Length.
        self._left = head.length

    def feed(self, data: bytes) -> list[bytes]:
        """The body bytes in ``data`` (bytes past a Content-Length are dropped)."""
        if self._decoder is not None:
            return self._decoder.feed(data)
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        return [data] if data else []

    def missing(self) -> str | None:
        """Why the body is incomplete if the push ended now, or None when it is whole."""
        if self._decoder is not None and not self._decoder.finished:
            return "push body ended inside a chunked response body"
        if self._left:
            return f"push body ended {self._left} bytes short of its Content-Length"
        return None


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 7.1), trailers discarded."""

    _MAX_LINE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0
        self._state = "size"
        self.finished = False

    @property
    def unread(self) -> bytes:
        """The bytes fed after the body's end (once ``finished``): not part of the body."""
        return self._buffer if self.finished else b""

    def feed(self, data: bytes) -> list[bytes]:
        """Decode ``data``; return the body bytes it held. Raises WireError."""
        out: list[bytes] = []
        self._buffer += data
        while self._buffer and not self.finished:
            if self._state == "data":
                piece = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(piece) :]
                self._remaining -= len(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._state = "crlf"
                continue
            line_end = self._buffer.find(b"\n")
            if line_end < 0:
                if len(self._buffer) > self._MAX_LINE:
                    raise WireError("chunk line too long")
                break
            line = self._buffer[:line_end].rstrip(b"\r")
            self._buffer = self._buffer[line_end + 1 :]
            if self._state == "crlf":
                if line:
                    raise WireError("missing CRLF after chunk data")
                self._state = "size"
            elif self._state == "size":
                size_text = line.partition(b";")[0].strip()
                if not size_text or not _HEX_DIGITS.issuperset(size_text):
                    raise WireError(f"malformed chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = "trailers"
                else:
                    self._remaining = size
                    self._state = "data"
            elif not line:  # the blank line after trailers
                self.finished = True
        return out


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")
MAX_LABELS = 32
MAX_LABEL_VALUE = 1024


def check_label(name: str, value: str) -> None:
    """Raise WireError unless ``name=value`` is a label Prometheus accepts from discovery."""
    if not _LABEL_NAME.match(name) or name.startswith("__"):
        raise WireError(f"invalid label name {name[:40]!r}")
    if len(value) > MAX_LABEL_VALUE:
        raise WireError(f"label {name} is longer than {MAX_LABEL_VALUE} characters")


def encode_labels(labels: Iterable[tuple[str, str]]) -> bytes:
    """``name=value`` pairs, values percent-encoded, joined by commas."""
    return ",".join(f"{name}={quote(value, safe='')}" for name, value in labels).encode("ascii")


def decode_labels(raw: bytes) -> dict[str, str]:
    """Read an ``X-PushProx-Labels`` value; raises WireError with the reason."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("labels are not ASCII") from None
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals:
            raise WireError(f"label {item[:40]!r} is not name=value")
        value = unquote(value)
        check_label(name, value)
        labels[name] = value
    if len(labels) > MAX_LABELS:
        raise WireError(f"more than {MAX_LABELS} labels")
    return labels


def encode_extensions(names: Iterable[bytes]) -> bytes:
    """An ``X-PushProx-Extensions`` value listing ``names``."""
    return b", ".join(names)


def decode_extensions(values: Iterable[bytes]) -> frozenset[bytes]:
    """The extension names in ``X-PushProx-Extensions`` values."""
    return frozenset(
        token.strip() for value in values for token in value.split(b",") if token.strip()
    )
