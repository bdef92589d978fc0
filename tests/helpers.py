"""
Helpers shared by the tests: free ports, waiting with deadlines, raw HTTP on 127.0.0.1,
real ``twistd`` processes and a small exporter process.

Nothing here knows about a particular test.  The synchronous helpers (``wait_for``,
``raw_http``, ``TwistdProcess``...) are for tests that drive real processes; the
``*_deferred``/async ones (``wait_until``, ``raw_http_request``, ``track_connections``) are for
trial tests running on the reactor.  Run as a script, this module is the exporter:
``python tests/helpers.py exporter SPEC.json`` (see ``start_exporter``).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
HERE = Path(__file__).resolve()
DATA = HERE.with_name("data")


# -- ports and deadlines --


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
    return port


def port_open(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """
    Call ``predicate`` until it returns something true and return that.

    Raises AssertionError naming ``what`` (and ``describe()``, e.g. a process log)
    after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_for_port(
    port: int,
    *,
    timeout: float = 15.0,
    host: str = LOCALHOST,
    describe: Callable[[], str] | None = None,
) -> None:
    """Wait until host:port accepts connections."""
    wait_for(lambda: port_open(port, host), timeout=timeout,
             what=f"{host}:{port} to accept connections", describe=describe)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (daemons are not our children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pidfile(path: Path) -> int | None:
    """The pid in a twistd pidfile, or None while it is missing or incomplete."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def subprocess_env() -> dict[str, str]:
    """Our environment minus HTTP proxy variables, with unbuffered Python output."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- raw HTTP messages --


@dataclass(frozen=True)
class HTTPResponse:
    """An HTTP response read off the wire, body de-chunked, nothing else decoded."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def comparable_headers(self, ignore: Iterable[bytes] = ()) -> list[tuple[bytes, bytes]]:
        """Headers with lowercased names, sorted, without those in ``ignore``."""
        skip = {name.lower() for name in ignore}
        return sorted((key.lower(), value) for key, value in self.headers
                      if key.lower() not in skip)

    @property
    def text(self) -> str:
        """The body as text, for messages in assertions."""
        return self.body.decode("utf-8", "replace")


class IncompleteMessage(Exception):
    """More bytes are needed before the message can be read."""


def _dechunk(data: bytes) -> tuple[bytes, int]:
    """Decode a chunked body; returns the body and how many bytes it took."""
    body = []
    position = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            raise IncompleteMessage()
        size = int(data[position:line_end].split(b";")[0].strip(), 16)
        position = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", position - 2)
            if trailer_end < 0:
                raise IncompleteMessage()
            return b"".join(body), trailer_end + 4
        if len(data) < position + size + 2:
            raise IncompleteMessage()
        body.append(data[position:position + size])
        position += size + 2


def parse_response(data: bytes, *, at_eof: bool = False, head_only: bool = False) -> HTTPResponse:
    """
    Read one HTTP/1.x response from the start of ``data``.

    Raises IncompleteMessage when the response is not all there yet; a body without
    Content-Length or chunking runs to the end of the connection (``at_eof``).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise IncompleteMessage()
    status_line, *lines = data[:end].split(b"\r\n")
    version, code, reason = ([*status_line.split(b" ", 2), b""])[:3]
    assert version.startswith(b"HTTP/"), f"not an HTTP response: {status_line!r}"
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    response = HTTPResponse(int(code), reason, tuple(headers), b"", False)
    rest = data[end + 4:]
    transfer = response.header(b"transfer-encoding")
    length = response.header(b"content-length")
    if head_only or response.status in (204, 304) or 100 <= response.status < 200:
        body, chunked = b"", False
    elif transfer is not None and transfer.lower() == b"chunked":
        body, _ = _dechunk(rest)
        chunked = True
    elif length is not None:
        if len(rest) < int(length):
            raise IncompleteMessage()
        body, chunked = rest[:int(length)], False
    elif at_eof:
        body, chunked = rest, False
    else:
        raise IncompleteMessage()
    return HTTPResponse(response.status, response.reason, response.headers, body, chunked)


def http_request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str | None = None,
) -> bytes:
    """
    An HTTP/1.1 request.  An absolute ``target`` makes it a proxy-form request (as
    Prometheus sends with ``proxy_url``) with the Host header taken from it.
    """
    if host is None:
        match = re.match(r"^[a-z]+://([^/?#]+)", target)
        host = match.group(1) if match else LOCALHOST
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def prometheus_headers(timeout: float = 10.0, *, gzip: bool = True) -> list[tuple[str, str]]:
    """The headers Prometheus sends with every scrape."""
    headers = [
        ("User-Agent", "Prometheus/2.53.0"),
        ("Accept", "application/openmetrics-text;version=1.0.0;q=0.5,"
                   "text/plain;version=0.0.4;q=0.4,*/*;q=0.1"),
        ("X-Prometheus-Scrape-Timeout-Seconds", f"{timeout:g}"),
    ]
    if gzip:
        headers.append(("Accept-Encoding", "gzip"))
    return headers


