"""
Tests for L{pushprox.proxy.site}: the site's routing, status codes, limits and relays.

Each test drives a real L{PushProxSite} through in-memory connections
(``buildProtocol`` + ``StringTransport``) on a L{Clock}, so that absolute-URI requests,
lost connections and timeouts can all be played exactly.
"""

from __future__ import annotations

import gzip
import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pushprox.proxy.coordinator import Coordinator
from pushprox.proxy.site import HotRequest, ProxyConfig, PushProxSite
from pushprox.shared import wire
from tests.harness.recordings import (
    GO_CLIENT_POLL,
    GO_CLIENT_PUSH,
    GO_CLIENT_PUSH_ERROR,
    GO_ID,
    recording,
)
from tests.helpers import response_so_far


class Response:
    """An HTTP response read back from a transport, as far as it has arrived."""

    def __init__(self, raw: bytes) -> None:
        read, self.complete = response_so_far(raw)
        self.status = read.status
        self.headers = {name.lower(): value for name, value in read.headers}
        self.body = read.body


class Connection:
    """One in-memory client connection to the site."""

    def __init__(self, site: PushProxSite, port: int) -> None:
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """Deliver bytes from the peer."""
        self.protocol.dataReceived(data)

    def response(self) -> Response | None:
        """The response written so far, or None when nothing was written."""
        value = self.transport.value()
        return Response(value) if value else None

    def hang_up(self) -> None:
        """The peer closes the connection."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


def scrape_request(url: bytes, timeout: bytes | None = b"10", extra: bytes = b"") -> bytes:
    """A proxy-form GET as Prometheus sends it."""
    host = url.split(b"/")[2]
    head = b"GET " + url + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    head += b"User-Agent: Prometheus/2.42.0\r\nAccept-Encoding: gzip\r\n"
    if timeout is not None:
        head += b"X-Prometheus-Scrape-Timeout-Seconds: " + timeout + b"\r\n"
    return head + extra + b"\r\n"


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A POST with a Content-Length body."""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


