"""
Tests for L{pushprox.client.link}: the client's keep-alive connections to the proxy.

Most tests drive a L{ProxyLink} through an endpoint whose connections are
C{StringTransport}s: the test reads what the link wrote and plays the server's bytes,
its closing and its flow control exactly.  A few run the link against a real
twisted.web site on the in-memory network, and hypothesis feeds answers (the recorded
Go proxy's among them) split at arbitrary points.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestGenerationFailed, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from pushprox.client.link import (
    AnswerTooLarge,
    BadAnswer,
    BodyLengthMismatch,
    ProxyAnswer,
    ProxyLink,
    RequestHead,
    host_value,
    request_head,
)
from pushprox.client.service import describe_failure
from tests.harness.recordings import GO_PROXY_POLL_ANSWER, recording
from tests.memory import MemoryNetwork

BOUNDED = settings(max_examples=200, deadline=None, database=None)

HEAD = request_head(b"POST", b"/poll", b"proxy:8080", [(b"User-Agent", b"test/1")])
POLL = b"POST /poll HTTP/1.1\r\nHost: proxy:8080\r\nUser-Agent: test/1\r\n"
LIMIT = 1000
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Thing: a\r\nx-thing: b\r\n\r\nhello"
OK_ANSWER = ProxyAnswer(code=200, phrase=b"OK", body=b"hello", headers=(
    (b"content-length", b"5"), (b"x-thing", b"a"), (b"x-thing", b"b")))


class Server:
    """The server's end of one connection the link made: what it got, what it says."""

    def __init__(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        """Everything the link wrote on this connection so far, taken away."""
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    def answer(self, *pieces: bytes) -> None:
        """Send ``pieces`` to the link, one ``dataReceived`` each."""
        for piece in pieces:
            self.protocol.dataReceived(piece)

    def close(self, reason: Exception | None = None) -> None:
        """The connection ends (cleanly unless ``reason`` says otherwise)."""
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    @property
    def closed_by_link(self) -> bool:
        """Whether the link closed or aborted this connection."""
        return bool(self.transport.disconnecting)


@implementer(IStreamClientEndpoint)
class Endpoint:
    """Connects at once (or when told, with ``hold``), each connection a L{Server}."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.hold = False
        self.held: list[tuple[Deferred[IProtocol], IProtocolFactory]] = []
        self.refuse = False

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.refuse:
            return Deferred.fromCoroutine(_refused())
        if self.hold:
            waiting: Deferred[IProtocol] = Deferred()
            self.held.append((waiting, factory))
            return waiting
        return succeed(self._make(factory))

    def release(self) -> None:
        """Complete the held connection attempts."""
        held, self.held = self.held, []
        for waiting, factory in held:
            waiting.callback(self._make(factory))

    def _make(self, factory: IProtocolFactory) -> IProtocol:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert protocol is not None
        self.servers.append(Server(protocol))
        return protocol


async def _refused() -> IProtocol:
    raise ConnectionRefusedError("127.0.0.1", 8080)


@implementer(IBodyProducer)
class Producer:
    """A body the test writes piece by piece, recording the calls it gets."""

    def __init__(self, length: int | object = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.consumer: IConsumer | None = None
        self.done: Deferred[None] = Deferred()
        self.calls: list[str] = []

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        self.calls.append("start")
        return self.done

    def write(self, data: bytes) -> None:
        assert self.consumer is not None
        self.consumer.write(data)

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class LinkTestCase(SynchronousTestCase):
    """A link on an L{Endpoint}."""

    def setUp(self) -> None:
        self.endpoint = Endpoint()
        self.link = ProxyLink(self.endpoint)

    def request(self, body: bytes | IBodyProducer = b"node", *,
                limit: int = LIMIT) -> Deferred[ProxyAnswer]:
        return self.link.request(HEAD, body, limit=limit)


class RequestTests(LinkTestCase):
    """What the link writes, and the answers it reads."""

    def test_bytes_body_is_sent_with_its_length_in_one_write(self) -> None:
        """The head, Content-Length and the body go out together."""
        self.request(b"node1.example")
        [server] = self.endpoint.servers
        self.assertEqual(server.transport.value(),
                         POLL + b"Content-Length: 13\r\n\r\nnode1.example")

    def test_written_is_called_once_connected(self) -> None:
        """``written`` waits for the connection, then for each connection written on."""
        calls: list[int] = []
        self.endpoint.hold = True
        self.link.request(HEAD, b"node", limit=LIMIT,
                          written=lambda: calls.append(len(self.endpoint.servers)))
        self.assertEqual(calls, [])
        self.endpoint.release()
        self.assertEqual(calls, [1])
        self.endpoint.servers[0].answer(OK)
        self.link.request(HEAD, b"again", limit=LIMIT, written=lambda: calls.append(0))
        self.assertEqual(calls, [1, 0])

    def test_answer_with_content_length(self) -> None:
        """Status, reason, every header (names in lower case, order kept) and the body."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(OK[:30])
        self.assertNoResult(answering)
        server.answer(OK[30:])
        answer = self.successResultOf(answering)
        self.assertEqual(answer, OK_ANSWER)
        self.assertEqual(answer.values(b"X-Thing"), [b"a", b"b"])
        self.assertEqual(answer.values(b"X-Other"), [])
        self.assertEqual((answer.has(b"X-THING"), answer.has(b"x-other")), (True, False))

    def test_chunked_answer(self) -> None:
        """A chunked body is read to its last chunk, trailers ignored."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                      b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
        answer = self.successResultOf(answering)
        self.assertEqual((answer.code, answer.body), (200, b"abcde"))
        self.assertEqual(self.link.idle_connections(), 1)

    def test_answer_delimited_by_close(self) -> None:
        """Without length or chunks the body runs to the connection's end; not reused."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<html>")
        self.assertNoResult(answering)
        server.answer(b"</html>")
        server.close()
        answer = self.successResultOf(answering)
        self.assertEqual((answer.code, answer.phrase, answer.body),
                         (502, b"Bad Gateway", b"<html></html>"))
        self.assertEqual((self.link.idle_connections(), self.link.open_connections()), (0, 0))

    def test_no_content_and_interim_answers(self) -> None:
        """A 204 has no body and keeps the connection; a 100 Continue is skipped."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n"
                      b"X-PushProx-Extensions: poll-timeout\r\n\r\n")
        answer = self.successResultOf(answering)
        self.assertEqual((answer.code, answer.body, answer.values(b"x-pushprox-extensions")),
                         (204, b"", [b"poll-timeout"]))
        self.assertEqual(self.link.idle_connections(), 1)

    def test_refused_connection_fails_with_the_connect_error(self) -> None:
        """The endpoint's error comes out as it is, as from Agent."""
        self.endpoint.refuse = True
        failure = self.failureResultOf(self.request(), ConnectionRefusedError)
        self.assertIn("ConnectionRefusedError: Connection was refused",
                      describe_failure(failure))

    def test_connection_lost_before_it_is_handed_over_fails_with_its_reason(self) -> None:
        """An endpoint whose connection ended before its Deferred fired (a TLS handshake
        refused at once): the request fails with that reason rather than waiting."""
        self.endpoint.hold = True
        answering = self.request()
        waiting, factory = self.endpoint.held.pop()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert protocol is not None
        Server(protocol).close(ConnectionLost("handshake refused"))
        waiting.callback(protocol)
        failure = self.failureResultOf(answering, ResponseNeverReceived)
        self.assertIn("handshake refused", describe_failure(failure))
        self.assertEqual(self.link.open_connections(), 0)

    def test_malformed_answer_fails_and_drops_the_connection(self) -> None:
        """Bytes that are not HTTP fail the request with a readable reason."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(b"SSH-2.0-OpenSSH_9.2\r\n")
        failure = self.failureResultOf(answering, ResponseFailed)
        self.assertTrue(failure.value.reasons[0].check(BadAnswer))
        self.assertIn("BadAnswer: malformed answer from the proxy:", describe_failure(failure))
        self.assertTrue(server.closed_by_link)

    def test_answer_over_the_limit_fails_while_it_arrives(self) -> None:
        """The limit holds before the body ends, chunked or not, and drops the connection."""
        for head in (b"Content-Length: 100000", b"Transfer-Encoding: chunked"):
            with self.subTest(head=head):
                answering = self.request(limit=10)
                server = self.endpoint.servers[-1]
                body = b"400\r\n" + b"x" * 11 if b"chunked" in head else b"x" * 11
                server.answer(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n", body)
                failure = self.failureResultOf(answering, AnswerTooLarge)
                self.assertEqual(describe_failure(failure),
                                 "AnswerTooLarge: answer exceeds 10 bytes")
                self.assertTrue(server.closed_by_link)
                server.close(ConnectionLost())
        self.assertEqual(self.link.open_connections(), 0)

    def test_endless_head_fails_at_the_limit(self) -> None:
        """Header lines without end count against the limit too."""
        answering = self.request(limit=100)
        [server] = self.endpoint.servers
        server.answer(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10):
            server.answer(b"X-Filler: " + b"y" * 20 + b"\r\n")
        self.failureResultOf(answering, AnswerTooLarge)
        self.assertTrue(server.closed_by_link)

    def test_connection_lost_mid_answer_fails(self) -> None:
        """An answer cut short is an error, not a short answer."""
        answering = self.request()
        [server] = self.endpoint.servers
        server.answer(OK[:-2])
        server.close(ConnectionLost())
        failure = self.failureResultOf(answering, ResponseFailed)
        self.assertTrue(failure.value.reasons[0].check(ConnectionLost))

    def test_head_values_are_kept_on_one_line(self) -> None:
        """A line break in a value becomes a space; a malformed name is refused."""
        head = request_head(b"POST", b"/push", b"p", [(b"Authorization", b"a\r\nX-Evil: 1")])
        self.assertEqual(head.data, b"POST /push HTTP/1.1\r\nHost: p\r\n"
                                    b"Authorization: a X-Evil: 1\r\n")
        for bad in ([(b"Bad Name", b"v")], [(b"", b"v")], [(b"X\r\nY", b"v")]):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, request_head, b"POST", b"/", b"p", bad)

    def test_host_value_names_the_port_unless_it_is_the_default(self) -> None:
        """As Agent writes Host."""
        self.assertEqual([host_value(b"http", b"p", 80), host_value(b"https", b"p", 443),
                          host_value(b"http", b"p", 8080), host_value(b"https", b"p", 80)],
                         [b"p", b"p", b"p:8080", b"p:80"])


class HeadTests(SynchronousTestCase):
    """``ProxyLink.head``: origin form to the proxy, absolute form to an HTTP proxy."""

    def test_origin_form(self) -> None:
        """A direct link writes the path, and Host with the port."""
        head = ProxyLink(Endpoint()).head(b"POST", b"https://proxy:8443/pre/poll?x=1",
                                          [(b"User-Agent", b"t")])
        self.assertEqual(head.data, b"POST /pre/poll?x=1 HTTP/1.1\r\nHost: proxy:8443\r\n"
                                    b"User-Agent: t\r\n")

    def test_absolute_form_with_proxy_authorization(self) -> None:
        """Through an HTTP proxy: the whole URL, and the proxy's credentials last."""
        link = ProxyLink(Endpoint(), absolute_form=True, proxy_authorization=b"Basic YTpi")
        head = link.head(b"POST", b"http://proxy:8080/poll", [(b"User-Agent", b"t")])
        self.assertEqual(head, RequestHead(
            b"POST", b"POST http://proxy:8080/poll HTTP/1.1\r\nHost: proxy:8080\r\n"
                     b"User-Agent: t\r\nProxy-Authorization: Basic YTpi\r\n"))


class ReuseTests(LinkTestCase):
    """Keep-alive: which connection a request takes, and which are dropped."""

    def test_connection_is_reused_after_a_whole_answer(self) -> None:
        """A second request goes on the first one's connection."""
        self.request()
        [server] = self.endpoint.servers
        server.received()
        server.answer(OK)
        self.assertEqual(self.link.idle_connections(), 1)
        answering = self.request(b"again")
        self.assertEqual(len(self.endpoint.servers), 1)
        self.assertEqual(server.received(), POLL + b"Content-Length: 5\r\n\r\nagain")
        server.answer(OK)
        self.assertEqual(self.successResultOf(answering), OK_ANSWER)

    def test_next_request_made_from_the_answer_reuses_the_connection(self) -> None:
        """The connection is idle again before the answer is handed over."""
        seen: list[int] = []
        first = self.request()
        first.addCallback(lambda _: seen.append(self.link.idle_connections()))
        first.addCallback(lambda _: self.request())
        self.endpoint.servers[0].answer(OK)
        self.assertEqual((seen, len(self.endpoint.servers)), ([1], 1))

    def test_requests_in_flight_together_get_a_connection_each(self) -> None:
        """Never two requests on one connection; the last one freed is taken first."""
        one, two = self.request(), self.request()
        self.assertEqual(len(self.endpoint.servers), 2)
        first, second = self.endpoint.servers
        second.answer(OK)
        first.answer(OK)
        self.successResultOf(one)
        self.successResultOf(two)
        self.assertEqual(self.link.idle_connections(), 2)
        first.received()
        second.received()
        self.request()
        self.assertEqual((first.received() != b"", second.received()), (True, b""))

    def test_connection_close_and_http_1_0_are_not_reused(self) -> None:
        """The server's word that it closes is taken."""
        for status_line, header in ((b"HTTP/1.1 200 OK", b"Connection: close\r\n"),
                                    (b"HTTP/1.0 200 OK", b"")):
            with self.subTest(status_line=status_line):
                answering = self.request()
                server = self.endpoint.servers[-1]
                server.answer(status_line + b"\r\n" + header + b"Content-Length: 2\r\n\r\nok")
                self.assertEqual(self.successResultOf(answering).body, b"ok")
                self.assertTrue(server.closed_by_link)
                self.assertEqual(self.link.idle_connections(), 0)
                server.close()
        self.assertEqual(self.link.open_connections(), 0)

    def test_idle_connection_closed_by_the_server_is_forgotten(self) -> None:
        """A new request does not pick a connection that is gone."""
        self.request()
        server = self.endpoint.servers[0]
        server.answer(OK)
        server.close()
        self.assertEqual(self.link.idle_connections(), 0)
        self.request()
        self.assertEqual(len(self.endpoint.servers), 2)

    def test_idle_connection_that_talks_is_dropped(self) -> None:
        """Bytes nobody asked for: the connection is not trusted again."""
        self.request()
        server = self.endpoint.servers[0]
        server.answer(OK)
        server.answer(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(server.closed_by_link)
        server.close(ConnectionLost())
        self.request()
        self.assertEqual(len(self.endpoint.servers), 2)

    def test_bytes_after_an_answer_drop_the_connection(self) -> None:
        """An answer followed by more bytes is delivered; its connection is not reused."""
        answering = self.request()
        server = self.endpoint.servers[0]
        server.answer(OK + b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.successResultOf(answering), OK_ANSWER)
        self.assertTrue(server.closed_by_link)
        self.assertEqual(self.link.idle_connections(), 0)

    def test_idle_connections_beyond_the_bound_are_closed(self) -> None:
        """At most ``max_idle`` wait."""
        link = ProxyLink(self.endpoint, max_idle=1)
        link.request(HEAD, b"a", limit=LIMIT)
        link.request(HEAD, b"b", limit=LIMIT)
        first, second = self.endpoint.servers
        first.answer(OK)
        second.answer(OK)
        self.assertEqual((first.closed_by_link, second.closed_by_link), (False, True))
        self.assertEqual(link.idle_connections(), 1)

    def test_close_closes_idle_connections_and_later_ones_after_their_answer(self) -> None:
        """close() fires once the idle ones are closed; a busy one closes when it is done."""
        self.request()
        busy = self.request()
        idle, working = self.endpoint.servers
        idle.answer(OK)
        closed = self.link.close()
        self.assertTrue(idle.closed_by_link)
        self.assertNoResult(closed)
        idle.close()
        self.successResultOf(closed)
        working.answer(OK)
        self.successResultOf(busy)
        self.assertTrue(working.closed_by_link)
        self.successResultOf(ProxyLink(Endpoint()).close())


class RetryTests(LinkTestCase):
    """A reused connection the server closed as the request went out."""

    def reused(self) -> Server:
        self.request()
        server = self.endpoint.servers[0]
        server.answer(OK)
        server.received()
        return server

    def test_request_on_a_connection_closed_idle_is_sent_again_once(self) -> None:
        """No answer byte, clean close, reused connection: sent again on a new one."""
        server = self.reused()
        answering = self.request(b"again")
        server.close()
        self.assertNoResult(answering)
        fresh = self.endpoint.servers[1]
        self.assertEqual(fresh.received(), POLL + b"Content-Length: 5\r\n\r\nagain")
        fresh.answer(OK)
        self.assertEqual(self.successResultOf(answering), OK_ANSWER)

    def test_second_close_is_not_retried(self) -> None:
        """Once only: the fresh connection closing too fails the request."""
        server = self.reused()
        answering = self.request()
        server.close()
        self.endpoint.servers[1].close()
        failure = self.failureResultOf(answering, ResponseNeverReceived)
        self.assertTrue(failure.value.reasons[0].check(ConnectionDone))

    def test_fresh_connection_closed_is_not_retried(self) -> None:
        """A new connection closed before an answer is the server's doing: an error."""
        answering = self.request()
        self.endpoint.servers[0].close(ConnectionLost())
        self.failureResultOf(answering, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.servers), 1)

    def test_close_after_answer_bytes_is_not_retried(self) -> None:
        """Once the answer has begun, the request was read: no second try."""
        server = self.reused()
        answering = self.request()
        server.answer(b"HTTP/1.1 2")
        server.close()
        self.failureResultOf(answering, ResponseFailed)
        self.assertEqual(len(self.endpoint.servers), 1)

    def test_streamed_body_is_not_sent_twice(self) -> None:
        """A producer that has started cannot start over: the request fails."""
        server = self.reused()
        producer = Producer()
        answering = self.request(producer)
        server.close()
        self.failureResultOf(answering, ResponseNeverReceived)
        self.assertEqual((len(self.endpoint.servers), producer.calls), (1, ["start", "stop"]))


class CancelTests(LinkTestCase):
    """Cancelling a request (the poll bound, shutdown) drops its connection."""

    def test_cancel_while_waiting_for_the_answer_aborts_the_connection(self) -> None:
        """CancelledError; the connection is aborted and never reused."""
        answering = self.request()
        [server] = self.endpoint.servers
        answering.cancel()
        self.failureResultOf(answering, CancelledError)
        self.assertTrue(server.transport.disconnected)
        server.answer(OK)
        server.close(ConnectionLost())
        self.assertEqual((self.link.idle_connections(), self.link.open_connections()), (0, 0))

    def test_cancel_while_connecting_stops_the_attempt(self) -> None:
        """The endpoint's Deferred is cancelled; nothing is written anywhere."""
        self.endpoint.hold = True
        answering = self.request()
        answering.cancel()
        self.failureResultOf(answering, CancelledError)
        [(attempt, _)] = self.endpoint.held
        self.assertTrue(attempt.called)
        self.assertEqual(self.endpoint.servers, [])

    def test_connection_made_after_cancel_is_kept_for_the_next_request(self) -> None:
        """An endpoint that connects despite the cancel hands over an idle connection."""
        self.endpoint.hold = True
        answering = self.request()
        waiting, factory = self.endpoint.held.pop()
        answering.cancel()
        self.failureResultOf(answering, CancelledError)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert protocol is not None
        server = Server(protocol)
        # A Deferred already failed by its cancel ignores this; the link must not break.
        waiting.callback(protocol)
        self.assertEqual(server.received(), b"")

    def test_cancel_while_streaming_stops_the_producer(self) -> None:
        """The body's producer is stopped with the connection."""
        producer = Producer()
        answering = self.request(producer)
        answering.cancel()
        self.failureResultOf(answering, CancelledError)
        self.assertEqual(producer.calls, ["start", "stop"])
        producer.done.callback(None)
        self.assertEqual(self.link.idle_connections(), 0)


class StreamedBodyTests(LinkTestCase):
    """A push body streamed from a producer, with flow control."""

    def test_unknown_length_is_chunked_and_paused_by_the_transport(self) -> None:
        """Chunks as written; the transport pauses and resumes the producer itself."""
        producer = Producer()
        answering = self.request(producer)
        [server] = self.endpoint.servers
        # The head waits for the body's first bytes, to leave with them in one send().
        self.assertEqual(server.received(), b"")
        self.assertIs(server.transport.producer, producer)
        self.assertTrue(server.transport.streaming)
        producer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(server.received(), POLL + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"13\r\nHTTP/1.1 200 OK\r\n\r\n\r\n")
        producer.write(b"")
        registered = server.transport.producer
        assert registered is not None
        registered.pauseProducing()
        registered.resumeProducing()
        producer.write(b"a" * 17)
        self.assertEqual(server.received(), b"11\r\n" + b"a" * 17 + b"\r\n")
        producer.done.callback(None)
        self.assertEqual(server.received(), b"0\r\n\r\n")
        self.assertIsNone(server.transport.producer)
        self.assertNoResult(answering)
        server.answer(OK)
        self.assertEqual(self.successResultOf(answering), OK_ANSWER)
        self.assertEqual(producer.calls, ["start", "pause", "resume"])
        self.assertEqual(self.link.idle_connections(), 1)

    def test_empty_body_sends_the_head_at_its_end(self) -> None:
        """A body that ends without a byte still sends the request's head."""
        producer = Producer(length=0)
        answering = self.request(producer)
        [server] = self.endpoint.servers
        self.assertEqual(server.received(), b"")
        producer.done.callback(None)
        self.assertEqual(server.received(), POLL + b"Content-Length: 0\r\n\r\n")
        server.answer(OK)
        self.assertEqual(self.successResultOf(answering), OK_ANSWER)

    def test_known_length_is_sent_with_content_length(self) -> None:
        """The producer's length is the Content-Length; its bytes go out unframed."""
        producer = Producer(length=6)
        answering = self.request(producer)
        [server] = self.endpoint.servers
        producer.write(b"abc")
        producer.write(b"def")
        producer.done.callback(None)
        self.assertEqual(server.received(), POLL + b"Content-Length: 6\r\n\r\nabcdef")
        server.answer(OK)
        self.successResultOf(answering)

    def test_body_longer_or_shorter_than_its_length_fails(self) -> None:
        """Either way the request fails and the connection is dropped."""
        for written in (b"abcdefg", b"abc"):
            with self.subTest(written=written):
                producer = Producer(length=6)
                answering = self.request(producer)
                server = self.endpoint.servers[-1]
                producer.write(written)
                producer.done.callback(None)
                failure = self.failureResultOf(answering, RequestGenerationFailed)
                self.assertTrue(failure.value.reasons[0].check(BodyLengthMismatch))
                self.assertTrue(server.closed_by_link)

    def test_producer_failure_fails_the_request_and_drops_the_connection(self) -> None:
        """The proxy sees the push break off; the caller sees why."""
        producer = Producer()
        answering = self.request(producer)
        [server] = self.endpoint.servers
        producer.done.errback(ConnectionLost("the target hung up"))
        failure = self.failureResultOf(answering, RequestGenerationFailed)
        self.assertIn("ConnectionLost", describe_failure(failure))
        self.assertTrue(server.closed_by_link)
        self.assertIsNone(server.transport.producer)

    def test_connection_lost_while_streaming_stops_the_producer(self) -> None:
        """The producer (the target's connection) stops with the push."""
        producer = Producer()
        answering = self.request(producer)
        self.endpoint.servers[0].close(ConnectionLost())
        self.failureResultOf(answering, ResponseNeverReceived)
        self.assertEqual(producer.calls, ["start", "stop"])
        producer.done.errback(ConnectionLost())  # consumed, not an unhandled error

    def test_answer_before_the_body_ends_is_delivered_and_the_connection_dropped(self) -> None:
        """A refusal (413, 404) may come early: it is the answer; the body stops."""
        producer = Producer()
        answering = self.request(producer)
        [server] = self.endpoint.servers
        producer.write(b"part")
        server.answer(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(answering).code, 413)
        self.assertEqual(producer.calls, ["start", "stop"])
        self.assertTrue(server.closed_by_link)
        self.assertIsNone(server.transport.producer)
        producer.done.callback(None)
        self.assertEqual(self.link.idle_connections(), 0)


# -- answers split anywhere --


def feed_split(data: bytes, cuts: list[int], *, close: bool = False,
               limit: int = LIMIT) -> tuple[ProxyLink, Server, Deferred[ProxyAnswer]]:
    """Send a request and feed ``data`` back cut at ``cuts``, then close if asked."""
    endpoint = Endpoint()
    link = ProxyLink(endpoint)
    answering = link.request(HEAD, b"node", limit=limit)
    [server] = endpoint.servers
    bounds = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    server.answer(*(data[start:end] for start, end in pairwise(bounds)))
    if close:
        server.close()
    return link, server, answering


def answer_bytes(code: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 framing: str) -> bytes:
    """An HTTP/1.1 answer framed by length, chunks or the connection's end."""
    lines = b"".join(b"%s: %s\r\n" % header for header in headers)
    if framing == "length":
        return b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n%s" % (
            code, lines, len(body), body)
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                          for i in range(0, len(body), 7))
        return b"HTTP/1.1 %d X\r\n%sTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            code, lines, chunks)
    return b"HTTP/1.1 %d X\r\n%s\r\n%s" % (code, lines, body)


