"""
Integration tests: the proxy and the client as real ``twistd`` processes on 127.0.0.1,
an exporter process served by the test, and recorded upstream Go client requests.

Every process is stopped at the end of its test, pass or fail; a failing test prints
the logs of all its processes.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import (
    DATA,
    HTTPResponse,
    ManagedProcess,
    Page,
    ProcessGroup,
    RawConnection,
    free_port,
    http_request_bytes,
    port_open,
    prometheus_headers,
    raw_http,
    scrape_via_proxy,
    start_exporter,
    twistd_process,
    wait_for,
)

FQDN = "exporter.test"
METRICS = b"".join(b'http_requests_total{code="200",handler="/api/v1/%d"} %d\n' % (i, i * 13)
                   for i in range(300))
#: Large enough that the push cannot be one socket write.
BIG = b"".join(b'big_series{instance="%07d"} %d\n' % (i, i) for i in range(60000))
GZIPPED = gzip.compress(METRICS * 20, mtime=0)
PAGES = {
    "/metrics": Page(METRICS, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                               ("X-Exporter", "first"), ("X-Exporter", "second"),
                               ("Cache-Control", "no-cache")]),
    "/gzipped": Page(GZIPPED, [("Content-Type", "text/plain; version=0.0.4"),
                               ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]),
    "/chunked": Page(METRICS, [("Content-Type", "text/plain")], chunks=7),
    "/big": Page(BIG, [("Content-Type", "text/plain")]),
    "/missing": Page(b"gone\n", [("Content-Type", "text/plain")], status=404),
}
#: Differ between two requests (Date) or name the exporter library (Server): not compared.
NOT_COMPARED = [b"date", b"server"]
GO_ID = b"89b79310-9ed2-4bb2-ad6c-9c786f9485a7"


def replace_host_and_id(recorded: bytes, host: bytes, scrape_id: bytes | None = None) -> bytes:
    """A recorded request sent to our proxy: its Host, the Id handed out, the right length."""
    head, _, body = recorded.partition(b"\r\n\r\n")
    head = re.sub(rb"(?m)^Host: [^\r]*", b"Host: " + host, head)
    if scrape_id is not None:
        body = body.replace(GO_ID, scrape_id)
    head = re.sub(rb"(?m)^Content-Length: \d+", b"Content-Length: %d" % len(body), head)
    return head + b"\r\n\r\n" + body


class IntegrationTestCase(SynchronousTestCase):
    """Starts processes in a temporary directory and stops them whatever happens."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pushprox-integration-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.processes = ProcessGroup()
        self.addCleanup(self.processes.stop_all)
        # Print every process's log when the test fails (the processes still run then).
        method = getattr(self, self._testMethodName)

        def test_printing_logs_on_failure() -> Any:
            try:
                return method()
            except BaseException:
                print(self.processes.logs())
                raise

        setattr(self, self._testMethodName, test_printing_logs_on_failure)

    def directory(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start_proxy(self, *, cwd: Path | None = None, daemon: bool = False,
                    name: str = "proxy", args: Sequence[str] = ()) -> tuple[ManagedProcess, int]:
        """A proxy on a free port of 127.0.0.1 (a few tries if another process takes it)."""
        for _ in range(3):
            port = free_port()
            process = self.processes.add(twistd_process(
                name, "pushprox-proxy", ["--port", f"tcp:{port}:interface=127.0.0.1", *args],
                cwd=cwd or self.directory(name), daemon=daemon,
            ))
            process.start()
            if daemon:
                process.wait_daemonized()
            wait_for(lambda p=process, n=port: port_open(n) or not p.alive(),
                     timeout=20, what=f"{name} to listen on {port}", describe=process.log_text)
            if process.alive():
                return process, port
            if "Address already in use" not in process.log_text():
                self.fail(f"{name} exited at start:\n{process.log_text()}")
        self.fail(f"{name}: no free port in three tries")

    def start_client(self, proxy_port: int, exporter_port: int, *, cwd: Path | None = None,
                     daemon: bool = False, name: str = "client") -> ManagedProcess:
        """A client for FQDN scraping the exporter; returns once the proxy lists it."""
        args = ["--proxy-url", f"http://127.0.0.1:{proxy_port}/", "--fqdn", FQDN,
                "--target-host", "127.0.0.1", "--allow-port", str(exporter_port),
                "--metrics-listen=", "--retry-initial-wait", "0.2", "--retry-max-wait", "1"]
        for path in PAGES:
            args += ["--allow-path", path]
        process = self.processes.add(twistd_process(
            name, "pushprox-client", args, cwd=cwd or self.directory(name), daemon=daemon,
        ))
        process.start()
        if daemon:
            process.wait_daemonized()
        self.wait_registered(proxy_port, FQDN, process)
        return process

    def wait_registered(self, proxy_port: int, fqdn: str, process: ManagedProcess | None = None
                        ) -> None:
        def listed() -> bool:
            if process is not None and not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.log_text()}")
            answer = raw_http(proxy_port, http_request_bytes("GET", "/clients"))
            return any(fqdn in group["targets"] for group in json.loads(answer.body))

        wait_for(listed, timeout=20, what=f"{fqdn} in /clients",
                 describe=self.processes.logs)

    def start_exporter(self) -> int:
        _, port = start_exporter(PAGES, self.directory("exporter"), self.processes)
        return port

    def url(self, exporter_port: int, path: str) -> str:
        return f"http://{FQDN}:{exporter_port}{path}"

    def assert_same_response(self, proxied: HTTPResponse, direct: HTTPResponse) -> None:
        """Status, body and headers (minus Date, Server and hop-by-hop) are equal."""
        self.assertEqual((proxied.status, proxied.reason), (direct.status, direct.reason),
                         proxied.text[:300])
        self.assertEqual(len(proxied.body), len(direct.body))
        self.assertTrue(proxied.body == direct.body, "bodies differ")
        self.assertEqual(proxied.comparable_headers(NOT_COMPARED),
                         direct.comparable_headers(NOT_COMPARED))

    def direct(self, exporter_port: int, path: str, headers: list[tuple[str, str]]
               ) -> HTTPResponse:
        request = http_request_bytes("GET", path, headers, host=f"{FQDN}:{exporter_port}")
        return raw_http(exporter_port, request)

    def stop_and_check(self, process: ManagedProcess, *, timeout: float = 15.0,
                       signalled: bool = False) -> None:
        """
        SIGTERM ``process`` (unless already ``signalled``); it must exit in time and,
        as a daemon, remove its pidfile.
        """
        if not signalled:
            process.signal(signal.SIGTERM)
        self.assertTrue(process.wait_exit(timeout),
                        f"{process.name} still runs {timeout:g}s after SIGTERM")
        if process.daemon:
            assert process.pidfile is not None
            wait_for(lambda: not process.pidfile.exists(), timeout=5,
                     what=f"{process.pidfile} to be removed")
        else:
            assert process.popen is not None
            # After a clean shutdown twistd re-raises the signal that stopped it.
            self.assertEqual(process.popen.wait(5), -signal.SIGTERM, process.log_text())
        self.assertIn("Server Shut Down.", process.log_text())