class ProxyTestCase(SynchronousTestCase):
    """A site on a clock, with helpers for the three parties."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.coordinator = Coordinator(self.clock)
        self.config = ProxyConfig(max_push_size=100_000, max_request_size=1000)
        # Connection idle timers run on their own clock, out of the way of assertIdle.
        self.site = PushProxSite(self.coordinator, clock=self.clock, config=self.config,
                                 reactor=Clock())
        self.ports = iter(range(40000, 50000))

    def connect(self) -> Connection:
        """A new connection from a new port."""
        return Connection(self.site, next(self.ports))

    def poll(self, fqdn: bytes = b"node1.example", extra: bytes = b"") -> Connection:
        """A client's poll, held open."""
        connection = self.connect()
        connection.send(post(b"/poll", fqdn, extra))
        return connection

    def scrape(self, url: bytes = b"http://node1.example:9100/metrics", *,
               timeout: bytes | None = b"10", extra: bytes = b"") -> Connection:
        """Prometheus' proxy-form scrape."""
        connection = self.connect()
        connection.send(scrape_request(url, timeout, extra))
        return connection

    def handed_out(self, poll: Connection) -> wire.ScrapeRequest:
        """The scrape request a poll was answered with."""
        response = poll.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        return wire.decode_scrape_request(response.body)

    def sent_scrape(self) -> tuple[Connection, wire.ScrapeRequest]:
        """Prometheus' scrape, handed to a waiting poll: the scraper and the request."""
        poll = self.poll()
        scraper = self.scrape()
        return scraper, self.handed_out(poll)

    def push(self, body: bytes) -> Response:
        """Push a body and return the push's answer."""
        connection = self.connect()
        connection.send(post(b"/push", body))
        response = connection.response()
        assert response is not None
        return response

    def assertIdle(self) -> None:
        """Nothing is left in the coordinator, and no timer runs."""
        self.assertTrue(self.coordinator.is_idle())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ScrapeTests(ProxyTestCase):
    """Scrapes from Prometheus, relayed to and from a client."""

    def test_unknown_client_gets_404_at_once(self) -> None:
        """A scrape for an FQDN without a client is answered 404 without waiting."""
        response = self.scrape(b"http://nobody.example:9100/metrics").response()
        assert response is not None
        self.assertEqual(response.status, 404)
        self.assertEqual(response.body, b"no client is registered as nobody.example\n")
        self.assertEqual(response.headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertIdle()

    def test_scrape_handed_to_waiting_poll_and_push_relayed(self) -> None:
        """The Go client's recorded push reaches Prometheus without internal headers."""
        poll = self.poll()
        scraper = self.scrape(b"http://node1.example:9100/metrics?foo=bar")
        request = self.handed_out(poll)
        self.assertEqual(request.url, b"http://node1.example:9100/metrics?foo=bar")
        self.assertEqual(request.timeout, 9.65)
        push = recording(GO_CLIENT_PUSH).body.replace(
            GO_ID, request.scrape_id.encode())
        answer = self.push(push)
        self.assertEqual((answer.status, answer.body), (200, b""))
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"up 1\n" * 200)
        self.assertEqual(response.headers[b"content-length"], b"1000")
        self.assertEqual(response.headers[b"server"], b"nginx/1.22.1")
        self.assertEqual(response.headers[b"etag"], b'"6b094aa9-3e8"')
        for internal in (b"id", b"x-prometheus-scrape-timeout", b"connection"):
            self.assertNotIn(internal, response.headers)
        self.assertIdle()

    def test_scrape_queued_until_poll(self) -> None:
        """A scrape that arrives first waits for the client's next poll."""
        self.poll().hang_up()  # registers the client, then goes away
        scraper = self.scrape()
        self.assertIsNone(scraper.response())
        self.clock.advance(2)
        poll = self.poll()
        request = self.handed_out(poll)
        self.assertEqual(request.timeout, 7.65)
        self.push(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=2
        ) + b"ok")
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.body), (200, b"ok"))
        self.assertIdle()

    def test_upstream_error_push_relayed_as_500(self) -> None:
        """The Go client's HTTP/0.0 error push, body to the end, is relayed as a 500."""
        scraper, request = self.sent_scrape()
        push = recording(GO_CLIENT_PUSH_ERROR).body.replace(
            GO_ID, request.scrape_id.encode())
        self.assertEqual(self.push(push).status, 200)
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 500)
        self.assertTrue(response.complete)
        self.assertTrue(response.body.startswith(b"failed to scrape http://localhost:9999"))
        self.assertIdle()

    def test_our_clients_errors_become_502_or_504(self) -> None:
        """A failure our client reports is a 502, or a 504 when the target timed out."""
        for kind, reason, status, body in [
            ("unreachable", "connection refused", 502,
             b"the client could not scrape the target: connection refused\n"),
            ("timeout", "timeout after 9.65s", 504,
             b"the target did not answer in time: timeout after 9.65s\n"),
        ]:
            with self.subTest(kind=kind):
                scraper, request = self.sent_scrape()
                self.push(wire.encode_error_response(scrape_id=request.scrape_id,
                                                     reason=reason, kind=kind))
                response = scraper.response()
                assert response is not None
                self.assertEqual((response.status, response.body), (status, body))
                self.assertIdle()

    def test_chunked_pushed_body_relayed_whole(self) -> None:
        """A target's chunked response (as a Go client forwards it) is decoded and relayed."""
        scraper, request = self.sent_scrape()
        head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain"
                b"\r\nId: " + request.scrape_id.encode() + b"\r\n\r\n")
        self.push(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.body), (200, b"hello world"))
        self.assertTrue(response.complete)
        self.assertIdle()

    def test_gzip_body_relayed_untouched(self) -> None:
        """Compressed bodies and their Content-Encoding pass through byte for byte."""
        scraper, request = self.sent_scrape()
        body = gzip.compress(b"up 1\n" * 100)
        self.push(wire.encode_response_head(
            status=200, reason=b"OK", headers=[(b"Content-Encoding", b"gzip")],
            scrape_id=request.scrape_id, length=len(body)) + body)
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.body, body)
        self.assertEqual(response.headers[b"content-encoding"], b"gzip")

    def test_timeout_gives_504(self) -> None:
        """No push within the scrape timeout: 504 with the reason."""
        poll = self.poll()
        scraper = self.scrape(timeout=b"3")
        self.handed_out(poll)
        self.clock.advance(2.74)
        self.assertIsNone(scraper.response())
        self.clock.advance(0.02)
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 504)
        self.assertIn(b"did not answer within the scrape timeout", response.body)
        self.assertIdle()

    def test_missing_timeout_header_uses_default_and_is_sent_to_client(self) -> None:
        """Without Prometheus' header (curl) the default applies and the client is told."""
        poll = self.poll()
        self.scrape(timeout=None)
        self.assertEqual(self.handed_out(poll).timeout, 14.65)

    def test_timeout_clamped_to_maximum(self) -> None:
        """A timeout above --scrape-max-timeout is cut to it."""
        poll = self.poll()
        self.scrape(timeout=b"100000")
        self.assertEqual(self.handed_out(poll).timeout, 299.65)

    def test_bad_timeout_gives_400(self) -> None:
        """An unreadable timeout header is a malformed request."""
        self.poll()
        response = self.scrape(timeout=b"soon").response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertIn(b"X-Prometheus-Scrape-Timeout-Seconds", response.body)

    def test_scraper_hangs_up_while_waiting(self) -> None:
        """Prometheus giving up removes the scrape; the late push gets 404."""
        scraper, request = self.sent_scrape()
        scraper.hang_up()
        self.assertIdle()
        answer = self.push(wire.encode_error_response(scrape_id=request.scrape_id, reason="x"))
        self.assertEqual(answer.status, 404)

    def test_connect_refused_with_hint(self) -> None:
        """CONNECT is answered 405 with the way to scrape HTTPS targets."""
        connection = self.connect()
        connection.send(b"CONNECT node1.example:443 HTTP/1.1\r\nHost: node1.example:443\r\n\r\n")
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 405)
        self.assertIn(b"_scheme", response.body)

    def test_routing_ignores_port_and_case(self) -> None:
        """The host name alone, case-insensitively, selects the client."""
        poll = self.poll(b"Node1.Example")
        self.scrape(b"http://NODE1.example:9182/metrics")
        self.assertEqual(self.handed_out(poll).url, b"http://NODE1.example:9182/metrics")


