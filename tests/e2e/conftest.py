"""Fixtures for the end-to-end tests: every process a test needs, stopped at the end.

A test asks for ``stack`` and starts what it needs through it (``stack.proxy()``,
``stack.client(...)``, ``stack.node_exporter()``, ``stack.exporter(...)``,
``stack.prometheus(...)``). Each process runs in its own directory under the test's
``tmp_path``, in its own process group, logging to a file there; all of them are stopped
when the test ends, pass or fail, and a failed test's report carries the tail of each log.

Without /usr/bin/prometheus or /usr/bin/prometheus-node-exporter the tests skip, unless
``PUSHPROX_REQUIRE_E2E=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    EXPORTER_SCRIPT,
    NODE_EXPORTER,
    NODE_EXPORTER_DISABLED,
    PROMETHEUS,
    TWISTD,
    Daemon,
    HTTPResult,
    Process,
    Prometheus,
    TLSFiles,
    free_port,
    http_get,
    make_tls_files,
    parse_metric,
    port_open,
    prometheus_config,
    subprocess_env,
    wait_until,
)

STARTUP_TIMEOUT = 30.0


def _missing_binaries() -> list[str]:
    return [
        f"{path} is missing (Debian package {package})"
        for path, package in (
            (PROMETHEUS, "prometheus"),
            (NODE_EXPORTER, "prometheus-node-exporter"),
        )
        if not os.access(path, os.X_OK)
    ]


@pytest.fixture(scope="session", autouse=True)
def _require_e2e_binaries() -> None:
    """Skip without Prometheus/node_exporter; fail instead when PUSHPROX_REQUIRE_E2E=1."""
    missing = _missing_binaries()
    if not missing:
        return
    reason = "end-to-end tests need " + "; ".join(missing)
    if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
        pytest.fail(reason + " and PUSHPROX_REQUIRE_E2E=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _twistd_plugins() -> str | None:
    """None when ``twistd pushprox-proxy`` and ``twistd pushprox-client`` run, else why not."""
    for plugin in ("pushprox-proxy", "pushprox-client"):
        argv = [str(TWISTD), plugin, "--help"]
        try:
            done = subprocess.run(
                argv, capture_output=True, env=subprocess_env(), timeout=60, check=False
            )
        except OSError as error:
            return f"{' '.join(argv)}: {error}"
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
            return (
                f"{' '.join(argv)} exited with {done.returncode} (is pushprox installed with "
                f"`pip install --config-settings editable_mode=compat -e .`?):\n{output[-2000:]}"
            )
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the log tail of every process of a failed test to its report."""
    report = yield
    stack: Stack | None = getattr(item, "_e2e_stack", None)
    if report.failed and stack is not None:
        for process in stack.processes:
            state = "running" if process.alive else f"exited with {process.returncode}"
            report.sections.append(
                (
                    f"log tail of {process.name} ({state}; {process.log_path})",
                    process.log_tail(60) or "(empty)",
                )
            )
    return report


@dataclass
class Exporter:
    """A running exporter: node_exporter or the test exporter."""

    name: str
    port: int
    process: Process


@dataclass
class Proxy:
    """A running ``twistd pushprox-proxy``."""

    port: int
    process: Process | Daemon
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> HTTPResult:
        return http_get(self.url + path)

    def clients(self) -> set[str]:
        """FQDNs listed by /clients."""
        result = self.get("/clients")
        assert result.status == 200, result
        return {target for group in result.json() for target in group["targets"]}

    def metric(self, name: str) -> float:
        """Value of one unlabelled metric of the proxy's /metrics."""
        result = self.get("/metrics")
        assert result.status == 200, result
        values = parse_metric(result.text, name)
        assert len(values) == 1, f"{name} in /metrics: {values}\n{result.text}"
        return values[0]

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.get("/-/healthy").status == 200,
            STARTUP_TIMEOUT,
            what=f"proxy /-/healthy on port {self.port}",
            watch=[self.process],
        )

    def restart(self) -> None:
        """Stop the proxy (SIGTERM) and start it again on the same port."""
        self.process.stop()
        self.process.start()
        self.wait_ready()


@dataclass
class Client:
    """A running ``twistd pushprox-client``."""

    fqdn: str
    process: Process
    proxy: Proxy


