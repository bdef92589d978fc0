#!/usr/bin/env python3
"""pushprox benchmark: scrapes through pushprox vs. directly against nginx.

    python bench/run.py [--quick] [--profile DIR] [--keep] [--baseline REV]

Starts (all on 127.0.0.1, ports chosen free, each process in its own working
directory under one temp dir, everything stopped at the end, also on Ctrl-C):

- nginx (Debian's), its own generated config, serving static exposition-like pages
  /1k, /57k and /10m: the target, fast enough not to be the bottleneck;
- `twistd -n pushprox-proxy` and `twistd -n pushprox-client` as real processes;
- wrk (load), curl (10 MB page), bench/idle_clients.py (10,000 idle polls).

Prints one Markdown report and writes it to bench/results.md (see bench/README.md
for what each row means).  The proxied rows need the pushprox twistd plugins; when
they are missing or fail, the direct rows are still measured and the report says
exactly what failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
TWISTD = str(VENV_BIN / "twistd")
PYSPY = str(VENV_BIN / "py-spy")
LUA = str(BENCH / "proxy_form.lua")
NGINX_TEMPLATE = BENCH / "nginx.conf.template"
IDLE_SIM = str(BENCH / "idle_clients.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Page name -> size in bytes.  "10m" is 10 MB (decimal): a whole serialized push of
# it (status line + headers + body) stays under a 10 MiB push-size limit.
PAGES = {"1k": 1024, "57k": 57 * 1024, "10m": 10 * 1000 * 1000}
FQDN = "bench.example"
BASELINE_FQDN = "baseline.example"
HIGH_NOFILE = 65536
MEMORY_MAX_SECONDS = 1200  # bound on the client memory section's load

# Children get a clean environment: no proxies from the caller's shell.
ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}
ENV["PYTHONUNBUFFERED"] = "1"


@dataclass
class Mode:
    quick: bool
    wrk_seconds: int
    warmup_seconds: int
    big_repeats: int
    idle_n: int
    idle_latency_seconds: int
    mem_scrapes: int
    quiet_wait: float = 15.0

    @classmethod
    def make(cls, quick: bool, idle_n: int | None, scrapes: int | None) -> Mode:
        # wrk s, warm-up s, 10 MB repeats, idle clients, idle latency s, scrapes
        args = (3, 1, 3, 10000, 3, 10000) if quick else (10, 1, 7, 10000, 5, 100000)
        m = cls(quick, *args)
        if idle_n is not None:
            m.idle_n = idle_n
        if scrapes is not None:
            m.mem_scrapes = scrapes
        return m


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(d))
    return out


class RssSampler:
    """Samples VmRSS of some pids every few ms in a thread; keeps the peaks."""

    def __init__(self, pids: dict[str, int], interval: float = 0.003) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = {k: 0 for k in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, pid in self.pids.items():
                with contextlib.suppress(OSError, BenchError, ValueError):
                    self.peak[k] = max(self.peak[k], rss_kb(pid))
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup(nofile: int | None) -> Callable[[], None]:
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
    name: str
    popen: subprocess.Popen[bytes]
    workdir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"log tail:\n{self.log_tail()}"
            )


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
        for p in reversed(list(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {p.name}: {e}", file=sys.stderr)


_used_ports: set[int] = set()


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise BenchError("no free port")


def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
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


# --------------------------------------------------------------------------- target


def exposition_page(size: int) -> bytes:
    """Text exposition format, exactly `size` bytes."""
    out: list[str] = []
    n = 0
    i = 0
    while n < size:
        name = f"bench_series_{i // 10}"
        if i % 10 == 0:
            chunk = (
                f"# HELP {name} Synthetic series for the pushprox benchmark.\n# TYPE {name} gauge\n"
            )
            out.append(chunk)
            n += len(chunk)
        chunk = f'{name}{{instance="node-{i % 97}",job="bench",shard="{i % 10}"}} {i * 1.25:.2f}\n'
        out.append(chunk)
        n += len(chunk)
        i += 1
    text = "".join(out).encode()[:size]
    text = text[: text.rfind(b"\n") + 1]
    rest = size - len(text)
    if rest == 1:
        text += b"\n"
    elif rest >= 2:
        text += b"#" + b" " * (rest - 2) + b"\n"
    assert len(text) == size
    return text


def start_nginx(procs: Procs, tmp: Path) -> tuple[Proc, int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise BenchError(
            "nginx not found: apt-get install -y --no-install-recommends nginx-light wrk"
        )
    prefix = tmp / "nginx"
    root = prefix / "html"
    root.mkdir(parents=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True)
    for name, size in PAGES.items():
        (root / name).write_bytes(exposition_page(size))
    port = free_port()
    conf = (
        NGINX_TEMPLATE.read_text()
        .replace("@PREFIX@", str(prefix))
        .replace("@ROOT@", str(root))
        .replace("@PORT@", str(port))
    )
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    p = procs.start("nginx", [nginx, "-c", str(conf_path), "-p", str(prefix)], nofile=16384)
    wait_port(port, p)
    status, body = http_get(port, "/1k")
    if status != 200 or len(body) != PAGES["1k"]:
        raise BenchError(f"nginx answered {status} with {len(body)} bytes for /1k")
    return p, port


# --------------------------------------------------------------------------- pushprox


def plugin_error(plugin: str) -> str | None:
    """None when `twistd PLUGIN --help` works, else why not."""
    if not os.path.exists(TWISTD):
        return f"{TWISTD} does not exist"
    try:
        r = subprocess.run(
            [TWISTD, plugin, "--help"],
            cwd=tempfile.gettempdir(),
            env=ENV,
            capture_output=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return f"`twistd {plugin} --help` did not finish in 120 s"
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-3:]
        return f"`twistd {plugin} --help` exited {r.returncode}: " + " / ".join(
            t.strip() for t in tail
        )
    return None


def start_proxy(
    procs: Procs, name: str = "proxy", env: dict[str, str] | None = None
) -> tuple[Proc, int]:
    port = free_port()
    p = procs.start(
        name,
        [TWISTD, "--pidfile=", "-n", "pushprox-proxy", "--port", f"tcp:{port}:interface=127.0.0.1"],
        nofile=HIGH_NOFILE,
        env=env,
    )
    wait_port(port, p, timeout=60)
    return p, port


def start_client(
    procs: Procs, proxy_port: int, nginx_port: int, fqdn: str, env: dict[str, str] | None = None
) -> Proc:
    argv = [
        TWISTD, "--pidfile=", "-n", "pushprox-client",
        "--proxy-url", f"http://127.0.0.1:{proxy_port}/",
        "--fqdn", fqdn,
        "--target-host", "127.0.0.1",
        "--metrics-listen", "",
        "--allow-port", str(nginx_port),
    ]  # fmt: skip
    for page in PAGES:
        argv += ["--allow-path", f"/{page}"]
    return procs.start(f"client-{fqdn}", argv, nofile=HIGH_NOFILE, env=env)


def scrape_uri(fqdn: str, nginx_port: int, page: str) -> str:
    return f"http://{fqdn}:{nginx_port}/{page}"


def wait_scrape_ok(
    proxy: Proc, proxy_port: int, client: Proc, fqdn: str, nginx_port: int, timeout: float = 60.0
) -> None:
    """Until a proxied scrape of /1k returns the page (the client has polled)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        proxy.check()
        client.check()
        try:
            status, body = http_get(
                proxy_port, scrape_uri(fqdn, nginx_port, "1k"), f"{fqdn}:{nginx_port}", 5.0
            )
            if status == 200 and body == exposition_page(PAGES["1k"]):
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise BenchError(
        f"no successful proxied scrape of {fqdn} within {timeout}s; last answer: {last}\n"
        f"proxy log tail:\n{proxy.log_tail()}\nclient log tail:\n{client.log_tail()}"
    )


