"""What the benchmark measures and how: CPU and memory from /proc, wrk and curl runs.

CPU figures are utime + stime from ``/proc/PID/stat``; other processes' load is the
machine's busy time from ``/proc/stat`` minus what the benchmark and its children used.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from processes import BENCH, ENV, VENV_BIN, BenchError, http_get, tool_path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LUA = str(BENCH / "proxy_form.lua")
PYSPY = str(VENV_BIN / "py-spy")
QUIET_CORES = 0.25  # other processes' load under which a row is measured at once

# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (the state is the first)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # The command name is in parentheses and may contain spaces and parentheses itself.
    return data[data.rindex(")") + 2 :].split()


def cpu_split_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of one process (user space and the kernel on its behalf), in ticks."""
    fields = _stat_fields(pid)
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    return sum(cpu_split_ticks(pid))


def ticks_ms(ticks: int) -> float:
    """Clock ticks in milliseconds."""
    return ticks * 1000 / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A kB figure of /proc/PID/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def rss_kb(pid: int) -> int:
    """The resident set size of a process, in kB."""
    return status_kb(pid, "VmRSS")


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = _stat_fields(d)
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


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


@dataclass(frozen=True)
class MachineCpu:
    """The machine's busy time and ours at one moment: two of them tell others' load."""

    busy_ticks: int
    own_seconds: float
    at: float

    @classmethod
    def now(cls) -> MachineCpu:
        """A reading taken now."""
        return cls(machine_busy_ticks(), own_cpu_seconds(), time.monotonic())

    def seconds_since(self, before: MachineCpu) -> float:
        """Wall-clock seconds from `before` to this reading."""
        return self.at - before.at

    def other_cores_since(self, before: MachineCpu, watched_ticks: int = 0) -> float:
        """Cores used since `before` by processes that are neither ours nor watched.

        ``watched_ticks``: the CPU of the running children we watch over that time (our
        waited-for children are in own_cpu_seconds() already).  Can be slightly below 0.
        """
        busy = ((self.busy_ticks - before.busy_ticks) - watched_ticks) / CLK_TCK
        return (busy - (self.own_seconds - before.own_seconds)) / self.seconds_since(before)


def wait_quiet(pids: list[int], max_wait: float, what: str) -> None:
    """Wait (at most `max_wait` s) until processes other than ours use < 0.25 cores."""
    deadline = time.monotonic() + max_wait
    load = 0.0
    while True:
        before, ticks0 = MachineCpu.now(), sum(map(cpu_ticks, pids))
        time.sleep(1.0)
        after, ticks1 = MachineCpu.now(), sum(map(cpu_ticks, pids))
        load = after.other_cores_since(before, ticks1 - ticks0)
        if load < QUIET_CORES or time.monotonic() >= deadline:
            break
    if load >= QUIET_CORES:
        print(f"  {what}: other processes still use {load:.2f} cores, measuring anyway",
              file=sys.stderr, flush=True)  # fmt: skip


_Loop = TypeVar("_Loop", bound="Background")