class PollTests(ProxyTestCase):
    """Polls from clients."""

    def test_poll_gone_is_removed_at_once(self) -> None:
        """A poll whose connection drops leaves nothing waiting."""
        poll = self.poll()
        self.assertEqual(self.coordinator.waiting_poll_count(), 1)
        poll.hang_up()
        self.assertEqual(self.coordinator.waiting_poll_count(), 0)
        self.assertIdle()

    def test_poll_body_not_fqdn_gets_400(self) -> None:
        """A poll body that is no host name is refused."""
        response = self.poll(b"<html>").response()
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertIn(b"not an FQDN", response.body)
        self.assertIdle()

    def test_oversized_poll_body_gets_413(self) -> None:
        """A body larger than --max-request-size is refused without being kept, and counted."""
        response = self.poll(b"a" * 2000).response()
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertEqual(self.site.metrics.registry.get_sample_value(
            "pushprox_limit_exceeded_total", {"limit": "request_size"}), 1.0)

    def test_oversized_headers_get_431_and_are_counted(self) -> None:
        """Headers past --max-header-size: 431 with the limit, and a count in /metrics."""
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"x" * 1000) for i in range(20))
        for head in (many, b"X-Big: " + b"x" * 17_000 + b"\r\n"):
            connection = self.connect()
            connection.send(b"POST /poll HTTP/1.1\r\nHost: p\r\n" + head)
            response = connection.response()
            assert response is not None
            self.assertEqual(response.status, 431)
            self.assertEqual(response.body,
                             b"request headers exceed the limit of 16384 bytes\n")
            self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(self.site.metrics.registry.get_sample_value(
            "pushprox_limit_exceeded_total", {"limit": "header_size"}), 2.0)

    def test_header_limit_is_configurable(self) -> None:
        """A smaller --max-header-size applies to the channels the site builds."""
        site = PushProxSite(self.coordinator, clock=self.clock,
                            config=ProxyConfig(max_header_size=200), reactor=Clock())
        connection = Connection(site, 1)
        connection.send(b"POST /poll HTTP/1.1\r\nHost: p\r\nX-Big: " + b"x" * 300 + b"\r\n")
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 431)

    def test_tls_handshake_on_the_plain_port_is_answered_at_once(self) -> None:
        """A client given https:// for this plain port gets a plain 400 and is cut off."""
        connection = self.connect()
        connection.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
        response = connection.response()
        assert response is not None
        self.assertEqual((response.status, response.body), (
            400, b"this port speaks plain HTTP, not TLS: use http:// in --proxy-url\n"))
        self.assertTrue(connection.transport.disconnecting)
        # Later bytes of a connection are the channel's own: a request still works.
        other = self.connect()
        other.send(b"GET /-/healthy HTTP/1.1\r\nHost: p\r\n\r\n")
        healthy = other.response()
        assert healthy is not None
        self.assertEqual(healthy.status, 200)

    def test_malformed_request_line_still_400(self) -> None:
        """Other malformed requests keep Twisted's plain 400."""
        connection = self.connect()
        connection.send(b"NONSENSE\r\n")
        response = connection.response()
        assert response is not None
        self.assertEqual(response.status, 400)

    def test_bounded_poll_answered_204(self) -> None:
        """A poll asking for a bound is answered 204 after it when idle."""
        poll = self.poll(extra=b"X-PushProx-Poll-Timeout: 30\r\n")
        self.clock.advance(29)
        self.assertIsNone(poll.response())
        self.clock.advance(1)
        response = poll.response()
        assert response is not None
        self.assertEqual(response.status, 204)
        self.assertIdle()

    def test_poll_answers_advertise_extensions(self) -> None:
        """Poll answers list the proxy's extensions for our client (upstream ignores it)."""
        poll = self.poll(extra=b"X-PushProx-Poll-Timeout: 1\r\n")
        self.clock.advance(1)
        response = poll.response()
        assert response is not None
        self.assertEqual(response.headers[b"x-pushprox-extensions"], b"poll-timeout, push-poll")

    def test_upstream_go_poll_recording_registers(self) -> None:
        """The Go client's recorded poll registers the client it names."""
        connection = self.connect()
        connection.send(recording(GO_CLIENT_POLL).raw)
        self.assertEqual([c.fqdn for c in self.coordinator.clients()], ["localhost"])


