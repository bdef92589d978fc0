"""The breakdown section: where each microsecond of a scrape goes, at one connection.

One ``wrk -t1 -c1`` run on the 1 KB page in proxy form while py-spy records the proxy
and the client, with their utime and stime from /proc around it; every py-spy sample
goes to one bucket by its innermost frame (BUCKETS), and a bucket's share of the
process's busy samples times the process's CPU per scrape is its µs per scrape.  A
second, short run under ``strace -c`` counts the system calls per scrape by name.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from measurement import (
    PYSPY_RATE,
    LoadResult,
    cpu_split_ticks,
    finish_pyspy,
    pyspy_error,
    pyspy_stacks,
    start_pyspy,
    ticks_ms,
)
from processes import BenchError, Proc
from report import fmt
from scenarios import World
from services import FQDN, scrape_uri
from twisted.internet import epollreactor, tcp


def _line_calling(func: Callable[..., object], text: str) -> str:
    """The line number (as a pattern) in `func`'s source that contains `text`, so that a
    rule names the line that calls into the kernel whatever the Twisted version."""
    with contextlib.suppress(OSError, TypeError):
        lines, first = inspect.getsourcelines(func)
        for i, line in enumerate(lines):
            if text in line:
                return str(first + i)
    return r"\d+"


SYSCALLS = "system calls: send, recv, epoll_ctl"
#: Samples on the line that calls epoll_wait are left out of the shares: what runs there is
#: the kernel (Python only calls into it), so its cost is part of /proc's stime, yet py-spy
#: counts far more there than stime allows (a thread woken, or about to sleep, looks busy).
EPOLL_WAIT = "epoll_wait: py-spy samples, left out of the shares"
OTHER = "other"
#: (bucket, pattern): a py-spy sample goes to the bucket of the first rule that matches its
#: innermost frame, "function (file:line)"; a frame no rule matches (the standard library's,
#: e.g. uuid or urllib) counts for its caller, and so on outwards; "other" if none does.
BUCKETS: list[tuple[str, str]] = [
    # Python lines that are in the kernel when sampled.
    (SYSCALLS, r"^untilConcludes \(.*twisted/python/util\.py"),  # send() of writeSomeData
    (SYSCALLS, r"^Connection\.doRead \(.*twisted/internet/tcp\.py:"
     + _line_calling(tcp.Connection.doRead, ".recv(") + r"\)"),
    (SYSCALLS, r"^EPollReactor\._(add|remove) \("),  # epoll_ctl()
    (EPOLL_WAIT, r"^EPollReactor\.doPoll \(.*:"
     + _line_calling(epollreactor.EPollReactor.doPoll, "_poller.poll(") + r"\)"),
    # llhttp (C, under feed_data) and its callbacks in pushprox; Agent's parser.
    ("HTTP parsing", r"^LlhttpChannel\.(dataReceived|_parse|on_\w+) \(.*pushprox/proxy/channel"),
    ("HTTP parsing", r"^_Connection\.(dataReceived|on_\w+) \(.*pushprox/client/(target_)?link"),
    ("HTTP parsing", r"^(HTTPParser|HTTPClientParser|LineReceiver)\.\w+ \("),
    ("twisted.web Agent (requests to the target)", r"twisted/web/(client|_newclient)\.py|treq/"),
    ("twisted.web request/response", r"twisted/web/"),
    ("pushprox: channel and request (proxy.channel, proxy.lean)",
     r"pushprox/proxy/(channel|lean)\.py"),
    ("Deferreds", r"twisted/internet/defer\.py"),
    ("reactor (twisted.internet, log context)",
     r"twisted/internet/|twisted/python/(log|context|failure|util)\.py|twisted/logger/"),
    ("pushprox: coordinator", r"pushprox/proxy/coordinator\.py"),
    ("pushprox: push", r"pushprox/proxy/push\.py"),
    ("pushprox: proxy resources",
     r"pushprox/proxy/(site|responses|status)\.py|pushprox/shared/auth\.py"),
    ("pushprox: wire", r"pushprox/shared/wire\.py"),
    ("pushprox: client (and its links to the proxy and the targets)",
     r"pushprox/client/(service|link|target_link)\.py"),
    ("metrics", r"prometheus_client/|pushprox/shared/metrics\.py"),
    ("pushprox: other", r"pushprox/"),
]  # fmt: skip
_BUCKET_RES = [(name, re.compile(pattern)) for name, pattern in BUCKETS]
#: Processes whose scrape the section breaks down, in the table's column order.
PROCESSES = ("proxy", "client")
STRACE_SECONDS = 3
#: System calls a strace line names first (in this order), then the rest by count.
STRACE_FIRST = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl", "getrandom")


def bucket_of(frames: list[str]) -> str:
    """The bucket of a sample with these frames (outermost first)."""
    for frame in reversed(frames):
        for name, pattern in _BUCKET_RES:
            if pattern.search(frame):
                return name
    return OTHER


def bucket_samples(raw: Path) -> dict[str, int]:
    """py-spy's samples in `raw` by bucket."""
    counts: dict[str, int] = {}
    for frames, n in pyspy_stacks(raw):
        b = bucket_of(frames)
        counts[b] = counts.get(b, 0) + n
    return counts


