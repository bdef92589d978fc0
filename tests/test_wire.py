"""
Tests for L{pushprox.shared.wire}: the scrape request in a poll answer and the response in a push.

The recordings of the upstream Go PushProx in ``tests/data`` are the reference: what
the Go side writes must decode to exact values, and what we write must decode back to
what went in.  Hypothesis checks the round trips on generated messages and that the
parsers answer any bytes with L{wire.WireError} and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared import wire
from tests.harness.recordings import (
    GO_CLIENT_PUSH,
    GO_CLIENT_PUSH_ERROR,
    GO_PROXY_POLL_ANSWER,
    recording,
)
from tests.harness.recordings import GO_ID as RECORDED_ID

#: The scrape Id of the recordings, as decoded.
GO_ID = RECORDED_ID.decode("ascii")
PROMETHEUS_ACCEPT = (
    b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    b"version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

#: Bounded and without an example database, so runs neither drag on nor leave files.
BOUNDED = settings(max_examples=200, deadline=None, database=None)

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SCRAPE_REQUEST_SKIPPED = wire.HOP_BY_HOP | {
    b"host",
    b"id",
    b"x-prometheus-scrape-timeout-seconds",
    b"x-prometheus-scrape-timeout",
}
RESPONSE_SKIPPED = wire.HOP_BY_HOP | {b"content-length", b"id"}


def split_push_body(body: bytes) -> tuple[bytes, bytes]:
    """
    A push body's response head (without the blank line) and the bytes after it, split
    apart from ``wire`` (which is what these tests check).
    """
    head, separator, rest = body.partition(b"\r\n\r\n")
    assert separator, "push body has no end of headers"
    return head, rest


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body carrying ``chunks``, then the last chunk and ``trailers``."""
    return (
        b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        + b"0\r\n"
        + trailers
        + b"\r\n"
    )


def refusal(decode: Callable[[bytes], object], data: bytes) -> str:
    """What decoding ``data`` raised, as ``Type: message``, or that it raised nothing."""
    try:
        decode(data)
    except Exception as error:  # Anything but WireError must show up in the comparison.
        return f"{type(error).__name__}: {error}"
    return "no error"


def head_as_encoded(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], *,
                    scrape_id: str, length: int | None) -> wire.ResponseHead:
    """
    The head ``encode_response_head`` writes, as decoded: ``headers``, then Content-Length
    when there is a ``length``, then the Id.
    """
    length_header = [] if length is None else [(b"Content-Length", b"%d" % length)]
    return wire.ResponseHead(
        status=status,
        reason=reason,
        headers=(*headers, *length_header, (b"Id", scrape_id.encode("ascii"))),
        scrape_id=scrape_id,
        framing=wire.BodyFraming.TO_END if length is None else wire.BodyFraming.LENGTH,
        length=length,
    )


def assert_decodes_or_refuses(decode: Callable[[bytes], object], data: bytes,
                              kind: type) -> None:
    """``decode`` answers ``data`` with a ``kind`` or a WireError, and with nothing else."""
    try:
        decoded = decode(data)
    except wire.WireError:
        return
    assert isinstance(decoded, kind), decoded


def decode_chunked(*pieces: bytes) -> tuple[bytes, bool]:
    """Feed ``pieces`` to a fresh decoder; the body and whether it finished."""
    decoder = wire.ChunkedDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return b"".join(out), decoder.finished


# -- strategies --

tokens = st.text(alphabet=TOKEN, min_size=1, max_size=16).map(str.encode)
scrape_ids = st.text(
    alphabet="0123456789abcdefABCDEF-", min_size=1, max_size=36
)
#: Header values as they survive a parse: no line breaks, no surrounding blanks.
header_values = st.binary(max_size=40).map(
    lambda value: value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
)
hosts = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,20}\Z", fullmatch=True)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}"))
paths = st.from_regex(r"\A(/[A-Za-z0-9._~%-]{0,12}){0,4}\Z", fullmatch=True)
queries = st.one_of(
    st.just(""), st.from_regex(r"\A\?[A-Za-z0-9_=&%-]{0,20}\Z", fullmatch=True)
)
userinfos = st.sampled_from(["", "user@", "user:secret@"])


