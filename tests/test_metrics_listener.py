"""
The client's ``/metrics`` listener (``pushprox.client.metrics_listener``): twisted.web.http's
own channel on a ``StringTransport``, fed raw requests, its answers read off the wire.  The
same listener in a real client, over TLS and re-read on SIGHUP, is in
``tests/test_web_config.py``; that it keeps ``twisted.web.server`` out is in
``tests/test_footprint.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushprox.client.metrics_listener import MetricsListenerFactory, MetricsPage
from pushprox.shared.auth import PasswordChecker, ScraperAuth
from pushprox.shared.metrics import ClientMetrics
from tests.harness.credentials import fast_hash
from tests.harness.rawhttp import (
    HTTPResponse,
    http_request_bytes,
    parse_response,
    parse_responses,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"


class Failing(Collector):
    """A collector that fails, as a broken custom collector would."""

    def collect(self) -> Iterable[Any]:
        """Fail."""
        raise RuntimeError("collector broke")


class MetricsListenerTests(SynchronousTestCase):
    """What the client's metrics listener answers, byte for byte where it matters."""

    def setUp(self) -> None:
        self.metrics = ClientMetrics()
        self.metrics.scrapes.inc(3)
        self.headers: list[tuple[bytes, bytes]] = [(b"X-Frame-Options", b"deny")]
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def raw(self, *requests: bytes, auth: ScraperAuth | None = None,
            registry: CollectorRegistry | None = None) -> bytes:
        """The bytes one connection to a listener is sent when it was sent ``requests``."""
        page = MetricsPage(registry if registry is not None else self.metrics.registry,
                           auth=auth, headers=self.headers)
        factory = MetricsListenerFactory(page, MemoryReactorClock())
        factory.doStart()
        self.addCleanup(factory.doStop)
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(requests))
        protocol.connectionLost(None)
        return cast(bytes, transport.value())

    def ask(self, *requests: bytes, auth: ScraperAuth | None = None,
            registry: CollectorRegistry | None = None) -> list[HTTPResponse]:
        """The answers of one connection to a listener that was sent ``requests``."""
        return parse_responses(self.raw(*requests, auth=auth, registry=registry))

    def test_metrics_in_the_format_asked_for(self) -> None:
        """GET /metrics: Prometheus' text format by default, OpenMetrics when asked."""
        plain, openmetrics = self.ask(
            http_request_bytes("GET", "/metrics"),
            http_request_bytes("GET", "/metrics", [("Accept", OPENMETRICS)]))
        self.assertEqual((plain.status, plain.header(b"content-type")), (200, PROMETHEUS_TEXT))
        self.assertIn(b"\npushprox_client_scrapes_total 3.0\n", plain.body)
        self.assertEqual(plain.header(b"content-length"), b"%d" % len(plain.body))
        self.assertFalse(plain.chunked)
        content_type = openmetrics.header(b"content-type") or b""
        self.assertTrue(content_type.startswith(
            b"application/openmetrics-text; version=1.0.0; charset=utf-8"), content_type)
        self.assertTrue(openmetrics.body.endswith(b"# EOF\n"))
        for answer in (plain, openmetrics):
            self.assertEqual(answer.header(b"server"), b"pushprox")
            self.assertIsNotNone(answer.header(b"date"))
            self.assertEqual(answer.header(b"x-frame-options"), b"deny")

    def test_head_gets_the_head_of_get(self) -> None:
        """HEAD /metrics: GET's status, type and length, no body (the next answer follows)."""
        [get] = self.ask(http_request_bytes("GET", "/metrics"))
        head, after = self.raw(http_request_bytes("HEAD", "/metrics"),
                               http_request_bytes("GET", "/nothing")).split(b"\r\n\r\n", 1)
        answer = parse_response(head + b"\r\n\r\n", head_only=True)
        self.assertEqual((answer.status, answer.header(b"content-type")),
                         (200, PROMETHEUS_TEXT))
        self.assertEqual(answer.header(b"content-length"), b"%d" % len(get.body))
        self.assertTrue(after.startswith(b"HTTP/1.1 404 "), after)

    def test_other_paths_are_404_in_one_line(self) -> None:
        """Any other path (a query string aside), any method: 404 naming what is served."""
        answers = self.ask(http_request_bytes("GET", "/"),
                           http_request_bytes("POST", "/metrics/x", body=b"x"),
                           http_request_bytes("GET", "/metrics?x=1"))
        for answer in answers[:2]:
            self.assertEqual((answer.status, answer.header(b"content-type"), answer.body), (
                404, TEXT, b"not found: this is a PushProx client's metrics listener "
                           b"(endpoint /metrics)\n"))
            self.assertEqual(answer.header(b"x-frame-options"), b"deny")
        self.assertEqual(answers[2].status, 200)

    def test_other_methods_are_405_with_allow(self) -> None:
        """POST, DELETE on /metrics: 405, Allow, one line, as the proxy's endpoints say it."""
        post, delete = self.ask(http_request_bytes("POST", "/metrics", body=b"x=1"),
                                http_request_bytes("DELETE", "/metrics"))
        self.assertEqual((post.status, post.header(b"allow"), post.body), (
            405, b"GET, HEAD", b"POST is not served at /metrics: use GET, HEAD\n"))
        self.assertEqual(post.header(b"content-type"), TEXT)
        self.assertEqual(post.header(b"x-frame-options"), b"deny")
        self.assertEqual(delete.body, b"DELETE is not served at /metrics: use GET, HEAD\n")

    def test_users_of_the_web_configuration_file(self) -> None:
        """Without or with wrong credentials: 401, the challenge, one line; right ones: 200.
        A user added to the checker in force (a re-read file) applies at once."""
        auth = ScraperAuth(endpoint_passwords=PasswordChecker(
            {"prometheus": fast_hash(b"scraper")}))

        def basic(user: str, password: str) -> list[tuple[str, str]]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return [("Authorization", f"Basic {token}")]

        missing, wrong, right, bob = self.ask(
            http_request_bytes("GET", "/metrics"),
            http_request_bytes("GET", "/metrics", basic("prometheus", "wrong")),
            http_request_bytes("GET", "/metrics", basic("prometheus", "scraper")),
            http_request_bytes("GET", "/metrics", basic("bob", "builder")),
            auth=auth)
        for denied, reason in ((missing, b"credentials required\n"),
                               (wrong, b"wrong user or password\n"), (bob, None)):
            self.assertEqual(denied.status, 401)
            self.assertEqual(denied.header(b"www-authenticate"), b'Basic realm="pushprox"')
            self.assertEqual(denied.header(b"content-type"), TEXT)
            self.assertEqual(denied.header(b"x-frame-options"), b"deny")
            if reason is not None:
                self.assertEqual(denied.body, reason)
        self.assertEqual(right.status, 200)
        self.assertIn(b"pushprox_client_scrapes_total", right.body)
        auth.replace_endpoint_passwords(PasswordChecker({"bob": fast_hash(b"builder")}))
        [now] = self.ask(http_request_bytes("GET", "/metrics", basic("bob", "builder")),
                         auth=auth)
        self.assertEqual(now.status, 200)

    def test_headers_changed_in_place_apply_to_the_next_answer(self) -> None:
        """The headers list is the web configuration file's, replaced in place on reload."""
        [before] = self.ask(http_request_bytes("GET", "/metrics"))
        self.headers[:] = [(b"Strict-Transport-Security", b"max-age=31536000")]
        [after] = self.ask(http_request_bytes("GET", "/metrics"))
        self.assertEqual(before.header(b"x-frame-options"), b"deny")
        self.assertIsNone(after.header(b"x-frame-options"))
        self.assertEqual(after.header(b"strict-transport-security"), b"max-age=31536000")

    def test_no_access_log_and_no_timer(self) -> None:
        """Answers write no log line, and the started factory keeps no timer running."""
        reactor = MemoryReactorClock()
        factory = MetricsListenerFactory(MetricsPage(self.metrics.registry), reactor)
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.ask(http_request_bytes("GET", "/metrics"), http_request_bytes("GET", "/x"))
        self.assertEqual([event.get("log_format") for event in self.events], [])

    def test_a_failing_collector_is_500_in_one_line(self) -> None:
        """A collector that raises: 500, one line, the failure logged; the listener serves on."""
        registry = CollectorRegistry()
        registry.register(Failing())
        failed, missing = self.ask(http_request_bytes("GET", "/metrics"),
                                   http_request_bytes("GET", "/x"), registry=registry)
        self.assertEqual((failed.status, failed.header(b"content-type"), failed.body),
                         (500, TEXT, b"the metrics could not be rendered\n"))
        self.assertEqual(failed.header(b"content-length"), b"34")
        self.assertEqual(missing.status, 404)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
