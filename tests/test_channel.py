"""
What ``pushprox.proxy.channel`` needs of Twisted's ``Request`` and ``Site``, checked
against the installed Twisted, and the channel's framing, pipelining, limits and bad input.

Each test of a reliance names it in its failure message: when a Twisted release changes
what the channel relies on, the message says which part of pushprox needs a new way.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IPullProducer,
    IPushProducer,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushprox.proxy.channel import BodySink, LlhttpChannel, StreamingRequest, close_after
from tests.helpers import parse_responses

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
BOUNDED = settings(max_examples=200, deadline=None, database=None)


class RecordingSink:
    """A body sink that keeps what it is given."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = False

    def feed(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data.append(data)

    def connection_lost(self) -> None:
        """Note the loss."""
        self.lost = True


class RecordingRequest(StreamingRequest):
    """Streams the bodies of POSTs to /stream into a sink, noting the request lines seen."""

    seen: list[tuple[bytes, bytes, int | None]]

    def sink_for(self, method: bytes, path: bytes, length: int | None) -> BodySink | None:
        """A sink for POST /stream, nothing otherwise."""
        site = cast(HookSite, cast(Any, self.channel).site)
        site.seen.append((method, path, length))
        if method == b"POST" and path == b"/stream":
            sink = RecordingSink()
            site.sinks.append(sink)
            return sink
        return None


class LimitedChannel(LlhttpChannel):
    """A channel that notes when a head exceeds its limit."""

    too_large = 0

    def headers_too_large(self) -> None:
        """Note it, and close."""
        self.too_large += 1
        self.loseConnection()


class Held(Resource):
    """Holds every request open and keeps it, with its collected body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        """Keep the request."""
        self.requests.append(request)
        return NOT_DONE_YET


class AbortCounting(StringTransport):
    """A transport that counts its aborts."""

    aborted = 0

    def abortConnection(self) -> None:
        """Count it."""
        self.aborted += 1


@implementer(IPushProducer)
class PausingProducer:
    """A push producer that notes what it is told."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        """Note it."""
        self.events.append("pause")

    def resumeProducing(self) -> None:
        """Note it."""
        self.events.append("resume")

    def stopProducing(self) -> None:
        """Note it."""
        self.events.append("stop")


class HookSite(Site):
    """A site built as pushprox builds its own: our channel as the protocol, no wrapper."""

    requestFactory = RecordingRequest

    def __init__(self) -> None:
        self.resource = Held()
        super().__init__(self.resource, timeout=None)
        self.protocol = LimitedChannel.with_header_limit(200)  # type: ignore[method-assign,assignment]
        self.seen: list[tuple[bytes, bytes, int | None]] = []
        self.sinks: list[RecordingSink] = []


def hook_connection(
    transport: StringTransport | None = None, *, clock: Clock | None = None
) -> tuple[HookSite, LimitedChannel, StringTransport]:
    """
    A ``HookSite`` and one connection to it, over ``transport`` (a new one by default);
    with a ``clock``, the site's idle timeout of 10 seconds runs on it.
    """
    site = HookSite()
    if clock is not None:
        site.timeOut = 10
    channel = site.buildProtocol(CLIENT)
    assert isinstance(channel, LimitedChannel), (
        "channel.LlhttpChannel: Site.buildProtocol no longer builds the Site's protocol as it "
        "is; PushProxSite.protocol (our channel, without Twisted's HTTP/2 wrapper) "
        "needs another way in"
    )
    if clock is not None:
        channel.callLater = clock.callLater  # type: ignore[method-assign,assignment]
    if transport is None:
        transport = StringTransport(peerAddress=CLIENT)
    channel.makeConnection(transport)
    return site, channel, transport


class HookConnection(SynchronousTestCase):
    """Tests on one connection to a ``HookSite``."""

    def connect(self) -> tuple[HookSite, LimitedChannel, StringTransport]:
        """A site and one connection to it."""
        return hook_connection()


class HookTests(HookConnection):
    """What the channel relies on in Request and Site, against the installed Twisted."""

    def test_request_line_is_known_before_the_body(self) -> None:
        """gotLength sees the request line of each request, pipelined ones included."""
        site, channel, _ = self.connect()
        channel.dataReceived(
            b"POST /stream?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        # Twisted reads a pipelined request once the one before it is answered.
        site.resource.requests[0].finish()
        self.assertEqual(
            site.seen, [(b"POST", b"/stream", 3), (b"GET", b"/other", 0)],
            "channel.StreamingRequest: the request line is no longer on the request "
            "(method, uri) when Request.gotLength is called",
        )

    def test_streamed_body_goes_to_the_sink_not_content(self) -> None:
        """handleContentChunk hands every body byte to the sink, chunked or not."""
        site, channel, _ = self.connect()
        channel.dataReceived(
            b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        [sink] = site.sinks
        self.assertEqual(
            b"".join(sink.data), b"abcde",
            "channel.StreamingRequest: Request.handleContentChunk no longer "
            "receives the decoded body",
        )
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"")

    def test_body_without_sink_is_collected(self) -> None:
        """Without a sink, the body is collected into request.content as Twisted does."""
        site, channel, _ = self.connect()
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"hello")

    def test_connection_lost_reaches_sink_and_request(self) -> None:
        """A peer gone mid-body tells the sink; the request knows it may not be answered."""
        site, channel, _ = self.connect()
        channel.dataReceived(b"POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        [sink] = site.sinks
        request = channel.request
        assert isinstance(request, StreamingRequest)
        self.assertTrue(request.alive)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(
            sink.lost,
            "channel.StreamingRequest: Request.connectionLost is no longer called "
            "for a request whose body was still arriving",
        )
        self.assertFalse(request.alive)

    def assert_reaches_headers_too_large(self, data: bytes, what: str) -> None:
        """``data`` reaches headers_too_large once, and not Twisted's bare 400."""
        _, channel, transport = self.connect()
        channel.dataReceived(data)
        self.assertEqual(
            channel.too_large, 1,
            f"channel.LlhttpChannel: {what} no longer reaches headers_too_large",
        )
        self.assertNotIn(b"400 Bad Request", transport.value())

    def test_oversized_head_reaches_our_answer(self) -> None:
        """Headers past the limit reach headers_too_large, not Twisted's bare 400."""
        self.assert_reaches_headers_too_large(
            b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 190 + b"\r\n\r\n",
            "an oversized head")

    def test_one_line_past_the_limit_reaches_our_answer(self) -> None:
        """A single line longer than the limit is refused by us as well."""
        self.assert_reaches_headers_too_large(b"GET /" + b"a" * 300,
                                              "an unfinished head past the limit")

    def test_other_bad_requests_get_a_400(self) -> None:
        """A malformed request line that is not too large gets a 400."""
        _, channel, transport = self.connect()
        channel.dataReceived(b"NONSENSE\r\n\r\n")
        self.assertEqual(channel.too_large, 0)
        self.assertEqual(answers(transport.value()), [(400, b"")])

    def test_limit_counts_every_request_afresh(self) -> None:
        """Each request on a connection gets the whole allowance."""
        site, channel, _ = self.connect()
        head = b"GET /other HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"b" * 120 + b"\r\n\r\n"
        channel.dataReceived(head)
        site.resource.requests[0].finish()
        channel.dataReceived(head)
        self.assertEqual((channel.too_large, len(site.seen)), (0, 2))


class Echo(Resource):
    """Answers every request at once with its method, path and body."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        """``METHOD PATH BODY``."""
        assert request.content is not None
        return b"%s %s %s" % (request.method, request.path, request.content.read())


class EchoSite(Site):
    """Our channel in front of ``Echo``, on a clock."""

    def __init__(self) -> None:
        super().__init__(Echo(), timeout=None)
        self.protocol = LlhttpChannel.with_header_limit(400)  # type: ignore[method-assign,assignment]


def echo_connection() -> tuple[LlhttpChannel, StringTransport]:
    """One connection to an ``EchoSite``."""
    channel = EchoSite().buildProtocol(CLIENT)
    assert isinstance(channel, LlhttpChannel)
    transport = StringTransport(peerAddress=CLIENT)
    channel.makeConnection(transport)
    return channel, transport


def answers(output: bytes) -> list[tuple[int, bytes]]:
    """The status and body of each response a connection was sent (it then closed)."""
    return [(response.status, response.body)
            for response in parse_responses(output, at_eof=True)]


#: Requests of every framing, and what Echo answers to each.
PIPELINE = [
    (b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", b"GET /a "),
    (b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"POST /b hello"),
    (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: t\r\n\r\n", b"POST /c abcdefg"),
    (b"GET /d?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /d "),
]


class LlhttpChannelTests(HookConnection):
    """The channel that parses with llhttp: framing, pipelining, limits and bad input."""

    def test_pipelined_requests_wait_their_turn(self) -> None:
        """A request behind one being handled starts once it is answered; reading pauses."""
        site, channel, transport = self.connect()
        channel.dataReceived(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
        )
        self.assertEqual(len(site.resource.requests), 1)
        self.assertEqual(transport.producerState, "paused")
        site.resource.requests[0].write(b"first")
        site.resource.requests[0].finish()
        self.assertEqual(len(site.resource.requests), 2)
        second = site.resource.requests[1]
        assert second.content is not None
        self.assertEqual((second.path, second.content.read()), (b"/other", b"xyz"))
        self.assertEqual(transport.producerState, "producing")

    def test_pipelined_bad_request_is_answered_in_order(self) -> None:
        """Bad input behind a request being handled gets its 400 after that answer."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nNONSENSE\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        site.resource.requests[0].write(b"first")
        site.resource.requests[0].finish()
        output = transport.value()
        self.assertEqual(answers(output), [(200, b"first"), (400, b"")])
        self.assertTrue(transport.disconnecting)

    def test_smuggling_and_malformed_heads_get_a_400(self) -> None:
        """Both framings at once, folded or NUL-bearing headers and HTTP/0.9 are refused."""
        for head in (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: bare-lf\r\n\r\n",
            b"GET /\r\n\r\n",
        ):
            site, channel, transport = self.connect()
            channel.dataReceived(head)
            self.assertEqual(answers(transport.value()), [(400, b"")], head)
            self.assertTrue(transport.disconnecting, head)
            self.assertEqual(site.resource.requests, [], head)

    def test_bad_chunk_framing_mid_body_gets_a_400(self) -> None:
        """A chunk size that is not hex ends the request being received."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"POST /stream HTTP/1.1\r\nHost: a\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        self.assertEqual(answers(transport.value()), [(400, b"")])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(site.sinks[0].lost)

    def test_upgrade_is_answered_then_the_connection_closes(self) -> None:
        """Upgrade and CONNECT are not served: answered as any request, then closed."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n\x81\x05hello")
        [request] = site.resource.requests
        self.assertFalse(transport.disconnecting)
        request.finish()
        self.assertEqual(answers(transport.value()), [(200, b"")])
        self.assertTrue(transport.disconnecting)

    def test_http_1_0_closes_after_its_answer(self) -> None:
        """HTTP/1.0 is answered, then the connection closes (as HTTPChannel does)."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"GET /old HTTP/1.0\r\n\r\nGET /more HTTP/1.0\r\n\r\n")
        site.resource.requests[0].finish()
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 200 OK"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(site.resource.requests), 1)

    def test_close_after_ends_a_kept_alive_connection(self) -> None:
        """
        close_after: the answer says ``Connection: close`` and the connection closes after
        it, the next pipelined request unanswered (the channel's ``persistent`` flag).
        """
        site, channel, transport = self.connect()
        channel.dataReceived(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        request = site.resource.requests[0]
        close_after(request)
        request.finish()
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting,
                        "channel.close_after: the channel no longer closes the "
                        "connection when its persistent flag is cleared during a request")
        self.assertEqual(len(site.resource.requests), 1)

    def test_close_after_on_twisted_channel(self) -> None:
        """The same on twisted.web's own channel (which serves what ours does not)."""
        resource = Held()
        site = Site(resource, timeout=None)
        protocol = site.buildProtocol(CLIENT)
        assert protocol is not None
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        request = resource.requests[0]
        close_after(request)
        request.finish()
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_expect_continue_is_answered_before_the_body(self) -> None:
        """``Expect: 100-continue`` gets its interim answer once the head is in."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                             b"Expect: 100-continue\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"ok")
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"ok")

    def test_parser_kept_only_while_a_request_is_read(self) -> None:
        """Between requests (a held poll) the connection keeps no parser; mid-way it does."""
        site, channel, _ = self.connect()
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        self.assertIsNotNone(channel._parser)
        channel.dataReceived(b"cd")
        self.assertIsNone(channel._parser)
        [request] = site.resource.requests
        assert request.content is not None
        self.assertEqual(request.content.read(), b"abcd")

    def test_too_many_headers_are_refused(self) -> None:
        """More header lines than ``maxHeaders`` reach ``headers_too_large``."""
        _, channel, _ = self.connect()
        channel.maxHeaders = 3
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 4 + b"\r\n")
        self.assertEqual(channel.too_large, 1)

    def test_idle_timeout_waits_for_the_answer(self) -> None:
        """A request held past the idle timeout keeps its connection; idleness ends it."""
        clock = Clock()
        site, channel, transport = hook_connection(clock=clock)
        channel.dataReceived(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
        clock.advance(25)
        self.assertFalse(transport.disconnecting)
        site.resource.requests[0].finish()
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_timed_out_connection_that_stays_is_aborted(self) -> None:
        """Idle past the timeout: closed; still there ``abortTimeout`` later: aborted."""
        clock = Clock()
        transport = AbortCounting(peerAddress=CLIENT)
        _, channel, _ = hook_connection(transport, clock=clock)
        clock.advance(11)
        self.assertEqual((transport.disconnecting, transport.aborted), (True, 0))
        clock.advance(channel.abortTimeout or 0)
        self.assertEqual(transport.aborted, 1)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closing_twice_is_harmless(self) -> None:
        """A connection closed by its timeout, then by its answer, closes once."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"GET /held HTTP/1.0\r\n\r\n")
        channel.loseConnection()
        site.resource.requests[0].finish()
        self.assertTrue(transport.disconnecting)

    def test_full_transport_pauses_the_producer_and_reading(self) -> None:
        """The transport's flow control reaches the request's producer, and reading."""
        site, channel, transport = self.connect()
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        channel.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        channel.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(b"cd")
        [request] = site.resource.requests
        producer = PausingProducer()
        request.registerProducer(producer, True)
        channel.pauseProducing()
        # While a request is answered, its peer is still read (a hang-up is seen at once).
        self.assertEqual((producer.events, transport.producerState), (["pause"], "producing"))
        channel.resumeProducing()
        request.unregisterProducer()
        channel.pauseProducing()
        self.assertEqual(producer.events, ["pause", "resume"])
        channel.resumeProducing()
        request.finish()
        self.assertEqual(answers(transport.value()), [(200, b"")])

    def test_exception_of_a_handler_is_not_taken_for_bad_input(self) -> None:
        """An error raised by twisted.web or a resource goes up, not out as a 400."""
        _, channel, transport = self.connect()

        def broken(method: bytes, path: bytes, length: int | None) -> None:
            raise ZeroDivisionError("a bug")

        channel.requestFactory = lambda channel: _broken_request(broken, channel)
        with self.assertRaises(ZeroDivisionError):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(transport.value(), b"")

    @BOUNDED
    @given(st.lists(st.integers(min_value=0, max_value=sum(len(r) for r, _ in PIPELINE)),
                    max_size=12))
    def test_any_split_gives_the_same_requests(self, cuts: list[int]) -> None:
        """Pipelined requests of every framing, cut anywhere, are each answered whole."""
        channel, transport = echo_connection()
        data = b"".join(request for request, _ in PIPELINE)
        points = [0, *sorted(cuts), len(data)]
        for start, end in itertools.pairwise(points):
            channel.dataReceived(data[start:end])
        self.assertEqual(answers(transport.value()),
                         [(200, answer) for _, answer in PIPELINE])
        self.assertFalse(transport.disconnecting)

    @BOUNDED
    @given(st.one_of(st.binary(max_size=600),
                     st.lists(st.sampled_from([r for r, _ in PIPELINE] + [
                         b"\r\n", b"X: y\r\n", b"0\r\n", b"GET ", b"HTTP/1.1", b"\x00",
                         b"Content-Length: 99999999999999999999\r\n"]),
                              max_size=8).map(b"".join)))
    def test_any_bytes_are_answered_or_refused(self, data: bytes) -> None:
        """Whatever arrives, nothing escapes the channel: answers, or a 4xx and close."""
        channel, transport = echo_connection()
        channel.dataReceived(data)
        for status, _ in answers(transport.value()):
            self.assertIn(status, (200, 400, 431))


class HeldWritesTests(SynchronousTestCase):
    """Responses written while input is handled are held and sent in order, at once."""

    def test_answers_written_during_a_read_leave_in_one_write(self) -> None:
        """Every piece of an answer made within dataReceived reaches the transport once."""
        channel, transport = echo_connection()
        writes: list[bytes] = []
        original = transport.write

        def counted(data: bytes) -> None:
            writes.append(data)
            original(data)

        transport.write = counted  # type: ignore[method-assign]
        channel.dataReceived(PIPELINE[1][0])
        self.assertEqual(len(writes), 1)
        self.assertEqual(answers(writes[0]), [(200, PIPELINE[1][1])])

    def test_refusal_after_held_answers_keeps_the_order(self) -> None:
        """A 400 of a pipelined bad request leaves after the answers held before it."""
        channel, transport = echo_connection()
        channel.dataReceived(PIPELINE[0][0] + PIPELINE[3][0] + b"NONSENSE\r\n\r\n")
        output = transport.value()
        self.assertEqual(answers(output),
                         [(200, PIPELINE[0][1]), (200, PIPELINE[3][1]), (400, b"")])
        self.assertTrue(transport.disconnecting)


@implementer(IPullProducer)
class ThreePieces:
    """A pull producer that writes three pieces of an answer, then finishes it."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.pieces = [b"one ", b"two ", b"three"]

    def resumeProducing(self) -> None:
        """The next piece; after the last, the end of the answer."""
        if self.pieces:
            self.request.write(self.pieces.pop(0))
        else:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        """Nothing to stop."""


class PullProducerTests(TestCase):
    """A request's pull producer is asked for data until it unregisters."""

    def test_pull_producer_writes_the_whole_answer(self) -> Deferred[None]:
        """Three pulls, three pieces, one chunked answer."""
        site, channel, transport = hook_connection()
        channel.dataReceived(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
        [request] = site.resource.requests
        finished: Deferred[None] = request.notifyFinish()
        request.registerProducer(ThreePieces(request), False)

        def check(_: None) -> None:
            self.assertEqual(answers(transport.value()), [(200, b"one two three")])

        return finished.addCallback(check)



def _broken_request(sink_for: Any, channel: Any) -> StreamingRequest:
    request = StreamingRequest(channel)
    request.sink_for = sink_for  # type: ignore[method-assign]
    return request
