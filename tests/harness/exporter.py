"""Starting the test exporter (``exporter_program.py``) as a process of a test."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.processes import Process, ProcessGroup
from tests.harness.waiting import port_open, wait_for

PROGRAM = Path(__file__).resolve().with_name("exporter_program.py")


@dataclass(frozen=True)
class Page:
    """What the exporter answers on one path."""

    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    status: int = 200
    #: Send the body in these many chunks with Transfer-Encoding: chunked.
    chunks: int = 0

    def to_json(self) -> dict[str, Any]:
        """The page as the exporter process reads it."""
        return {"body": base64.b64encode(self.body).decode("ascii"),
                "headers": [list(h) for h in self.headers], "status": self.status,
                "chunks": self.chunks}


def start_exporter(
    group: ProcessGroup,
    name: str,
    *,
    pages: Mapping[str, Page] | None = None,
    info: bool = False,
    delay: float = 0.0,
    tls: tuple[str, str] | None = None,
    timeout: float = 30.0,
    address: str = "127.0.0.1",
    port: int = 0,
) -> tuple[Process, int]:
    """
    Serve ``pages`` (path → Page) and, with ``info``, a /metrics naming the exporter
    ``name``, on 127.0.0.1 from a new process ``exporter-NAME`` of ``group``; returns it
    and its port.

    The exporter binds port 0 itself and reports the port in a file, so there is no race
    for the port (unless ``port`` is given).  ``tls`` is (certificate, key) to serve HTTPS;
    ``address`` is where it listens (any 127.x.y.z works on Linux).
    """
    process_name = f"exporter-{name}"
    directory = group.directory(process_name)
    port_file = directory / "port"
    argv = [sys.executable, str(PROGRAM), str(port_file)]
    if pages:
        spec = directory / "pages.json"
        spec.write_text(json.dumps({path: page.to_json() for path, page in pages.items()}))
        argv += ["--pages", str(spec)]
    if info:
        argv += ["--name", name]
    if delay:
        argv += ["--delay", str(delay)]
    if tls is not None:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    argv += ["--address", address, "--port", str(port)]
    process = group.start(process_name, argv, cwd=directory)

    def written_port() -> int | None:
        text = port_file.read_text() if port_file.exists() else ""
        return int(text) if text.strip().isdigit() else None

    number = wait_for(written_port, timeout=timeout, what=f"{name}'s port", watch=[process])
    wait_for(lambda: port_open(number, address), timeout=timeout,
             what=f"{name} to accept connections on {number}", watch=[process])
    return process, number
