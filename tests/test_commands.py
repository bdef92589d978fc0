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
    http_get,
    http_request_bytes,
    raw_http,
    scrape_request,
    scrape_via_proxy,
)
from tests.harness.waiting import free_port, port_open, wait_for
from tests.tlsfixtures import make_pki

pytestmark = pytest.mark.processes

METRICS = b"commands_test_up 1\n"


def command(name: str) -> str:
    """The console script ``name`` installed beside the interpreter running the tests."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise AssertionError(f"{path} is missing: install the package (pip install .) "
                             "to get its console scripts")
    return str(path)


def run(argv: list[str], env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to exit by itself, output captured."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**subprocess_env(), **(env or {})}, stdin=subprocess.DEVNULL,
                          cwd=cwd)


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
            scrape.send(scrape_request("http://held.example:9100/metrics", 30))
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
             "pushprox-proxy: --max-clients none: 'none' is not a whole number"),
            ([command("pushprox-client"), "--proxy-url=http://p/", "--proxy.retry.max-wait=5q"],
             "pushprox-client: --retry-max-wait 5q: '5q' is not a duration"),
            ([*twistd_command(), "--pidfile=", "-n", "pushprox-proxy", "--max-clients", "none"],
             "twistd pushprox-proxy: --max-clients none: 'none' is not a whole number"),
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


class RegistrationTests(CommandTestCase):
    """The client says it is registered when a proxy holds its poll, and only then."""

    def poll_errors(self, metrics_port: int) -> float:
        """The client's pushprox_client_poll_errors_total, read from its /metrics."""
        try:
            page = http_get(f"http://127.0.0.1:{metrics_port}/metrics").body.decode()
        except OSError:
            return 0.0
        for line in page.splitlines():
            if line.startswith("pushprox_client_poll_errors_total "):
                return float(line.split()[1])
        return 0.0

    def test_registered_only_once_a_poll_is_held(self) -> None:
        """
        Polls that fail (nothing listens; a plain-HTTP proxy given as https://), with
        backoff waits longer than the second that makes a held poll "registered":
        never "Registered". A real proxy: "Registered", once.
        """
        proxy_port, metrics_port = free_port(), free_port()
        proxy = self.processes.start("proxy", [command("pushprox-proxy"),
                                               f"--listen=127.0.0.1:{proxy_port}"])
        wait_for(lambda: port_open(proxy_port), timeout=30, what="the proxy",
                 watch=[proxy])
        for url in (f"http://127.0.0.1:{free_port()}/", f"https://127.0.0.1:{proxy_port}/"):
            client = self.processes.start(f"client-{len(self.processes.processes)}", [
                command("pushprox-client"), f"--proxy-url={url}", "--fqdn=node1.example",
                f"--metrics-listen=127.0.0.1:{metrics_port}", "--retry-initial-wait=1.5",
                "--retry-max-wait=1.5"])
            wait_for(lambda: self.poll_errors(metrics_port) >= 3 or None, timeout=60,
                     what=f"three failed polls of {url}", watch=[client])
            client.stop()
            self.assertNotIn("Registered with the proxy", client.log_text())
            self.assertEqual(client.log_text().count("failed, retrying with backoff"), 1)
        client = self.processes.start("client", [
            command("pushprox-client"), f"--proxy-url=http://127.0.0.1:{proxy_port}/",
            "--fqdn=node1.example", "--metrics-listen="])
        wait_for(lambda: "Registered with the proxy" in client.log_text() or None,
                 timeout=30, what="the client to register", watch=[client])
        self.assertEqual(client.log_text().count("Registered with the proxy"), 1)