class RawConnection:
    """A blocking client socket that sends bytes and reads whole HTTP responses."""

    def __init__(self, port: int, *, host: str = LOCALHOST, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """Write ``data`` as is."""
        self.sock.sendall(data)

    def read_response(self, *, timeout: float = 15.0, head_only: bool = False) -> HTTPResponse:
        """Read the next whole response (its framing decides where it ends)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = parse_response(self._buffer, head_only=head_only)
            except IncompleteMessage:
                pass
            else:
                self._buffer = b""  # one response at a time, no pipelining
                return response
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no whole response within {timeout:g}s; "
                                     f"got {self._buffer[:300]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                try:
                    return parse_response(self._buffer, at_eof=True, head_only=head_only)
                except IncompleteMessage:
                    raise AssertionError(
                        f"connection closed inside a response: {self._buffer[:300]!r}"
                    ) from None
            self._buffer += data

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def raw_http(port: int, request: bytes, *, timeout: float = 15.0) -> HTTPResponse:
    """Send ``request`` on a new connection and read one response."""
    with RawConnection(port, timeout=timeout) as connection:
        connection.send(request)
        return connection.read_response(timeout=timeout)


def scrape_via_proxy(
    proxy_port: int,
    url: str,
    *,
    timeout: float = 10.0,
    headers: Sequence[tuple[str, str]] | None = None,
    read_timeout: float | None = None,
) -> HTTPResponse:
    """GET ``url`` through the proxy as Prometheus does (proxy form, its headers)."""
    request = http_request_bytes(
        "GET", url, prometheus_headers(timeout) if headers is None else headers
    )
    return raw_http(proxy_port, request, timeout=read_timeout or timeout + 10)


# -- Twisted (for trial tests running on the reactor) --


async def wait_until(
    clock: Any,
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> T:
    """Check ``predicate`` on the reactor every ``interval`` until true; fail after ``timeout``."""
    from twisted.internet.task import deferLater

    deadline = clock.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if clock.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await deferLater(clock, interval, lambda: None)


def track_connections(factory: Any) -> set[Any]:
    """The set of protocols ``factory`` builds that are still connected (kept up to date)."""
    live: set[Any] = set()
    build = factory.buildProtocol

    def build_tracked(addr: Any) -> Any:
        protocol = build(addr)
        if protocol is not None:
            live.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> Any:
                live.discard(protocol)
                return lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    factory.buildProtocol = build_tracked
    return live


def _raw_client_protocol() -> type:
    from twisted.internet.protocol import Protocol

    class RawHTTPClient(Protocol):
        """Sends one request, reads one response, closes, then reports it."""

        def __init__(self, request: bytes, done: Any) -> None:
            self._request = request
            self._done = done
            self._buffer = b""
            self._response: HTTPResponse | None = None

        def connectionMade(self) -> None:
            self.transport.write(self._request)

        def dataReceived(self, data: bytes) -> None:
            self._buffer += data
            if self._response is None:
                try:
                    self._response = parse_response(self._buffer)
                except IncompleteMessage:
                    return
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self._response is None:
                try:
                    self._response = parse_response(self._buffer, at_eof=True)
                except IncompleteMessage:
                    self._done.errback(AssertionError(
                        f"connection closed inside a response: {self._buffer[:300]!r}"))
                    return
            self._done.callback(self._response)

    return RawHTTPClient


async def raw_http_request(reactor: Any, port: int, request: bytes) -> HTTPResponse:
    """
    Send ``request`` bytes to 127.0.0.1:port and read one response, on the reactor.

    The connection is closed (and gone from the reactor) before the response is returned.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    done: Deferred[HTTPResponse] = Deferred()
    protocol = _raw_client_protocol()(request, done)
    await connectProtocol(TCP4ClientEndpoint(reactor, LOCALHOST, port), protocol)
    return await done


# -- processes --


def twistd_command() -> list[str]:
    """How to run the twistd of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("twistd")
    found = beside if beside.exists() else shutil.which("twistd")
    if found is None:
        raise RuntimeError(f"no twistd beside {sys.executable} nor on PATH")
    return [sys.executable, str(found)]


@dataclass
class ManagedProcess:
    """
    A process started by a test, stopped by it whatever happens.

    For a ``twistd`` daemon ``popen`` is only the launcher, which exits at once; the
    daemon's pid is read from ``pidfile``.
    """

    name: str
    argv: list[str]
    cwd: Path
    log_path: Path
    pidfile: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    _daemon_pid: int | None = field(default=None, repr=False)

    @property
    def daemon(self) -> bool:
        """Whether this process detaches (twistd without -n)."""
        return self.pidfile is not None

    def start(self) -> ManagedProcess:
        """Start it, its output (and for a daemon, the launcher's) going to its log."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.launcher_log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=subprocess_env(),
            )
        return self

    @property
    def launcher_log(self) -> Path:
        """Where the started process writes its stdout and stderr."""
        return self.log_path.with_suffix(".launcher.out") if self.daemon else self.log_path

    @property
    def pid(self) -> int | None:
        """The pid of the running program (the daemon's, once its pidfile is written)."""
        if self.pidfile is not None:
            pid = read_pidfile(self.pidfile)
            if pid is not None:
                self._daemon_pid = pid
            return self._daemon_pid
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        """Whether the program still runs."""
        if not self.daemon:
            return self.popen is not None and self.popen.poll() is None
        if self.popen is not None:
            self.popen.poll()  # reap the launcher
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def wait_daemonized(self, timeout: float = 20.0) -> int:
        """Wait until the launcher has exited and the daemon has written its pidfile."""
        assert self.popen is not None and self.pidfile is not None
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name}: twistd did not daemonize within "
                                 f"{timeout:g}s\n{self.log_text()}") from None
        assert code == 0, f"{self.name}: twistd launcher exited {code}\n{self.log_text()}"
        return wait_for(lambda: self.pid, timeout=timeout,
                        what=f"{self.name} to write {self.pidfile}", describe=self.log_text)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the program (only to our own pid)."""
        pid = self.pid
        if pid is not None and self.alive():
            os.kill(pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the program to exit; True if it did."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code of a non-daemon."""
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            if not self.wait_exit(timeout):
                self.signal(signal.SIGKILL)
                self.wait_exit(5.0)
        if self.daemon:
            if self.popen.poll() is None:  # a launcher that never daemonized
                self.popen.kill()
                self.popen.wait(5)
            return None
        return self.popen.wait(5)

    def log_text(self) -> str:
        """Everything the program logged so far."""
        parts = []
        for path in dict.fromkeys([self.launcher_log, self.log_path]):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)


