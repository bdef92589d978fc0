"""Free ports on 127.0.0.1, and waiting with a deadline for what a real process does."""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")

LOCALHOST = "127.0.0.1"

_ports_handed_out: set[int] = set()


class Watched(Protocol):
    """A process whose exit ends a wait at once (see ``wait_for``)."""

    name: str

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def log_tail(self, lines: int = 40) -> str: ...


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice), never handed out twice."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def port_open(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    watch: Iterable[Watched] = (),
    describe: Callable[[], str] | None = None,
) -> T:
    """
    Call ``predicate`` until it returns something true, and return that.

    Only for what another process or a socket does: nothing in this process can call back.
    An exception from the predicate counts as "not yet" (the last one is reported on
    timeout).  If a watched process exits meanwhile, fail at once with its log tail; on
    timeout the message names ``what`` and adds ``describe()`` (e.g. every log).
    """
    watched = list(watch)
    deadline = time.monotonic() + timeout
    last_result: object = None
    last_error: str | None = None
    while True:
        for process in watched:
            if not process.alive:
                raise AssertionError(
                    f"{process.name} exited with status {process.returncode} while waiting "
                    f"for {what}\n{process.log_tail()}"
                )
        try:
            result = predicate()
        except Exception:  # "not yet"; the last one is reported on timeout
            last_error = traceback.format_exc(limit=3)
        else:
            last_error = None
            if result:
                return result
            last_result = result
        if time.monotonic() >= deadline:
            detail = f"last error:\n{last_error}" if last_error else f"last result: {last_result!r}"
            extra = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; {detail}{extra}"
            )
        time.sleep(interval)