@dataclass(frozen=True)
class ProcessBreakdown:
    """One process's CPU over the run (from /proc) and its py-spy samples by bucket."""

    user_ms: float
    system_ms: float
    scrapes: int
    samples: dict[str, int]

    def per_scrape_us(self, ms: float) -> float:
        """CPU ms over the run as µs per scrape."""
        return ms * 1000 / max(1, self.scrapes)

    @property
    def total_us(self) -> float:
        """utime + stime per scrape, in µs."""
        return self.per_scrape_us(self.user_ms + self.system_ms)

    @property
    def busy(self) -> int:
        """The samples the shares are of: py-spy's busy ones but those in epoll_wait."""
        return sum(n for b, n in self.samples.items() if b != EPOLL_WAIT)

    def bucket_us(self, bucket: str) -> float:
        """The bucket's share of the busy samples, applied to the total CPU per scrape."""
        return self.samples.get(bucket, 0) / self.busy * self.total_us if self.busy else 0.0

    def cell(self, bucket: str) -> str:
        """µs per scrape and the share of the process's busy samples."""
        if not self.busy:
            return "-"
        share = 100 * self.samples.get(bucket, 0) / self.busy
        return f"{self.bucket_us(bucket):,.0f} ({share:.0f} %)"


def strace_per_scrape(path: Path, scrapes: int) -> str:
    """System calls per scrape by name from `strace -c` output, the usual ones first."""
    calls: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        f = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(f) in (5, 6) and f[-1] != "total" and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    if not calls:
        raise BenchError(f"no strace -c summary in {path}")
    order = [c for c in STRACE_FIRST if c in calls]
    order += sorted((c for c in calls if c not in order), key=lambda c: -calls[c])
    return ", ".join(f"{c} {calls[c] / max(1, scrapes):.2f}" for c in order)


def _traced_run(w: World, uri: str, outdir: Path) -> tuple[LoadResult, dict[str, Path]]:
    """A short wrk -c1 run with `strace -c -f` attached to the proxy and the client."""
    assert w.proxy and w.client
    strace = shutil.which("strace")
    if strace is None:
        raise BenchError("strace not found (Debian package strace)")
    outs, tracers = {}, []
    for name, proc in zip(PROCESSES, (w.proxy, w.client), strict=True):
        outs[name] = outdir / f"strace-{name}.txt"
        argv = [strace, "-c", "-f", "-o", str(outs[name]), "-p", str(proc.pid)]
        tracers.append(w.procs.start(f"strace-{name}", argv))
    try:
        time.sleep(1.0)  # attached to every thread
        for t in tracers:
            t.check()
        r = w.wrk.run(w.proxy_port, 1, STRACE_SECONDS, {}, uri)
    finally:
        for t in tracers:
            w.procs.stop(t)  # SIGTERM: strace detaches and writes its summary
    return r, outs


def _strace_row(w: World, uri: str, outdir: Path) -> list[str]:
    """The table's system call row, or a note saying why there is none."""
    label = f"system calls per scrape (strace -c, a separate {STRACE_SECONDS} s wrk -c1 run)"
    try:
        r, outs = _traced_run(w, uri, outdir)
        return [label, *(strace_per_scrape(outs[n], r.requests) for n in PROCESSES)]
    except (BenchError, OSError) as e:
        w.report.note(f"breakdown: no system call counts: {e}")
        return [label, *["not measured (see notes)"] * len(PROCESSES)]


