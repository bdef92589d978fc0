"""
Faults between the client and the proxy, played by a fault-injecting relay
(``tests/faultrelay.py``, a userspace TCP relay in its own process) between a real
``twistd`` client and a real ``twistd`` proxy: a link that goes silent, a push cut off
in the middle of its body, a push stalled on a slow link.  Each test asserts what the
scraper sees, that the client recovers by itself, and that the proxy holds nothing
afterwards.  Durations are printed, not asserted, beyond "within the scrape timeout".
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared import wire
from tests.faultrelay import FaultRelay
from tests.harness.exporter import Page
from tests.harness.rawhttp import (
    HTTPResponse,
    RawConnection,
    http_request_bytes,
    raw_http,
    scrape_request,
    scrape_via_proxy,
)
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for
from tests.soak import status_kb

pytestmark = pytest.mark.processes

FQDN = "faulty.example"
#: About 1.9 MB: far more than socket buffers hold, so a push of it takes many writes.
BIG = b"".join(b'big_series{instance="%07d"} %d\n' % (i, i) for i in range(60000))
PAGES = {
    "/metrics": Page(b"up 1\n" * 100, [("Content-Type", "text/plain")]),
    "/big": Page(BIG, [("Content-Type", "text/plain")]),
}
#: The proxy takes a client that holds no poll this long for unreachable.
SILENCE = 2.0
#: The client's bounded poll: a pushprox proxy answers an idle one this fast.
POLL_TIMEOUT = 2.0


def read_to_end(port: int, request: bytes, timeout: float) -> HTTPResponse:
    """Send ``request`` and read until the proxy closes: the response as far as it came."""
    with RawConnection(port, timeout=timeout) as connection:
        connection.send(request)
        response, _ = connection.read_until_closed(timeout=timeout)
    return response


def declared_length(response: HTTPResponse) -> int:
    """The Content-Length the response's head announced."""
    declared = response.header(b"content-length")
    assert declared is not None, response.headers
    return int(declared)


