"""The proxy and the client as daemons: ``twistd --pidfile=... --logfile=...`` without ``-n``."""

from __future__ import annotations

import os
import signal

import pytest

from .conftest import Proxy, Stack
from .harness import Daemon, free_port, pid_alive, proxied_job, wait_until

pytestmark = pytest.mark.e2e


def test_daemonized_proxy_and_client_serve_scrapes_log_them_and_stop_by_pidfile(
    stack: Stack,
) -> None:
    """Prometheus scrapes through daemons; their logs hold the scrapes; SIGTERM removes pidfiles."""
    exporter = stack.exporter("alpha")
    port = free_port()
    proxy_daemon = stack.daemon(
        "proxy",
        ["pushprox-proxy", "--port", f"tcp:{port}:interface=127.0.0.1", "--log-scrapes"],
    )
    proxy = Proxy(port, proxy_daemon)
    proxy.wait_ready()
    client_daemon = stack.daemon(
        "client",
        [
            "pushprox-client",
            *stack.client_args(proxy, "node1.example", [exporter.port]),
            "--log-scrapes",
        ],
    )
    instance = f"node1.example:{exporter.port}"
    prometheus = stack.prometheus([proxied_job("daemons", [instance], proxy.port)])

    prometheus.wait_up("daemons", [instance])
    for daemon in (proxy_daemon, client_daemon):
        assert daemon.alive, daemon.name
        # Daemonized: a process of its own, not the launcher we started.
        assert daemon.pid != daemon.launcher.pid
        assert daemon.launcher.returncode == 0
    wait_until(
        lambda: instance in client_daemon.log_text(),
        10,
        what=f"a scrape of {instance} in {client_daemon.log_path}",
    )
    wait_until(
        lambda: instance in proxy_daemon.log_text(),
        10,
        what=f"a scrape of {instance} in {proxy_daemon.log_path}",
    )

    for daemon in (client_daemon, proxy_daemon):
        stop_by_pidfile(daemon)


def stop_by_pidfile(daemon: Daemon) -> None:
    """SIGTERM the pid in the daemon's pidfile; the daemon exits and removes the pidfile."""
    pid = daemon.read_pidfile()
    assert pid is not None and pid == daemon.pid, (pid, daemon.pid)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 15, what=f"{daemon.name} (pid {pid}) gone")
    wait_until(lambda: not daemon.pidfile.exists(), 5, what=f"{daemon.pidfile} removed")
