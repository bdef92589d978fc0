# -*- test-case-name: tests.test_wire -*-
"""
Encode and decode the two HTTP messages that PushProx embeds in its own requests.

A poll answer carries the scrape request in proxy form (request line with an absolute
URI, headers, ``Id``); a push body carries the target's whole response (status line,
headers with ``Id``, body).  These are pure functions on bytes: no I/O, no Twisted, so
that they can be tested against the byte-exact recordings of the upstream Go
implementation and fuzzed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

Headers = Sequence[tuple[bytes, bytes]]

ID_HEADER = b"Id"
TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout-Seconds"
#: Upstream's client writes this misspelled header into its pushes.
UPSTREAM_TIMEOUT_HEADER = b"X-Prometheus-Scrape-Timeout"
#: Our client marks a response it synthesized because the target could not be
#: scraped; the value is the one-line reason.  Upstream proxies ignore it.
SCRAPE_ERROR_HEADER = b"X-PushProx-Scrape-Error"
#: What kind of failure that was: ``timeout`` (the proxy answers 504), ``refused``,
#: ``unreachable``, ``overload`` or ``shutdown`` (502).
SCRAPE_ERROR_KIND_HEADER = b"X-PushProx-Scrape-Error-Kind"

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

_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


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

    version: bytes
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


def format_timeout(seconds: float) -> bytes:
    """A timeout as Prometheus writes it: decimal seconds, no exponent."""
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return text.encode("ascii") or b"0"


def _clean_value(value: bytes) -> bytes:
    # A header value with a line break would let a peer inject headers.
    return value.replace(b"\r", b" ").replace(b"\n", b" ")


def _header_lines(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + _clean_value(value) + b"\r\n" for name, value in headers]


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
    host = urlsplit(url).netloc.rpartition(b"@")[2]
    lines = [method + b" " + url + b" HTTP/1.1\r\n", b"Host: " + host + b"\r\n"]
    skip = HOP_BY_HOP | {
        b"host",
        ID_HEADER.lower(),
        TIMEOUT_HEADER.lower(),
        UPSTREAM_TIMEOUT_HEADER.lower(),
    }
    lines.extend(_header_lines((k, v) for k, v in headers if k.lower() not in skip))
    lines.append(ID_HEADER + b": " + scrape_id.encode("ascii") + b"\r\n")
    lines.append(TIMEOUT_HEADER + b": " + format_timeout(timeout) + b"\r\n\r\n")
    return b"".join(lines)


def _split_head(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Split a message into its first line, header lines and the rest."""
    end = data.find(b"\r\n\r\n")
    sep_len = 4
    if end < 0:
        end = data.find(b"\n\n")
        sep_len = 2
    if end < 0:
        raise WireError("message has no end of headers")
    head = data[:end].replace(b"\r\n", b"\n")
    first, *lines = head.split(b"\n")
    return first, lines, data[end + sep_len :]


def _parse_headers(lines: list[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            raise WireError(f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip(b" \t")))
    return tuple(headers)


def _parse_timeout(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except ValueError:
        return None
    # Rejects nan and infinities as well as non-positive values.
    return timeout if 0 < timeout < float("inf") else None


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
    first, lines, _ = _split_head(data)
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise WireError(f"malformed request line {first[:60]!r}")
    method, url, _version = parts
    if not _TOKEN_CHARS.issuperset(method) or not method:
        raise WireError(f"malformed method {method[:20]!r}")
    if not url.isascii():
        raise WireError(f"request URI is not ASCII: {url[:60]!r}")
    try:
        split = urlsplit(url)
        hostname = split.hostname
    except ValueError as error:
        raise WireError(f"malformed request URI {url[:60]!r}: {error}") from None
    if split.scheme not in (b"http", b"https") or not hostname:
        raise WireError(f"request URI is not absolute: {url[:60]!r}")
    headers = _parse_headers(lines)
    return ScrapeRequest(
        scrape_id=_scrape_id(headers),
        method=method,
        url=url,
        headers=headers,
        timeout=_parse_timeout(header_value(headers, TIMEOUT_HEADER)),
    )


def decode_response_head(head: bytes) -> ResponseHead:
    """
    Read the status line and headers of a pushed response (without the blank line).

    Both forms of the upstream Go client are accepted: ``HTTP/1.1`` with a
    Content-Length or chunked body, and its synthesized ``HTTP/0.0 500`` whose body
    runs to the end of the push.
    """
    first, *lines = head.replace(b"\r\n", b"\n").split(b"\n")
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
        version=version,
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
    skip = HOP_BY_HOP | {b"content-length", ID_HEADER.lower()}
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _clean_value(reason))]
    lines.extend(_header_lines((k, v) for k, v in headers if k.lower() not in skip))
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


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 7.1), trailers discarded."""

    _MAX_LINE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0
        self._state = "size"
        self.finished = False

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


#: Labels a client asks ``/clients`` to list it with (our extension).
LABELS_HEADER = b"X-PushProx-Labels"
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
