"""The proxy and the client as daemons: ``twistd --pidfile=... --logfile=...`` without ``-n``."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.harness.processes import Daemon, pid_alive
from tests.harness.prometheus import proxied_job
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_daemonized_proxy_and_client_serve_scrapes_log_them_and_stop_by_pidfile(
    stack: Stack,
) -> None:
    """Prometheus scrapes through daemons; their logs hold the scrapes; SIGTERM removes pidfiles."""
    exporter = stack.exporter("alpha")
    proxy = stack.proxy(daemon=True, extra=["--log-scrapes"])
    client = stack.client(proxy, "node1.example", [exporter.port], name="client",
                          daemon=True, extra=["--log-scrapes"])
    proxy_daemon, client_daemon = proxy.process, client.process
    assert isinstance(proxy_daemon, Daemon) and isinstance(client_daemon, Daemon)
    instance = f"node1.example:{exporter.port}"
    prometheus = stack.prometheus([proxied_job("daemons", [instance], proxy.port)])

    prometheus.wait_up("daemons", [instance])
    for daemon in (proxy_daemon, client_daemon):
        assert daemon.alive, daemon.name
        # Daemonized: a process of its own, not the launcher we started.
        assert daemon.pid != daemon.launcher.pid
        assert daemon.launcher.returncode == 0

    def logged(daemon: Daemon) -> Callable[[], bool]:
        return lambda: instance in daemon.log_text()

    for daemon in (client_daemon, proxy_daemon):
        wait_for(logged(daemon), timeout=10, what=f"a scrape of {instance} in {daemon.log_path}")
    for daemon in (client_daemon, proxy_daemon):
        stop_by_pidfile(daemon)


def stop_by_pidfile(daemon: Daemon) -> None:
    """SIGTERM the pid in the daemon's pidfile; the daemon exits and removes the pidfile."""
    pid = daemon.read_pidfile()
    assert pid is not None and pid == daemon.pid, (pid, daemon.pid)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), timeout=15, what=f"{daemon.name} (pid {pid}) gone")
    wait_for(lambda: not daemon.pidfile.exists(), timeout=5, what=f"{daemon.pidfile} removed")
