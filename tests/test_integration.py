"""
Integration tests: the proxy and the client as real ``twistd`` processes on 127.0.0.1,
an exporter process served by the test, and recorded upstream Go client requests.

Every process is stopped at the end of its test, pass or fail; a failing test's report
carries the logs of all its processes (``tests/conftest.py`` reads ``self.processes``).
"""

from __future__ import annotations

import gzip
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared import wire
from tests.harness.exporter import Page
from tests.harness.processes import Daemon, Process, twistd_argv
from tests.harness.rawhttp import (
    HTTPResponse,
    RawConnection,
    http_request_bytes,
    prometheus_headers,
    raw_http,
    scrape_request,
    scrape_via_proxy,
)
from tests.harness.recordings import (
    GO_CLIENT_POLL,
    GO_CLIENT_PUSH,
    GO_CLIENT_PUSH_ERROR,
    Recording,
    recording,
)
from tests.harness.stack import Client, Proxy, Stack
from tests.harness.waiting import port_open, wait_for

pytestmark = pytest.mark.processes

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


class IntegrationTestCase(SynchronousTestCase):
    """Starts processes in a temporary directory and stops them whatever happens."""

    def setUp(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="pushprox-integration-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.processes = Stack(tmp)
        self.addCleanup(self.processes.stop_all)

    def start_client(self, proxy: Proxy, exporter_port: int, *, cwd: Path | None = None,
                     daemon: bool = False) -> Client:
        """A client for FQDN scraping the exporter's pages; returns once the proxy lists it."""
        allowed = [arg for path in PAGES for arg in ("--allow-path", path)]
        return self.processes.client(proxy, FQDN, [exporter_port], name="client", cwd=cwd,
                                     daemon=daemon, extra=allowed)

    def wait_registered(self, proxy: Proxy, fqdn: str) -> None:
        """Wait until the proxy lists ``fqdn``."""
        wait_for(lambda: fqdn in proxy.clients(), timeout=20, what=f"{fqdn} in /clients",
                 watch=[proxy.process])

    def start_exporter(self) -> int:
        """The exporter of PAGES; returns its port."""
        return self.processes.exporter("pages", pages=PAGES).port

    def url(self, exporter_port: int, path: str) -> str:
        """The URL a scraper asks the proxy for, to reach ``path`` of the exporter."""
        return f"http://{FQDN}:{exporter_port}{path}"

    def assert_same_response(self, proxied: HTTPResponse, direct: HTTPResponse, label: str
                             ) -> None:
        """Status, body and headers (minus Date, Server and hop-by-hop) are equal."""
        self.assertEqual((proxied.status, proxied.reason), (direct.status, direct.reason),
                         f"{label}: {proxied.text[:300]}")
        self.assertEqual(len(proxied.body), len(direct.body), label)
        self.assertTrue(proxied.body == direct.body, f"{label}: bodies differ")
        self.assertEqual(proxied.comparable_headers(NOT_COMPARED),
                         direct.comparable_headers(NOT_COMPARED), label)

    def direct(self, exporter_port: int, path: str, headers: list[tuple[str, str]]
               ) -> HTTPResponse:
        """GET ``path`` of the exporter directly, with the Host a scrape through us has."""
        request = http_request_bytes("GET", path, headers, host=f"{FQDN}:{exporter_port}")
        return raw_http(exporter_port, request)

    def stop_and_check(self, process: Process | Daemon, *, timeout: float = 15.0,
                       signalled: bool = False) -> None:
        """
        SIGTERM ``process`` (unless already ``signalled``); it must exit in time and,
        as a daemon, remove its pidfile.
        """
        if not signalled:
            process.send_signal(signal.SIGTERM)
        self.assertTrue(process.wait_exit(timeout),
                        f"{process.name} still runs {timeout:g}s after SIGTERM")
        if isinstance(process, Daemon):
            pidfile = process.pidfile
            wait_for(lambda: not pidfile.exists(), timeout=5, what=f"{pidfile} to be removed")
        else:
            # After a clean shutdown twistd re-raises the signal that stopped it.
            self.assertEqual(process.returncode, -signal.SIGTERM, process.log_text())
        self.assertIn("Server Shut Down.", process.log_text())


class ScrapeThroughProcessesTests(IntegrationTestCase):
    """A scraper gets through proxy and client exactly what the exporter serves."""

    def test_bytes_through_proxy_equal_exporter_bytes(self) -> None:
        """Plain, gzip, chunked, large and error pages arrive as the exporter sent them."""
        exporter = self.start_exporter()
        proxy = self.processes.proxy()
        self.start_client(proxy, exporter)
        for path in PAGES:
            headers = prometheus_headers(10.0)
            proxied = scrape_via_proxy(proxy.port, self.url(exporter, path), headers=headers)
            direct = self.direct(exporter, path, headers)
            self.assert_same_response(proxied, direct, path)
        proxied = scrape_via_proxy(proxy.port, self.url(exporter, "/gzipped"))
        self.assertEqual(proxied.header(b"content-encoding"), b"gzip")
        self.assertEqual(proxied.body, GZIPPED)
        self.assertEqual(gzip.decompress(proxied.body), METRICS * 20)
        self.assertEqual(scrape_via_proxy(proxy.port, self.url(exporter, "/big")).body, BIG)

    def test_unknown_fqdn_gets_404_at_once(self) -> None:
        """A scrape of an FQDN no client polls for fails with 404 long before its timeout."""
        proxy = self.processes.proxy()
        started = time.monotonic()
        response = scrape_via_proxy(proxy.port, "http://nobody.example:9100/metrics",
                                    timeout=10.0)
        elapsed = time.monotonic() - started
        self.assertEqual(response.status, 404, response.text)
        self.assertIn("nobody.example", response.text)
        self.assertLess(elapsed, 2.0)

    def test_proxy_and_client_from_the_same_directory(self) -> None:
        """With -n --pidfile= both programs start from one directory and work."""
        exporter = self.start_exporter()
        shared = self.processes.directory("shared")
        proxy = self.processes.proxy(cwd=shared)
        client = self.start_client(proxy, exporter, cwd=shared)
        response = scrape_via_proxy(proxy.port, self.url(exporter, "/metrics"))
        self.assertEqual((response.status, response.body), (200, METRICS))
        self.assertTrue(client.process.alive)
        self.assertEqual(sorted(p.name for p in shared.iterdir()),
                         ["client.log", "proxy.log"])


class DaemonTests(IntegrationTestCase):
    """Both programs run as daemons with --pidfile and --logfile."""

    def test_daemons_work_and_stop_on_sigterm(self) -> None:
        """Daemonized proxy and client relay scrapes; SIGTERM stops them and removes pidfiles."""
        exporter = self.start_exporter()
        proxy = self.processes.proxy(daemon=True)
        client = self.start_client(proxy, exporter, daemon=True)
        daemons = (proxy.process, client.process)
        for daemon in daemons:
            assert isinstance(daemon, Daemon), daemon
            self.assertNotEqual(daemon.pid, daemon.launcher.pid)  # it really detached
            self.assertTrue(daemon.log_path.exists())
        response = scrape_via_proxy(proxy.port, self.url(exporter, "/metrics"))
        self.assertEqual((response.status, response.body), (200, METRICS))
        for daemon in reversed(daemons):
            self.stop_and_check(daemon)
        self.assertFalse(port_open(proxy.port))


class UpstreamGoClientTests(IntegrationTestCase):
    """Recorded requests of the upstream Go client work against the proxy process."""

    def push_recorded(self, name: str) -> tuple[Recording, HTTPResponse]:
        """
        Poll as the Go client, scrape as Prometheus, push the recording ``name`` with
        the Id handed out; returns the recording and what the scraper got.
        """
        proxy = self.processes.proxy()
        host = b"127.0.0.1:%d" % proxy.port
        poller = RawConnection(proxy.port)
        self.addCleanup(poller.close)
        poller.send(recording(GO_CLIENT_POLL).sent_to(host))
        self.wait_registered(proxy, "localhost")
        scraper = RawConnection(proxy.port)
        self.addCleanup(scraper.close)
        scraper.send(scrape_request("http://localhost:9100/metrics?foo=bar", 10.0))
        answer = poller.read_response(timeout=10)
        self.assertEqual(answer.status, 200, answer.text)
        scrape = wire.decode_scrape_request(answer.body)
        self.assertEqual((scrape.method, scrape.url),
                         (b"GET", b"http://localhost:9100/metrics?foo=bar"))
        recorded = recording(name)
        poller.send(recorded.sent_to(host, scrape.scrape_id.encode()))
        pushed = poller.read_response(timeout=10)
        self.assertEqual((pushed.status, pushed.body), (200, b""))
        return recorded, scraper.read_response(timeout=10)

    def test_recorded_poll_and_push(self) -> None:
        """The scraper gets the body the Go client pushed, with the target's headers."""
        recorded, response = self.push_recorded(GO_CLIENT_PUSH)
        inner = recorded.inner_body
        self.assertEqual(len(inner), 1000)
        self.assertEqual((response.status, response.body), (200, inner))
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertEqual(response.header(b"etag"), b'"6b094aa9-3e8"')
        self.assertEqual(response.header(b"content-length"), b"1000")
        self.assertIsNone(response.header(b"id"))
        self.assertIsNone(response.header(b"x-prometheus-scrape-timeout"))

    def test_recorded_error_push_gives_500(self) -> None:
        """The Go client's synthesized HTTP/0.0 500 reaches the scraper as a 500."""
        recorded, response = self.push_recorded(GO_CLIENT_PUSH_ERROR)
        self.assertEqual(response.status, 500, response.text)
        self.assertEqual(response.body, recorded.inner_body)
        self.assertTrue(response.body.startswith(
            b"failed to scrape http://localhost:9999/small?foo=bar: "))


class ProxyShutdownTests(IntegrationTestCase):
    """SIGTERM on the proxy answers what is still waiting."""

    def test_sigterm_answers_pending_scrapes_with_503(self) -> None:
        """A scrape handed to a client and one still queued both get 503 when the proxy stops."""
        proxy = self.processes.proxy()
        poller = RawConnection(proxy.port)
        self.addCleanup(poller.close)
        poller.send(http_request_bytes("POST", "/poll", [("Content-Type", "")],
                                       b"pending.test"))
        self.wait_registered(proxy, "pending.test")

        def scrape() -> RawConnection:
            connection = RawConnection(proxy.port)
            self.addCleanup(connection.close)
            connection.send(scrape_request("http://pending.test:9100/metrics", 60.0))
            return connection

        handed_out = scrape()
        self.assertEqual(poller.read_response(timeout=10).status, 200)
        queued = scrape()
        wait_for(lambda: proxy.metric("pushprox_scrapes_queued") == 1.0, timeout=10,
                 what="pushprox_scrapes_queued to be 1", watch=[proxy.process])
        proxy.process.send_signal(signal.SIGTERM)
        for label, connection in (("handed out", handed_out), ("queued", queued)):
            response = connection.read_response(timeout=10)
            self.assertEqual(response.status, 503, f"{label}: {response.text}")
            self.assertIn("shutting down", response.text, label)
        self.stop_and_check(proxy.process, signalled=True)


class WrongSchemeTests(IntegrationTestCase):
    """A client given https:// for a plain-HTTP proxy is told so within seconds."""

    def test_https_to_a_plain_proxy_fails_fast_naming_tls(self) -> None:
        """The proxy answers the handshake in plain HTTP; the client's log says why."""
        proxy = self.processes.proxy()
        client = self.processes.client(proxy, "node1.example", [9100], wait=False,
                                       proxy_url=f"https://127.0.0.1:{proxy.port}/")
        started = time.monotonic()
        wait_for(lambda: "the TLS handshake with the proxy failed" in client.process.log_text(),
                 timeout=10, what="the client naming the failed TLS handshake",
                 watch=[client.process])
        print(f"told after {time.monotonic() - started:.2f}s")
        self.assertIn("a plain-HTTP proxy wants http:// in --proxy-url",
                      client.process.log_text())
        self.assertIn("Refused a TLS handshake on a plain-HTTP port", proxy.process.log_text())


def replace_file(path: Path, text: str) -> None:
    """Write ``path`` whole, as editors and configuration tools do (a rename): a program
    that watches it never reads it half-written."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.replace(path)


class SeveralNamesTests(IntegrationTestCase):
    """One client, several names (``--fqdn NAME=ADDRESS``), each scraped at its address."""

    def test_each_name_is_scraped_at_its_own_address(self) -> None:
        """Two exporters on one port of 127.0.0.2 and 127.0.0.3: each name gets its own page."""
        first = self.processes.exporter("first", address="127.0.0.2")
        self.processes.exporter("second", address="127.0.0.3", port=first.port)
        proxy = self.processes.proxy()
        args = self.processes.client_args(proxy.url + "/", "second.example=127.0.0.3",
                                          [first.port], ["--fqdn", "first.example=127.0.0.2"])
        self.processes.start("client", twistd_argv("pushprox-client", args))
        self.wait_registered(proxy, "first.example")
        self.wait_registered(proxy, "second.example")

        for name, fqdn in (("first", "first.example"), ("second", "second.example")):
            answer = scrape_via_proxy(proxy.port, f"http://{fqdn}:{first.port}/metrics")
            self.assertEqual(answer.status, 200, answer.text[:300])
            self.assertIn(f'e2e_exporter_info{{name="{name}",host="{fqdn}:{first.port}"',
                          answer.text)
        listed = proxy.get("/clients").json()
        self.assertEqual(sorted(target for group in listed for target in group["targets"]),
                         ["first.example", "second.example"])
        unknown = scrape_via_proxy(proxy.port, f"http://third.example:{first.port}/metrics")
        self.assertEqual(unknown.status, 404)

    def test_targets_file_is_reloaded_on_sighup(self) -> None:
        """New names register, removed ones stop polling at once, a bad file changes
        nothing; a changed file is read again without a signal."""
        exporter = self.processes.exporter("site")
        proxy = self.processes.proxy()
        targets = self.processes.directory("client") / "targets"
        replace_file(targets, "# names of the site\none.example=127.0.0.1\n")
        args = self.processes.client_args(proxy.url + "/", "fixed.example", [exporter.port],
                                          ["--targets-file", str(targets),
                                           "--tls-reload-interval", "0.5"])
        client = self.processes.start("client", twistd_argv("pushprox-client", args))
        self.wait_registered(proxy, "one.example")

        def polls_held() -> dict[str, int]:
            view = proxy.get("/api/v1/clients").json()
            return {entry["fqdn"]: entry["polls_held"] for entry in view["clients"]}

        def scrape(fqdn: str) -> HTTPResponse:
            return scrape_via_proxy(proxy.port, f"http://{fqdn}:{exporter.port}/metrics")

        replace_file(targets, "two.example\n")
        client.send_signal(signal.SIGHUP)
        self.wait_registered(proxy, "two.example")
        self.assertEqual(scrape("two.example").status, 200)
        wait_for(lambda: polls_held().get("one.example") == 0, timeout=10,
                 what="one.example's poll withdrawn", watch=[client])
        self.assertEqual(polls_held()["fixed.example"], 1)

        replace_file(targets, "two.example\nnot a name\n")
        client.send_signal(signal.SIGHUP)
        wait_for(lambda: f"--targets-file not reloaded, the one in force stays: {targets}: "
                 "line 2: not a name" in client.log_text(), timeout=10,
                 what="the refusal logged", watch=[client])
        self.assertEqual(scrape("two.example").status, 200)
        self.assertEqual(polls_held()["two.example"], 1)

        # A changed file is read without a signal too.
        replace_file(targets, "two.example\nthree.example\n")
        self.wait_registered(proxy, "three.example")
        self.assertEqual(scrape("three.example").status, 200)
        self.stop_and_check(client)


class SeveralProxyUrlsTests(IntegrationTestCase):
    """``--proxy-url`` twice: the first that answers, the next on failure, back to the first."""

    def test_fail_over_and_back(self) -> None:
        """First dead: the second; first started: back to it; then each in turn."""
        exporter = self.processes.exporter("site")
        first = self.processes.proxy(name="first")
        first.process.stop()
        second = self.processes.proxy(name="second")
        args = self.processes.client_args(first.url + "/", FQDN, [exporter.port], [
            "--proxy-url", second.url + "/", "--proxy-failback-after", "3"])
        client = self.processes.start("client", twistd_argv("pushprox-client", args))

        def scraped_through(proxy: Proxy) -> bool:
            url = f"http://{FQDN}:{exporter.port}/metrics"
            return scrape_via_proxy(proxy.port, url, timeout=2.0).status == 200

        def wait_scraped_through(proxy: Proxy, what: str) -> None:
            wait_for(lambda: scraped_through(proxy), timeout=30, what=what,
                     watch=[client, proxy.process])

        wait_scraped_through(second, "scrapes through the second proxy, the first being dead")
        self.assertIn(f"Polling {second.url}/poll as {FQDN} from now on ({first.url}/ failed)",
                      client.log_text())

        first.process.start()
        first.wait_ready()
        wait_scraped_through(first, "scrapes through the first proxy once it is back")
        self.assertIn(f"Polling {first.url}/poll as {FQDN} from now on (the first proxy URL "
                      "is tried again)", client.log_text())

        first.process.stop()
        wait_scraped_through(second, "scrapes through the second proxy again")
        second.process.stop()
        first.process.start()
        first.wait_ready()
        wait_scraped_through(first, "scrapes through the first proxy, the second stopped")