class Background:
    """Runs ``_run`` in a thread from entering the ``with`` block until leaving it."""

    def _prepare(self) -> None:
        """Make the thread and its stop flag (call from ``__init__``)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """The loop; it ends once ``self._stop`` is set (override)."""
        raise NotImplementedError

    def __enter__(self: _Loop) -> _Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RssSampler(Background):
    """Samples VmRSS of some pids every few ms in a thread; keeps the peaks."""

    def __init__(self, pids: dict[str, int], interval: float = 0.003) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = {k: 0 for k in pids}
        self.samples = 0
        self._prepare()

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, pid in self.pids.items():
                with contextlib.suppress(OSError, BenchError, ValueError):
                    self.peak[k] = max(self.peak[k], rss_kb(pid))
            self.samples += 1
            time.sleep(self.interval)


class CpuSampler(Background):
    """Reads a process's CPU time every `interval` s in a thread; keeps the busiest window."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_percent = 0.0  # of one core, over the busiest window
        self.start_ticks = 0
        self.end_ticks = 0
        self._prepare()

    def _run(self) -> None:
        last, at = self.start_ticks, time.monotonic()
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                now, now_at = cpu_ticks(self.pid), time.monotonic()
                busy = ticks_ms(now - last) / 10 / max(now_at - at, 1e-3)
                self.peak_percent = max(self.peak_percent, busy)
                last, at = now, now_at

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds between entering and leaving."""
        return ticks_ms(self.end_ticks - self.start_ticks) / 1000

    def __enter__(self) -> CpuSampler:
        self.start_ticks = cpu_ticks(self.pid)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        with contextlib.suppress(OSError):
            self.end_ticks = cpu_ticks(self.pid)


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
    """wrk's figures for one run, and the CPU the watched processes used during it."""

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
        """CPU ms per request of the watched process `name`, None if not watched."""
        if name not in self.cpu_ms or not self.requests:
            return None
        return self.cpu_ms[name] / self.requests

    def nginx_text(self) -> str:
        """nginx's accepted connections / requests per request wrk made."""
        if self.nginx_conns is None or self.nginx_reqs is None or not self.requests:
            return "-"
        return f"{self.nginx_conns / self.requests:.3f} / {self.nginx_reqs / self.requests:.3f}"

    def busy_text(self) -> str:
        """The proxy's and the client's CPU per second of the run, in % of a core."""
        if not self.seconds or "proxy" not in self.cpu_ms or "client" not in self.cpu_ms:
            return "-"
        p, c = (self.cpu_ms[k] / self.seconds / 10 for k in ("proxy", "client"))
        return f"{p:.0f} / {c:.0f}"

    def error_text(self) -> str:
        """The kinds of errors wrk counted, or "0"."""
        return errors_text([self])


def errors_text(runs: list[LoadResult]) -> str:
    """The kinds of errors wrk counted over some runs, added up, or "0"."""
    total: dict[str, int] = {}
    for r in runs:
        for k, v in r.errors.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in total.items() if v) or "0"


def nginx_counters(status_port: int) -> tuple[int, int] | None:
    """(accepted connections, requests) from nginx's stub_status."""
    try:
        status, body = http_get(status_port, "/nginx_status", timeout=5.0)
        m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", body)
        if status != 200 or not m:
            return None
        return int(m.group(1)), int(m.group(3))
    except (OSError, http.client.HTTPException):
        return None


def wrk_path() -> str:
    """Where wrk is."""
    return tool_path("wrk", "/usr/bin/wrk")


def _cpu_ticks_by_name(watch: dict[str, list[int]]) -> dict[str, int]:
    return {k: sum(cpu_ticks(p) for p in pids) for k, pids in watch.items()}


@dataclass(frozen=True)
class Wrk:
    """Runs of wrk while nginx serves the pages; its stub_status is read around each run."""

    nginx_port: int

    def run(
        self,
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
        ng0 = nginx_counters(self.nginx_port)
        before = _cpu_ticks_by_name(watch)
        machine0 = MachineCpu.now()
        try:
            r = subprocess.run(
                argv, env=env, capture_output=True, timeout=seconds + 60, cwd=tempfile.gettempdir()
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"wrk did not finish within {seconds + 60}s") from e
        after = _cpu_ticks_by_name(watch)
        machine1 = MachineCpu.now()
        ng1 = nginx_counters(self.nginx_port)
        out = r.stdout.decode(errors="replace")
        m = re.search(r"^BENCH-JSON (\{.*\})$", out, re.M)
        if r.returncode != 0 or not m:
            raise BenchError(
                f"wrk failed ({r.returncode}): {out[-500:]} {r.stderr.decode()[-500:]}"
            )
        d = json.loads(m.group(1))
        secs = d["duration_us"] / 1e6
        watched_ticks = sum(after[k] - before[k] for k in watch)
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
            cpu_ms={k: ticks_ms(after[k] - before[k]) for k in watch},
            # - 1: the status request of ng0 itself
            nginx_conns=ng1[0] - ng0[0] - 1 if ng0 and ng1 else None,
            nginx_reqs=ng1[1] - ng0[1] - 1 if ng0 and ng1 else None,
            other_cores=max(0.0, machine1.other_cores_since(machine0, watched_ticks)),
        )


def curl_get(url: str, proxy_port: int | None, expect: int, out: str = "/dev/null") -> float:
    """curl's time_total for one GET of `url` (through the proxy on `proxy_port` if given).

    BenchError unless the answer is 200 with `expect` bytes."""
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


# --------------------------------------------------------------------------- py-spy

PYSPY_RATE = 100  # samples per second


