"""The Markdown report: the machine header, one table per section, notes and profile."""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from measurement import wrk_path
from processes import REPO, BenchError
from services import FQDN, LB_CLIENTS, NGINX_FALLBACK, PAGES

if TYPE_CHECKING:
    from scenarios import Mode

THROUGHPUT_COLUMNS = [
    "page", "conns", "path", "scrapes/s", "p50 ms", "p99 ms",
    "proxy CPU ms/scrape", "client CPU ms/scrape", "nginx CPU ms/req",
    "nginx conns / reqs per scrape", "errors", "proxy / client busy, % of a core",
    "other load, cores",
]  # fmt: skip
ONE_CONNECTION_COLUMNS = [
    "page", "measure", "direct to nginx", "baseline", "this tree", "this tree / baseline",
]  # fmt: skip
YARDSTICK_COLUMNS = ["page", "conns", "measure", "Go", "pushprox", "pushprox / Go"]
BIG_PAGE_COLUMNS = [
    "path", "median s", "min..max s", "MB/s",
    "proxy peak RSS growth MB", "client peak RSS growth MB",
]  # fmt: skip
MEASURE_COLUMNS = ["measure", "value"]
BREAKDOWN_COLUMNS = ["where (innermost frame)", "proxy µs/scrape", "client µs/scrape"]
CLUSTER_COLUMNS = [
    "path", "conns", "scrapes/s", "p50 ms", "p99 ms",
    "replica A CPU ms/scrape", "replica B CPU ms/scrape", "replicas together CPU ms/scrape",
    "client CPU ms/scrape", "polls per scrape", "Redis calls per scrape",
    "Redis commands per scrape", "route writes per poll", "errors", "other load, cores",
]  # fmt: skip
BALANCER_COLUMNS = [
    "behind nginx", "conns", "scrapes/s", "p50 ms", "p99 ms",
    "replica A / B CPU ms/scrape", "replicas together CPU ms/scrape",
    "clients CPU ms/scrape", "nginx LB CPU ms/scrape", "Redis CPU ms/scrape",
    "forwarded", "Redis calls per scrape", "errors",
    "replica A / B / clients busy, % of a core", "other load, cores",
]  # fmt: skip