class ProcessGroup:
    """The processes of one test: all stopped at the end, logs printed on request."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def add(self, process: ManagedProcess) -> ManagedProcess:
        """Track ``process`` (before starting it, so a failed start is cleaned up too)."""
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every process, the last started first."""
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        """Every process's log, labelled."""
        return "\n".join(
            f"----- {p.name} ({' '.join(p.argv[1:])}) -----\n{p.log_text()}"
            for p in self.processes
        )


def twistd_process(
    name: str,
    plugin: str,
    plugin_args: Sequence[str],
    *,
    cwd: Path,
    daemon: bool = False,
    twistd_args: Sequence[str] = (),
) -> ManagedProcess:
    """
    A ``twistd PLUGIN ARGS`` process (not started): ``-n --pidfile=`` in the
    foreground with its output in ``cwd/NAME.log``, or a daemon with
    ``--pidfile=cwd/NAME.pid --logfile=cwd/NAME.log``.
    """
    log_path = cwd / f"{name}.log"
    if daemon:
        pidfile: Path | None = cwd / f"{name}.pid"
        options = [f"--pidfile={pidfile}", f"--logfile={log_path}"]
    else:
        pidfile = None
        options = ["-n", "--pidfile="]
    argv = [*twistd_command(), *options, *twistd_args, plugin, *plugin_args]
    return ManagedProcess(name, argv, cwd, log_path, pidfile)