header_names = st.text("abcdefXYZ-_0123", min_size=1, max_size=12).map(str.encode).filter(
    lambda name: name.lower() not in (b"content-length", b"transfer-encoding",
                                      b"connection"))
header_values = st.text("".join(map(chr, range(0x21, 0x7f))), max_size=30).map(str.encode)
cut_points = st.lists(st.integers(min_value=0, max_value=600), max_size=8)


class SplitAnswerTests(SynchronousTestCase):
    """However the bytes of an answer are split, the same answer comes out."""

    def test_recorded_go_poll_answer_split_at_every_byte(self) -> None:
        """The Go proxy's poll answer, in two pieces cut at each byte, every time whole."""
        recorded = recording(GO_PROXY_POLL_ANSWER)
        data, body = recorded.raw, recorded.body
        for cut in range(len(data) + 1):
            link, _, answering = feed_split(data, [cut])
            answer = self.successResultOf(answering)
            self.assertEqual((answer.code, answer.body, answer.values(b"content-type")),
                             (200, body, [b"text/plain; charset=utf-8"]))
            self.assertEqual(link.idle_connections(), 1)

    @BOUNDED
    @given(code=st.sampled_from([200, 202, 404, 502]),
           headers=st.lists(st.tuples(header_names, header_values), max_size=5),
           body=st.binary(max_size=200),
           framing=st.sampled_from(["length", "chunked", "close"]),
           cuts=cut_points)
    def test_generated_answers_read_whole_however_split(
        self, code: int, headers: list[tuple[bytes, bytes]], body: bytes, framing: str,
        cuts: list[int],
    ) -> None:
        """Status, headers and body come out as sent; only framed answers keep the link."""
        data = answer_bytes(code, headers, body, framing)
        link, _, answering = feed_split(data, cuts, close=framing == "close")
        answer = self.successResultOf(answering)
        self.assertEqual((answer.code, answer.body), (code, body))
        self.assertEqual([header for header in answer.headers
                          if header[0] not in (b"content-length", b"transfer-encoding")],
                         [(name.lower(), value) for name, value in headers])
        self.assertEqual(link.idle_connections(), 0 if framing == "close" else 1)

    @BOUNDED
    @given(body=st.binary(min_size=11, max_size=200),
           framing=st.sampled_from(["length", "chunked", "close"]), cuts=cut_points)
    def test_answers_over_the_limit_fail_however_split(
        self, body: bytes, framing: str, cuts: list[int]
    ) -> None:
        """A body over the limit always fails with AnswerTooLarge and drops the link."""
        data = answer_bytes(200, [], body, framing)
        link, _, answering = feed_split(data, cuts, close=framing == "close", limit=10)
        self.failureResultOf(answering, AnswerTooLarge)
        self.assertEqual(link.idle_connections(), 0)

    @BOUNDED
    @given(pieces=st.lists(st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 3\r\n", b"\r\n",
                         b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n",
                         b"HTTP/1.0 ", b"Connection: close\r\n", b"zz\r\n"])),
        max_size=10), close=st.booleans())
    def test_arbitrary_bytes_give_an_answer_or_a_failure(
        self, pieces: list[bytes], close: bool
    ) -> None:
        """Nothing raises out of dataReceived; the request ends in an answer, a failure
        of the link's kinds, or waits for more."""
        endpoint = Endpoint()
        link = ProxyLink(endpoint)
        answering = link.request(HEAD, b"node", limit=LIMIT)
        [server] = endpoint.servers
        server.answer(*pieces)
        if close:
            server.close()
        outcome: list[object] = []
        answering.addBoth(outcome.append)
        if close:
            self.assertEqual(len(outcome), 1)
        if outcome and isinstance(outcome[0], Failure):
            self.assertIsNotNone(outcome[0].check(ResponseFailed, ResponseNeverReceived,
                                                  AnswerTooLarge))