class ScrapeThroughProcessesTests(IntegrationTestCase):
    """A scraper gets through proxy and client exactly what the exporter serves."""

    def test_bytes_through_proxy_equal_exporter_bytes(self) -> None:
        """Plain, gzip, chunked, large and error pages arrive as the exporter sent them."""
        exporter = self.start_exporter()
        _, proxy = self.start_proxy()
        self.start_client(proxy, exporter)
        for path in PAGES:
            headers = prometheus_headers(10.0)
            proxied = scrape_via_proxy(proxy, self.url(exporter, path), headers=headers)
            direct = self.direct(exporter, path, headers)
            with self.subTest_(path):
                self.assert_same_response(proxied, direct)
        proxied = scrape_via_proxy(proxy, self.url(exporter, "/gzipped"))
        self.assertEqual(proxied.header(b"content-encoding"), b"gzip")
        self.assertEqual(proxied.body, GZIPPED)
        self.assertEqual(gzip.decompress(proxied.body), METRICS * 20)
        self.assertEqual(scrape_via_proxy(proxy, self.url(exporter, "/big")).body, BIG)

    def subTest_(self, label: str) -> Any:
        """Label an assertion failure with ``label`` (trial has no subTest)."""
        case = self

        class Label:
            def __enter__(self) -> None:
                return None

            def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
                if isinstance(error, case.failureException):
                    raise case.failureException(f"{label}: {error}") from error

        return Label()

    def test_unknown_fqdn_gets_404_at_once(self) -> None:
        """A scrape of an FQDN no client polls for fails with 404 long before its timeout."""
        _, proxy = self.start_proxy()
        started = time.monotonic()
        response = scrape_via_proxy(proxy, "http://nobody.example:9100/metrics", timeout=10.0)
        elapsed = time.monotonic() - started
        self.assertEqual(response.status, 404, response.text)
        self.assertIn("nobody.example", response.text)
        self.assertLess(elapsed, 2.0)

    def test_proxy_and_client_from_the_same_directory(self) -> None:
        """With -n --pidfile= both programs start from one directory and work."""
        exporter = self.start_exporter()
        shared = self.directory("shared")
        _, proxy = self.start_proxy(cwd=shared)
        client = self.start_client(proxy, exporter, cwd=shared)
        response = scrape_via_proxy(proxy, self.url(exporter, "/metrics"))
        self.assertEqual((response.status, response.body), (200, METRICS))
        self.assertTrue(client.alive())
        self.assertEqual(sorted(p.name for p in shared.iterdir()),
                         ["client.log", "proxy.log"])


