"""Processes, ports, polling and Prometheus' HTTP API for the end-to-end tests.

Nothing here knows about pytest; ``conftest.py`` turns it into fixtures.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PROMETHEUS = Path(os.environ.get("PUSHPROX_E2E_PROMETHEUS", "/usr/bin/prometheus"))
NODE_EXPORTER = Path(
    os.environ.get("PUSHPROX_E2E_NODE_EXPORTER", "/usr/bin/prometheus-node-exporter")
)
# twistd of the interpreter running the tests, so a virtualenv or tox env uses its own.
TWISTD = Path(sys.executable).with_name("twistd")
EXPORTER_SCRIPT = Path(__file__).with_name("exporter.py")

# Node exporter collectors that fail or are slow in containers and CI; the rest stay on so
# that the proxied scrape carries a realistic body (hundreds of series, some kB gzipped).
NODE_EXPORTER_DISABLED = ("systemd", "hwmon", "thermal_zone", "rapl", "powersupplyclass", "wifi")

T = TypeVar("T")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ports_handed_out: set[int] = set()


def subprocess_env() -> dict[str, str]:
    """Environment for the processes we start: no HTTP proxy variables, unbuffered Python."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, never handed out twice in one test session."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class HTTPResult:
    """Status, headers and body of an HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_get(url: str, *, timeout: float = 5.0) -> HTTPResult:
    """GET url directly (never through an environment proxy); 4xx/5xx are results, not errors."""
    try:
        with _opener.open(url, timeout=timeout) as response:
            return HTTPResult(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        try:
            return HTTPResult(error.code, dict(error.headers), error.read())
        finally:
            error.close()


def proxy_form_get(
    proxy_port: int, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> HTTPResult:
    """Send a proxy-form request (absolute URI in the request line), as Prometheus does."""
    host = urllib.parse.urlsplit(url).netloc
    all_headers = {"Host": host, "User-Agent": "pushprox-e2e", **(headers or {})}
    connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=timeout)
    try:
        connection.request("GET", url, headers=all_headers)
        response = connection.getresponse()
        return HTTPResult(response.status, dict(response.headers), response.read())
    finally:
        connection.close()


def parse_metric(text: str, name: str) -> list[float]:
    """Values of every sample of metric ``name`` in a text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    return [float(value) for value in pattern.findall(text)]


def metric_names_in_exposition(text: str) -> set[str]:
    """Metric names of the samples in a text exposition (histogram/summary suffixes included)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str,
    interval: float = 0.2,
    watch: Iterable[Process | Daemon] = (),
) -> T:
    """Call predicate until it returns something truthy, and return that.

    An exception from the predicate counts as "not yet" (the last one is reported on timeout).
    If a watched process exits meanwhile, fail at once with its log tail.
    """
    watched = list(watch)
    deadline = time.monotonic() + timeout
    last_result: object = None
    last_error: str | None = None
    while True:
        for process in watched:
            if not process.alive:
                raise AssertionError(
                    f"{process.name} exited with status {process.returncode} while waiting for "
                    f"{what}\n--- {process.log_path} ---\n{process.log_tail()}"
                )
        try:
            result = predicate()
        except Exception:  # any failure means "not yet"; the last one is reported on timeout
            last_error = traceback.format_exc(limit=3)
        else:
            last_error = None
            if result:
                return result
            last_result = result
        if time.monotonic() >= deadline:
            detail = f"last error:\n{last_error}" if last_error else f"last result: {last_result!r}"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; {detail}")
        time.sleep(interval)


class Process:
    """One program we run, in its own working directory and process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        cwd: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.cwd = cwd
        self.env = dict(env) if env is not None else subprocess_env()
        self.log_path = cwd / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        """Start (or start again) the program; its output is appended to the log."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"=== {stamp} start: {shlex.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the program to exit by itself; return its exit status."""
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> int | None:
        """Signal the whole process group, wait, SIGKILL what is left; return the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout)
            # Children that outlived the group leader.
            self._signal_group(signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process group: the program gets no chance to say goodbye."""
        return self.stop(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Process {self.name} {state}>"


def pid_alive(pid: int) -> bool:
    """Whether pid is a live (not zombie) process; works for processes that are not our children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


class Daemon:
    """A ``twistd`` program run as a daemon (no ``-n``): found and stopped by its pidfile.

    The launcher (the ``twistd`` we start) exits once the daemon is up; the daemon is not our
    child and has its own session, so it is signalled by the pid in its pidfile, and only if
    that pid's command line still names our pidfile.
    """

    def __init__(self, name: str, twistd_args: Sequence[str], cwd: Path, twistd: Path) -> None:
        self.name = name
        self.cwd = cwd
        self.pidfile = cwd / f"{name}.pid"
        self.log_path = cwd / f"{name}.log"
        self.launcher = Process(
            f"{name}-launcher",
            [twistd, f"--pidfile={self.pidfile}", f"--logfile={self.log_path}", *twistd_args],
            cwd,
        )
        self.pid: int | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> Daemon:
        """Start the daemon; return once its launcher exited 0 and its pidfile names it."""
        self.launcher.start()
        try:
            status = self.launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            raise AssertionError(
                f"{self.name}: twistd did not daemonize within {timeout:g} s\n"
                + self.launcher.log_tail()
            ) from None
        if status != 0:
            raise AssertionError(
                f"{self.name}: twistd exited with {status}\n{self.launcher.log_tail()}\n"
                f"--- {self.log_path} ---\n{self.log_tail()}"
            )
        self.pid = wait_until(self.read_pidfile, 10, what=f"{self.name} pidfile {self.pidfile}")
        self.starts += 1
        return self

    def read_pidfile(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _is_ours(self, pid: int) -> bool:
        return any(str(self.pidfile) in arg for arg in pid_cmdline(pid))

    @property
    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid) and self._is_ours(self.pid)

    @property
    def returncode(self) -> int | None:
        return None  # not our child: its exit status is not ours to read

    def send_signal(self, sig: int) -> None:
        if self.pid is not None and self.alive:
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> None:
        """Signal the daemon and wait until it is gone; SIGKILL it after timeout."""
        self.launcher.stop()
        if not self.alive:
            return
        self.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive:
            self.send_signal(signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- Prometheus ---------------------------------------------------------------------------


def prometheus_config(
    scrape_configs: Sequence[Mapping[str, Any]],
    *,
    scrape_interval: str = "1s",
    scrape_timeout: str = "1s",
) -> str:
    """A Prometheus configuration file (JSON is YAML, so no YAML library is needed)."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_timeout,
            "evaluation_interval": "1m",
        },
        "scrape_configs": list(scrape_configs),
    }
    return json.dumps(config, indent=2) + "\n"


