"""Child processes of the benchmark: started in their own working dirs, always stopped.

Every child (nginx, twistd, wrk's helpers, the idle-client simulator) runs in a working
directory of its own under one temp dir, with its output in ``output.log`` there, in a
session of its own, and with SIGTERM as its parent-death signal, so that nothing outlives
the benchmark, not even when the benchmark is SIGKILLed.
"""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent

# Children get a clean environment: no proxies from the caller's shell.
ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}
ENV["PYTHONUNBUFFERED"] = "1"
# twistd imports pushprox from this checkout (the header names its commit), whichever
# checkout the interpreter's editable install points to.
ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

INSTALL_HINT = "apt-get install -y --no-install-recommends nginx-light wrk"


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


def tool_path(name: str, fallback: str) -> str:
    """The path of a tool the benchmark needs (nginx, wrk), or BenchError saying how to get it."""
    path = shutil.which(name) or fallback
    if not os.path.exists(path):
        raise BenchError(f"{name} not found: {INSTALL_HINT}")
    return path


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup(nofile: int | None) -> Callable[[], None]:
    """What a child runs before exec: die with us, and raise RLIMIT_NOFILE to `nofile`."""

    def setup() -> None:
        # Die with the benchmark even if it is SIGKILLed.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if nofile:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, max(nofile, hard)))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    return setup


@dataclass
class Proc:
    """One running child, its working dir and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    workdir: Path
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id (also its session and process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        """The last `n` lines of the child's output, for error messages."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check(self) -> None:
        """Raise BenchError, with the log tail, if the child has exited."""
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"log tail:\n{self.log_tail()}"
            )


#: The checkouts whose bytecode ``compile_bytecode`` has written in this run.
_COMPILED: set[str] = set()


def compile_bytecode(env: dict[str, str]) -> None:
    """
    Write the bytecode of the checkouts on ``env``'s PYTHONPATH (their ``pushprox`` and
    ``twisted`` folders), once a run.  A child that compiled its modules as it started would
    hold memory that an installed package never takes (the compiler's, freed but kept in
    glibc's heap; pip writes the bytecode when it installs), and with
    ``PYTHONDONTWRITEBYTECODE`` set it would compile them at every start.
    """
    for entry in env.get("PYTHONPATH", "").split(os.pathsep):
        if not entry or entry in _COMPILED:
            continue
        for folder in ("pushprox", "twisted"):
            if (Path(entry) / folder).is_dir():
                compileall.compile_dir(str(Path(entry) / folder), quiet=1)
        _COMPILED.add(entry)


class Procs:
    """Starts children in their own working dirs; stops every one of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.count = 0

    def start(
        self,
        name: str,
        argv: list[str],
        nofile: int | None = None,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start `argv` as child `name`; with `pipes`, its stdin and stdout are ours."""
        compile_bytecode(ENV if env is None else env)
        self.count += 1
        wd = self.tmp / f"{self.count:02d}-{name}"
        wd.mkdir(parents=True)
        log = wd / "output.log"
        with open(log, "wb") as logf:
            popen = subprocess.Popen(
                argv,
                cwd=wd,
                env=ENV if env is None else env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else logf,
                stderr=logf if pipes else subprocess.STDOUT,
                preexec_fn=_child_setup(nofile),
                start_new_session=True,
            )
        p = Proc(name, popen, wd, log)
        self.procs.append(p)
        return p

    def stop(self, p: Proc, timeout: float = 10.0) -> None:
        """SIGTERM, after `timeout` s SIGKILL, and SIGKILL to what is left of its group."""
        if p not in self.procs:
            return  # stopped already
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: only its children
                p.popen.wait(5)
        # Leftovers of this child's own process group (e.g. nginx workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        for f in (p.popen.stdin, p.popen.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        """Stop every child still running, the last started first."""
        for p in reversed(list(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {p.name}: {e}", file=sys.stderr)


def read_tagged_line(proc: Proc, tag: str, timeout: float) -> dict[str, Any]:
    """The JSON of the first line ``TAG {json}`` that a piped child prints."""
    assert proc.popen.stdout is not None
    result: dict[str, Any] = {}
    err: list[BaseException] = []

    def reader() -> None:
        try:
            assert proc.popen.stdout is not None
            for raw in proc.popen.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith(tag + " "):
                    result.update(json.loads(line[len(tag) + 1 :]))
                    return
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise BenchError(
            f"{proc.name}: no {tag} line within {timeout}s"
            + (f" ({err[0]})" if err else "")
            + f"; log: {proc.log_tail(5)}"
        )
    return result


_used_ports: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that this run has not handed out before."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise BenchError("no free port")


def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    """Until `proc` accepts connections on 127.0.0.1:port (BenchError if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout}s")


def http_get(
    port: int, target: str, host: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """GET `target` (origin form or absolute URI = proxy form) from 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(timeout)}
        if host:
            headers["Host"] = host
        conn.request("GET", target, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()