class StartupMistakeTests(SynchronousTestCase):
    """
    The usual first-run mistakes, made as a user would with the installed commands and
    twistd on real files: one line that names the flag (or variable) and the file, a
    non-zero exit, no traceback, nothing started.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pushprox-mistakes-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.pki = make_pki(self.directory)
        self.garbage = os.path.join(self.directory, "garbage.pem")
        Path(self.garbage).write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
        self.missing = os.path.join(self.directory, "missing.pem")

    def assert_refused(self, argv: list[str], line: str, env: dict[str, str] | None = None,
                       ) -> None:
        """``argv`` exits non-zero with ``line`` first, at most a help hint after it."""
        done = run(argv, env, cwd=self.directory)
        self.assertNotEqual(done.returncode, 0, done.stderr)
        lines = done.stderr.splitlines()
        self.assertEqual(lines[:1], [line], done.stderr)
        self.assertLessEqual(len(lines), 2, done.stderr)
        if len(lines) == 2:
            self.assertIn("--help lists the options", lines[1])
        self.assertNotIn("Traceback", done.stderr + done.stdout)
        self.assertEqual(done.stdout, "")

    def client_cases(self) -> list[tuple[list[str], str]]:
        """Client arguments and the reason each is refused with."""
        pki, url = self.pki, "--proxy-url=https://127.0.0.1:1/"
        fqdn = "--fqdn=node1.example"
        return [
            ([url, fqdn, "--tls-cacert", self.missing],
             f"--tls-cacert {self.missing}: No such file or directory"),
            ([url, fqdn, "--tls-cacert", self.garbage],
             f"--tls-cacert {self.garbage}: holds no PEM certificate"),
            ([url, fqdn, "--tls-cacert", self.directory],
             f"--tls-cacert {self.directory}: a directory, not a file"),
            ([url, fqdn, "--tls-cert", pki.client.cert, "--tls-key", self.garbage],
             f"--tls-key {self.garbage}: holds no PEM private key"),
            ([url, fqdn, "--tls-cert", pki.client.key, "--tls-key", pki.client.key],
             f"--tls-cert {pki.client.key}: holds no PEM certificate"),
            ([url, fqdn, "--target-tls-cacert", self.garbage],
             f"--target-tls-cacert {self.garbage}: holds no PEM certificate"),
            ([url, fqdn, "--tls-cert", pki.client.cert, "--tls-key", pki.server.key],
             f"--tls-key {pki.server.key} is not the key of --tls-cert {pki.client.cert}"),
            (["--proxy-url", "http://pro xy:8080/", fqdn],
             "--proxy-url http://pro xy:8080/: a URL has no spaces"),
            (["--proxy-url", "http://proxy:99999/", fqdn],
             "--proxy-url http://proxy:99999/: port 99999 is out of range (1-65535)"),
            (["--proxy-url", "http://proxy:80O0/", fqdn],
             "--proxy-url http://proxy:80O0/: port '80O0' is not a number"),
            ([url, "--fqdn", "node1.example:9100"],
             "--fqdn node1.example:9100: a host name, not host:port (drop :9100: the port "
             "is the one Prometheus scrapes)"),
            ([url, fqdn, "--proxy-token-file", self.missing],
             f"--proxy-token-file {self.missing}: No such file or directory"),
        ]

    def proxy_cases(self) -> list[tuple[list[str], str]]:
        """Proxy arguments and the reason each is refused with."""
        pki = self.pki
        ssl = f"ssl:0:privateKey={pki.server.key}:certKey={pki.server.cert}"
        return [
            (["--client-ca", self.missing, "--listen", ssl],
             f"--client-ca {self.missing}: No such file or directory"),
            (["--client-ca", self.garbage, "--listen", ssl],
             f"--client-ca {self.garbage}: holds no PEM certificate"),
            (["--listen", f"ssl:0:privateKey={self.garbage}:certKey={pki.server.cert}"],
             f"--listen ssl:0:privateKey={self.garbage}:certKey={pki.server.cert}: "
             f"privateKey={self.garbage}: holds no PEM private key"),
            (["--listen", f"ssl:0:privateKey={self.missing}"],
             f"--listen ssl:0:privateKey={self.missing}: privateKey={self.missing}: "
             "No such file or directory"),
            (["--listen", f"ssl:0:privateKey={pki.server.key}:certKey={pki.client.cert}"],
             f"--listen ssl:0:privateKey={pki.server.key}:certKey={pki.client.cert}: "
             f"privateKey={pki.server.key} is not the key of certKey={pki.client.cert}"),
            (["--scrape-auth", self.directory],
             f"--scrape-auth {self.directory}: a directory, not a file"),
            (["--listen", ":99999"], "--listen :99999: port 99999 is out of range (1-65535)"),
            (["--listen", f"unix:{self.missing}/proxy.sock"],
             f"--listen unix:{self.missing}/proxy.sock: {self.missing} is not a directory"),
        ]

    def test_client_mistakes(self) -> None:
        """The console script and twistd -n, then twistd as a daemon (refused before it
        forks: no pidfile is left)."""
        for args, reason in self.client_cases():
            self.assert_refused([command("pushprox-client"), *args],
                                f"pushprox-client: {reason}")
            self.assert_refused([*twistd_command(), "--pidfile=", "-n", "pushprox-client",
                                 *args], f"twistd pushprox-client: {reason}")
        args, reason = self.client_cases()[0]
        self.assert_refused([*twistd_command(), "--pidfile=client.pid", "--logfile=client.log",
                             "pushprox-client", *args], f"twistd pushprox-client: {reason}")
        self.assertFalse(Path(self.directory, "client.pid").exists())

    def test_proxy_mistakes(self) -> None:
        """The same for the proxy."""
        for args, reason in self.proxy_cases():
            self.assert_refused([command("pushprox-proxy"), *args], f"pushprox-proxy: {reason}")
            self.assert_refused([*twistd_command(), "--pidfile=", "-n", "pushprox-proxy",
                                 *args], f"twistd pushprox-proxy: {reason}")
        for args, reason in self.proxy_cases()[-3:]:
            self.assert_refused([*twistd_command(), "--pidfile=proxy.pid",
                                 "--logfile=proxy.log", "pushprox-proxy", *args],
                                f"twistd pushprox-proxy: {reason}")
            self.assertFalse(Path(self.directory, "proxy.pid").exists())

    def test_variables_are_named_not_flags(self) -> None:
        """Upstream's PROXY_URL and FQDN, and PUSHPROX_ ones, report the variable."""
        client = command("pushprox-client")
        for env, line in [
            ({"PROXY_URL": "proxy:8080"}, "pushprox-client: PROXY_URL='proxy:8080': not an "
             "http:// or https:// URL (e.g. http://proxy:8080/)"),
            ({"PROXY_URL": "http://proxy:8080/", "FQDN": "node 1"},
             "pushprox-client: FQDN='node 1': not a host name (letters, digits, '-', '_' "
             "and dots)"),
            ({"PUSHPROX_PROXY_URL": "http://proxy:8080/", "PUSHPROX_TLS_CACERT": self.garbage},
             f"pushprox-client: PUSHPROX_TLS_CACERT='{self.garbage}': holds no PEM "
             "certificate"),
            ({"PUSHPROX_PROXY_URL": "http://proxy:8080/", "PUSHPROX_TLS_CERT":
              self.pki.client.cert, "PUSHPROX_TLS_KEY": self.pki.server.key},
             f"pushprox-client: PUSHPROX_TLS_KEY {self.pki.server.key} is not the key of "
             f"PUSHPROX_TLS_CERT {self.pki.client.cert}"),
        ]:
            self.assert_refused([client], line, env)

    def test_misspelt_variable_is_warned_about(self) -> None:
        """A PUSHPROX_ variable no option reads but one nearly does: a warning that says
        which; the other program's variables and unrelated ones are no mistake."""
        done = run([command("pushprox-client"), "--version"],
                   {"PUSHPROX_ALLOWANY": "true", "PUSHPROX_LISTEN": "tcp:8080",
                    "PUSHPROX_SOMETHING_ELSE": "1", "PUSHPROX_PROXY_URL": "http://p/"})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr.splitlines(), [
            "pushprox-client: warning: PUSHPROX_ALLOWANY is not a variable pushprox-client "
            "reads; did you mean PUSHPROX_ALLOW_ANY?"])
        done = run([*twistd_command(), "--pidfile=", "-n", "pushprox-proxy", "--version"],
                   {"PUSHPROX_SCRAPEAUTH": "x", "PUSHPROX_FQDN": "node1.example"})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr.splitlines(), [
            "twistd pushprox-proxy: warning: PUSHPROX_SCRAPEAUTH is not a variable "
            "pushprox-proxy reads; did you mean PUSHPROX_SCRAPE_AUTH?"])

    def test_daemon_port_in_use_is_one_line(self) -> None:
        """twistd as a daemon says a port in use in one plain line, before it forks."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for program, args, flag in [
                ("pushprox-proxy", ["--listen", f"127.0.0.1:{port}"], "listen"),
                ("pushprox-client", ["--proxy-url=http://127.0.0.1:1/", "--metrics-listen",
                                     f"127.0.0.1:{port}"], "metrics-listen"),
            ]:
                done = run([*twistd_command(), "--pidfile=daemon.pid",
                            "--logfile=daemon.log", program, *args], cwd=self.directory)
                pidfile = Path(self.directory, "daemon.pid")
                if pidfile.exists():  # it became a daemon after all: stop it
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
                self.assertEqual(done.returncode, 1, done.stderr)
                self.assertEqual(done.stderr.splitlines(), [
                    f"twistd: --{flag} tcp:{port}:interface=127.0.0.1: cannot listen on "
                    f"127.0.0.1:{port}: Address already in use"])
                self.assertFalse(pidfile.exists())

    def test_help(self) -> None:
        """-h is --help; the usage line names the program and its main options."""
        for argv, first in [
            ([command("pushprox-client"), "-h"],
             "Usage: pushprox-client --proxy-url URL [--fqdn NAME] [--allow-port PORT]... "
             "[--tls-cacert FILE] [options]"),
            ([command("pushprox-proxy"), "-h"],
             "Usage: pushprox-proxy [--listen ENDPOINT]... [--client-tokens FILE] "
             "[--scrape-auth FILE] [options]"),
            ([*twistd_command(), "pushprox-proxy", "-h"],
             "Usage: twistd [options] pushprox-proxy [--listen ENDPOINT]... "
             "[--client-tokens FILE] [--scrape-auth FILE] [options]"),
        ]:
            done = run(argv)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stdout.splitlines()[0], first)
            self.assertIn("  -h, --help ", done.stdout)
            self.assertEqual(done.stderr, "")