def proxied_job(
    name: str, targets: Sequence[str], proxy_port: int, **settings: Any
) -> dict[str, Any]:
    """A static scrape job whose scrapes go through the pushprox proxy."""
    return {
        "job_name": name,
        "proxy_url": f"http://127.0.0.1:{proxy_port}/",
        "static_configs": [{"targets": list(targets)}],
        **settings,
    }


def direct_job(name: str, targets: Sequence[str], **settings: Any) -> dict[str, Any]:
    """A static scrape job that Prometheus scrapes itself."""
    return {"job_name": name, "static_configs": [{"targets": list(targets)}], **settings}


class Prometheus:
    """A running Prometheus and the parts of its HTTP API the tests read."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        result = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        payload = result.json()
        if result.status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {result.status} {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector query: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by_instance(self, expr: str) -> dict[str, float]:
        """Instant query, keyed by the instance label."""
        return {
            sample["metric"].get("instance", ""): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def targets(self, job: str) -> list[dict[str, Any]]:
        """Active targets of one scrape pool, as /api/v1/targets shows them."""
        data = self.api("targets", state="active")
        return [t for t in data["activeTargets"] if t["scrapePool"] == job]

    def target(self, job: str, instance: str) -> dict[str, Any]:
        for target in self.targets(job):
            if target["labels"].get("instance") == instance:
                return target
        raise AssertionError(f"no target {instance} in job {job}")

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of every series matching the selector ever stored (not only the latest)."""
        return list(self.api("series", **{"match[]": match}))

    def metric_names(self, job: str) -> set[str]:
        """Every metric name Prometheus has stored for a job."""
        return set(self.api("label/__name__/values", **{"match[]": f'{{job="{job}"}}'}))

    def wait_up(
        self,
        job: str,
        instances: Iterable[str] | Mapping[str, float],
        *,
        timeout: float = 20.0,
        value: float = 1.0,
    ) -> dict[str, float]:
        """Wait until ``up`` of the job is ``value`` for exactly these instances.

        ``instances`` may also map each instance to its own expected value.
        """
        if isinstance(instances, Mapping):
            expected = {instance: float(up) for instance, up in instances.items()}
        else:
            expected = {instance: value for instance in instances}

        def check() -> dict[str, float] | None:
            ups = self.by_instance(f'up{{job="{job}"}}')
            return ups if ups == expected else None

        return wait_until(
            check, timeout, what=f"up{{job={job!r}}} == {expected}", watch=[self.process]
        )

    def wait_health(
        self, job: str, instance: str, health: str, *, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until a target's health ("up"/"down") in /api/v1/targets; return the target."""

        def check() -> dict[str, Any] | None:
            target = self.target(job, instance)
            return target if target["health"] == health else None

        return wait_until(
            check, timeout, what=f"{job}/{instance} health {health}", watch=[self.process]
        )


def parse_prometheus_time(stamp: str) -> datetime.datetime:
    """Parse a timestamp of /api/v1/targets (RFC 3339 with nanoseconds)."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp)


# --- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a server certificate it signed, as PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path, names: Sequence[str]) -> TLSFiles:
    """Write a CA and a server certificate for names (DNS names or IP addresses) to directory."""
    from tests.tlsfixtures import CertificateAuthority

    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority(str(directory), "pushprox e2e test CA")
    server = authority.issue("server", names, server=True, client=False)
    return TLSFiles(
        ca_cert=Path(authority.cert_path),
        server_cert=Path(server.cert),
        server_key=Path(server.key),
    )