class PushTests(ProxyTestCase):
    """Pushes that cannot be relayed."""

    def test_unknown_id_gets_404(self) -> None:
        """A push for an id the proxy never handed out is refused."""
        answer = self.push(recording(GO_CLIENT_PUSH).body)
        self.assertEqual(answer.status, 404)
        self.assertIn(GO_ID, answer.body)

    def _queued_behind_one(self) -> tuple[Connection, Connection, wire.ScrapeRequest]:
        """Two scrapes: the first handed to a poll, the second queued."""
        poll = self.poll()
        first = self.scrape()
        second = self.scrape(b"http://node1.example:9100/metrics?second=1")
        return first, second, self.handed_out(poll)

    def test_push_poll_answer_carries_next_queued_scrape(self) -> None:
        """A push asking for it is answered with the next scrape queued for its client."""
        _first, second, request = self._queued_behind_one()
        connection = self.connect()
        body = wire.encode_response_head(status=200, reason=b"OK", headers=[],
                                         scrape_id=request.scrape_id, length=2) + b"ok"
        connection.send(post(b"/push", body, b"X-PushProx-Push-Poll: 1\r\n"))
        answer = connection.response()
        assert answer is not None
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers[b"x-pushprox-next-scrape"], b"1")
        following = wire.decode_scrape_request(answer.body)
        self.assertEqual(following.url, b"http://node1.example:9100/metrics?second=1")
        self.assertEqual(self.coordinator.queued_scrape_count(), 0)
        self.push(wire.encode_response_head(status=200, reason=b"OK", headers=[],
                                            scrape_id=following.scrape_id, length=3) + b"two")
        second_response = second.response()
        assert second_response is not None
        self.assertEqual(second_response.body, b"two")
        self.assertIdle()

    def test_push_without_push_poll_leaves_queue_alone(self) -> None:
        """Upstream clients' pushes get an empty answer; the queued scrape stays queued."""
        _first, _second, request = self._queued_behind_one()
        answer = self.push(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=2
        ) + b"ok")
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertNotIn(b"x-pushprox-next-scrape", answer.headers)
        self.assertEqual(self.coordinator.queued_scrape_count(), 1)

    def test_push_with_trailing_slash_is_a_push(self) -> None:
        """POST /push/ reaches the push resource, so it is streamed like /push."""
        connection = self.connect()
        connection.send(post(b"/push/", b"garbage\r\n\r\n"))
        answer = connection.response()
        assert answer is not None
        self.assertEqual(answer.status, 400)
        self.assertIn(b"malformed push", answer.body)

    def test_malformed_push_gets_400(self) -> None:
        """Garbage in a push is a 400 with the reason, not a crash."""
        answer = self.push(b"this is not an HTTP response\r\n\r\n")
        self.assertEqual(answer.status, 400)
        self.assertIn(b"malformed push", answer.body)

    def test_oversized_streamed_push_cuts_scraper_off(self) -> None:
        """A chunked push growing past --max-push-size: 413, Prometheus cut off mid-body."""
        scraper, request = self.sent_scrape()
        connection = self.connect()
        connection.send(b"POST /push HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nId: " + request.scrape_id.encode() + b"\r\n\r\n"
        connection.send(b"%x\r\n%s\r\n" % (len(head), head))
        piece = b"x" * 30_000
        for _ in range(4):
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.assertTrue(scraper.transport.disconnecting)
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertFalse(response.complete)
        self.assertLess(len(response.body), 100_000)
        connection.send(b"0\r\n\r\n")
        answer = connection.response()
        assert answer is not None
        self.assertEqual(answer.status, 413)
        self.assertIdle()

    def test_declared_oversized_push_gives_502_at_once(self) -> None:
        """A push whose Content-Length is past the limit fails the scrape with 502."""
        scraper, request = self.sent_scrape()
        head = b"HTTP/1.1 200 OK\r\nId: " + request.scrape_id.encode() + b"\r\n\r\n"
        answer = self.push(head + b"x" * 200_000)
        self.assertEqual(answer.status, 413)
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 502)
        self.assertIn(b"exceeds the limit of 100000 bytes", response.body)
        self.assertIdle()

    def test_declared_oversized_response_gives_502(self) -> None:
        """A pushed Content-Length past the limit: 502 to Prometheus before any body."""
        scraper, request = self.sent_scrape()
        connection = self.connect()
        connection.send(b"POST /push HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\nId: "
                + request.scrape_id.encode() + b"\r\n\r\n")
        connection.send(b"%x\r\n%s\r\n" % (len(head), head))
        response = scraper.response()
        assert response is not None
        self.assertEqual(response.status, 502)
        self.assertIn(b"exceeds the limit", response.body)
        self.assertIdle()

    def test_push_connection_lost_mid_body(self) -> None:
        """A client dying mid-push cuts Prometheus off; nothing is left behind."""
        scraper, request = self.sent_scrape()
        connection = self.connect()
        body = wire.encode_response_head(status=200, reason=b"OK", headers=[],
                                         scrape_id=request.scrape_id, length=100) + b"x" * 10
        connection.send(b"POST /push HTTP/1.1\r\nHost: p\r\nContent-Length: 500\r\n\r\n" + body)
        self.assertFalse(scraper.transport.disconnecting)
        self.assertEqual(self.broken_pushes(), 0)
        connection.hang_up()
        self.assertTrue(scraper.transport.disconnecting)
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.complete), (200, False))
        self.assertEqual(self.broken_pushes(), 1)
        self.assertIdle()

    def test_push_connection_lost_mid_chunked_body_sends_no_last_chunk(self) -> None:
        """A chunked relay cut off ends without its last chunk: Prometheus sees it short."""
        poll = self.poll()
        scraper = self.scrape()
        request = self.handed_out(poll)
        connection = self.connect()
        # Without a length the pushed body runs to the end of the push.
        body = wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id,
            length=None) + b"hello"
        connection.send(b"POST /push HTTP/1.1\r\nHost: p\r\nContent-Length: 500\r\n\r\n"
                        + body)
        connection.hang_up()
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.body, response.complete),
                         (200, b"hello", False))
        self.assertTrue(scraper.transport.disconnecting)
        self.assertEqual(self.broken_pushes(), 1)
        self.assertIdle()

    def broken_pushes(self) -> float:
        """The value of pushprox_pushes_broken_total."""
        value = self.site.metrics.registry.get_sample_value("pushprox_pushes_broken_total")
        assert value is not None
        return value

    def test_silent_client_gets_503_at_once(self) -> None:
        """A client that has held no poll past the silence timeout: 503 with the reason."""
        self.poll().hang_up()
        self.clock.advance(self.config.client_silence_timeout)
        response = self.scrape().response()
        assert response is not None
        self.assertEqual(response.status, 503)
        self.assertEqual(response.body, b"client node1.example has not polled for 10.0s "
                         b"(its connection is presumed lost; the limit is 10s)\n")
        self.assertEqual(self.site.metrics.registry.get_sample_value(
            "pushprox_scrapes_total", {"outcome": "client_silent"}), 1.0)
        self.assertEqual(self.site.metrics.registry.get_sample_value(
            "pushprox_clients_silent"), 1.0)
        self.assertIdle()

    def test_push_short_of_content_length(self) -> None:
        """A push that ends before the pushed Content-Length is refused, Prometheus cut off."""
        scraper, request = self.sent_scrape()
        answer = self.push(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=100
        ) + b"x" * 10)
        self.assertEqual(answer.status, 400)
        self.assertIn(b"90 bytes short", answer.body)
        self.assertTrue(scraper.transport.disconnecting)
        self.assertIdle()