class DaemonTests(IntegrationTestCase):
    """Both programs run as daemons with --pidfile and --logfile."""

    def test_daemons_work_and_stop_on_sigterm(self) -> None:
        """Daemonized proxy and client relay scrapes; SIGTERM stops them and removes pidfiles."""
        exporter = self.start_exporter()
        proxy_process, proxy = self.start_proxy(daemon=True)
        client = self.start_client(proxy, exporter, daemon=True)
        for process in (proxy_process, client):
            assert process.pidfile is not None and process.popen is not None
            self.assertNotEqual(process.pid, process.popen.pid)  # it really detached
            self.assertTrue(process.log_path.exists())
        response = scrape_via_proxy(proxy, self.url(exporter, "/metrics"))
        self.assertEqual((response.status, response.body), (200, METRICS))
        self.stop_and_check(client)
        self.stop_and_check(proxy_process)
        self.assertFalse(port_open(proxy))


class UpstreamGoClientTests(IntegrationTestCase):
    """Recorded requests of the upstream Go client work against the proxy process."""

    def poll_and_scrape(self, proxy: int) -> tuple[RawConnection, RawConnection, bytes]:
        """Poll as the Go client, scrape as Prometheus; returns both and the handed-out Id."""
        host = b"127.0.0.1:%d" % proxy
        poller = RawConnection(proxy)
        self.addCleanup(poller.close)
        poller.send(replace_host_and_id((DATA / "go-client-poll-request.bin").read_bytes(),
                                        host))
        self.wait_registered(proxy, "localhost")
        scraper = RawConnection(proxy)
        self.addCleanup(scraper.close)
        scraper.send(http_request_bytes("GET", "http://localhost:9100/metrics?foo=bar",
                                        prometheus_headers(10.0)))
        answer = poller.read_response(timeout=10)
        self.assertEqual(answer.status, 200, answer.text)
        request_line = answer.body.split(b"\r\n", 1)[0]
        self.assertEqual(request_line, b"GET http://localhost:9100/metrics?foo=bar HTTP/1.1")
        match = re.search(rb"(?m)^Id: ([0-9a-f-]+)\r$", answer.body)
        assert match is not None, answer.body
        return poller, scraper, match.group(1)

    def test_recorded_poll_and_push(self) -> None:
        """The scraper gets the body the Go client pushed, with the target's headers."""
        _, proxy = self.start_proxy()
        poller, scraper, scrape_id = self.poll_and_scrape(proxy)
        recorded = (DATA / "go-client-push-request.bin").read_bytes()
        poller.send(replace_host_and_id(recorded, b"127.0.0.1:%d" % proxy, scrape_id))
        pushed = poller.read_response(timeout=10)
        self.assertEqual((pushed.status, pushed.body), (200, b""))
        response = scraper.read_response(timeout=10)
        inner = recorded.split(b"\r\n\r\n", 2)[2]
        self.assertEqual(len(inner), 1000)
        self.assertEqual((response.status, response.body), (200, inner))
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertEqual(response.header(b"etag"), b'"6b094aa9-3e8"')
        self.assertEqual(response.header(b"content-length"), b"1000")
        self.assertIsNone(response.header(b"id"))
        self.assertIsNone(response.header(b"x-prometheus-scrape-timeout"))

    def test_recorded_error_push_gives_500(self) -> None:
        """The Go client's synthesized HTTP/0.0 500 reaches the scraper as a 500."""
        _, proxy = self.start_proxy()
        poller, scraper, scrape_id = self.poll_and_scrape(proxy)
        recorded = (DATA / "go-client-push-error.bin").read_bytes()
        poller.send(replace_host_and_id(recorded, b"127.0.0.1:%d" % proxy, scrape_id))
        pushed = poller.read_response(timeout=10)
        self.assertEqual((pushed.status, pushed.body), (200, b""))
        response = scraper.read_response(timeout=10)
        self.assertEqual(response.status, 500, response.text)
        self.assertEqual(response.body, recorded.split(b"\r\n\r\n", 2)[2])
        self.assertTrue(response.body.startswith(
            b"failed to scrape http://localhost:9999/small?foo=bar: "))


