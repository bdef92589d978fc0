"""
A real HTTP proxy for the tests: Debian's ``tinyproxy``, in the foreground, on a free port,
logging every request line it forwards (``Request (file descriptor N): POST http://…``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import Process, ProcessGroup
from tests.harness.waiting import free_port, port_open, wait_for

TINYPROXY = Path("/usr/bin/tinyproxy")
_REQUEST_LINE = re.compile(r"Request \(file descriptor \d+\): (.*)$", re.MULTILINE)


@dataclass
class TinyProxy:
    """A running tinyproxy; ``url`` carries its credentials when it wants some."""

    port: int
    process: Process
    url: str

    def requests(self) -> list[str]:
        """The request lines it has received (method, target, version), oldest first."""
        return [line.strip() for line in _REQUEST_LINE.findall(self.log())]

    def log(self) -> str:
        """Everything it has logged."""
        return self.process.log_text()


def start_tinyproxy(group: ProcessGroup, name: str = "tinyproxy", *,
                    credentials: tuple[str, str] | None = None,
                    connect_ports: Sequence[int] = (),
                    allow: Sequence[str] = ("127.0.0.1",)) -> TinyProxy:
    """
    Start tinyproxy on a free port of 127.0.0.1; it serves clients from ``allow``, opens
    CONNECT tunnels to ``connect_ports`` only, and wants ``credentials`` (basic auth) if
    given.  Its log is the process's log, at level Info.
    """
    directory = group.directory(name)
    port = free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 600",
        "LogLevel Info",
        "MaxClients 100",
        *(f"Allow {address}" for address in allow),
        # Without any ConnectPort line tinyproxy would tunnel to every port.
        *(f"ConnectPort {connect_port}" for connect_port in connect_ports or [443]),
    ]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config = directory / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    process = group.start(name, [str(TINYPROXY), "-d", "-c", str(config)], cwd=directory)
    wait_for(lambda: port_open(port), timeout=30, what=f"{name} on port {port}",
             watch=[process])
    userinfo = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    return TinyProxy(port, process, f"http://{userinfo}127.0.0.1:{port}")