class Stack:
    """Starts the processes of one test and stops them all at its end."""

    def __init__(self, root: Path, plugins_problem: str | None) -> None:
        self.root = root
        self.processes: list[Process | Daemon] = []
        self._plugins_problem = plugins_problem

    def _require_plugins(self) -> None:
        if self._plugins_problem:
            pytest.fail(self._plugins_problem, pytrace=False)

    def start(self, name: str, argv: Sequence[str]) -> Process:
        """Start a program in its own directory root/name (names are unique per test)."""
        if any(p.name == name for p in self.processes):
            raise ValueError(f"process name {name!r} already used in this test")
        process = Process(name, argv, self.root / name)
        self.processes.append(process)
        return process.start()

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop_all(self) -> None:
        """Stop everything, newest first: SIGTERM, then SIGKILL after a grace period."""
        for process in reversed(self.processes):
            process.stop()

    # --- targets ---------------------------------------------------------------------------

    def node_exporter(self, name: str = "node_exporter") -> Exporter:
        port = free_port()
        textfile_dir = self.directory(f"{name}-textfiles")
        argv = [
            str(NODE_EXPORTER),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--collector.textfile.directory={textfile_dir}",
            *(f"--no-collector.{collector}" for collector in NODE_EXPORTER_DISABLED),
        ]
        process = self.start(name, argv)
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{port}/metrics").status == 200,
            STARTUP_TIMEOUT,
            what=f"{name} on port {port}",
            watch=[process],
        )
        return Exporter(name, port, process)

    def exporter(self, name: str, *, delay: float = 0.0, tls: TLSFiles | None = None) -> Exporter:
        """The test exporter: its metric e2e_exporter_info{name=NAME,host=...,path=...}."""
        port = free_port()
        argv = [
            sys.executable,
            str(EXPORTER_SCRIPT),
            "--port",
            str(port),
            "--name",
            name,
        ]
        if delay:
            argv += ["--delay", str(delay)]
        if tls is not None:
            argv += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
        process = self.start(f"exporter-{name}", argv)
        wait_until(
            lambda: port_open(port), STARTUP_TIMEOUT, what=f"exporter {name}", watch=[process]
        )
        return Exporter(name, port, process)

    def tls_files(self, names: Sequence[str]) -> TLSFiles:
        return make_tls_files(self.directory("tls"), names)

    # --- pushprox ---------------------------------------------------------------------------

    def proxy_argv(self, port: int, extra: Sequence[str] = ()) -> list[str]:
        return [
            str(TWISTD),
            "--pidfile=",
            "-n",
            "pushprox-proxy",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            *extra,
        ]

    def proxy(self, *, name: str = "proxy", extra: Sequence[str] = ()) -> Proxy:
        """Start a proxy in the foreground (``twistd -n``) on a free port; wait until healthy."""
        self._require_plugins()
        port = free_port()
        proxy = Proxy(port, self.start(name, self.proxy_argv(port, extra)))
        proxy.wait_ready()
        return proxy

    def client_args(
        self,
        proxy: Proxy,
        fqdn: str,
        ports: Sequence[int],
        extra: Sequence[str] = (),
    ) -> list[str]:
        """Options of ``twistd pushprox-client``: a client of proxy named fqdn, allowed ports."""
        args = [
            "--proxy-url",
            proxy.url + "/",
            "--fqdn",
            fqdn,
            "--target-host",
            "127.0.0.1",
            "--metrics-listen",
            "",
            "--retry-initial-wait",
            "1",
            "--retry-max-wait",
            "2",
        ]
        for port in ports:
            args += ["--allow-port", str(port)]
        return args + list(extra)

    def client(
        self,
        proxy: Proxy,
        fqdn: str,
        ports: Sequence[int],
        *,
        extra: Sequence[str] = (),
        wait: bool = True,
    ) -> Client:
        """Start a client in the foreground; wait until the proxy's /clients lists it."""
        self._require_plugins()
        argv = [
            str(TWISTD),
            "--pidfile=",
            "-n",
            "pushprox-client",
            *self.client_args(proxy, fqdn, ports, extra),
        ]
        client = Client(fqdn, self.start(f"client-{fqdn}", argv), proxy)
        if wait:
            self.wait_registered(client)
        return client

    def wait_registered(self, client: Client) -> None:
        wait_until(
            lambda: client.fqdn in client.proxy.clients(),
            STARTUP_TIMEOUT,
            what=f"{client.fqdn} in the proxy's /clients",
            watch=[client.process, client.proxy.process],
        )

    def daemon(self, name: str, twistd_args: Sequence[str]) -> Daemon:
        """Start ``twistd --pidfile=DIR/NAME.pid --logfile=DIR/NAME.log ARGS`` (no ``-n``)."""
        self._require_plugins()
        if any(p.name == name for p in self.processes):
            raise ValueError(f"process name {name!r} already used in this test")
        daemon = Daemon(name, twistd_args, self.directory(name), TWISTD)
        self.processes += [daemon.launcher, daemon]
        return daemon.start()

    # --- Prometheus -------------------------------------------------------------------------

    def prometheus(
        self,
        scrape_configs: Sequence[Mapping[str, Any]],
        *,
        name: str = "prometheus",
        scrape_interval: str = "1s",
        scrape_timeout: str = "1s",
    ) -> Prometheus:
        """Start Prometheus with these scrape jobs; wait until /-/ready."""
        port = free_port()
        directory = self.directory(name)
        config = directory / "prometheus.yml"
        config.write_text(
            prometheus_config(
                scrape_configs, scrape_interval=scrape_interval, scrape_timeout=scrape_timeout
            )
        )
        argv = [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=debug",
        ]
        prometheus = Prometheus(self.start(name, argv), port)
        wait_until(
            lambda: http_get(f"{prometheus.url}/-/ready").status == 200,
            STARTUP_TIMEOUT,
            what="Prometheus /-/ready",
            watch=[prometheus.process],
        )
        return prometheus


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, _twistd_plugins: str | None
) -> Iterator[Stack]:
    """The processes of this test; all stopped at its end, even when it fails."""
    stack = Stack(tmp_path, _twistd_plugins)
    request.node._e2e_stack = stack
    try:
        yield stack
    finally:
        stack.stop_all()
