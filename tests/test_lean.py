"""
The lean request (``pushprox.proxy.lean``): the three requests of a scrape are answered
without twisted.web, as twisted.web would answer them; every other request is still
twisted.web's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from pushprox.proxy.coordinator import IScrapeAnswer
from pushprox.proxy.site import HotRequest, PushProxRequest
from pushprox.shared import wire
from tests.test_proxy import ProxyTestCase, post, scrape_request


class LeanRequestTests(ProxyTestCase):
    """What Prometheus and the clients see of a lean request."""

    def pushed(self, scraper_request: bytes, head_headers: list[tuple[bytes, bytes]],
               body: bytes, length: int | None) -> bytes:
        """The bytes Prometheus gets for ``scraper_request`` when ``body`` is pushed."""
        poll = self.poll()
        scraper = self.connect()
        scraper.send(scraper_request)
        request = self.handed_out(poll)
        head = wire.encode_response_head(status=200, reason=b"OK", headers=head_headers,
                                         scrape_id=request.scrape_id, length=length)
        if length is None:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            head = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
        self.assertEqual(self.push(head + body).status, 200)
        self.scraper = scraper
        raw: bytes = scraper.transport.value()
        return raw

    def test_the_three_requests_of_a_scrape_are_lean_the_rest_twisted_web(self) -> None:
        """POST /poll, the proxied GET and POST /push are lean; a GET of /poll is not."""
        poll = self.poll()
        self.assertIsInstance(poll.protocol.request, HotRequest)
        scraper = self.scrape()
        self.assertIsInstance(scraper.protocol.request, HotRequest)
        pusher = self.connect()
        pusher.send(b"POST /push HTTP/1.1\r\nHost: p\r\nContent-Length: 10\r\n\r\n")
        self.assertIsInstance(pusher.protocol.request, HotRequest)
        for line in (b"GET /poll", b"POST /metrics", b"POST /nothing", b"PUT /push"):
            other = self.connect()
            other.send(line + b" HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\n\r\n")
            self.assertIsInstance(other.protocol.request, PushProxRequest, line)

    def test_own_answers_carry_server_date_and_length(self) -> None:
        """A poll's answer: Server, Date, its type and length, as twisted.web gave them."""
        poll = self.poll()
        self.scrape()
        raw = poll.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        names = [line.split(b":", 1)[0] for line in lines[1:]]
        self.assertEqual(sorted(names), sorted([
            b"Server", b"Date", b"X-Pushprox-Extensions", b"Content-Type", b"Content-Length"]))
        self.assertIn(b"Server: pushprox", lines)
        self.assertIn(b"Content-Length: %d" % len(body), lines)

    def test_relayed_answer_carries_only_the_targets_headers(self) -> None:
        """No Server or Date of ours on a relayed answer; the target's are passed on."""
        raw = self.pushed(scrape_request(b"http://node1.example:9100/metrics"),
                          [(b"Content-Type", b"text/plain")], b"up 1\n", 5)
        self.assertEqual(raw, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 5\r\n\r\nup 1\n")

    def test_head_scrape_gets_the_head_and_no_body(self) -> None:
        """A HEAD scrape is answered with the target's head, without its body."""
        request = scrape_request(b"http://node1.example:9100/metrics").replace(
            b"GET ", b"HEAD ", 1)
        raw = self.pushed(request, [], b"up 1\n", 5)
        self.assertEqual(raw, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertFalse(self.scraper.transport.disconnecting)

    def test_unknown_length_is_chunked_on_http_1_1(self) -> None:
        """A body of unknown length reaches an HTTP/1.1 scraper chunked."""
        raw = self.pushed(scrape_request(b"http://node1.example:9100/metrics"), [],
                          b"up 1\n", None)
        self.assertEqual(raw, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"5\r\nup 1\n\r\n0\r\n\r\n")
        self.assertFalse(self.scraper.transport.disconnecting)

    def test_unknown_length_on_http_1_0_ends_with_the_connection(self) -> None:
        """An HTTP/1.0 scraper gets the body as is, delimited by the connection's end."""
        request = scrape_request(b"http://node1.example:9100/metrics").replace(
            b"HTTP/1.1", b"HTTP/1.0", 1)
        raw = self.pushed(request, [], b"up 1\n", None)
        self.assertEqual(raw, b"HTTP/1.0 200 OK\r\n\r\nup 1\n")
        self.assertTrue(self.scraper.transport.disconnecting)

    def test_a_failing_resource_gets_a_500_line_and_a_log(self) -> None:
        """An exception while answering: 500 and one line, logged; the connection goes on."""
        def broken(*args: Any, **kwargs: Any) -> Deferred[IScrapeAnswer]:
            raise ZeroDivisionError("broken coordinator")

        self.coordinator.scrape = broken  # type: ignore[method-assign]
        scraper = self.scrape()
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.body), (500, b"internal error\n"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(scraper.transport.disconnecting)

    def test_notify_finish(self) -> None:
        """``notifyFinish`` fires when the answer is finished, fails when the peer goes."""
        answered = self.poll()
        request = answered.protocol.request
        assert isinstance(request, HotRequest)
        finished = request.notifyFinish()
        self.assertNoResult(finished)
        self.scrape()
        self.assertIsNone(self.successResultOf(finished))
        self.assertIsNone(self.successResultOf(request.notifyFinish()))

        gone = self.poll(b"node2.example")
        request = gone.protocol.request
        assert isinstance(request, HotRequest)
        lost = request.notifyFinish()
        gone.hang_up()
        self.failureResultOf(lost, ConnectionDone)
        self.assertFalse(request.alive)
        self.assertIsInstance(self.failureResultOf(request.notifyFinish()), Failure)

    def test_pipelined_requests_are_answered_in_order(self) -> None:
        """A poll and a health check sent together are answered in the order they came."""
        connection = self.connect()
        connection.send(post(b"/poll", b"node1.example")
                        + b"GET /-/healthy HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(connection.transport.value(), b"")  # the poll is held
        self.scrape()
        raw = connection.transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw)
        self.assertLess(raw.index(b"GET http://node1.example:9100/metrics"),
                        raw.index(b"Healthy\n"))

    def test_a_draining_proxy_closes_after_a_hot_answer(self) -> None:
        """While a replica drains, a poll's answer says Connection: close, and closes."""
        self.site.count_requests = True
        self.coordinator.drain()
        poll = self.poll()
        raw = poll.transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 204 No Content\r\n"), raw)
        self.assertIn(b"\r\nConnection: close\r\n", raw)
        self.assertTrue(poll.transport.disconnecting)
        self.assertEqual(self.site.in_progress, 0)

    def test_expect_continue_on_a_push(self) -> None:
        """A push with ``Expect: 100-continue`` gets its interim answer, then its own."""
        scraper, request = self.sent_scrape()
        body = wire.encode_response_head(status=200, reason=b"OK", headers=[],
                                         scrape_id=request.scrape_id, length=2) + b"ok"
        pusher = self.connect()
        pusher.send(b"POST /push HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
        self.assertEqual(pusher.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        pusher.send(body)
        answer = pusher.transport.value()[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        response = scraper.response()
        assert response is not None
        self.assertEqual((response.status, response.body), (200, b"ok"))
        self.assertIdle()

    def test_finish_twice_is_harmless(self) -> None:
        """A second ``finish`` does nothing (twisted.web warns and returns too)."""
        poll = self.poll()
        request = poll.protocol.request
        assert isinstance(request, HotRequest)
        self.scrape()
        answered = poll.transport.value()
        request.finish()
        self.assertEqual(poll.transport.value(), answered)