@st.composite
def scrape_urls(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An absolute http(s) URL and the Host header it implies."""
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(hosts) + draw(ports)
    url = f"{scheme}://{draw(userinfos)}{host}{draw(paths)}{draw(queries)}"
    return url.encode("ascii"), host.encode("ascii")


scrape_request_headers = st.lists(
    st.tuples(
        tokens.filter(lambda name: name.lower() not in SCRAPE_REQUEST_SKIPPED),
        header_values,
    ),
    max_size=8,
)
response_headers = st.lists(
    st.tuples(
        tokens.filter(lambda name: name.lower() not in RESPONSE_SKIPPED), header_values
    ),
    max_size=8,
)

# Arbitrary bytes shaped enough like the messages to reach the deeper checks: each part
# is usually well formed and sometimes anything at all.


def mostly(
    draw: st.DrawFn, good: st.SearchStrategy[bytes], fuzz: st.SearchStrategy[bytes]
) -> bytes:
    """Draw from ``good`` seven times in eight, else from ``fuzz``."""
    return draw(fuzz if draw(st.integers(min_value=0, max_value=7)) == 7 else good)


interesting_names = st.sampled_from(
    [b"Id", b"Host", b"X-Prometheus-Scrape-Timeout-Seconds", b"Content-Length",
     b"Transfer-Encoding", b"Accept"]
)
numbers = st.one_of(
    # Digit runs, around the interpreter's 4300-digit limit on int() and short.
    st.one_of(st.sampled_from([4300, 4301, 9000]), st.integers(min_value=0, max_value=40)).map(
        lambda n: b"7" * n
    ),
    st.integers(min_value=-(10**20), max_value=10**20).map(lambda n: str(n).encode()),
)
interesting_values = st.one_of(
    numbers,
    st.sampled_from([b"chunked", b"gzip, chunked", b"nan", b"inf", b"-1", b"1e3", b""]),
    st.binary(max_size=30),
)


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    """One header line, without its line end."""
    name = mostly(draw, interesting_names, st.binary(max_size=10))
    separator = mostly(draw, st.just(b": "), st.sampled_from([b":", b"", b" : "]))
    return name + separator + draw(interesting_values)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """Header lines, each after its line end."""
    lines = draw(st.lists(header_lines(), max_size=5))
    return b"".join(mostly(draw, st.just(b"\r\n"), line_ends) + line for line in lines)


line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b""])


@st.composite
def request_like_bytes(draw: st.DrawFn) -> bytes:
    """Bytes that look more or less like a scrape request in proxy form."""
    method = mostly(draw, st.sampled_from([b"GET", b"HEAD"]), st.binary(max_size=6))
    url = draw(
        st.sampled_from([b"http://", b"https://", b"ftp://", b"/", b"", b"http://["])
    ) + draw(
        st.one_of(
            st.sampled_from([b"h.example/metrics", b"[::1]:9100/m?x=1", b"u@h:1/"]),
            st.binary(max_size=30).map(lambda tail: tail.replace(b" ", b"")),
        )
    )
    version = mostly(draw, st.just(b"HTTP/1.1"), st.binary(max_size=8))
    end = mostly(draw, st.just(b"\r\n\r\n"), st.binary(max_size=4))
    return (
        method + b" " + url + b" " + version + draw(header_blocks()) + end
        + draw(st.binary(max_size=20))
    )


@st.composite
def response_head_like_bytes(draw: st.DrawFn) -> bytes:
    """Bytes that look more or less like a pushed response head."""
    version = mostly(draw, st.sampled_from([b"HTTP/1.1", b"HTTP/0.0"]), st.binary(max_size=8))
    code = mostly(draw, st.sampled_from([b"200", b"500"]), st.binary(max_size=4))
    reason = mostly(draw, st.just(b"OK"), st.binary(max_size=20))
    framing = draw(
        st.one_of(
            numbers.map(lambda number: b"\r\nContent-Length: " + number),
            st.just(b"\r\nTransfer-Encoding: chunked"),
            st.just(b""),
        )
    )
    return version + b" " + code + b" " + reason + framing + draw(header_blocks())


chunked_like_pieces = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r\n", b"\n", b"0\r\n", b"a\r\n", b"3;x=y\r\n", b";", b" "]),
        st.integers(min_value=0, max_value=2**70).map(lambda n: b"%x\r\n" % n),
    ),
    max_size=20,
)


class RecordedGoMessageTests(SynchronousTestCase):
    """The recordings of the upstream Go PushProx decode to exact values."""

    def test_go_poll_answer_decodes_to_scrape_request(self) -> None:
        """The Go proxy's poll answer body decodes to Prometheus' request with its Id."""
        message = recording(GO_PROXY_POLL_ANSWER)
        outer_head, body = message.head, message.body
        self.assertIn(b"\r\nContent-Length: 356\r\n", outer_head)
        self.assertEqual(len(body), 356)
        self.assertEqual(
            wire.decode_scrape_request(body),
            wire.ScrapeRequest(
                scrape_id=GO_ID,
                method=b"GET",
                url=b"http://localhost:9100/metrics?foo=bar",
                headers=(
                    (b"Host", b"localhost:9100"),
                    (b"User-Agent", b"Prometheus/2.42.0"),
                    (b"Accept", PROMETHEUS_ACCEPT),
                    (b"Accept-Encoding", b"gzip"),
                    (b"Id", GO_ID.encode()),
                    (b"X-Prometheus-Scrape-Timeout-Seconds", b"10"),
                ),
                timeout=10.0,
            ),
        )

    def test_encoded_scrape_request_matches_go_poll_answer_byte_for_byte(self) -> None:
        """Our encoding of the recorded scrape is exactly what the Go proxy wrote."""
        body = recording(GO_PROXY_POLL_ANSWER).body
        encoded = wire.encode_scrape_request(
            method=b"GET",
            url=b"http://localhost:9100/metrics?foo=bar",
            headers=[
                (b"User-Agent", b"Prometheus/2.42.0"),
                (b"Accept", PROMETHEUS_ACCEPT),
                (b"Accept-Encoding", b"gzip"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"10"),
            ],
            scrape_id=GO_ID,
            timeout=10.0,
        )
        self.assertEqual(encoded, body)

    def test_go_push_of_target_response_decodes_with_length_framing(self) -> None:
        """The Go client's push of a 1000-byte page has LENGTH framing of 1000."""
        message = recording(GO_CLIENT_PUSH)
        outer_head, body = message.head, message.body
        self.assertIn(b"\r\nContent-Length: 1321\r\n", outer_head)
        self.assertEqual(len(body), 1321)
        head, rest = split_push_body(body)
        self.assertEqual(
            wire.decode_response_head(head),
            wire.ResponseHead(
                status=200,
                reason=b"OK",
                headers=(
                    (b"Content-Length", b"1000"),
                    (b"Accept-Ranges", b"bytes"),
                    (b"Connection", b"keep-alive"),
                    (b"Content-Type", b"text/plain"),
                    (b"Date", b"Fri, 27 Nov 2026 09:18:32 GMT"),
                    (b"Etag", b'"6b094aa9-3e8"'),
                    (b"Id", GO_ID.encode()),
                    (b"Last-Modified", b"Fri, 27 Nov 2026 09:17:29 GMT"),
                    (b"Server", b"nginx/1.22.1"),
                    (b"X-Prometheus-Scrape-Timeout", b"9.998957"),
                ),
                scrape_id=GO_ID,
                framing=wire.BodyFraming.LENGTH,
                length=1000,
            ),
        )
        self.assertEqual(rest, b"up 1\n" * 200)

    def test_go_push_of_scrape_error_decodes_with_body_to_end(self) -> None:
        """The Go client's synthesized HTTP/0.0 500 has TO_END framing and no length."""
        message = recording(GO_CLIENT_PUSH_ERROR)
        outer_head, body = message.head, message.body
        self.assertIn(b"\r\nContent-Length: 268\r\n", outer_head)
        head, rest = split_push_body(body)
        decoded = wire.decode_response_head(head)
        self.assertEqual(
            decoded,
            wire.ResponseHead(
                status=500,
                reason=b"Internal Server Error",
                headers=(
                    (b"Id", GO_ID.encode()),
                    (b"X-Prometheus-Scrape-Timeout", b"9.999794"),
                ),
                scrape_id=GO_ID,
                framing=wire.BodyFraming.TO_END,
                length=None,
            ),
        )
        self.assertEqual(decoded.header(wire.SCRAPE_ERROR_HEADER), None)
        self.assertEqual(
            rest,
            b'failed to scrape http://localhost:9999/small?foo=bar: Get '
            b'"http://localhost:9999/small?foo=bar": dial tcp 127.0.0.1:9999: '
            b"connect: connection refused",
        )


class HeaderHelperTests(SynchronousTestCase):
    """Header lookup and timeout formatting."""

    def test_header_lookup_is_case_insensitive_and_takes_first(self) -> None:
        """header_value finds the first header of the name in any case, or None."""
        headers = [(b"Accept", b"a"), (b"ACCEPT", b"b"), (b"Id", b"c")]
        self.assertEqual(wire.header_value(headers, b"accept"), b"a")
        self.assertEqual(wire.header_value(headers, b"iD"), b"c")
        self.assertEqual(wire.header_value(headers, b"Host"), None)

    def test_timeout_is_written_in_decimal_without_exponent(self) -> None:
        """format_timeout writes decimal seconds, trailing zeros dropped, 6 decimals."""
        self.assertEqual(wire.format_timeout(10.0), b"10")
        self.assertEqual(wire.format_timeout(9.9), b"9.9")
        self.assertEqual(wire.format_timeout(0.001), b"0.001")
        self.assertEqual(wire.format_timeout(1e-7), b"0")
        self.assertEqual(wire.format_timeout(12.3456789), b"12.345679")
        self.assertEqual(wire.format_timeout(1e20), b"100000000000000000000")


class EncodeScrapeRequestTests(SynchronousTestCase):
    """encode_scrape_request writes what decode_scrape_request reads back."""

    def encode(self, headers: list[tuple[bytes, bytes]], **overrides: object) -> bytes:
        """Encode a scrape of node1.example with ``headers``."""
        arguments: dict[str, object] = {
            "method": b"GET",
            "url": b"http://node1.example:9100/metrics?x=1",
            "headers": headers,
            "scrape_id": "id-1",
            "timeout": 9.5,
        }
        arguments.update(overrides)
        return wire.encode_scrape_request(**arguments)  # type: ignore[arg-type]

    def test_encoded_request_decodes_to_same_request(self) -> None:
        """A request re-decodes to its method, URL, headers, Id and timeout."""
        encoded = self.encode([(b"Accept", b"text/plain"), (b"User-Agent", b"Prom/3")])
        self.assertEqual(
            encoded,
            b"GET http://node1.example:9100/metrics?x=1 HTTP/1.1\r\n"
            b"Host: node1.example:9100\r\n"
            b"Accept: text/plain\r\n"
            b"User-Agent: Prom/3\r\n"
            b"Id: id-1\r\n"
            b"X-Prometheus-Scrape-Timeout-Seconds: 9.5\r\n\r\n",
        )
        self.assertEqual(
            wire.decode_scrape_request(encoded),
            wire.ScrapeRequest(
                scrape_id="id-1",
                method=b"GET",
                url=b"http://node1.example:9100/metrics?x=1",
                headers=(
                    (b"Host", b"node1.example:9100"),
                    (b"Accept", b"text/plain"),
                    (b"User-Agent", b"Prom/3"),
                    (b"Id", b"id-1"),
                    (b"X-Prometheus-Scrape-Timeout-Seconds", b"9.5"),
                ),
                timeout=9.5,
            ),
        )

    def test_host_id_and_timeout_headers_are_replaced(self) -> None:
        """Given Host, Id and both timeout headers are replaced by the proxy's own."""
        encoded = self.encode(
            [
                (b"host", b"evil.example"),
                (b"ID", b"forged"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"300"),
                (b"x-prometheus-scrape-timeout", b"300"),
                (b"Accept", b"*/*"),
            ],
            url=b"https://user:pw@node1.example/metrics",
            scrape_id="real-id",
            timeout=4.25,
        )
        decoded = wire.decode_scrape_request(encoded)
        self.assertEqual(
            decoded.headers,
            (
                (b"Host", b"node1.example"),
                (b"Accept", b"*/*"),
                (b"Id", b"real-id"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"4.25"),
            ),
        )
        self.assertEqual((decoded.scrape_id, decoded.timeout), ("real-id", 4.25))

    def test_hop_by_hop_headers_and_proxy_credentials_are_dropped(self) -> None:
        """Connection, Keep-Alive, TE, ... and Proxy-Authorization are never forwarded."""
        dropped = [
            (b"Connection", b"close"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Proxy-Authorization", b"Basic c2VjcmV0"),
            (b"TE", b"trailers"),
            (b"Trailer", b"Expires"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
        ]
        encoded = self.encode([*dropped, (b"Authorization", b"Bearer t")])
        self.assertNotIn(b"c2VjcmV0", encoded)
        self.assertEqual(
            wire.decode_scrape_request(encoded).headers,
            (
                (b"Host", b"node1.example:9100"),
                (b"Authorization", b"Bearer t"),
                (b"Id", b"id-1"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"9.5"),
            ),
        )

    def test_line_breaks_in_header_values_cannot_inject_headers(self) -> None:
        """CR and LF in a value become spaces, so no header or message is injected."""
        encoded = self.encode(
            [(b"Accept", b"a\r\nId: forged\r\n\r\nGET http://x/ HTTP/1.1"),
             (b"User-Agent", b"b\nc\rd")]
        )
        self.assertEqual(encoded.count(b"\r\n\r\n"), 1)
        self.assertTrue(encoded.endswith(b"\r\n\r\n"))
        decoded = wire.decode_scrape_request(encoded)
        self.assertEqual(decoded.scrape_id, "id-1")
        self.assertEqual(
            decoded.headers,
            (
                (b"Host", b"node1.example:9100"),
                (b"Accept", b"a  Id: forged    GET http://x/ HTTP/1.1"),
                (b"User-Agent", b"b c d"),
                (b"Id", b"id-1"),
                (b"X-Prometheus-Scrape-Timeout-Seconds", b"9.5"),
            ),
        )

    @BOUNDED
    @given(
        method=tokens,
        url_and_host=scrape_urls(),
        headers=scrape_request_headers,
        scrape_id=scrape_ids,
        timeout=st.floats(min_value=0.001, max_value=300.0),
    )
    def test_generated_requests_round_trip(
        self,
        method: bytes,
        url_and_host: tuple[bytes, bytes],
        headers: list[tuple[bytes, bytes]],
        scrape_id: str,
        timeout: float,
    ) -> None:
        """Any request re-decodes to itself, with Host, Id and timeout added."""
        url, host = url_and_host
        encoded = wire.encode_scrape_request(
            method=method, url=url, headers=headers, scrape_id=scrape_id, timeout=timeout
        )
        self.assertEqual(
            wire.decode_scrape_request(encoded),
            wire.ScrapeRequest(
                scrape_id=scrape_id,
                method=method,
                url=url,
                headers=(
                    (b"Host", host),
                    *headers,
                    (b"Id", scrape_id.encode("ascii")),
                    (wire.TIMEOUT_HEADER, wire.format_timeout(timeout)),
                ),
                timeout=round(timeout, 6),
            ),
        )


class DecodeScrapeRequestTests(SynchronousTestCase):
    """decode_scrape_request reads proxy-form requests and refuses anything else."""

    def test_bare_line_feeds_are_accepted(self) -> None:
        """A request written with LF line ends decodes like one with CRLF."""
        decoded = wire.decode_scrape_request(
            b"GET https://h.example/m HTTP/1.1\nId: i\nX-Prometheus-Scrape-Timeout-Seconds: 2.5\n\n"
        )
        self.assertEqual(
            decoded,
            wire.ScrapeRequest(
                scrape_id="i",
                method=b"GET",
                url=b"https://h.example/m",
                headers=((b"Id", b"i"), (b"X-Prometheus-Scrape-Timeout-Seconds", b"2.5")),
                timeout=2.5,
            ),
        )

    def test_unreadable_or_out_of_range_timeout_is_none(self) -> None:
        """A timeout that is missing, not a number, zero, negative, nan or inf is None."""
        for value in [None, b"soon", b"0", b"-1", b"nan", b"inf", b"-inf", b""]:
            header = b"" if value is None else wire.TIMEOUT_HEADER + b": " + value + b"\r\n"
            decoded = wire.decode_scrape_request(
                b"GET http://h/ HTTP/1.1\r\nId: i\r\n" + header + b"\r\n"
            )
            self.assertEqual((value, decoded.timeout), (value, None))

    def test_malformed_requests_raise_wire_error(self) -> None:
        """
        Each malformed request is refused with a WireError saying why, never another error
        (a non-ASCII URL is no UnicodeDecodeError, a bad IPv6 literal no ValueError).
        """
        cases = [
            (b"GET http://h/ HTTP/1.1\r\nId: i\r\n", "message has no end of headers"),
            (b"GET http://h/\r\nId: i\r\n\r\n",
             "malformed request line b'GET http://h/'"),
            (b"GET  http://h/ HTTP/1.1\r\nId: i\r\n\r\n",
             "malformed request line b'GET  http://h/ HTTP/1.1'"),
            (b"GET http://h/ FTP/1.1\r\nId: i\r\n\r\n",
             "malformed request line b'GET http://h/ FTP/1.1'"),
            (b"G(T http://h/ HTTP/1.1\r\nId: i\r\n\r\n", "malformed method b'G(T'"),
            (b" http://h/ HTTP/1.1\r\nId: i\r\n\r\n", "malformed method b''"),
            (b"GET /metrics HTTP/1.1\r\nId: i\r\n\r\n",
             "request URI is not absolute: b'/metrics'"),
            (b"GET ftp://h/ HTTP/1.1\r\nId: i\r\n\r\n",
             "request URI is not absolute: b'ftp://h/'"),
            (b"GET http:///m HTTP/1.1\r\nId: i\r\n\r\n",
             "request URI is not absolute: b'http:///m'"),
            (b"GET http://h/ HTTP/1.1\r\nNo colon\r\n\r\n",
             "malformed header line b'No colon'"),
            (b"GET http://h/ HTTP/1.1\r\nBad Name: x\r\n\r\n",
             "malformed header line b'Bad Name: x'"),
            (b"GET http://h/ HTTP/1.1\r\n: x\r\n\r\n", "malformed header line b': x'"),
            (b"GET http://h/ HTTP/1.1\r\nAccept: */*\r\n\r\n", "message has no Id header"),
            (b"GET http://h/ HTTP/1.1\r\nId:  \r\n\r\n", "message has no Id header"),
            (b"GET http://h/ HTTP/1.1\r\nId: \xc3\xa9\r\n\r\n", "Id header is not ASCII"),
            (b"GET http://h\xc3\xa9.example/ HTTP/1.1\r\nId: i\r\n\r\n",
             "request URI is not ASCII: b'http://h\\xc3\\xa9.example/'"),
            (b"GET http://[::1/metrics HTTP/1.1\r\nId: i\r\n\r\n",
             "malformed request URI b'http://[::1/metrics': Invalid IPv6 URL"),
        ]
        self.assertEqual(
            [(data, refusal(wire.decode_scrape_request, data)) for data, _ in cases],
            [(data, f"WireError: {message}") for data, message in cases],
        )

    @BOUNDED
    @given(data=st.one_of(st.binary(max_size=300), request_like_bytes()))
    def test_arbitrary_bytes_raise_only_wire_error(self, data: bytes) -> None:
        """decode_scrape_request answers any bytes with a request or a WireError."""
        assert_decodes_or_refuses(wire.decode_scrape_request, data, wire.ScrapeRequest)


class ResponseHeadTests(SynchronousTestCase):
    """encode_response_head and encode_error_response against decode_response_head."""

    def test_response_head_with_length_round_trips(self) -> None:
        """A head with a length re-decodes with LENGTH framing; stale framing is dropped."""
        encoded = wire.encode_response_head(
            status=404,
            reason=b"Not Found",
            headers=[
                (b"Content-Type", b"text/plain"),
                (b"Content-Length", b"99"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Connection", b"close"),
                (b"Id", b"forged"),
                (b"Content-Encoding", b"gzip"),
            ],
            scrape_id="id-7",
            length=12,
        )
        self.assertEqual(
            encoded,
            b"HTTP/1.1 404 Not Found\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Encoding: gzip\r\n"
            b"Content-Length: 12\r\n"
            b"Id: id-7\r\n\r\n",
        )
        self.assertEqual(
            wire.decode_response_head(encoded[:-4]),
            head_as_encoded(404, b"Not Found",
                            [(b"Content-Type", b"text/plain"), (b"Content-Encoding", b"gzip")],
                            scrape_id="id-7", length=12),
        )

    def test_response_head_without_length_runs_to_end(self) -> None:
        """A head without a length re-decodes with TO_END framing and length None."""
        encoded = wire.encode_response_head(
            status=200, reason=b"", headers=[], scrape_id="id-8", length=None
        )
        self.assertEqual(encoded, b"HTTP/1.1 200 \r\nId: id-8\r\n\r\n")
        decoded = wire.decode_response_head(encoded[:-4])
        self.assertEqual(
            (decoded.status, decoded.reason, decoded.framing, decoded.length),
            (200, b"", wire.BodyFraming.TO_END, None),
        )

    def test_line_breaks_in_reason_and_values_cannot_inject_headers(self) -> None:
        """CR and LF in the reason and header values become spaces."""
        encoded = wire.encode_response_head(
            status=200,
            reason=b"OK\r\nId: forged",
            headers=[(b"X-A", b"1\r\n\r\nbody")],
            scrape_id="id-9",
            length=0,
        )
        decoded = wire.decode_response_head(encoded[:-4])
        self.assertEqual(decoded.reason, b"OK  Id: forged")
        self.assertEqual(
            decoded.headers,
            ((b"X-A", b"1    body"), (b"Content-Length", b"0"), (b"Id", b"id-9")),
        )
        self.assertEqual(decoded.scrape_id, "id-9")

    def test_error_response_is_a_marked_500_with_its_reason_as_body(self) -> None:
        """encode_error_response writes a 500 with the scrape-error headers and a length."""
        encoded = wire.encode_error_response(scrape_id="id-e", reason="connection refused")
        self.assertEqual(
            encoded,
            b"HTTP/1.1 500 Internal Server Error\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"X-PushProx-Scrape-Error: connection refused\r\n"
            b"X-PushProx-Scrape-Error-Kind: unreachable\r\n"
            b"Content-Length: 18\r\n"
            b"Id: id-e\r\n\r\n"
            b"connection refused",
        )
        head, body = split_push_body(encoded)
        self.assertEqual(
            wire.decode_response_head(head),
            head_as_encoded(500, b"Internal Server Error",
                            [(b"Content-Type", b"text/plain; charset=utf-8"),
                             (b"X-PushProx-Scrape-Error", b"connection refused"),
                             (b"X-PushProx-Scrape-Error-Kind", b"unreachable")],
                            scrape_id="id-e", length=18),
        )
        self.assertEqual(body, b"connection refused")

    def test_error_response_names_its_kind(self) -> None:
        """The kind given to encode_error_response is the Scrape-Error-Kind header."""
        encoded = wire.encode_error_response(scrape_id="id-k", reason="slow", kind="timeout")
        head, body = split_push_body(encoded)
        decoded = wire.decode_response_head(head)
        self.assertEqual(
            (decoded.status, decoded.header(wire.SCRAPE_ERROR_KIND_HEADER), body),
            (500, b"timeout", b"slow"),
        )

    def test_error_reason_with_line_breaks_and_unicode_stays_in_one_header(self) -> None:
        """A multi-line non-ASCII reason is one header value; the body keeps it whole."""
        reason = "refused\r\nId: forged \u2013 " + "x" * 2000
        encoded = wire.encode_error_response(scrape_id="id-u", reason=reason)
        head, body = split_push_body(encoded)
        decoded = wire.decode_response_head(head)
        body_expected = reason.encode("utf-8")
        self.assertEqual(body, body_expected)
        self.assertEqual(decoded.length, len(body_expected))
        self.assertEqual(decoded.scrape_id, "id-u")
        self.assertEqual(
            decoded.header(wire.SCRAPE_ERROR_HEADER),
            body_expected[:1000].replace(b"\r", b" ").replace(b"\n", b" "),
        )

    def test_chunked_transfer_encoding_wins_over_content_length(self) -> None:
        """Transfer-Encoding: chunked (any case) gives CHUNKED framing, no length."""
        decoded = wire.decode_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding:  Chunked \r\nId: c"
        )
        self.assertEqual((decoded.framing, decoded.length), (wire.BodyFraming.CHUNKED, None))

    def test_malformed_heads_raise_wire_error(self) -> None:
        """
        Each malformed response head is refused with a WireError saying why, never another
        error (a Content-Length of 5000 digits is no ValueError).
        """
        cases = [
            (b"", "malformed status line b''"),
            (b"HTTP/1.1 20 OK\r\nId: i", "malformed status line b'HTTP/1.1 20 OK'"),
            (b"HTTP/1.1 2000 OK\r\nId: i", "malformed status line b'HTTP/1.1 2000 OK'"),
            (b"HTTP/1.1 2x0 OK\r\nId: i", "malformed status line b'HTTP/1.1 2x0 OK'"),
            (b"HTTPS/1.1 200 OK\r\nId: i", "malformed status line b'HTTPS/1.1 200 OK'"),
            (b"HTTP/1.1 200 OK\r\nId i", "malformed header line b'Id i'"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\n", "malformed header line b''"),
            (b"HTTP/1.1 200 OK\r\nContent-Type: x", "message has no Id header"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\nTransfer-Encoding: gzip",
             "unsupported Transfer-Encoding b'gzip'"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\nContent-Length: 12a",
             "malformed Content-Length b'12a'"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\nContent-Length: -1",
             "malformed Content-Length b'-1'"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\nContent-Length: ",
             "malformed Content-Length b''"),
            (b"HTTP/1.1 200 OK\r\nId: i\r\nContent-Length: " + b"1" * 5000,
             f"malformed Content-Length {b'1' * 30!r}"),
        ]
        self.assertEqual(
            [(head, refusal(wire.decode_response_head, head)) for head, _ in cases],
            [(head, f"WireError: {message}") for head, message in cases],
        )

    def test_content_length_of_twenty_digits_is_read(self) -> None:
        """Twenty digits are a length; twenty-one are refused."""
        head = b"HTTP/1.1 200 OK\r\nId: i\r\nContent-Length: "
        self.assertEqual(wire.decode_response_head(head + b"9" * 20).length, 10**20 - 1)
        self.assertEqual(
            refusal(wire.decode_response_head, head + b"1" * 21),
            f"WireError: malformed Content-Length {b'1' * 21!r}",
        )

    @BOUNDED
    @given(
        status=st.integers(min_value=100, max_value=599),
        reason=st.binary(max_size=30).map(
            lambda value: value.replace(b"\r", b"").replace(b"\n", b"")
        ),
        headers=response_headers,
        scrape_id=scrape_ids,
        length=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
    )
    def test_generated_response_heads_round_trip(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        scrape_id: str,
        length: int | None,
    ) -> None:
        """Any response head re-decodes to itself with Content-Length and Id added."""
        encoded = wire.encode_response_head(
            status=status, reason=reason, headers=headers, scrape_id=scrape_id, length=length
        )
        self.assertEqual(encoded.find(b"\r\n\r\n"), len(encoded) - 4)
        self.assertEqual(
            wire.decode_response_head(encoded[:-4]),
            head_as_encoded(status, reason, headers, scrape_id=scrape_id, length=length),
        )

    @BOUNDED
    @given(data=st.one_of(st.binary(max_size=300), response_head_like_bytes()))
    def test_arbitrary_bytes_raise_only_wire_error(self, data: bytes) -> None:
        """decode_response_head answers any bytes with a head or a WireError."""
        assert_decodes_or_refuses(wire.decode_response_head, data, wire.ResponseHead)


class ChunkedDecoderTests(SynchronousTestCase):
    """ChunkedDecoder reads chunked bodies however the bytes are split."""

    BODY = chunked(b"0123456789", b"x" * 31, trailers=b"Expires: never\r\nX-T: 1\r\n")

    def test_whole_body_decodes(self) -> None:
        """A chunked body with extensions and trailers decodes to its data."""
        data = b"a;name=value\r\n0123456789\r\n1F\r\n" + b"x" * 31 + b"\r\n0;end\r\nX: 1\r\n\r\n"
        self.assertEqual(decode_chunked(data), (b"0123456789" + b"x" * 31, True))

    def test_body_split_at_every_byte_boundary_decodes(self) -> None:
        """Split in two at any byte (inside sizes, CRLFs, data), the body decodes the same."""
        expected = (b"0123456789" + b"x" * 31, True)
        cuts = range(len(self.BODY) + 1)
        self.assertEqual(
            [(cut, decode_chunked(self.BODY[:cut], self.BODY[cut:])) for cut in cuts],
            [(cut, expected) for cut in cuts],
        )

    def test_body_split_at_every_pair_of_boundaries_decodes(self) -> None:
        """Split in three at any two bytes, the body decodes the same."""
        expected = (b"0123456789" + b"x" * 31, True)
        body = self.BODY
        for first in range(len(body) + 1):
            for second in range(first, len(body) + 1):
                result = decode_chunked(body[:first], body[first:second], body[second:])
                if result != expected:
                    self.fail(f"cut at {first} and {second}: {result!r}")

    def test_body_fed_byte_by_byte_decodes(self) -> None:
        """Fed one byte at a time, the body decodes and finishes at its last byte."""
        decoder = wire.ChunkedDecoder()
        out: list[bytes] = []
        finished_at = []
        for index in range(len(self.BODY)):
            out.extend(decoder.feed(self.BODY[index : index + 1]))
            finished_at.append(decoder.finished)
        self.assertEqual(b"".join(out), b"0123456789" + b"x" * 31)
        self.assertEqual(finished_at, [False] * (len(self.BODY) - 1) + [True])

    def test_multi_digit_hex_sizes_split_inside_the_size(self) -> None:
        """A size of several hex digits split between digits is read whole."""
        data = chunked(b"y" * 0x1A2B)
        self.assertEqual(data[:6], b"1a2b\r\n")
        self.assertEqual(
            [decode_chunked(data[:cut], data[cut:]) for cut in range(1, 6)],
            [(b"y" * 0x1A2B, True)] * 5,
        )

    def test_unfinished_body_is_not_finished(self) -> None:
        """Before the blank line after the last chunk, finished stays False."""
        self.assertEqual(decode_chunked(b"3\r\nabc\r\n0\r\n"), (b"abc", False))
        self.assertEqual(decode_chunked(b"3\r\nab"), (b"ab", False))

    def test_malformed_chunks_raise_wire_error(self) -> None:
        """Bad sizes, missing CRLF after data and endless lines raise WireError."""
        cases = [
            (b"g\r\n", "malformed chunk size b'g'"),
            (b"\r\n", "malformed chunk size b''"),
            (b"-1\r\n", "malformed chunk size b'-1'"),
            (b"0x10\r\n", "malformed chunk size b'0x10'"),
            (b";ext\r\n", "malformed chunk size b''"),
            (b"3\r\nabcd\r\n", "missing CRLF after chunk data"),
            (b"1" * 4097, "chunk line too long"),
        ]
        self.assertEqual(
            [(data, refusal(wire.ChunkedDecoder().feed, data)) for data, _ in cases],
            [(data, f"WireError: {message}") for data, message in cases],
        )

    @BOUNDED
    @given(
        chunks=st.lists(st.binary(min_size=1, max_size=50), max_size=6),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    )
    def test_generated_chunked_bodies_decode_however_split(
        self, chunks: list[bytes], cuts: list[int]
    ) -> None:
        """Any chunked body, cut anywhere, decodes to its data and finishes."""
        data = chunked(*chunks)
        bounds = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
        pieces = [data[start:end] for start, end in pairwise(bounds)]
        self.assertEqual(decode_chunked(*pieces), (b"".join(chunks), True))

    @BOUNDED
    @given(pieces=chunked_like_pieces)
    def test_arbitrary_bytes_raise_only_wire_error(self, pieces: list[bytes]) -> None:
        """feed answers any sequence of bytes with body bytes or a WireError."""
        decoder = wire.ChunkedDecoder()
        for piece in pieces:
            try:
                out = decoder.feed(piece)
            except wire.WireError:
                return
            self.assertTrue(all(isinstance(part, bytes) for part in out))


class LabelTests(SynchronousTestCase):
    """The X-PushProx-Labels value our client sends and our proxy reads."""

    def test_round_trip_with_awkward_values(self) -> None:
        """Commas, equals signs, spaces and non-ASCII survive encoding."""
        labels = [("site", "customer, a"), ("expr", "a=b"), ("city", "Zürich"), ("empty", "")]
        encoded = wire.encode_labels(labels)
        self.assertTrue(encoded.isascii())
        self.assertEqual(wire.decode_labels(encoded), dict(labels))

    def test_empty_value_means_no_labels(self) -> None:
        """An empty header (a client without labels) reads as no labels."""
        self.assertEqual(wire.decode_labels(b""), {})

    def test_invalid_names_and_too_many(self) -> None:
        """Reserved, malformed and excess labels raise WireError with the reason."""
        cases = {
            b"__address__=x": "invalid label name '__address__'",
            b"a-b=x": "invalid label name 'a-b'",
            b"x": "label 'x' is not name=value",
            b",".join(b"l%d=v" % i for i in range(33)): "more than 32 labels",
        }
        for raw, message in cases.items():
            with self.assertRaises(wire.WireError) as caught:
                wire.decode_labels(raw)
            self.assertEqual(str(caught.exception), message)
