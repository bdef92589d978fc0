"""
Integration tests of the ``pushprox-proxy`` and ``pushprox-client`` commands and of the
twistd plugins' command lines: real processes on 127.0.0.1, upstream's flags, the
environment, JSON logs, one-line errors and a clean stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.harness.exporter import Page, start_exporter
from tests.harness.processes import Process, ProcessGroup, subprocess_env, twistd_command
from tests.harness.rawhttp import (
    RawConnection,
    http_request_bytes,
    prometheus_headers,
    raw_http,
    scrape_via_proxy,
)
from tests.harness.waiting import free_port, port_open, wait_for

pytestmark = pytest.mark.processes

METRICS = b"commands_test_up 1\n"


def command(name: str) -> str:
    """The console script ``name`` installed beside the interpreter running the tests."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise AssertionError(f"{path} is missing: install the package (pip install .) "
                             "to get its console scripts")
    return str(path)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to exit by itself, output captured."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**subprocess_env(), **(env or {})}, stdin=subprocess.DEVNULL)


class CommandTestCase(SynchronousTestCase):
    """Processes in a temporary directory, stopped whatever happens."""

    def setUp(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="pushprox-commands-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.processes = ProcessGroup(tmp)
        self.addCleanup(self.processes.stop_all)

    def start(self, name: str, argv: list[str], port: int) -> Process:
        """Start a program and wait until it accepts connections on ``port``."""
        process = self.processes.start(name, argv)
        wait_for(lambda: port_open(port), timeout=30, what=f"{name} on port {port}",
                 watch=[process])
        return process

    def json_lines(self, process: Process) -> list[dict[str, Any]]:
        """The program's log lines, each parsed as JSON (the harness's start line aside)."""
        return [json.loads(line) for line in process.log_text().splitlines()
                if not line.startswith("=== ")]


class ForegroundCommandTests(CommandTestCase):
    """The commands serve scrapes with upstream's flags and stop cleanly."""

    def test_upstream_flags_json_logs_and_sigterm(self) -> None:
        """A scrape through both commands; every log line is JSON; SIGTERM exits 0."""
        _, exporter_port = start_exporter(self.processes, "pages",
                                          pages={"/metrics": Page(METRICS)})
        proxy_port, metrics_port = free_port(), free_port()
        proxy = self.start("proxy", [
            command("pushprox-proxy"), f"--web.listen-address=127.0.0.1:{proxy_port}",
            "--scrape.max-timeout", "1m", "--log.level=debug", "--log.format=json"], proxy_port)
        client = self.start("client", [
            command("pushprox-client"), "--fqdn=127.0.0.1",
            f"--proxy-url=http://127.0.0.1:{proxy_port}",
            f"--metrics-addr=127.0.0.1:{metrics_port}", "--proxy.retry.initial-wait=100ms",
            "--log.level", "debug", "--log.format", "json", "--allow-port", str(exporter_port)],
            metrics_port)
        wait_for(lambda: b"127.0.0.1" in raw_http(
            proxy_port, http_request_bytes("GET", "/clients", [])).body,
            timeout=20, what="the client registered", watch=[proxy, client])
        answer = scrape_via_proxy(proxy_port, f"http://127.0.0.1:{exporter_port}/metrics")
        self.assertEqual((answer.status, answer.body), (200, METRICS))
        self.assertEqual((proxy.stop(), client.stop()), (0, 0))
        for process in (proxy, client):
            lines = self.json_lines(process)
            self.assertTrue(lines)
            for line in lines:
                self.assertEqual(list(line)[:4], ["time", "level", "logger", "message"])
        scraped = [line for line in self.json_lines(client)
                   if line["message"].startswith("Scraped")]
        self.assertEqual([(line["status"], line["fqdn"]) for line in scraped],
                         [(200, "127.0.0.1")])

    def test_sigterm_answers_a_waiting_scrape_with_503(self) -> None:
        """As under twistd: the pending scrape gets 503, then the proxy exits 0."""
        port = free_port()
        proxy = self.start("proxy", [command("pushprox-proxy"), "--port", str(port)], port)
        # A client registers with one poll, answered 204 at once, and polls no more.
        with RawConnection(port) as poll:
            poll.send(http_request_bytes("POST", "/poll", [("X-PushProx-Poll-Timeout", "0.01")],
                                         b"held.example"))
            self.assertEqual(poll.read_response().status, 204)
        with RawConnection(port) as scrape:
            scrape.send(http_request_bytes("GET", "http://held.example:9100/metrics",
                                           prometheus_headers(30)))
            wait_for(lambda: b"\npushprox_scrapes_queued 1.0" in raw_http(
                port, http_request_bytes("GET", "/metrics", [])).body,
                timeout=10, what="the scrape queued")
            proxy.send_signal(signal.SIGTERM)
            self.assertEqual(scrape.read_response().status, 503)
        self.assertTrue(proxy.wait_exit(10), proxy.log_text())
        self.assertEqual(proxy.returncode, 0, proxy.log_text())

    def test_environment_configures_the_command(self) -> None:
        """PUSHPROX_LISTEN and PUSHPROX_LOG_FORMAT alone choose the port and the format."""
        port = free_port()
        self.patch(os, "environ", {**os.environ, "PUSHPROX_LOG_FORMAT": "logfmt",
                                   "PUSHPROX_LISTEN": f"tcp:{port}:interface=127.0.0.1"})
        process = self.start("proxy", [command("pushprox-proxy")], port)
        self.assertEqual(process.stop(), 0)
        self.assertIn(f'level=info logger=log_legacy message="PushProxSite starting on {port}"',
                      process.log_text())


class OneLineErrorTests(CommandTestCase):
    """Flag and start-up errors: the reason first, in one line, naming the flag."""

    def test_usage_errors(self) -> None:
        """The command and twistd: reason, then where help is; nothing else."""
        for argv, first in [
            ([command("pushprox-proxy"), "--max-clients", "none"],
             "pushprox-proxy: --max-clients none: invalid literal for int() with base 10: "
             "'none'"),
            ([command("pushprox-client"), "--proxy-url=http://p/", "--proxy.retry.max-wait=5q"],
             "pushprox-client: --retry-max-wait 5q: '5q' is not a duration"),
            ([*twistd_command(), "--pidfile=", "-n", "pushprox-proxy", "--max-clients", "none"],
             "twistd pushprox-proxy: --max-clients none: invalid literal"),
        ]:
            done = run(argv)
            self.assertNotEqual(done.returncode, 0)
            lines = done.stderr.splitlines()
            self.assertTrue(lines[0].startswith(first), done.stderr)
            self.assertEqual(len(lines), 2, done.stderr)
            self.assertEqual(done.stdout, "")

    def test_variable_error_names_the_variable(self) -> None:
        """A malformed PUSHPROX_ value stops the program and says which variable."""
        done = run([command("pushprox-client"), "--proxy-url=http://p/"],
                   {"PUSHPROX_ALLOW_ANY": "sometimes"})
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stderr.splitlines()[0],
                         "pushprox-client: PUSHPROX_ALLOW_ANY='sometimes': expected true or "
                         "false")

    def test_port_in_use(self) -> None:
        """One line naming the flag, no traceback, under both the command and twistd."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for argv, line in [
                ([command("pushprox-proxy"), f"--web.listen-address=127.0.0.1:{port}"],
                 f"pushprox-proxy: --listen tcp:{port}:interface=127.0.0.1: cannot listen "
                 f"on 127.0.0.1:{port}: Address already in use"),
                ([*twistd_command(), "--pidfile=", "-n", "pushprox-client",
                  "--proxy-url=http://127.0.0.1:1/", "--metrics-listen", f"127.0.0.1:{port}"],
                 f"twistd: --metrics-listen tcp:{port}:interface=127.0.0.1: cannot listen "
                 f"on 127.0.0.1:{port}: Address already in use"),
            ]:
                done = run(argv)
                self.assertEqual(done.returncode, 1, done.stderr)
                self.assertIn(line, done.stderr.splitlines())
                self.assertNotIn("Traceback", done.stderr + done.stdout)