@dataclass
class Report:
    """The rows each section has measured so far, and the notes on what went wrong."""

    mode: Mode
    baseline: str | None = None  # the --baseline revision
    header: list[str] = field(default_factory=list)
    throughput: list[list[str]] = field(default_factory=list)
    one_connection: list[list[str]] = field(default_factory=list)
    go_dir: str | None = None  # --go
    yardstick: list[list[str]] = field(default_factory=list)
    yardstick_rss: list[list[str]] = field(default_factory=list)
    yardstick_rss_columns: list[str] = field(default_factory=list)
    breakdown: list[list[str]] = field(default_factory=list)
    breakdown_run: str = ""  # how the breakdown's run went
    big: list[list[str]] = field(default_factory=list)
    idle: list[list[str]] = field(default_factory=list)
    client_mem: list[list[str]] = field(default_factory=list)
    cluster: list[list[str]] = field(default_factory=list)
    cluster_lb: list[list[str]] = field(default_factory=list)
    cluster_redis: list[list[str]] = field(default_factory=list)
    storm: list[list[str]] = field(default_factory=list)
    soak: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    interrupted: bool = False

    def note(self, text: str) -> None:
        """Add a line to the report's Notes (and show it on stderr at once)."""
        print(f"NOTE: {text}", file=sys.stderr, flush=True)
        self.notes.append(text)

    def render(self) -> str:
        """The whole report in Markdown."""
        m = self.mode
        lines = [f"## pushprox benchmark ({'quick' if m.quick else 'full'} run)", ""]
        if self.interrupted:
            lines += ["**Interrupted: partial results.**", ""]
        lines += [f"- {h}" for h in self.header] + [""]
        if self.go_dir:
            lines += self._yardstick()
        lines += [
            f"### Scrapes through pushprox vs. directly (wrk -t1, {m.wrk_seconds} s per row)",
            "",
        ]
        lines += table(THROUGHPUT_COLUMNS, self.throughput)
        baseline = f"baseline = {self.baseline}" if self.baseline else "no --baseline"
        lines += ["", f"### One scrape at a time (wrk -t1 -c1, {m.wrk_seconds} s per run; "
                  f"median of {m.one_rounds} alternating rounds, then each round; {baseline})",
                  ""]  # fmt: skip
        lines += table(ONE_CONNECTION_COLUMNS, self.one_connection)
        if self.breakdown:
            lines += ["", "### Where a scrape's CPU goes, one connection (wrk -t1 -c1 on /1k "
                      "in proxy form, py-spy and /proc)", "", self.breakdown_run, ""]  # fmt: skip
            lines += table(BREAKDOWN_COLUMNS, self.breakdown)
            lines += ["", "A bucket's µs per scrape = its share of the process's py-spy "
                      "samples (in parentheses) times the process's /proc CPU per scrape (user + "
                      "system): py-spy's share is applied to the total, the kernel's time "
                      "included; samples in epoll_wait are left out of the shares (see "
                      "bench/README.md)."]  # fmt: skip
        lines += ["", f"### One 10 MB page ({PAGES['10m']:,} bytes, curl, median of "
                  f"{m.big_repeats})", ""]  # fmt: skip
        lines += table(BIG_PAGE_COLUMNS, self.big)
        lines += ["", f"### {m.idle_n:,} idle clients (held long polls)", ""]
        lines += table(MEASURE_COLUMNS, self.idle)
        lines += ["", "### Client process memory", ""]
        lines += table(MEASURE_COLUMNS, self.client_mem)
        lines += ["", "### Cluster mode (--redis): a forwarded scrape against a local one "
                  f"(1k page, wrk -t1, {m.wrk_seconds} s per row)", ""]  # fmt: skip
        lines += table(CLUSTER_COLUMNS, self.cluster)
        lines += ["", "### Cluster mode: one replica against two behind nginx (stream, round "
                  f"robin; {LB_CLIENTS} clients polling through it, 1k page, "
                  f"{m.wrk_seconds} s per row)", ""]  # fmt: skip
        lines += table(BALANCER_COLUMNS, self.cluster_lb)
        lines += ["", "### Cluster mode: Redis", ""]
        lines += table(MEASURE_COLUMNS, self.cluster_redis)
        lines += ["", f"### Reconnect storm: proxy restarted under {m.storm_n:,} simulated "
                  "and 20 real clients", ""]
        lines += table(MEASURE_COLUMNS, self.storm)
        lines += ["", f"### Soak ({m.soak_seconds / 60:.1f} min of scrapes, churn, bad "
                  "inputs and faults)", ""]
        lines += table(MEASURE_COLUMNS, self.soak)
        if self.notes:
            lines += ["", "### Notes", "", *(f"- {n}" for n in self.notes)]
        if self.profile:
            lines += ["", "### Profile (py-spy)", "", *self.profile]
        return "\n".join(lines) + "\n"

    def _yardstick(self) -> list[str]:
        """The side-by-side section against the Go PushProx (--go)."""
        m = self.mode
        lines = [f"### Side by side with the Go PushProx (wrk -t1 in proxy form, "
                 f"{m.wrk_seconds} s per run; median of {m.one_rounds} alternating rounds, "
                 "then each round)", "",
                 f"Go: `pushprox-proxy` and `pushprox-client` of {self.go_dir}; pushprox: its "
                 "`pushprox-proxy` and `pushprox-client` commands; both clients poll as "
                 "127.0.0.1 and scrape the same nginx.", ""]  # fmt: skip
        lines += table(YARDSTICK_COLUMNS, self.yardstick)
        lines += ["", "Below 1 is better in the last column, except for scrapes/s. Memory "
                  "(VmRSS, MB; in parentheses ours over Go's):", ""]  # fmt: skip
        lines += table(["program", "when", "Go", *self.yardstick_rss_columns],
                       self.yardstick_rss)
        return [*lines, ""]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, with a "not measured" row when there are no rows."""
    if not rows:
        rows = [["not measured"] + [""] * (len(head) - 1)]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    """A figure with thousands separators, "-" for none."""
    return "-" if x is None else f"{x:,.{digits}f}"


def mb(kb: float) -> str:
    """kB as MB with one decimal."""
    return f"{kb / 1024:,.1f}"


def one_line(e: BaseException) -> str:
    """The first line of an error's message, for a table cell."""
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _command_output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def machine_header() -> list[str]:
    """The report's first lines: machine, tool and library versions, commit, date."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = _command_output("nproc")
    # nginx -v writes to stderr.
    nginx_v = subprocess.run(
        [shutil.which("nginx") or NGINX_FALLBACK, "-v"], capture_output=True, text=True
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
    rev = _command_output("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = _command_output(
        "git", "-C", str(REPO), "status", "--porcelain", "--", "pushprox", "twisted"
    )
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