# -- the exporter: a small HTTP server in its own process --


@dataclass(frozen=True)
class Page:
    """What the exporter answers on one path."""

    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    status: int = 200
    #: Send the body in these many chunks with Transfer-Encoding: chunked.
    chunks: int = 0
    #: Seconds to wait before answering.
    delay: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The page as the exporter process reads it."""
        return {"body": base64.b64encode(self.body).decode("ascii"),
                "headers": [list(h) for h in self.headers], "status": self.status,
                "chunks": self.chunks, "delay": self.delay}


def start_exporter(
    pages: Mapping[str, Page], directory: Path, group: ProcessGroup, *, timeout: float = 15.0
) -> tuple[ManagedProcess, int]:
    """
    Serve ``pages`` (path → Page) on 127.0.0.1 from a new process; returns it and its port.

    The exporter binds port 0 itself and reports the port in a file, so there is no
    race for the port.
    """
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / "pages.json"
    spec.write_text(json.dumps({path: page.to_json() for path, page in pages.items()}))
    port_file = directory / "port"
    process = group.add(ManagedProcess(
        "exporter", [sys.executable, str(HERE), "exporter", str(spec), str(port_file)],
        directory, directory / "exporter.log",
    ))
    process.start()

    def port() -> int | None:
        if not process.alive():
            raise AssertionError(f"exporter exited:\n{process.log_text()}")
        text = port_file.read_text() if port_file.exists() else ""
        return int(text) if text.strip().isdigit() else None

    number = wait_for(port, timeout=timeout, what="the exporter's port",
                      describe=process.log_text)
    wait_for_port(number, timeout=timeout, describe=process.log_text)
    return process, number


def _serve_exporter(spec_path: str, port_path: str) -> None:
    pages = {path: {**page, "body": base64.b64decode(page["body"])}
             for path, page in json.loads(Path(spec_path).read_text()).items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            page = pages.get(self.path)
            if page is None:
                body = f"no page {self.path}\n".encode()
                self.send_response(404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if page["delay"]:
                time.sleep(page["delay"])
            body = page["body"]
            self.send_response(page["status"])
            for name, value in page["headers"]:
                self.send_header(name, value)
            if page["chunks"]:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                size = -(-len(body) // page["chunks"])
                for start in range(0, len(body), size):
                    piece = body[start:start + size]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"exporter: {self.address_string()} {format % args}\n")

    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
    server.daemon_threads = True
    temporary = Path(port_path + ".tmp")
    temporary.write_text(str(server.server_address[1]))
    temporary.rename(port_path)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["exporter"] and len(sys.argv) == 4:
        _serve_exporter(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} exporter PAGES.json PORT_FILE")