class FaultTestCase(SynchronousTestCase):
    """An exporter, a proxy, the relay in front of the proxy, a client through the relay."""

    #: What the exporter serves.
    pages = PAGES

    def setUp(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="pushprox-faults-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.processes = Stack(tmp)
        self.addCleanup(self.processes.stop_all)
        self.exporter_port = self.processes.exporter("pages", pages=self.pages).port
        self.proxy = self.processes.proxy(
            extra=["--client-silence-timeout", str(SILENCE)])
        self.proxy_port = self.proxy.port
        self.relay = FaultRelay(self.proxy_port, self.processes)
        self.client = self.processes.client(
            self.proxy, FQDN, [self.exporter_port], wait=False,
            proxy_url=f"http://127.0.0.1:{self.relay.port}/",
            extra=[*(arg for path in self.pages for arg in ("--allow-path", path)),
                   "--poll-timeout", str(POLL_TIMEOUT)])
        self.wait_scrapes_work("the client to register")

    def proxy_log(self) -> str:
        """What the proxy has logged so far."""
        return self.proxy.process.log_text()

    def url(self, path: str = "/metrics") -> str:
        return f"http://{FQDN}:{self.exporter_port}{path}"

    def scrape(self, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, bytes, float]:
        """A scrape through the proxy: status, body and seconds taken."""
        started = time.monotonic()
        answer = scrape_via_proxy(self.proxy_port, self.url(path), timeout=timeout)
        return answer.status, answer.body, time.monotonic() - started

    def wait_scrapes_work(self, what: str, timeout: float = 30.0) -> float:
        """Scrape until one succeeds; returns how long that took."""
        started = time.monotonic()
        wait_for(lambda: self.scrape(timeout=2.0)[0] == 200, timeout=timeout, what=what,
                 interval=0.2, watch=[self.proxy.process, self.client.process])
        return time.monotonic() - started

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the proxy's /metrics."""
        text = raw_http(self.proxy_port, http_request_bytes("GET", "/metrics")).text
        match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def assert_proxy_holds_nothing(self) -> None:
        """No scrape queued or in flight, whatever the fault left behind."""
        wait_for(lambda: self.metric("pushprox_scrapes_in_flight") == 0, timeout=20,
                 what="no scrape in flight", watch=[self.proxy.process])
        self.assertEqual(self.metric("pushprox_scrapes_queued"), 0)


class SilentLinkTests(FaultTestCase):
    """The link goes silent (no FIN, no RST, both sockets open), then comes back."""

    def test_blackholed_client_gets_fast_503_and_scrapes_work_after_the_link_returns(
            self) -> None:
        """
        Once the client has held no poll for the silence timeout, a scrape of it gets a
        503 that says why, at once; when the link returns, the client replaces its dead
        connection by itself and scrapes succeed again.
        """
        self.relay.command("blackhole both")
        blackholed = time.monotonic()
        wait_for(lambda: self.metric("pushprox_clients_silent") == 1,
                 timeout=POLL_TIMEOUT + SILENCE + 10, what="the client taken for silent",
                 watch=[self.proxy.process])
        noticed = time.monotonic() - blackholed
        status, body, took = self.scrape(timeout=10.0)
        self.assertEqual(status, 503, body)
        self.assertIn(f"client {FQDN} has not polled for".encode(), body)
        self.assertLess(took, 10.0)
        clients = json.loads(raw_http(self.proxy_port,
                                      http_request_bytes("GET", "/clients")).body)
        self.assertIn("__meta_pushprox_silent_since", clients[0]["labels"])
        self.assertIn(f"Client {FQDN} has held no poll for", self.proxy_log())

        self.relay.command("pass both")
        recovered = self.wait_scrapes_work("scrapes to work after the link returned",
                                           timeout=60)
        self.assertIn(f"Client {FQDN} polls again after", self.proxy_log())
        self.assertEqual(self.metric("pushprox_clients_silent"), 0)
        self.assert_proxy_holds_nothing()
        print(f"silent link: proxy noticed after {noticed:.1f}s, 503 in {took:.3f}s, "
              f"scrapes work {recovered:.1f}s after the link returned")

    def test_scrape_handed_over_just_before_the_link_died_ends_within_its_timeout(
            self) -> None:
        """A scrape whose poll answer vanished gets the proxy's 504 within its timeout."""
        self.relay.command("blackhole down")
        status, body, took = self.scrape(timeout=4.0)
        self.assertIn(status, (503, 504), body)
        self.assertLess(took, 4.0)
        self.relay.command("pass both")
        self.wait_scrapes_work("scrapes to work after the link returned", timeout=60)
        self.assert_proxy_holds_nothing()
        print(f"poll answer lost: {status} in {took:.2f}s")


class BrokenPushTests(FaultTestCase):
    """The push's connection ends or stalls in the middle of its body."""

    def test_push_cut_mid_body_reaches_the_scraper_short(self) -> None:
        """The scraper reads fewer bytes than Content-Length says; the cut is counted."""
        self.relay.command("cut up 300000")
        response = read_to_end(
            self.proxy_port,
            scrape_request(self.url("/big"), 10.0), 20)
        self.relay.command("pass both")
        self.assertEqual(response.status, 200, response.headers)
        self.assertEqual(declared_length(response), len(BIG))
        self.assertLess(len(response.body), len(BIG))
        self.assertEqual(self.metric("pushprox_pushes_broken_total"), 1)
        self.assertRegex(self.proxy_log(), f"Push of scrape .* for {FQDN} broke off")
        self.wait_scrapes_work("scrapes to work after the cut")
        self.assert_proxy_holds_nothing()

    def test_push_stalled_on_a_slow_link_fails_at_the_scrape_timeout(self) -> None:
        """A page that cannot cross a 20 KB/s link in time is cut off at the timeout."""
        self.relay.command("throttle up 20000")
        started = time.monotonic()
        response = read_to_end(
            self.proxy_port,
            scrape_request(self.url("/big"), 3.0), 20)
        took = time.monotonic() - started
        self.relay.command("pass both")
        body = response.body
        if response.status == 200:
            self.assertLess(len(body), len(BIG))
        else:
            self.assertIn(response.status, (502, 504), response.text)
        self.assertLess(took, 10.0)
        self.wait_scrapes_work("scrapes to work after the slow link")
        self.assert_proxy_holds_nothing()
        print(f"stalled push: ended after {took:.2f}s with {len(body)} bytes")


class DelayAndResetTests(FaultTestCase):
    """The link delays every byte, or resets every connection at once."""

    def test_delayed_link_still_serves_scrapes_within_their_timeout(self) -> None:
        """With 0.3 s more each way, scrapes succeed, whole, just later."""
        self.relay.command("delay both 0.3")
        status, body, took = self.scrape(timeout=10.0)
        self.assertEqual((status, body), (200, PAGES["/metrics"].body))
        response = read_to_end(
            self.proxy_port,
            scrape_request(self.url("/big"), 20.0, close=True),
            30)
        self.assertEqual(response.status, 200, response.headers)
        self.assertEqual(response.body, BIG)
        self.relay.command("pass both")
        self.assert_proxy_holds_nothing()
        print(f"delayed link: a scrape took {took:.2f}s")

    def test_link_slower_than_the_scrape_timeout_gets_504_in_time(self) -> None:
        """
        A push that arrives after the scrape timeout: the scraper has had its 504 by then,
        the late push is refused, and nothing is left once the link is fast again.
        """
        self.relay.command("delay up 3")
        status, body, took = self.scrape(timeout=2.0)
        self.assertEqual(status, 504, body)
        self.assertLess(took, 2.0)
        self.relay.command("pass both")
        self.wait_scrapes_work("scrapes to work after the delay ended", timeout=60)
        self.assert_proxy_holds_nothing()
        print(f"link slower than the timeout: 504 after {took:.2f}s")

    def test_reset_of_every_connection_while_idle_is_recovered_from_at_once(self) -> None:
        """The client sees its poll reset, polls again, and scrapes work within seconds."""
        self.relay.command("reset")
        recovered = self.wait_scrapes_work("scrapes to work after the reset", timeout=30)
        self.assertEqual(self.metric("pushprox_clients_silent"), 0)
        self.assert_proxy_holds_nothing()
        print(f"reset while idle: scrapes work again after {recovered:.2f}s")

    def test_reset_in_the_middle_of_a_push_reaches_the_scraper_short(self) -> None:
        """
        A push reset (RST) mid-body: the scraper's answer ends short of its
        Content-Length, the broken push is counted and logged, and the client recovers.
        """
        # Slow enough that the push is still running when the reset comes.
        self.relay.command("throttle up 200000")
        with RawConnection(self.proxy_port, timeout=20) as connection:
            connection.send(
                scrape_request(self.url("/big"), 15.0))
            head = connection.read_head(timeout=20)
            self.relay.command("reset")
            response, _ = connection.read_until_closed(timeout=20)
        self.relay.command("pass both")
        self.assertEqual(head.status, 200, head.headers)
        self.assertEqual(declared_length(response), len(BIG))
        self.assertLess(len(response.body), len(BIG))
        wait_for(lambda: self.metric("pushprox_pushes_broken_total") == 1, timeout=20,
                 what="the broken push counted", watch=[self.proxy.process])
        self.assertRegex(self.proxy_log(), f"Push of scrape .* for {FQDN} broke off")
        self.wait_scrapes_work("scrapes to work after the reset")
        self.assert_proxy_holds_nothing()


#: About 25 MB: more than every socket buffer on the way from the client to the scraper.
HUGE = BIG * 13


class SlowScraperTests(FaultTestCase):
    """A scraper that stops reading, on a link with faults, pauses the pushing client."""

    pages = {**PAGES, "/huge": Page(HUGE, [("Content-Type", "text/plain")])}

    def relayed_up(self) -> int:
        """Bytes the relay has passed from the client to the proxy so far."""
        return int(self.relay.command("bytes up"))

    def test_scraper_that_stops_reading_pauses_the_push_through_a_delayed_link(
            self) -> None:
        """
        While the scraper reads nothing, the client's push stops short of the page (flow
        control reaches it through the proxy and the delayed link) and the proxy's memory
        does not grow by anything like the page; once the scraper reads, the whole page
        arrives.
        """
        proxy_pid = self.proxy.process.pid
        assert proxy_pid is not None
        peak_before = status_kb(proxy_pid, "VmHWM")
        self.relay.command("delay both 0.05")
        before = self.relayed_up()
        # A modest receive window, as a scraper that reads slowly offers.
        with RawConnection(self.proxy_port, timeout=30,
                           receive_buffer=256 * 1024) as connection:
            connection.send(scrape_request(self.url("/huge"), 60.0, close=True))
            samples: list[int] = []

            def stalled() -> int | None:
                samples.append(self.relayed_up() - before)
                recent = samples[-4:]
                return recent[0] if len(recent) == 4 and len(set(recent)) == 1 else None

            pushed = wait_for(stalled, timeout=40, interval=0.5,
                              what="the push to stall while the scraper reads nothing",
                              watch=[self.proxy.process, self.client.process])
            # What crossed sits in socket buffers on the way (6 to 15 MB here, as the
            # kernel tunes them), not in the proxy, which buffering would grow by the page.
            self.assertLess(pushed, len(HUGE), samples)
            grown_kb = status_kb(proxy_pid, "VmHWM") - peak_before
            self.assertLess(grown_kb * 1024, len(HUGE) // 2, f"the proxy grew by {grown_kb} kB")
            self.relay.command("pass both")
            response, reset = connection.read_until_closed(timeout=30)
        self.assertEqual(response.status, 200, response.headers)
        self.assertEqual(response.body, HUGE)
        self.assertFalse(reset)
        self.assert_proxy_holds_nothing()
        print(f"slow scraper: the push stalled after {pushed} of {len(HUGE)} bytes, "
              f"the proxy's peak memory grew by {grown_kb} kB")


#: The proxy's ``ulimit -n`` in the exhaustion test: about 12 descriptors are its own.
NOFILE = 64
#: Polls opened against it: far more than it has descriptors for.
FLOOD = 100


def poll_bytes(fqdn: str) -> bytes:
    """An unbounded poll (as an upstream client sends it): held until a scrape comes."""
    return http_request_bytes("POST", "/poll", body=fqdn.encode())


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the proxy has closed ``sock`` (EOF or reset); False while it holds it."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def close_all(sockets: list[socket.socket]) -> None:
    """Close every socket of the list."""
    for sock in sockets:
        sock.close()


def new_connection_refused(port: int) -> bool:
    """Whether a new connection to the proxy is closed without an answer."""
    try:
        raw_http(port, http_request_bytes("GET", "/-/healthy"), timeout=5)
    except (OSError, AssertionError):
        return True
    return False


class DescriptorExhaustionTests(SynchronousTestCase):
    """A proxy under a low ``ulimit -n`` with more connections than it may open."""

    def test_out_of_descriptors_serves_open_connections_refuses_new_ones_and_recovers(
            self) -> None:
        """
        Connections already open keep being served (a scrape through a kept-alive
        scraper connection reaches a held poll and its push comes back); each new
        connection is closed at once, counted in ``pushprox_connections_refused_total``
        and logged once, without a traceback; once descriptors are free again, new
        connections are accepted and a client refused meanwhile registers by itself.
        """
        tmp = Path(tempfile.mkdtemp(prefix="pushprox-nofile-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        stack = Stack(tmp)
        self.addCleanup(stack.stop_all)
        exporter = stack.exporter("pages", pages=PAGES)
        proxy = stack.proxy(nofile=NOFILE)
        flood: list[socket.socket] = []
        self.addCleanup(close_all, flood)
        # Opened while descriptors are free: a scraper's kept-alive connection, a held
        # poll of an upstream-style client, and that client's connection for its push.
        scraper = RawConnection(proxy.port)
        self.addCleanup(scraper.close)
        held = RawConnection(proxy.port)
        self.addCleanup(held.close)
        pusher = RawConnection(proxy.port)
        self.addCleanup(pusher.close)
        held.send(poll_bytes("held.example"))
        pusher.send(http_request_bytes("GET", "/-/healthy"))
        self.assertEqual(pusher.read_response().status, 200)
        wait_for(lambda: "held.example" in proxy.clients(), timeout=10,
                 what="the held poll registered", watch=[proxy.process])

        for index in range(FLOOD):
            try:
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            except OSError:
                continue
            flood.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(poll_bytes(f"flood-{index}.example"))

        def refused_total() -> float:
            scraper.send(http_request_bytes("GET", "/metrics"))
            text = scraper.read_response().text
            match = re.search(r"^pushprox_connections_refused_total (\S+)$", text, re.M)
            return float(match.group(1)) if match else 0.0

        def counted() -> tuple[float, int] | None:
            closed = sum(map(closed_by_peer, flood))
            refused = refused_total()
            return (refused, closed) if closed and refused >= closed else None

        # Every connection closed at once is counted (the counter may run ahead of the
        # closes this side has read).
        refused, closed = wait_for(counted, timeout=20, what="refused connections counted",
                                   watch=[proxy.process])
        self.assertLess(closed, FLOOD)
        self.assertTrue(wait_for(lambda: new_connection_refused(proxy.port), timeout=20,
                                 what="a new connection refused", watch=[proxy.process]))
        # A client that arrives now is refused, and retries.
        late = stack.client(proxy, "late.example", [exporter.port], wait=False)
        wait_for(lambda: refused_total() > refused, timeout=30,
                 what="the late client's connection refused", watch=[late.process])

        # Serving what is open: the scrape reaches the held poll, the push comes back.
        target = f"http://held.example:{exporter.port}/metrics"
        scraper.send(scrape_request(target, 10.0))
        handed = wire.decode_scrape_request(held.read_response().body)
        self.assertEqual(handed.url, target.encode())
        page = b"served 1\n"
        pusher.send(http_request_bytes("POST", "/push", body=wire.encode_response_head(
            status=200, reason=b"OK", headers=[(b"Content-Type", b"text/plain")],
            scrape_id=handed.scrape_id, length=len(page)) + page))
        self.assertEqual(pusher.read_response().status, 200)
        answer = scraper.read_response()
        self.assertEqual((answer.status, answer.body), (200, page))

        log = proxy.process.log_text()
        self.assertEqual(log.count("Out of file descriptors: closing new connections"), 1,
                         log[-3000:])
        self.assertNotIn("Traceback", log)

        # Descriptors come free: new connections are accepted, the late client gets in.
        for sock in flood[: FLOOD // 2]:
            sock.close()
        wait_for(proxy.healthy, timeout=20, what="a new connection accepted again",
                 watch=[proxy.process])
        wait_for(lambda: "late.example" in proxy.clients(), timeout=30,
                 what="the refused client registered", watch=[proxy.process, late.process])
        answer = scrape_via_proxy(proxy.port, f"http://late.example:{exporter.port}/metrics")
        self.assertEqual((answer.status, answer.body), (200, PAGES["/metrics"].body))
        self.assertIn("Accepting new connections again after", proxy.process.log_text())
        print(f"out of descriptors: {closed} of {FLOOD} new polls closed at once, "
              f"{refused:g} refusals counted")
