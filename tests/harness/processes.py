"""Programs a test starts: in the foreground or as ``twistd`` daemons, always stopped."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pushprox
from tests.harness.waiting import wait_for

#: Environment variables that would send our HTTP requests elsewhere.
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})
#: The checkout the tests come from: its README, Containerfile and deployment files.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: Where the pushprox under test lives: the virtualenv's site-packages when it is installed
#: (as CI tests it), the checkout when it runs from the tree.
PACKAGE_ROOT = Path(pushprox.__file__).resolve().parent.parent


def from_the_tree() -> bool:
    """Whether the pushprox under test is the checkout's own tree (not an installed copy)."""
    return PACKAGE_ROOT == SOURCE_ROOT


def subprocess_env() -> dict[str, str]:
    """
    Our environment minus HTTP proxy variables, with unbuffered Python output. When the
    tests run from the tree, the tree comes first on the path of the programs they start
    (not another copy installed elsewhere); when they test an installed pushprox, the
    programs find the same one, and nothing of the checkout is put on their path.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    if from_the_tree():
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return env


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (daemons are not our children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    """The command line of process ``pid``, or [] once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def twistd_command() -> list[str]:
    """How to run the twistd of the interpreter running the tests (a virtualenv's own)."""
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if found is None:
        raise RuntimeError(f"no twistd beside {sys.executable} nor on PATH")
    return [sys.executable, found]


def twistd_argv(plugin: str, args: Sequence[str]) -> list[str]:
    """``twistd -n --pidfile= PLUGIN ARGS``: in the foreground, logging to stdout."""
    return [*twistd_command(), "--pidfile=", "-n", plugin, *args]


class _Logged:
    """Something that writes a log file."""

    name: str
    log_path: Path

    def log_text(self) -> str:
        """Everything logged so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, under a line naming it."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- {self.log_path} ---\n{tail}"


class Process(_Logged):
    """One program in its own directory and session, its output appended to NAME.log."""

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
        #: How many times it was started.
        self.starts = 0

    def start(self) -> Process:
        """Start (or start again) the program."""
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
        """The pid of the running program."""
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether the program runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status (minus the signal that ended it), None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the program while it runs."""
        if self.alive:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the program to exit; whether it did."""
        assert self.popen is not None, f"{self.name} was never started"
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> int | None:
        """Signal the whole session, wait, SIGKILL what is left; return the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal_group(sig)
            if not self.wait_exit(timeout):
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout)
            # Children that outlived the session leader.
            self._signal_group(signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the session: the program gets no chance to say goodbye."""
        return self.stop(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Process {self.name} {state}>"


class Daemon(_Logged):
    """
    A ``twistd`` program run as a daemon (no ``-n``): found and stopped by its pidfile.

    The launcher (the ``twistd`` we start) exits once the daemon is up; the daemon is not
    our child and has its own session, so it is signalled by the pid in its pidfile, and
    only while that pid's command line still names our pidfile.
    """

    def __init__(self, name: str, plugin: str, args: Sequence[str], cwd: Path) -> None:
        self.name = name
        self.cwd = cwd
        self.pidfile = cwd / f"{name}.pid"
        self.log_path = cwd / f"{name}.log"
        self.launcher = Process(
            f"{name}-launcher",
            [*twistd_command(), f"--pidfile={self.pidfile}", f"--logfile={self.log_path}",
             plugin, *args],
            cwd,
        )
        self.pid: int | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> Daemon:
        """Start the daemon; return once its launcher exited 0 and its pidfile names it."""
        self.launcher.start()
        if not self.launcher.wait_exit(timeout):
            self.launcher.kill()
            raise AssertionError(
                f"{self.name}: twistd did not daemonize within {timeout:g}s\n"
                + self.launcher.log_tail()
            )
        status = self.launcher.returncode
        if status != 0:
            raise AssertionError(
                f"{self.name}: twistd exited with {status}\n{self.launcher.log_tail()}\n"
                f"{self.log_tail()}"
            )
        self.pid = wait_for(self.read_pidfile, timeout=10,
                            what=f"{self.name} to write {self.pidfile}")
        self.starts += 1
        return self

    def read_pidfile(self) -> int | None:
        """The pid in the pidfile, or None while it is missing or incomplete."""
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        """Whether the daemon runs (and its pid was not reused by another program)."""
        pid = self.pid
        return (pid is not None and pid_alive(pid)
                and any(str(self.pidfile) in arg for arg in pid_cmdline(pid)))

    @property
    def returncode(self) -> int | None:
        """Always None: the daemon is not our child, its exit status is not ours to read."""
        return None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon while it runs."""
        if self.pid is not None and self.alive:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the daemon to exit; whether it did."""
        try:
            wait_for(lambda: not self.alive, timeout=timeout, what=f"{self.name} to exit")
        except AssertionError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10.0) -> None:
        """Signal the daemon and wait until it is gone; SIGKILL it after ``timeout``."""
        self.launcher.stop()
        self.send_signal(sig)
        if not self.wait_exit(timeout):
            self.send_signal(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the daemon: it gets no chance to say goodbye (nor to remove its pidfile)."""
        self.stop(signal.SIGKILL)


class ProcessGroup:
    """The programs of one test, each in a directory of its own under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[Process | Daemon] = []
        self._final_logs: list[tuple[str, str]] | None = None

    def directory(self, name: str) -> Path:
        """``root/name``, created."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _claim(self, name: str) -> None:
        if any(p.name == name for p in self.processes):
            raise ValueError(f"process name {name!r} already used in this test")

    def start(self, name: str, argv: Sequence[str | Path], *, cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> Process:
        """Start a program in ``cwd`` (``root/name`` by default), ``env`` added to ours."""
        self._claim(name)
        process = Process(name, argv, cwd or self.root / name,
                          env=None if env is None else {**subprocess_env(), **env})
        self.processes.append(process)
        return process.start()

    def daemon(self, name: str, plugin: str, args: Sequence[str], *,
               cwd: Path | None = None) -> Daemon:
        """Start ``twistd --pidfile=CWD/NAME.pid --logfile=CWD/NAME.log PLUGIN ARGS``."""
        self._claim(name)
        daemon = Daemon(name, plugin, args, cwd or self.directory(name))
        self.processes += [daemon.launcher, daemon]
        return daemon.start()

    def forget(self, process: Process | Daemon) -> None:
        """Stop tracking a program that has exited (its name may be used again)."""
        assert not process.alive, process
        self.processes.remove(process)
        if isinstance(process, Daemon):
            self.processes.remove(process.launcher)

    def stop_all(self) -> None:
        """
        Stop everything, newest first: SIGTERM, then SIGKILL after a grace period.

        Every log is read once more then, so that ``log_sections`` still tells what the
        programs said after their directory is removed.
        """
        for process in reversed(self.processes):
            process.stop()
        self._final_logs = self._read_logs()

    def log_sections(self) -> list[tuple[str, str]]:
        """(title, log tail) of every program, for the report of a failed test."""
        return self._final_logs if self._final_logs is not None else self._read_logs()

    def _read_logs(self) -> list[tuple[str, str]]:
        sections = []
        for process in self.processes:
            state = "running" if process.alive else f"exited with {process.returncode}"
            sections.append((f"log tail of {process.name} ({state})", process.log_tail(60)))
        return sections