class ProxyShutdownTests(IntegrationTestCase):
    """SIGTERM on the proxy answers what is still waiting."""

    def test_sigterm_answers_pending_scrapes_with_503(self) -> None:
        """A scrape handed to a client and one still queued both get 503 when the proxy stops."""
        proxy_process, proxy = self.start_proxy()
        poller = RawConnection(proxy)
        self.addCleanup(poller.close)
        poller.send(http_request_bytes("POST", "/poll", [("Content-Type", "")],
                                       b"pending.test"))
        self.wait_registered(proxy, "pending.test")
        sent = RawConnection(proxy)
        self.addCleanup(sent.close)
        sent.send(http_request_bytes("GET", "http://pending.test:9100/metrics",
                                     prometheus_headers(60.0)))
        self.assertEqual(poller.read_response(timeout=10).status, 200)
        queued = RawConnection(proxy)
        self.addCleanup(queued.close)
        queued.send(http_request_bytes("GET", "http://pending.test:9100/metrics",
                                       prometheus_headers(60.0)))
        self.wait_metric(proxy, "pushprox_scrapes_queued", 1.0)
        proxy_process.signal(signal.SIGTERM)
        for connection in (sent, queued):
            response = connection.read_response(timeout=10)
            self.assertEqual(response.status, 503, response.text)
            self.assertIn("shutting down", response.text)
        self.stop_and_check(proxy_process, signalled=True)

    def wait_metric(self, proxy: int, name: str, value: float) -> None:
        def reached() -> bool:
            text = raw_http(proxy, http_request_bytes("GET", "/metrics")).text
            match = re.search(rf"(?m)^{name} (\S+)$", text)
            return match is not None and float(match.group(1)) == value

        wait_for(reached, timeout=10, what=f"{name} to be {value}")