class EndpointTests(ProxyTestCase):
    """The proxy's own endpoints."""

    def get(self, path: bytes) -> Response:
        """GET a path."""
        connection = self.connect()
        connection.send(b"GET " + path + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
        response = connection.response()
        assert response is not None
        return response

    def test_a_method_an_endpoint_does_not_serve_is_405_in_one_line(self) -> None:
        """GET /poll, PUT /push, DELETE /clients: 405, one line, Allow; no HTML page."""
        for method, path, allowed in [(b"GET", b"/poll", b"POST"),
                                      (b"PUT", b"/push", b"POST"),
                                      (b"DELETE", b"/clients", b"GET, HEAD")]:
            connection = self.connect()
            connection.send(method + b" " + path + b" HTTP/1.1\r\nHost: proxy\r\n"
                            b"Content-Length: 0\r\n\r\n")
            response = connection.response()
            assert response is not None
            self.assertEqual((response.status, response.headers.get(b"allow"), response.body),
                             (405, allowed, b"%s is not served at %s: use %s\n"
                              % (method, path, allowed)))
            self.assertEqual(response.headers.get(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(self.flushWarnings(), [])

    def test_clients_lists_registered_as_http_sd(self) -> None:
        """/clients is http_sd JSON with an object for labels, sorted by FQDN."""
        self.poll(b"b.example")
        self.poll(b"a.example")
        response = self.get(b"/clients")
        self.assertEqual(response.headers[b"content-type"], b"application/json")
        self.assertEqual(json.loads(response.body), [
            {"targets": ["a.example"], "labels": {}},
            {"targets": ["b.example"], "labels": {}},
        ])

    def test_metrics_has_upstream_and_own_names(self) -> None:
        """/metrics exposes upstream's metric names and the operator's gauges."""
        self.poll()
        self.scrape(b"http://nobody.example:9100/metrics")
        self.get(b"/clients")
        body = self.get(b"/metrics").body.decode()
        self.assertIn('pushprox_http_requests_total{code="200",path="/clients"} 1.0', body)
        self.assertIn("pushprox_proxy_clients 1.0", body)
        self.assertIn("pushprox_polls_waiting 1.0", body)
        self.assertIn("pushprox_scrapes_in_flight 0.0", body)
        self.assertIn('pushprox_scrapes_total{outcome="unknown_client"} 1.0', body)
        self.assertIn('pushprox_proxied_requests_total{code="404"} 1.0', body)
        self.assertIn("pushprox_http_duration_seconds_bucket", body)

    def test_clients_marks_a_silent_client_with_a_meta_label(self) -> None:
        """A silent client stays listed, with the time of its last poll in a meta label."""
        self.clock.advance(1_700_000_000.0)
        self.poll(b"a.example", b"X-PushProx-Labels: site=a\r\n").hang_up()
        self.poll(b"b.example")
        self.clock.advance(self.config.client_silence_timeout)
        self.assertEqual(json.loads(self.get(b"/clients").body), [
            {"targets": ["a.example"],
             "labels": {"site": "a", "__meta_pushprox_silent_since": "2023-11-14T22:13:20Z"}},
            {"targets": ["b.example"], "labels": {}},
        ])

    def test_clients_lists_labels_a_client_sent(self) -> None:
        """Labels from X-PushProx-Labels appear in /clients; a later poll replaces them."""
        self.poll(b"a.example", b"X-PushProx-Labels: site=customer%2C%20a,rack=r1\r\n")
        self.poll(b"b.example")
        groups = json.loads(self.get(b"/clients").body)
        self.assertEqual(groups, [
            {"targets": ["a.example"], "labels": {"site": "customer, a", "rack": "r1"}},
            {"targets": ["b.example"], "labels": {}},
        ])
        self.poll(b"a.example", b"X-PushProx-Labels: \r\n")
        self.assertEqual(json.loads(self.get(b"/clients").body)[0]["labels"], {})

    def test_invalid_labels_refused(self) -> None:
        """A reserved or malformed label name is a 400 with the reason; nothing registers."""
        for header in (b"__address__=x", b"1abc=x", b"novalue"):
            connection = self.connect()
            connection.send(post(b"/poll", b"c.example", b"X-PushProx-Labels: " + header + b"\r\n"))
            response = connection.response()
            assert response is not None
            self.assertEqual(response.status, 400)
            self.assertIn(b"X-PushProx-Labels", response.body)
        self.assertEqual(self.coordinator.clients(), [])

    def test_health_endpoints(self) -> None:
        """/-/healthy and /-/ready answer 200 in plain text."""
        self.assertEqual(self.get(b"/-/healthy").body, b"Healthy\n")
        self.assertEqual(self.get(b"/-/ready").body, b"Ready\n")

    def test_unknown_path_404_with_hint(self) -> None:
        """Any other path explains what the port serves."""
        response = self.get(b"/nothing")
        self.assertEqual(response.status, 404)
        self.assertIn(b"PushProx proxy", response.body)


class WhenEndedTests(ProxyTestCase):
    """``when_ended``: what the resources learn of a request's end."""

    def held_request(self) -> HotRequest:
        """A request held open by the site (a poll waiting for a scrape)."""
        self.connection = self.poll()
        request = self.connection.protocol.request
        assert isinstance(request, HotRequest)
        return request

    def test_finish_calls_each_callback_once_in_order(self) -> None:
        """Finishing calls every callback with None, in order, and only once."""
        request = self.held_request()
        calls: list[tuple[str, object]] = []
        request.when_ended(lambda reason: calls.append(("first", reason)))
        request.when_ended(lambda reason: calls.append(("second", reason)))
        self.scrape()  # answers the poll: the poll's request is finished
        self.assertEqual(calls, [("first", None), ("second", None)])
        self.connection.hang_up()
        self.assertEqual(len(calls), 2)

    def test_a_failing_callback_is_logged_and_the_rest_still_run(self) -> None:
        """The peer hanging up reaches every callback even when one of them raises."""
        request = self.held_request()
        reasons: list[object] = []

        def broken(reason: object) -> None:
            raise ZeroDivisionError("broken callback")

        request.when_ended(broken)
        request.when_ended(reasons.append)
        self.connection.hang_up()
        self.assertEqual(len(reasons), 1)
        assert isinstance(reasons[0], Failure)
        self.assertTrue(reasons[0].check(ConnectionDone))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIdle()


class FlowControlTests(ProxyTestCase):
    """A slow scraper slows the pushing client down."""

    def test_backed_up_scraper_pauses_push(self) -> None:
        """Prometheus' full socket pauses reading the push; draining resumes it."""
        scraper, request = self.sent_scrape()
        pusher = self.connect()
        pusher.send(b"POST /push HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n")
        pusher.send(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=1000
        ))
        self.assertEqual(pusher.transport.producerState, "producing")
        # What Prometheus' transport does when its send buffer fills, and drains:
        throttle = scraper.transport.producer
        assert throttle is not None
        throttle.pauseProducing()
        self.assertEqual(pusher.transport.producerState, "paused")
        throttle.resumeProducing()
        self.assertEqual(pusher.transport.producerState, "producing")

    def test_scraper_gone_resumes_push(self) -> None:
        """A paused push is resumed when Prometheus hangs up, so it can end."""
        scraper, request = self.sent_scrape()
        pusher = self.connect()
        pusher.send(b"POST /push HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n")
        pusher.send(wire.encode_response_head(
            status=200, reason=b"OK", headers=[], scrape_id=request.scrape_id, length=1000
        ))
        throttle = scraper.transport.producer
        assert throttle is not None
        throttle.pauseProducing()
        scraper.hang_up()
        self.assertEqual(pusher.transport.producerState, "producing")


class ConnectionRefusalTests(ProxyTestCase):
    """Connections the ports refused for lack of file descriptors: counted and logged."""

    def test_refusals_are_counted_logged_once_and_their_end_too(self) -> None:
        """
        Each refused connection is counted; one warning when refusing starts, one line
        when the next connection is accepted, none for a connection in between.
        """
        registry = self.site.metrics.registry
        with capturedLogs() as events:
            self.site.refusals.refused("127.0.0.1:40001")
            self.site.refusals.refused("127.0.0.1:40002")
            self.site.refusals.accept_failed("ENFILE")
        self.assertEqual(registry.get_sample_value("pushprox_connections_refused_total"), 2.0)
        self.assertEqual(registry.get_sample_value(
            "pushprox_accept_errors_total", {"error": "ENFILE"}), 1.0)
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.warn, "Out of file descriptors: closing new connections at once (the "
             "first from 127.0.0.1:40001); connections already open are served (raise "
             "ulimit -n, or lower --max-clients)"),
        ])
        with capturedLogs() as events:
            self.connect()
            self.connect()
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.info, "Accepting new connections again after 3 refused or delayed "
             "for lack of file descriptors"),
        ])
        self.assertEqual(self.site.refusals.refusing, 0)