def start_pyspy(pid: int, raw: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds` into `raw` (collapsed stacks, idle left out)."""
    return subprocess.Popen(
        [PYSPY, "record", "--nonblocking", "-r", str(PYSPY_RATE), "-d", str(seconds),
         "-f", "raw", "-o", str(raw), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip


def finish_pyspy(p: subprocess.Popen[bytes], raw: Path) -> str | None:
    """Wait for a start_pyspy recording; why it wrote nothing, or None once `raw` is there."""
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        err = b"timeout"
    if raw.exists():
        return None
    return err.decode(errors="replace").strip()[-300:] or f"py-spy exited {p.returncode}"


def pyspy_error() -> str | None:
    """Why py-spy cannot run here, or None."""
    if not os.path.exists(PYSPY):
        return f"py-spy not found at {PYSPY} (pip install py-spy into this venv)"
    return None


def _short_frame(frame: str) -> str:
    """A frame as "function (file:line)", the file relative to site-packages or the checkout."""
    return re.sub(r"\s*\((?:/[^)]*?/)?((?:site-packages/)?)([^)]*)\)$", r" (\2)", frame)


def pyspy_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """The stacks of py-spy's raw output (outermost frame first, short file names) and
    how many samples each has."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield [_short_frame(f) for f in stack.split(";")], int(count)


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

    for frames, c in pyspy_stacks(path):
        total += c
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


# --------------------------------------------------------------------------- cluster


def redis_info(port: int, section: str) -> dict[str, str]:
    """One section of `redis-cli INFO` of the Redis on 127.0.0.1:port, as fields."""
    r = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "INFO", section],
        capture_output=True, text=True, timeout=30, env=ENV,
    )  # fmt: skip
    if r.returncode != 0:
        raise BenchError(f"redis-cli INFO {section} failed: {r.stderr.strip()}")
    fields = {}
    for line in r.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value
    return fields


def redis_calls(port: int, field: str = "calls") -> dict[str, int]:
    """Calls so far by command (lower case), from INFO commandstats; scripts' commands too.

    ``field="usec"``: the microseconds Redis spent in each command instead."""
    calls = {}
    for key, value in redis_info(port, "commandstats").items():
        if key.startswith("cmdstat_"):
            m = re.search(rf"(?:^|,){field}=(\d+)", value)
            if m:
                calls[key.removeprefix("cmdstat_")] = int(m.group(1))
    return calls


@dataclass(frozen=True)
class RedisCounts:
    """What the replicas asked Redis between two readings of INFO commandstats.

    Two scripts of the routing table are known by a command only they run: ZADD (a route
    written), HEXISTS (a heartbeat).  Script calls are EVALSHA/EVAL round trips (a poll's
    check, a route looked up, a route written); commands are those plus the commands the
    scripts ran; heartbeats and INFO itself are left out of both.
    """

    writes: int
    heartbeats: int
    script_calls: int  # round trips, heartbeats left out
    commands: int  # round trips and the commands inside scripts, heartbeats left out

    @classmethod
    def between(cls, before: dict[str, int], after: dict[str, int]) -> RedisCounts:
        """The counts from two redis_calls() readings."""
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        beats = d.get("hexists", 0)
        # A heartbeat: its EVALSHA and HEXISTS, HSET, EXPIRE, HGETALL, ZRANGEBYSCORE,
        # ZREMRANGEBYSCORE (HDELs only when something expired).
        beat_commands = {
            "evalsha": beats,
            "hexists": beats,
            "hset": beats,
            "expire": beats,
            "hgetall": beats,
            "zrangebyscore": beats,
            "zremrangebyscore": beats,
        }
        calls = d.get("evalsha", 0) + d.get("eval", 0) - beats
        commands = sum(
            max(0, v - beat_commands.get(k, 0)) for k, v in d.items()
            if k not in ("info", "script|load", "script")
        )  # fmt: skip
        return cls(d.get("zadd", 0), beats, calls, commands)


def metric_total(port: int, name: str, label: str = "") -> float:
    """The sum of a metric's samples on a proxy's /metrics, those containing `label` only."""
    try:
        status, body = http_get(port, "/metrics", timeout=10.0)
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"GET /metrics on port {port}: {e}") from e
    if status != 200:
        raise BenchError(f"GET /metrics on port {port}: HTTP {status}")
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name) and label in line:
            series, _, value = line.rpartition(" ")
            if series == name or series.startswith(name + "{"):
                total += float(value)
    return total