# -- against a real twisted.web site, in memory --


class Counter(Resource):
    """Answers every POST with its number and the client port it came from."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []

    def render_POST(self, request: Request) -> bytes:
        self.ports.append(request.getClientAddress().port)
        request.setHeader(b"content-type", b"text/plain")
        return b"%d" % len(self.ports)


class RealServerTests(SynchronousTestCase):
    """The link against twisted.web on the in-memory network."""

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.counter = Counter()
        self.site = Site(self.counter, reactor=self.network, timeout=30)
        self.site.noisy = False
        self.network.listenTCP(8080, self.site)
        self.link = ProxyLink(self.network.endpoint(8080))

    def post(self) -> Callable[[], ProxyAnswer]:
        answering = self.link.request(
            request_head(b"POST", b"/poll", b"127.0.0.1:8080", []), b"x", limit=LIMIT)
        return lambda: self.successResultOf(answering)

    def test_one_connection_serves_request_after_request(self) -> None:
        """Three requests, one connection; closing the link leaves nothing open."""
        for number in (1, 2, 3):
            answering = self.post()
            self.network.flush()
            answer = answering()
            self.assertEqual((answer.code, answer.body), (200, b"%d" % number))
        self.assertEqual(len(set(self.counter.ports)), 1)
        closed = self.link.close()
        self.network.flush()
        self.successResultOf(closed)
        self.assertEqual(self.network.open_connections(), [])

    def test_connection_the_server_timed_out_is_replaced(self) -> None:
        """The site closes the idle connection; the next request opens another."""
        self.post()
        self.network.flush()
        self.network.advance(31)
        self.assertEqual(self.link.open_connections(), 0)
        answer = self.post()
        self.network.flush()
        self.assertEqual(answer().body, b"2")
        self.assertEqual(len(set(self.counter.ports)), 2)
        closed = self.link.close()
        self.network.flush()
        self.successResultOf(closed)
        self.assertEqual(self.network.open_connections(), [])