def registered_clients(proxy_port: int) -> list[str] | None:
    """FQDNs listed by GET /clients, or None when that does not work."""
    try:
        status, body = http_get(proxy_port, "/clients", timeout=30.0)
        if status != 200:
            return None
        groups = json.loads(body)
        return [t for g in groups for t in g.get("targets", [])]
    except (OSError, http.client.HTTPException, ValueError, AttributeError, TypeError):
        return None


def wait_registered(proxy_port: int, fqdn: str, client: Proc, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.check()
        names = registered_clients(proxy_port)
        if names is None:
            return False
        if any(n.split(":")[0] == fqdn for n in names):
            return True
        time.sleep(0.1)
    return False


def wait_rss_stable(pid: int, settle: float = 1.0, timeout: float = 30.0) -> int:
    """RSS once it has changed by < 1 % over `settle` seconds."""
    deadline = time.monotonic() + timeout
    prev = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(settle)
        cur = rss_kb(pid)
        if abs(cur - prev) <= max(64, prev // 100):
            return cur
        prev = cur
    return prev


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    cpu_ms: dict[str, float]  # process name -> CPU ms during the run
    nginx_conns: int | None = None  # connections nginx accepted during the run
    nginx_reqs: int | None = None  # requests nginx served during the run (incl. status)
    other_cores: float | None = None  # CPU used meanwhile by processes not ours, in cores

    def per_req(self, name: str) -> float | None:
        if name not in self.cpu_ms or not self.requests:
            return None
        return self.cpu_ms[name] / self.requests

    def nginx_text(self) -> str:
        if self.nginx_conns is None or self.nginx_reqs is None or not self.requests:
            return "-"
        return f"{self.nginx_conns / self.requests:.3f} / {self.nginx_reqs / self.requests:.3f}"

    def busy_text(self) -> str:
        if not self.seconds or "proxy" not in self.cpu_ms or "client" not in self.cpu_ms:
            return "-"
        p, c = (self.cpu_ms[k] / self.seconds / 10 for k in ("proxy", "client"))
        return f"{p:.0f} / {c:.0f}"

    def error_text(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return ", ".join(f"{k} {v}" for k, v in bad.items()) or "0"


NGINX_PORT = 0  # set once nginx runs; its /nginx_status is read around each wrk run


def nginx_counters() -> tuple[int, int] | None:
    """(accepted connections, requests) from nginx's stub_status."""
    if not NGINX_PORT:
        return None
    try:
        status, body = http_get(NGINX_PORT, "/nginx_status", timeout=5.0)
        m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", body)
        if status != 200 or not m:
            return None
        return int(m.group(1)), int(m.group(3))
    except (OSError, http.client.HTTPException):
        return None


def machine_busy_ticks() -> int:
    """user + nice + system time of all CPUs, from /proc/stat (in clock ticks)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def own_cpu_seconds() -> float:
    """CPU of this process and of its children waited for so far (wrk, curl, ...)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def wrk_path() -> str:
    w = shutil.which("wrk") or "/usr/bin/wrk"
    if not os.path.exists(w):
        raise BenchError(
            "wrk not found: apt-get install -y --no-install-recommends nginx-light wrk"
        )
    return w


def run_wrk(
    port: int,
    conns: int,
    seconds: int,
    watch: dict[str, list[int]],
    proxy_uri: str = "",
    path: str = "/",
) -> LoadResult:
    """wrk -t1 -cN -dS against http://127.0.0.1:port/path, or in proxy form for proxy_uri.

    Also CPU time of the `watch`ed processes around the run."""
    env = dict(ENV, PUSHPROX_BENCH_URI=proxy_uri)
    argv = [
        wrk_path(), "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s",
        "-s", LUA, f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    ng0 = nginx_counters()
    before = {k: sum(cpu_ticks(p) for p in pids) for k, pids in watch.items()}
    busy0, own0, t0 = machine_busy_ticks(), own_cpu_seconds(), time.monotonic()
    try:
        r = subprocess.run(
            argv, env=env, capture_output=True, timeout=seconds + 60, cwd=tempfile.gettempdir()
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish within {seconds + 60}s") from e
    after = {k: sum(cpu_ticks(p) for p in pids) for k, pids in watch.items()}
    busy1, own1, t1 = machine_busy_ticks(), own_cpu_seconds(), time.monotonic()
    ng1 = nginx_counters()
    out = r.stdout.decode(errors="replace")
    m = re.search(r"^BENCH-JSON (\{.*\})$", out, re.M)
    if r.returncode != 0 or not m:
        raise BenchError(f"wrk failed ({r.returncode}): {out[-500:]} {r.stderr.decode()[-500:]}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    return LoadResult(
        requests=d["requests"],
        seconds=secs,
        rate=d["requests"] / secs if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        errors={
            "non-2xx": d["err_status"],
            "timeout": d["err_timeout"],
            "connect": d["err_connect"],
            "read": d["err_read"],
            "write": d["err_write"],
        },
        cpu_ms={k: (after[k] - before[k]) * 1000 / CLK_TCK for k in watch},
        # - 1: the status request of ng0 itself
        nginx_conns=ng1[0] - ng0[0] - 1 if ng0 and ng1 else None,
        nginx_reqs=ng1[1] - ng0[1] - 1 if ng0 and ng1 else None,
        other_cores=max(
            0.0,
            ((busy1 - busy0) - sum(after[k] - before[k] for k in watch)) / CLK_TCK - (own1 - own0),
        )
        / (t1 - t0),
    )


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    mode: Mode
    header: list[str] = field(default_factory=list)
    throughput: list[list[str]] = field(default_factory=list)
    big: list[list[str]] = field(default_factory=list)
    idle: list[list[str]] = field(default_factory=list)
    client_mem: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    interrupted: bool = False

    def note(self, text: str) -> None:
        print(f"NOTE: {text}", file=sys.stderr, flush=True)
        self.notes.append(text)

    def render(self) -> str:
        m = self.mode
        lines = [f"## pushprox benchmark ({'quick' if m.quick else 'full'} run)", ""]
        if self.interrupted:
            lines += ["**Interrupted: partial results.**", ""]
        lines += [f"- {h}" for h in self.header] + [""]
        lines += [
            f"### Scrapes through pushprox vs. directly (wrk -t1, {m.wrk_seconds} s per row)",
            "",
        ]
        lines += table(
            ["page", "conns", "path", "scrapes/s", "p50 ms", "p99 ms",
             "proxy CPU ms/scrape", "client CPU ms/scrape", "nginx CPU ms/req",
             "nginx conns / reqs per scrape", "errors", "proxy / client busy, % of a core",
             "other load, cores"],
            self.throughput,
        )  # fmt: skip
        lines += ["", f"### One 10 MB page ({PAGES['10m']:,} bytes, curl, median of "
                  f"{m.big_repeats})", ""]  # fmt: skip
        lines += table(
            ["path", "median s", "min..max s", "MB/s",
             "proxy peak RSS growth MB", "client peak RSS growth MB"],
            self.big,
        )  # fmt: skip
        lines += ["", f"### {m.idle_n:,} idle clients (held long polls)", ""]
        lines += table(["measure", "value"], self.idle)
        lines += ["", "### Client process memory", ""]
        lines += table(["measure", "value"], self.client_mem)
        if self.notes:
            lines += ["", "### Notes", "", *(f"- {n}" for n in self.notes)]
        if self.profile:
            lines += ["", "### Profile (py-spy)", "", *self.profile]
        return "\n".join(lines) + "\n"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        rows = [["not measured"] + [""] * (len(head) - 1)]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def mb(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def machine_header(mode: Mode) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    nginx_v = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True
    ).stderr.strip()
    try:
        wrk_v = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True).stdout
        wrk_v = wrk_v.splitlines()[0].split(" Copyright")[0]
    except (BenchError, IndexError, OSError):
        wrk_v = "wrk not found"
    try:
        from importlib.metadata import version

        tw = version("twisted")
        tq = version("treq")
    except Exception:
        tw = tq = "?"
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "pushprox", "twisted"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    sizes = ", ".join(f"/{k} = {v:,} B" for k, v in PAGES.items())
    return [
        f"Machine: `nproc` = {nproc}, CPU: {cpu}, Linux {platform.release()}",
        f"Target: {nginx_v.replace('nginx version: ', '')} (Debian nginx-light), "
        f"1 worker, keepalive, access_log off, static pages {sizes}",
        f"Load: {wrk_v}, one thread, keep-alive connections; proxied requests in proxy "
        f"form (`GET http://{FQDN}:PORT/1k`) via bench/proxy_form.lua",
        f"pushprox: commit {rev or '?'}{' + uncommitted changes' if dirty else ''}, "
        f"Python {platform.python_version()}, Twisted {tw}, treq {tq}; "
        "proxy and client as `twistd -n` processes",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "CPU ms per scrape = (utime+stime from /proc/PID/stat after - before) / "
        "requests completed by wrk",
    ]


# --------------------------------------------------------------------------- sections


@dataclass
class World:
    procs: Procs
    report: Report
    mode: Mode
    nginx: Proc
    nginx_port: int
    nginx_pids: list[int]
    proxied_error: str | None = None  # why proxied measurements cannot run
    proxy_error: str | None = None  # why the proxy alone cannot run
    client_error: str | None = None  # why the client cannot run
    proxy: Proc | None = None
    proxy_port: int = 0
    client: Proc | None = None
    #: --baseline: the same pair run from another commit's checkout, for before/after rows.
    baseline_rev: str | None = None
    baseline_proxy: Proc | None = None
    baseline_proxy_port: int = 0
    baseline_client: Proc | None = None

    def watch(self, baseline: bool = False) -> dict[str, list[int]]:
        w = {"nginx": self.nginx_pids}
        proxy, client = ((self.baseline_proxy, self.baseline_client) if baseline
                         else (self.proxy, self.client))
        if proxy and client:
            w["proxy"] = [proxy.pid]
            w["client"] = [client.pid]
        return w


def setup_pushprox(w: World) -> None:
    try:
        w.proxy, w.proxy_port = start_proxy(w.procs)
        w.client = start_client(w.procs, w.proxy_port, w.nginx_port, FQDN)
        wait_scrape_ok(w.proxy, w.proxy_port, w.client, FQDN, w.nginx_port)
    except BenchError as e:
        w.proxied_error = f"pushprox setup failed: {e}"
        w.report.note(w.proxied_error)


def setup_baseline(w: World, checkout: Path) -> None:
    """Start a second proxy and client that import pushprox from ``checkout``."""
    env = dict(ENV, PYTHONPATH=str(checkout))
    try:
        w.baseline_proxy, w.baseline_proxy_port = start_proxy(w.procs, "baseline-proxy", env)
        w.baseline_client = start_client(w.procs, w.baseline_proxy_port, w.nginx_port,
                                         BASELINE_FQDN, env)
        wait_scrape_ok(w.baseline_proxy, w.baseline_proxy_port, w.baseline_client,
                       BASELINE_FQDN, w.nginx_port)
    except BenchError as e:
        w.report.note(f"baseline {w.baseline_rev} setup failed: {e}")
        w.baseline_proxy = w.baseline_client = None


def wait_quiet(w: World, what: str) -> None:
    """Wait (at most --quiet-wait s) until other processes use < 0.25 cores."""
    deadline = time.monotonic() + w.mode.quiet_wait
    pids = [p for ps in w.watch().values() for p in ps]
    load = 0.0
    while True:
        b0, o0, c0, t0 = (
            machine_busy_ticks(),
            own_cpu_seconds(),
            sum(map(cpu_ticks, pids)),
            time.monotonic(),
        )
        time.sleep(1.0)
        b1, o1, c1, t1 = (
            machine_busy_ticks(),
            own_cpu_seconds(),
            sum(map(cpu_ticks, pids)),
            time.monotonic(),
        )
        load = ((b1 - b0) - (c1 - c0)) / CLK_TCK - (o1 - o0)
        load /= t1 - t0
        if load < 0.25 or time.monotonic() >= deadline:
            break
    if load >= 0.25:
        print(f"  {what}: other processes still use {load:.2f} cores, measuring anyway",
              file=sys.stderr, flush=True)  # fmt: skip


def section_throughput(w: World) -> None:
    m = w.mode
    for page in ("1k", "57k"):
        uri = scrape_uri(FQDN, w.nginx_port, page)
        for path in ("direct", "pushprox"):  # warm-up: connections, pools, caches
            with contextlib.suppress(BenchError, OSError):
                if path == "direct":
                    run_wrk(w.nginx_port, 8, m.warmup_seconds, {}, path=f"/{page}")
                elif not w.proxied_error:
                    run_wrk(w.proxy_port, 8, m.warmup_seconds, {}, uri)
        baseline_uri = scrape_uri(BASELINE_FQDN, w.nginx_port, page)
        if w.baseline_proxy is not None:
            with contextlib.suppress(BenchError, OSError):
                run_wrk(w.baseline_proxy_port, 8, m.warmup_seconds, {}, baseline_uri)
        paths = ["direct", "pushprox"]
        if w.baseline_proxy is not None:
            paths.append(f"baseline {w.baseline_rev}")
        for conns in (1, 8):
            for path in paths:
                row = [page, str(conns), path]
                if path.startswith("baseline"):
                    wait_quiet(w, f"{page} c{conns} {path}")
                    try:
                        r = run_wrk(w.baseline_proxy_port, conns, m.wrk_seconds,
                                    w.watch(baseline=True), baseline_uri)
                    except (BenchError, OSError) as e:
                        w.report.note(f"{page} c{conns} {path}: {e}")
                        continue
                    w.report.throughput.append([
                        *row, fmt(r.rate, 0), fmt(r.p50_ms), fmt(r.p99_ms),
                        fmt(r.per_req("proxy"), 3), fmt(r.per_req("client"), 3),
                        fmt(r.per_req("nginx"), 3), r.nginx_text(), r.error_text(),
                        r.busy_text(), fmt(r.other_cores, 2),
                    ])  # fmt: skip
                    print(f"  {page} c{conns} {path}: {r.rate:.0f}/s p50 {r.p50_ms:.2f} ms",
                          file=sys.stderr, flush=True)  # fmt: skip
                    continue
                if path == "pushprox" and w.proxied_error:
                    w.report.throughput.append([*row, "not run", *["-"] * 6, "see notes", "-", "-"])
                    continue
                wait_quiet(w, f"{page} c{conns} {path}")
                try:
                    if path == "direct":
                        r = run_wrk(w.nginx_port, conns, m.wrk_seconds, w.watch(), path=f"/{page}")
                    else:
                        assert w.proxy and w.client
                        r = run_wrk(w.proxy_port, conns, m.wrk_seconds, w.watch(), uri)
                        w.proxy.check()
                        w.client.check()
                except (BenchError, OSError) as e:
                    w.report.throughput.append([*row, "failed", *["-"] * 6, "see notes", "-", "-"])
                    w.report.note(f"{page} c{conns} {path}: {e}")
                    continue
                direct = path == "direct"
                w.report.throughput.append(
                    [
                        *row,
                        fmt(r.rate, 0),
                        fmt(r.p50_ms),
                        fmt(r.p99_ms),
                        "-" if direct else fmt(r.per_req("proxy"), 3),
                        "-" if direct else fmt(r.per_req("client"), 3),
                        fmt(r.per_req("nginx"), 3),
                        r.nginx_text(),
                        r.error_text(),
                        "-" if direct else r.busy_text(),
                        fmt(r.other_cores, 2),
                    ]
                )
                print(f"  {page} c{conns} {path}: {r.rate:.0f}/s p50 {r.p50_ms:.2f} ms "
                      f"cpu {r.cpu_ms}", file=sys.stderr, flush=True)  # fmt: skip


def curl_get(url: str, proxy_port: int | None, expect: int, out: str = "/dev/null") -> float:
    argv = [
        "curl", "-sS", "-o", out, "--max-time", "120",
        "-H", "X-Prometheus-Scrape-Timeout-Seconds: 60",
        "-w", "%{http_code} %{size_download} %{time_total}",
    ]  # fmt: skip
    argv += ["-x", f"http://127.0.0.1:{proxy_port}"] if proxy_port else ["--noproxy", "*"]
    r = subprocess.run([*argv, url], capture_output=True, text=True, timeout=150, env=ENV)
    try:
        code, size, secs = r.stdout.split()
    except ValueError:
        raise BenchError(f"curl failed ({r.returncode}): {r.stderr.strip()}") from None
    if code != "200" or int(size) != expect:
        raise BenchError(f"curl got HTTP {code} with {size} bytes (expected 200, {expect})")
    return float(secs)


def section_big(w: World) -> None:
    m = w.mode
    size = PAGES["10m"]
    times: dict[str, list[float]] = {"direct": [], "pushprox": []}
    growth: dict[str, list[int]] = {"proxy": [], "client": []}
    err: str | None = w.proxied_error and "not run (see notes)"
    hwm0: dict[str, int] = {}
    if not err:
        assert w.proxy and w.client
        hwm0 = {
            "proxy": status_kb(w.proxy.pid, "VmHWM"),
            "client": status_kb(w.client.pid, "VmHWM"),
        }
    if not err:  # once, untimed: does the body arrive intact?
        check = w.procs.tmp / "10m.check"
        try:
            curl_get(scrape_uri(FQDN, w.nginx_port, "10m"), w.proxy_port, size, str(check))
            if check.read_bytes() != (w.procs.tmp / "nginx" / "html" / "10m").read_bytes():
                raise BenchError("the body differs from the page nginx served")
        except BenchError as e:
            err = f"failed: {one_line(e)}"
            w.report.note(f"10 MB page through pushprox: {e}")
        finally:
            check.unlink(missing_ok=True)
    wait_quiet(w, "10 MB page")
    for _ in range(m.big_repeats):
        times["direct"].append(curl_get(f"http://127.0.0.1:{w.nginx_port}/10m", None, size))
        if err:
            continue
        assert w.proxy and w.client
        pids = {"proxy": w.proxy.pid, "client": w.client.pid}
        base = {k: rss_kb(p) for k, p in pids.items()}
        try:
            with RssSampler(pids) as s:
                t = curl_get(scrape_uri(FQDN, w.nginx_port, "10m"), w.proxy_port, size)
        except BenchError as e:
            err = f"failed: {one_line(e)}"
            w.report.note(f"10 MB page through pushprox: {e}")
            continue
        times["pushprox"].append(t)
        for k in pids:
            growth[k].append(s.peak[k] - base[k])
        print(f"  10m pushprox: {t:.3f} s, {s.samples} RSS samples, before {base} kB, "
              f"peak {s.peak} kB", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.2)
    d = times["direct"]
    w.report.big.append(
        ["direct", fmt(statistics.median(d), 3), f"{min(d):.3f}..{max(d):.3f}",
         fmt(size / 1e6 / statistics.median(d), 0), "-", "-"]
    )  # fmt: skip
    p = times["pushprox"]
    if err or not p:
        w.report.big.append(["pushprox", err or "failed", "-", "-", "-", "-"])
        return
    assert w.proxy and w.client
    hwm1 = {"proxy": status_kb(w.proxy.pid, "VmHWM"), "client": status_kb(w.client.pid, "VmHWM")}
    w.report.big.append(
        ["pushprox", fmt(statistics.median(p), 3), f"{min(p):.3f}..{max(p):.3f}",
         fmt(size / 1e6 / statistics.median(p), 0),
         f"{mb(statistics.median(growth['proxy']))} (max {mb(max(growth['proxy']))})",
         f"{mb(statistics.median(growth['client']))} (max {mb(max(growth['client']))})"]
    )  # fmt: skip
    w.report.note(
        "10 MB page: peak RSS growth = highest VmRSS sampled every 3 ms during one transfer "
        "minus VmRSS just before it (median over repeats); VmHWM grew by "
        f"{mb(hwm1['proxy'] - hwm0['proxy'])} MB (proxy) and "
        f"{mb(hwm1['client'] - hwm0['client'])} MB (client) over the whole section"
    )


def section_client_memory(w: World) -> None:
    m = w.mode
    if w.proxied_error or not w.proxy:
        w.report.client_mem.append(["client RSS", "not run (see notes)"])
        return
    fqdn = "mem.example"
    client = start_client(w.procs, w.proxy_port, w.nginx_port, fqdn)
    try:
        if not wait_registered(w.proxy_port, fqdn, client):
            time.sleep(3)  # no usable /clients: give it time to start and poll
        idle = wait_rss_stable(client.pid)
        wait_scrape_ok(w.proxy, w.proxy_port, client, fqdn, w.nginx_port)
        proxy0 = rss_kb(w.proxy.pid)
        uri = scrape_uri(fqdn, w.nginx_port, "1k")
        watch = {"proxy": [w.proxy.pid], "client": [client.pid]}
        done = 0
        rss_at: list[tuple[int, int]] = []
        cpu = {"proxy": 0.0, "client": 0.0}
        rate = 0.0  # scrapes/s that the last slice achieved; 0: probe with 2 s first
        deadline = time.monotonic() + MEMORY_MAX_SECONDS
        for target in (m.mem_scrapes // 10, m.mem_scrapes):
            # wrk cannot stop after N requests: run it in slices of <= 30 s until N.
            while done < target and time.monotonic() < deadline:
                secs = int(min(30, max(1, (target - done) / rate + 0.5))) if rate else 2
                r = run_wrk(w.proxy_port, 8, secs, watch, uri)
                client.check()
                done += r.requests
                rate = max(1.0, r.rate)
                for k in cpu:
                    cpu[k] += r.cpu_ms[k]
                if r.error_text() != "0":
                    w.report.note(f"client memory run: wrk errors {r.error_text()}")
            time.sleep(1.0)
            rss_at.append((done, rss_kb(client.pid)))
        if done < m.mem_scrapes:
            w.report.note(
                f"client memory: only {done:,} of {m.mem_scrapes:,} scrapes within "
                f"{MEMORY_MAX_SECONDS} s"
            )
        proxy1 = rss_kb(w.proxy.pid)
        hwm = status_kb(client.pid, "VmHWM")
    except (BenchError, OSError) as e:
        w.report.client_mem.append(["client RSS", "failed (see notes)"])
        w.report.note(f"client memory: {e}")
        return
    finally:
        w.procs.stop(client)
    rows = [
        ["idle client RSS (registered, before any scrape)", f"{mb(idle)} MB"],
    ]
    for n, kb in rss_at:
        rows.append([f"client RSS after {n:,} scrapes (1k page, 8 conns)", f"{mb(kb)} MB"])
    n_last, kb_last = rss_at[-1]
    n_first, kb_first = rss_at[0]
    rows += [
        ["client RSS growth, idle → last", f"{mb(kb_last - idle)} MB"],
        [f"client RSS growth per 1,000 scrapes after the first {n_first:,}",
         f"{(kb_last - kb_first) / max(1, (n_last - n_first) / 1000):,.2f} KB"],
        ["client peak RSS (VmHWM)", f"{mb(hwm)} MB"],
        ["proxy RSS before → after these scrapes", f"{mb(proxy0)} → {mb(proxy1)} MB"],
        ["CPU ms/scrape over these scrapes: proxy / client",
         f"{cpu['proxy'] / max(1, done):.3f} / {cpu['client'] / max(1, done):.3f}"],
    ]  # fmt: skip
    w.report.client_mem += rows


def read_tagged_line(proc: Proc, tag: str, timeout: float) -> dict[str, Any]:
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


def section_idle(w: World) -> None:
    m = w.mode
    n = m.idle_n
    if w.proxy_error:
        w.report.idle.append(["idle clients", "not run (see notes)"])
        return
    # A fresh proxy (and client) so earlier sections do not blur the RSS figures.
    procs = w.procs
    proxy = client = sim = None
    without = with_ = None
    rows: list[list[str]] = []
    try:
        proxy, port = start_proxy(procs, "proxy-idle")
        fqdn = "real.example"
        uri = scrape_uri(fqdn, w.nginx_port, "1k")
        if not w.client_error:
            client = start_client(procs, port, w.nginx_port, fqdn)
            wait_scrape_ok(proxy, port, client, fqdn, w.nginx_port)
            watch = {"proxy": [proxy.pid], "client": [client.pid]}
            run_wrk(port, 1, 2 * m.warmup_seconds, watch, uri)
            wait_quiet(w, "scrape latency without idle clients")
            without = run_wrk(port, 1, m.idle_latency_seconds, watch, uri)
        time.sleep(0.5)
        rss0 = wait_rss_stable(proxy.pid, settle=0.5)
        fds0 = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        c0 = cpu_ticks(proxy.pid)
        sim = procs.start(
            "idle-clients",
            [sys.executable, IDLE_SIM, "--port", str(port), "-n", str(n), "--hold", "600"],
            nofile=n + 1024,
            pipes=True,
        )
        ready = read_tagged_line(sim, "READY", timeout=300)
        # Wait until the proxy has read them all: /clients lists them, else RSS settles.
        t0 = time.monotonic()
        listed = None
        while time.monotonic() - t0 < 60:
            names = registered_clients(port)
            if names is None:
                break
            listed = sum(1 for x in names if x.startswith("idle-"))
            if listed >= ready["held"]:
                break
            time.sleep(0.5)
        rss1 = wait_rss_stable(proxy.pid, settle=1.0)
        fds1 = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        c1 = cpu_ticks(proxy.pid)
        time.sleep(2.0)
        idle_cpu = (cpu_ticks(proxy.pid) - c1) * 1000 / CLK_TCK / 2.0  # ms per s
        if client:
            wait_quiet(w, "scrape latency with idle clients")
            with_ = run_wrk(port, 1, m.idle_latency_seconds, watch, uri)
        proxy.check()
        assert sim.popen.stdin is not None
        sim.popen.stdin.close()
        done = read_tagged_line(sim, "DONE", timeout=60)
        held = ready["held"]
        after = None
        if client:  # again without them: brackets the "with" figure against drift
            procs.stop(sim)
            wait_quiet(w, "scrape latency after the idle clients left")
            after = run_wrk(port, 1, m.idle_latency_seconds, watch, uri)
        rows = [
            ["idle polls opened / held at READY / still held at the end",
             f"{ready['connected']:,} / {held:,} / {done['held']:,} "
             f"(all opened in {ready['seconds']:.1f} s)"],
            ["idle clients listed by GET /clients",
             "GET /clients unusable" if listed is None else f"{listed:,}"],
            ["poll answers / closed by proxy / connect failures during the hold",
             f"{done['answers'] or '{}'} / {done['peer_closed']} / {done['connect_failed']}"],
            ["proxy RSS without → with the idle polls", f"{mb(rss0)} → {mb(rss1)} MB"],
            ["**proxy RSS per idle client**", f"**{(rss1 - rss0) / max(1, held):.1f} KB**"],
            ["proxy open fds without → with", f"{fds0:,} → {fds1:,}"],
            ["proxy CPU to accept and register them",
             f"{(c1 - c0) * 1000 / CLK_TCK / max(1, held):.3f} ms per idle client"],
            ["proxy CPU while only holding them", f"{idle_cpu / 10:.1f} % of a core"],
        ]  # fmt: skip
        if without and with_:
            rows += [
                ["real scrape p50 / p99 without idle clients (1 conn, 1k)",
                 f"{without.p50_ms:.2f} / {without.p99_ms:.2f} ms ({without.rate:,.0f}/s, "
                 f"proxy CPU {fmt(without.per_req('proxy'), 3)} ms/scrape)"],
                [f"**real scrape p50 / p99 with {held:,} idle clients held**",
                 f"**{with_.p50_ms:.2f}** / {with_.p99_ms:.2f} ms ({with_.rate:,.0f}/s, "
                 f"proxy CPU {fmt(with_.per_req('proxy'), 3)} ms/scrape)"],
            ]  # fmt: skip
            if after:
                rows.append(
                    ["real scrape p50 / p99 again after they left",
                     f"{after.p50_ms:.2f} / {after.p99_ms:.2f} ms ({after.rate:,.0f}/s, "
                     f"proxy CPU {fmt(after.per_req('proxy'), 3)} ms/scrape)"]
                )  # fmt: skip
            if with_.error_text() != "0" or without.error_text() != "0":
                w.report.note(
                    f"idle section wrk errors: without {without.error_text()}, "
                    f"with {with_.error_text()}"
                )
        else:
            rows.append(["real scrape latency with/without", "not run (no client, see notes)"])
    except (BenchError, OSError, KeyError) as e:
        rows.append(["idle clients", "failed (see notes)"])
        w.report.note(f"idle clients: {e}")
    finally:
        for p in (sim, client, proxy):
            if p is not None:
                procs.stop(p)
    w.report.idle += rows


PYSPY_RATE = 100  # samples per second
APP_FRAMES = re.compile(r"\((pushprox|treq|twisted/web|hyperlink|prometheus_client)/")


def summarize_pyspy(path: Path, seconds: float, top: int = 10) -> list[str]:
    """Where the time went, from py-spy's raw (collapsed) output.

    Percentages are of one core over the recording (samples / (rate * seconds));
    py-spy leaves out idle samples (waiting in epoll).  "self" = the innermost frame;
    "incl." = samples whose stack contains that function (application and web
    frames only, the reactor loop frames would be on top of every stack).
    """
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0

    def short(frame: str) -> str:
        return re.sub(r"\s*\((?:/[^)]*?/)?((?:site-packages/)?)([^)]*)\)$", r" (\2)", frame)

    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [short(f) for f in stack.split(";")]
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + c
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames if APP_FRAMES.search(f)}:
            incl[f] = incl.get(f, 0) + c
    possible = PYSPY_RATE * seconds
    out = [f"busy: {100 * total / possible:.0f} % of one core ({total} samples)", "self:"]
    for f, c in sorted(self_t.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * c / possible:5.1f} %  {f}")
    out.append("incl. (pushprox, treq, twisted.web, hyperlink):")
    for f, c in sorted(incl.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * c / possible:5.1f} %  {f}")
    return out


def section_profile(w: World, outdir: Path) -> None:
    if w.proxied_error or not (w.proxy and w.client):
        return
    outdir.mkdir(parents=True, exist_ok=True)
    secs = max(5, w.mode.wrk_seconds)
    recs = []
    for name, proc in (("proxy", w.proxy), ("client", w.client)):
        raw = outdir / f"{name}-1k-c8.txt"
        svg = outdir / f"{name}-1k-c8.svg"
        recs.append((name, raw, svg, subprocess.Popen(
            [PYSPY, "record", "--nonblocking", "-r", str(PYSPY_RATE), "-d", str(secs + 1),
             "-f", "raw", "-o", str(raw), "-p", str(proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
        )))  # fmt: skip
    time.sleep(0.5)
    r = run_wrk(w.proxy_port, 8, secs, w.watch(), scrape_uri(FQDN, w.nginx_port, "1k"))
    for name, raw, _svg, p in recs:
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            err = b"timeout"
        if not raw.exists():
            w.report.note(f"py-spy {name}: {err.decode(errors='replace').strip()[-300:]}")
            continue
        w.report.profile += [
            f"{name} during wrk -c8 on /1k ({r.rate:,.0f} scrapes/s under py-spy; "
            f"collapsed stacks in {raw}):",
            "",
            "```",
            *summarize_pyspy(raw, secs + 1),
            "```",
            "",
        ]


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description="pushprox benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="shorter runs, 10,000 scrapes")
    ap.add_argument("--idle", type=int, help="number of idle clients (default 10,000)")
    ap.add_argument("--scrapes", type=int, help="scrapes for the client memory row")
    ap.add_argument("--output", default=str(BENCH / "results.md"), help="Markdown file")
    ap.add_argument("--profile", metavar="DIR", help="also py-spy the proxy and client")
    ap.add_argument(
        "--quiet-wait", type=float, default=15.0, metavar="S",
        help="before each wrk row, wait up to S s for other processes to calm down",
    )  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config)")
    ap.add_argument(
        "--baseline", metavar="REV",
        help="also measure the proxy and client of git revision REV (a temporary worktree), "
        "side by side in the throughput table",
    )  # fmt: skip
    ap.add_argument(
        "--skip", action="append", default=[],
        choices=["throughput", "big", "idle", "memory"], help="skip a section",
    )  # fmt: skip
    args = ap.parse_args()
    mode = Mode.make(args.quick, args.idle, args.scrapes)
    mode.quiet_wait = args.quiet_wait
    report = Report(mode)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    busy0, own0, t0 = machine_busy_ticks(), own_cpu_seconds(), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pushprox-bench-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
    procs = Procs(tmp)
    failed = False
    try:
        report.header = machine_header(mode)
        print("\n".join(report.header), file=sys.stderr, flush=True)
        nginx, nginx_port = start_nginx(procs, tmp)
        global NGINX_PORT
        NGINX_PORT = nginx_port
        nginx_pids = [nginx.pid, *children_of(nginx.pid)]
        w = World(procs, report, mode, nginx, nginx_port, nginx_pids)
        w.proxy_error = plugin_error("pushprox-proxy")
        w.client_error = plugin_error("pushprox-client")
        w.proxied_error = w.proxy_error or w.client_error
        if w.proxied_error:
            report.note(f"proxied measurements not run: {w.proxied_error}")
        else:
            setup_pushprox(w)
            if args.baseline:
                w.baseline_rev = args.baseline
                checkout = tmp / "baseline-checkout"
                subprocess.run(["git", "-C", str(BENCH.parent), "worktree", "add", "--detach",
                                str(checkout), args.baseline], check=True,
                               capture_output=True)  # fmt: skip
                setup_baseline(w, checkout)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("throughput", lambda: section_throughput(w)),
            ("big", lambda: section_big(w)),
            ("memory", lambda: section_client_memory(w)),
        ]
        if args.profile:
            steps.append(("profile", lambda: section_profile(w, Path(args.profile))))
        steps.append(("idle", lambda: section_idle(w)))
        for name, step in steps:
            if name in args.skip:
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                step()
            except BenchError as e:
                report.note(f"{name}: {e}")
            for p in (w.proxy, w.client):
                if p is not None and not p.alive() and not w.proxied_error:
                    w.proxied_error = f"{p.name} died during {name}"
                    report.note(f"{p.name} exited with {p.popen.returncode}; "
                                f"log tail:\n{p.log_tail()}")  # fmt: skip
            nginx.check()
    except KeyboardInterrupt:
        report.interrupted = True
    except BenchError as e:
        failed = True
        report.note(f"benchmark aborted: {e}")
    finally:
        procs.stop_all()
        if args.baseline:
            subprocess.run(["git", "-C", str(BENCH.parent), "worktree", "remove", "--force",
                            str(tmp / "baseline-checkout")], capture_output=True)  # fmt: skip
        # Every child has been waited for now, so its CPU is in own_cpu_seconds().
        busy = (machine_busy_ticks() - busy0) / CLK_TCK
        elapsed = time.monotonic() - t0
        other = max(0.0, busy - (own_cpu_seconds() - own0)) / elapsed
        report.header.append(
            f"Run took {elapsed / 60:.1f} min; processes not started by the benchmark used "
            f"{other:.2f} cores on average meanwhile (machine has {os.cpu_count()})"
        )
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report.render()
    print(text)
    if not report.interrupted and not failed:
        Path(args.output).write_text(text)
        print(f"(written to {args.output})", file=sys.stderr)
    return 1 if failed or report.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