def _recorded_run(
    w: World, uri: str, outdir: Path, secs: int
) -> tuple[LoadResult, dict[str, ProcessBreakdown]]:
    """wrk -c1 for `secs` under py-spy, with the processes' utime and stime around it."""
    assert w.proxy and w.client
    procs: dict[str, Proc] = {"proxy": w.proxy, "client": w.client}
    raws = {name: outdir / f"{name}-1k-c1.txt" for name in PROCESSES}
    spies = {name: start_pyspy(procs[name].pid, raws[name], secs + 1) for name in PROCESSES}
    time.sleep(0.5)  # py-spy has attached
    before = {name: cpu_split_ticks(p.pid) for name, p in procs.items()}
    r = w.wrk.run(w.proxy_port, 1, secs, w.watch(), uri)
    after = {name: cpu_split_ticks(p.pid) for name, p in procs.items()}
    out = {}
    for name in PROCESSES:
        err = finish_pyspy(spies[name], raws[name])
        if err is not None:
            raise BenchError(f"py-spy {name}: {err}")
        (u0, s0), (u1, s1) = before[name], after[name]
        out[name] = ProcessBreakdown(
            ticks_ms(u1 - u0), ticks_ms(s1 - s0), r.requests, bucket_samples(raws[name])
        )
    for p in procs.values():
        p.check()
    return r, out


def _rows(by: dict[str, ProcessBreakdown]) -> list[list[str]]:
    """CPU per scrape from /proc, the buckets (most µs first), py-spy's samples."""
    ps = [by[n] for n in PROCESSES]
    rows = [
        ["**CPU per scrape (/proc utime + stime)**", *(f"**{p.total_us:,.0f}**" for p in ps)],
        ["user (/proc utime)", *(fmt(p.per_scrape_us(p.user_ms), 0) for p in ps)],
        ["system (/proc stime: the kernel)", *(fmt(p.per_scrape_us(p.system_ms), 0) for p in ps)],
    ]
    buckets = {b for p in ps for b in p.samples} - {EPOLL_WAIT}
    for b in sorted(buckets, key=lambda b: -sum(p.bucket_us(b) for p in ps)):
        rows.append([b, *(p.cell(b) for p in ps)])
    rows.append([EPOLL_WAIT, *(f"{p.samples.get(EPOLL_WAIT, 0):,}" for p in ps)])
    rows.append([
        f"py-spy samples the shares are of (asked for {PYSPY_RATE} a second) / /proc CPU "
        "seconds",
        *(f"{p.busy:,} / {(p.user_ms + p.system_ms) / 1000:.1f} s" for p in ps),
    ])  # fmt: skip
    return rows


def section_breakdown(w: World, profile_dir: str | None) -> None:
    """Where a scrape's CPU goes in the proxy and the client, at one connection."""
    if w.proxied_error or not (w.proxy and w.client):
        w.report.note("breakdown not run: no proxy and client (see notes)")
        return
    why = pyspy_error()
    if why:
        w.report.note(f"breakdown not run: {why}")
        return
    outdir = Path(profile_dir) if profile_dir else w.procs.tmp / "breakdown"
    outdir.mkdir(parents=True, exist_ok=True)
    secs = max(20, 3 * w.mode.wrk_seconds)
    uri = scrape_uri(FQDN, w.nginx_port, "1k")
    w.wrk.run(w.proxy_port, 1, w.mode.warmup_seconds, {}, uri)
    w.wait_quiet("breakdown")
    r, by = _recorded_run(w, uri, outdir, secs)
    print(f"  breakdown: {r.rate:.0f}/s, per scrape "
          + ", ".join(f"{n} {by[n].total_us:.0f} µs" for n in PROCESSES),
          file=sys.stderr, flush=True)  # fmt: skip
    w.report.breakdown_run = (
        f"{secs} s, {r.requests:,} scrapes at {r.rate:,.0f}/s under py-spy, p50 "
        f"{r.p50_ms:.3f} ms, wrk errors {r.error_text()}, other load {fmt(r.other_cores)} "
        f"cores; py-spy's raw stacks in {outdir}"
    )
    w.report.breakdown += _rows(by)
    w.report.breakdown.append(_strace_row(w, uri, outdir))
