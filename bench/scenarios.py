"""What the benchmark runs: its sizes, the processes of a run and one function per section.

Each section adds its rows to the report and notes what failed; a failed measurement
ends that row or section, never the run.  The sections share one nginx and one proxy
and client pair (plus the baseline pair with --baseline); the idle and the client memory
sections start fresh processes of their own so that earlier load does not blur them.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from measurement import (
    LoadResult,
    RedisCounts,
    RssSampler,
    Wrk,
    children_of,
    cpu_ticks,
    curl_get,
    errors_text,
    finish_pyspy,
    metric_total,
    open_fds,
    pyspy_error,
    redis_calls,
    redis_info,
    rss_kb,
    start_pyspy,
    status_kb,
    summarize_pyspy,
    ticks_ms,
    wait_quiet,
    wait_rss_stable,
)
from processes import (
    BENCH,
    ENV,
    REPO,
    BenchError,
    Proc,
    Procs,
    http_get,
    read_tagged_line,
)
from report import Report, fmt, mb, one_line
from services import (
    BASELINE_FQDN,
    FQDN,
    LB_CLIENTS,
    PAGES,
    cluster_tools_error,
    peer_token_file,
    plugin_error,
    scrape_uri,
    start_balancer,
    start_client,
    start_nginx,
    start_proxy,
    start_redis,
    start_replica,
    wait_listed,
    wait_registered,
    wait_scrape_ok,
)

IDLE_SIM = str(BENCH / "idle_clients.py")
MEMORY_MAX_SECONDS = 1200  # bound on the client memory section's load
NOT_RUN = "not run (see notes)"


@dataclass
class Mode:
    """How long and how big each section runs (--quick, --idle, --scrapes, --quiet-wait)."""

    quick: bool
    wrk_seconds: int
    warmup_seconds: int
    big_repeats: int
    idle_n: int
    idle_latency_seconds: int
    mem_scrapes: int
    storm_n: int = 5000
    soak_seconds: float = 1800.0
    quiet_wait: float = 15.0
    one_rounds: int = 3  # alternating rounds of the one-connection section

    @classmethod
    def make(cls, quick: bool, idle_n: int | None, scrapes: int | None,
             storm_n: int | None = None, soak_seconds: float | None = None) -> Mode:
        """The quick or the full sizes, with the counts given on the command line."""
        # wrk s, warm-up s, 10 MB repeats, idle clients, idle latency s, scrapes
        args = (3, 1, 3, 10000, 3, 10000) if quick else (10, 1, 7, 10000, 5, 100000)
        m = cls(quick, *args, soak_seconds=120.0 if quick else 1800.0)
        if idle_n is not None:
            m.idle_n = idle_n
        if scrapes is not None:
            m.mem_scrapes = scrapes
        if storm_n is not None:
            m.storm_n = storm_n
        if soak_seconds is not None:
            m.soak_seconds = soak_seconds
        return m


@dataclass
class World:
    """The processes of one run, and why some of them could not be started."""

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

    def pair(self, baseline: bool = False) -> tuple[Proc | None, Proc | None]:
        """The proxy and client of this tree, or of the baseline."""
        if baseline:
            return self.baseline_proxy, self.baseline_client
        return self.proxy, self.client

    def watch(self, baseline: bool = False) -> dict[str, list[int]]:
        """The pids whose CPU a throughput row reports, by column name."""
        w = {"nginx": self.nginx_pids}
        proxy, client = self.pair(baseline)
        if proxy and client:
            w["proxy"] = [proxy.pid]
            w["client"] = [client.pid]
        return w

    @property
    def wrk(self) -> Wrk:
        """wrk runs that also count nginx's connections and requests."""
        return Wrk(self.nginx_port)

    def wait_quiet(self, what: str) -> None:
        """Wait (at most --quiet-wait s) until processes not ours use < 0.25 cores."""
        pids = [p for ps in self.watch().values() for p in ps]
        wait_quiet(pids, self.mode.quiet_wait, what)


# --------------------------------------------------------------------------- set-up


def start_world(
    procs: Procs, report: Report, mode: Mode, baseline_rev: str | None, baseline_checkout: Path
) -> World:
    """nginx, the proxy and client, and with `baseline_rev` the baseline pair too."""
    nginx, nginx_port = start_nginx(procs, procs.tmp)
    nginx_pids = [nginx.pid, *children_of(nginx.pid)]
    w = World(procs, report, mode, nginx, nginx_port, nginx_pids)
    w.proxy_error = plugin_error("pushprox-proxy")
    w.client_error = plugin_error("pushprox-client")
    w.proxied_error = w.proxy_error or w.client_error
    if w.proxied_error:
        report.note(f"proxied measurements not run: {w.proxied_error}")
    else:
        setup_pushprox(w)
        if baseline_rev:
            w.baseline_rev = baseline_rev
            check_out_baseline(baseline_rev, baseline_checkout)
            setup_baseline(w, baseline_checkout)
    return w


def setup_pushprox(w: World) -> None:
    """Start the proxy and client that the throughput, big and profile sections use."""
    try:
        w.proxy, w.proxy_port = start_proxy(w.procs)
        w.client = start_client(w.procs, w.proxy_port, w.nginx_port, FQDN)
        wait_scrape_ok(w.proxy, w.proxy_port, w.client, FQDN, w.nginx_port)
    except BenchError as e:
        w.proxied_error = f"pushprox setup failed: {e}"
        w.report.note(w.proxied_error)


def check_out_baseline(rev: str, checkout: Path) -> None:
    """A detached worktree of `rev` at `checkout`, for the baseline pair to import."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), rev],
        check=True,
        capture_output=True,
    )


def remove_baseline_checkout(checkout: Path) -> None:
    """Remove the worktree of check_out_baseline (if there is one)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
        capture_output=True,
    )


def setup_baseline(w: World, checkout: Path) -> None:
    """Start a second proxy and client that import pushprox from ``checkout``."""
    env = dict(ENV, PYTHONPATH=str(checkout))
    try:
        w.baseline_proxy, w.baseline_proxy_port = start_proxy(w.procs, "baseline-proxy", env)
        w.baseline_client = start_client(
            w.procs, w.baseline_proxy_port, w.nginx_port, BASELINE_FQDN, env
        )
        wait_scrape_ok(
            w.baseline_proxy, w.baseline_proxy_port, w.baseline_client, BASELINE_FQDN, w.nginx_port
        )
    except BenchError as e:
        w.report.note(f"baseline {w.baseline_rev} setup failed: {e}")
        w.baseline_proxy = w.baseline_client = None


def run_section(w: World, name: str, section: Callable[[], None]) -> None:
    """Run one section; its failure becomes a note, a pushprox death ends proxied rows."""
    print(f"== {name}", file=sys.stderr, flush=True)
    try:
        section()
    except BenchError as e:
        w.report.note(f"{name}: {e}")
    for p in (w.proxy, w.client):
        if p is not None and not p.alive() and not w.proxied_error:
            w.proxied_error = f"{p.name} died during {name}"
            w.report.note(f"{p.name} exited with {p.popen.returncode}; "
                          f"log tail:\n{p.log_tail()}")  # fmt: skip
    w.nginx.check()


# --------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class LoadPath:
    """Where the rows of one "path" send their load: nginx itself, or a proxy."""

    kind: Literal["direct", "pushprox", "baseline"]
    label: str  # the row's "path" cell
    port: int
    proxy_uri: str = ""  # the scrape in proxy form; "" for `page_path` on nginx itself
    page_path: str = "/"


def _load_paths(w: World, page: str) -> list[LoadPath]:
    paths = [
        LoadPath("direct", "direct", w.nginx_port, page_path=f"/{page}"),
        LoadPath("pushprox", "pushprox", w.proxy_port, scrape_uri(FQDN, w.nginx_port, page)),
    ]
    if w.baseline_proxy is not None:
        paths.append(
            LoadPath(
                "baseline",
                f"baseline {w.baseline_rev}",
                w.baseline_proxy_port,
                scrape_uri(BASELINE_FQDN, w.nginx_port, page),
            )
        )
    return paths


def _unmeasured_row(row: list[str], why: str) -> list[str]:
    return [*row, why, *["-"] * 6, "see notes", "-", "-"]


def _throughput_cells(r: LoadResult, direct: bool) -> list[str]:
    """The figures of one row; the proxy's and client's are "-" for a direct row."""

    def proxied(text: str) -> str:
        return "-" if direct else text

    return [
        fmt(r.rate, 0),
        fmt(r.p50_ms),
        fmt(r.p99_ms),
        proxied(fmt(r.per_req("proxy"), 3)),
        proxied(fmt(r.per_req("client"), 3)),
        fmt(r.per_req("nginx"), 3),
        r.nginx_text(),
        r.error_text(),
        proxied(r.busy_text()),
        fmt(r.other_cores, 2),
    ]


def _throughput_row(w: World, page: str, conns: int, path: LoadPath) -> None:
    row = [page, str(conns), path.label]
    what = f"{page} c{conns} {path.label}"
    if path.kind == "pushprox" and w.proxied_error:
        w.report.throughput.append(_unmeasured_row(row, "not run"))
        return
    w.wait_quiet(what)
    watch = w.watch(baseline=path.kind == "baseline")
    try:
        r = w.wrk.run(path.port, conns, w.mode.wrk_seconds, watch, path.proxy_uri, path.page_path)
        if path.kind == "pushprox":
            assert w.proxy and w.client
            w.proxy.check()
            w.client.check()
    except (BenchError, OSError) as e:
        if path.kind != "baseline":  # the baseline's rows are extra: a note is enough
            w.report.throughput.append(_unmeasured_row(row, "failed"))
        w.report.note(f"{what}: {e}")
        return
    w.report.throughput.append([*row, *_throughput_cells(r, direct=path.kind == "direct")])
    cpu = "" if path.kind == "baseline" else f" cpu {r.cpu_ms}"
    print(f"  {what}: {r.rate:.0f}/s p50 {r.p50_ms:.2f} ms{cpu}", file=sys.stderr, flush=True)


def _warm_up(w: World, paths: list[LoadPath]) -> None:
    """A short unmeasured wrk run on each path: connections, pools, caches."""
    for path in paths:
        if path.kind == "pushprox" and w.proxied_error:
            continue
        with contextlib.suppress(BenchError, OSError):
            w.wrk.run(path.port, 8, w.mode.warmup_seconds, {}, path.proxy_uri, path.page_path)


def section_throughput(w: World) -> None:
    """Scrapes/s, latency and CPU per scrape: directly, through pushprox and the baseline."""
    for page in ("1k", "57k"):
        paths = _load_paths(w, page)
        _warm_up(w, paths)
        for conns in (1, 8):
            for path in paths:
                _throughput_row(w, page, conns, path)


# --------------------------------------------------------------------------- one connection


@dataclass(frozen=True)
class Measure:
    """A row of the one-connection table: a figure of one wrk run."""

    label: str
    #: The figure from one run and the direct run of the same round (None if that failed).
    figure: Callable[[LoadResult, LoadResult | None], float | None]
    digits: int
    #: "-" in the direct column: there the proxy's and client's CPU is only their idle time.
    proxied_only: bool = False


def _us(ms: float | None) -> float | None:
    return None if ms is None else ms * 1000


def _added_p50(r: LoadResult, direct: LoadResult | None) -> float | None:
    return None if direct is None else r.p50_ms - direct.p50_ms


ONE_CONNECTION_MEASURES = [
    Measure("p50 ms", lambda r, d: r.p50_ms, 3),
    Measure("p99 ms", lambda r, d: r.p99_ms, 3),
    Measure("added p50 ms (minus direct)", _added_p50, 3, proxied_only=True),
    Measure("scrapes/s", lambda r, d: r.rate, 0),
    Measure("proxy CPU µs/scrape", lambda r, d: _us(r.per_req("proxy")), 0, proxied_only=True),
    Measure("client CPU µs/scrape", lambda r, d: _us(r.per_req("client")), 0, proxied_only=True),
    Measure("other load, cores", lambda r, d: r.other_cores, 2),
]

#: A path's runs, one per round; None where the run failed or was not made.
Runs = list[LoadResult | None]


def _one_connection_run(w: World, path: LoadPath, what: str) -> LoadResult:
    """One measured wrk -c1 run on `path` once the machine is quiet; BenchError if its proxy
    or client died meanwhile."""
    w.wait_quiet(what)
    baseline = path.kind == "baseline"
    r = w.wrk.run(path.port, 1, w.mode.wrk_seconds, w.watch(baseline), path.proxy_uri,
                  path.page_path)  # fmt: skip
    if path.kind != "direct":
        for p in w.pair(baseline):
            if p is not None:
                p.check()
    cpu = ", ".join(f"{k} {v / max(1, r.requests) * 1000:.0f} µs" for k, v in r.cpu_ms.items())
    print(f"  {what}: {r.rate:.0f}/s p50 {r.p50_ms:.3f} ms, per scrape {cpu}",
          file=sys.stderr, flush=True)  # fmt: skip
    return r


def _one_connection_rounds(w: World, page: str, paths: list[LoadPath]) -> dict[str, Runs]:
    """--one-rounds rounds of each path, direct first; this tree and the baseline take
    turns at going first, so that neither always runs right after the direct row."""
    runs: dict[str, Runs] = {path.kind: [] for path in paths}
    stopped = {"pushprox"} if w.proxied_error else set()
    direct, *proxied = paths
    for i in range(w.mode.one_rounds):
        for path in [direct, *(proxied if i % 2 == 0 else reversed(proxied))]:
            what = f"one connection {page} round {i + 1} {path.label}"
            r = None
            if path.kind not in stopped:
                try:
                    r = _one_connection_run(w, path, what)
                except (BenchError, OSError) as e:
                    stopped.add(path.kind)  # its later rounds would fail alike
                    w.report.note(f"{what}: {e}")
            runs[path.kind].append(r)
    return runs


def _rounds_cell(values: list[float | None], digits: int) -> str:
    """The median of the rounds' values, then each round's value in parentheses."""
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    each = ", ".join(fmt(v, digits) for v in values)
    return f"{fmt(statistics.median(got), digits)} ({each})"


def _ratio_cell(this: list[float | None], baseline: list[float | None]) -> str:
    """Median of this tree over median of the baseline."""
    a, b = ([v for v in vs if v is not None] for vs in (this, baseline))
    if not a or not b or not statistics.median(b):
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def _one_connection_rows(page: str, runs: dict[str, Runs]) -> list[list[str]]:
    """One row per measure: direct, baseline, this tree (medians and rounds), and the ratio."""
    direct = runs["direct"]
    rows = []
    for m in ONE_CONNECTION_MEASURES:
        values = {
            kind: [None if r is None else m.figure(r, d) for r, d in zip(rs, direct, strict=True)]
            for kind, rs in runs.items()
        }
        base, this = values.get("baseline", []), values["pushprox"]
        rows.append([
            "", m.label,
            "-" if m.proxied_only else _rounds_cell(values["direct"], m.digits),
            _rounds_cell(base, m.digits), _rounds_cell(this, m.digits),
            "-" if m.label.startswith("other") else _ratio_cell(this, base),
        ])  # fmt: skip
    errors = {kind: errors_text([r for r in rs if r is not None]) for kind, rs in runs.items()}
    rows.append(["", "wrk errors, all rounds", errors["direct"], errors.get("baseline", "-"),
                 errors["pushprox"], "-"])  # fmt: skip
    rows[0][0] = f"{page} ({PAGES[page]:,} B)"
    return rows


def section_one_connection(w: World) -> None:
    """One scrape at a time, as fleets scrape: wrk -c1 directly, through pushprox and the
    baseline, in alternating rounds; medians with each round's figure."""
    for page in ("1k", "57k"):
        paths = _load_paths(w, page)
        _warm_up(w, paths)
        runs = _one_connection_rounds(w, page, paths)
        w.report.one_connection += _one_connection_rows(page, runs)


# --------------------------------------------------------------------------- 10 MB page


def _pushprox_hwm(w: World) -> dict[str, int]:
    assert w.proxy and w.client
    return {"proxy": status_kb(w.proxy.pid, "VmHWM"), "client": status_kb(w.client.pid, "VmHWM")}


def _big_page_failed(w: World, e: BenchError) -> str:
    """Note why the 10 MB page failed through pushprox; the text for its row."""
    w.report.note(f"10 MB page through pushprox: {e}")
    return f"failed: {one_line(e)}"


def _timing_cells(times: list[float], size: int) -> list[str]:
    median = statistics.median(times)
    return [fmt(median, 3), f"{min(times):.3f}..{max(times):.3f}", fmt(size / 1e6 / median, 0)]


def _growth_cell(growth: list[int]) -> str:
    return f"{mb(statistics.median(growth))} (max {mb(max(growth))})"


def section_big(w: World) -> None:
    """curl of the 10 MB page directly and through pushprox, with the peak RSS growth."""
    m = w.mode
    size = PAGES["10m"]
    uri = scrape_uri(FQDN, w.nginx_port, "10m")
    times: dict[str, list[float]] = {"direct": [], "pushprox": []}
    growth: dict[str, list[int]] = {"proxy": [], "client": []}
    err: str | None = w.proxied_error and NOT_RUN
    hwm0: dict[str, int] = {}
    if not err:
        hwm0 = _pushprox_hwm(w)
    if not err:  # once, untimed: does the body arrive intact?
        check = w.procs.tmp / "10m.check"
        try:
            curl_get(uri, w.proxy_port, size, str(check))
            if check.read_bytes() != (w.procs.tmp / "nginx" / "html" / "10m").read_bytes():
                raise BenchError("the body differs from the page nginx served")
        except BenchError as e:
            err = _big_page_failed(w, e)
        finally:
            check.unlink(missing_ok=True)
    w.wait_quiet("10 MB page")
    for _ in range(m.big_repeats):
        times["direct"].append(curl_get(f"http://127.0.0.1:{w.nginx_port}/10m", None, size))
        if err:
            continue
        assert w.proxy and w.client
        pids = {"proxy": w.proxy.pid, "client": w.client.pid}
        base = {k: rss_kb(p) for k, p in pids.items()}
        try:
            with RssSampler(pids) as s:
                t = curl_get(uri, w.proxy_port, size)
        except BenchError as e:
            err = _big_page_failed(w, e)
            continue
        times["pushprox"].append(t)
        for k in pids:
            growth[k].append(s.peak[k] - base[k])
        print(f"  10m pushprox: {t:.3f} s, {s.samples} RSS samples, before {base} kB, "
              f"peak {s.peak} kB", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.2)
    w.report.big.append(["direct", *_timing_cells(times["direct"], size), "-", "-"])
    p = times["pushprox"]
    if err or not p:
        w.report.big.append(["pushprox", err or "failed", "-", "-", "-", "-"])
        return
    hwm1 = _pushprox_hwm(w)
    w.report.big.append(
        ["pushprox", *_timing_cells(p, size),
         _growth_cell(growth["proxy"]), _growth_cell(growth["client"])]
    )  # fmt: skip
    w.report.note(
        "10 MB page: peak RSS growth = highest VmRSS sampled every 3 ms during one transfer "
        "minus VmRSS just before it (median over repeats); VmHWM grew by "
        f"{mb(hwm1['proxy'] - hwm0['proxy'])} MB (proxy) and "
        f"{mb(hwm1['client'] - hwm0['client'])} MB (client) over the whole section"
    )


# --------------------------------------------------------------------------- client memory


def section_client_memory(w: World) -> None:
    """A fresh client's RSS idle, after a tenth of --scrapes and after all of them."""
    m = w.mode
    if w.proxied_error or not w.proxy:
        w.report.client_mem.append(["client RSS", NOT_RUN])
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
                r = w.wrk.run(w.proxy_port, 8, secs, watch, uri)
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


# --------------------------------------------------------------------------- idle clients


def _latency_text(r: LoadResult, bold_p50: bool = False) -> str:
    """p50 / p99 of a real scrape run, with its rate and the proxy's CPU per scrape."""
    p50 = f"**{r.p50_ms:.2f}**" if bold_p50 else f"{r.p50_ms:.2f}"
    return (
        f"{p50} / {r.p99_ms:.2f} ms ({r.rate:,.0f}/s, "
        f"proxy CPU {fmt(r.per_req('proxy'), 3)} ms/scrape)"
    )


def _idle_latency_rows(
    w: World, held: int, without: LoadResult, with_: LoadResult, after: LoadResult | None
) -> list[list[str]]:
    """Real scrapes' latency without, with and after the idle polls (errors in the notes)."""
    rows = [
        ["real scrape p50 / p99 without idle clients (1 conn, 1k)", _latency_text(without)],
        [f"**real scrape p50 / p99 with {held:,} idle clients held**",
         _latency_text(with_, bold_p50=True)],
    ]  # fmt: skip
    if after:
        rows.append(["real scrape p50 / p99 again after they left", _latency_text(after)])
    if with_.error_text() != "0" or without.error_text() != "0":
        w.report.note(
            f"idle section wrk errors: without {without.error_text()}, with {with_.error_text()}"
        )
    return rows


def section_idle(w: World) -> None:
    """A fresh proxy holding --idle polls: its RSS and fds per poll, and real scrapes' latency."""
    m = w.mode
    n = m.idle_n
    if w.proxy_error:
        w.report.idle.append(["idle clients", NOT_RUN])
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
            w.wrk.run(port, 1, 2 * m.warmup_seconds, watch, uri)
            w.wait_quiet("scrape latency without idle clients")
            without = w.wrk.run(port, 1, m.idle_latency_seconds, watch, uri)
        time.sleep(0.5)
        rss0 = wait_rss_stable(proxy.pid, settle=0.5)
        fds0 = open_fds(proxy.pid)
        c0 = cpu_ticks(proxy.pid)
        sim = procs.start(
            "idle-clients",
            [sys.executable, IDLE_SIM, "--port", str(port), "-n", str(n), "--hold", "600"],
            nofile=n + 1024,
            pipes=True,
        )
        ready = read_tagged_line(sim, "READY", timeout=300)
        # Wait until the proxy has read them all: /clients lists them, else RSS settles.
        listed = wait_listed(port, "idle-", ready["held"])
        rss1 = wait_rss_stable(proxy.pid, settle=1.0)
        fds1 = open_fds(proxy.pid)
        c1 = cpu_ticks(proxy.pid)
        time.sleep(2.0)
        idle_cpu = ticks_ms(cpu_ticks(proxy.pid) - c1) / 2.0  # ms per s
        if client:
            w.wait_quiet("scrape latency with idle clients")
            with_ = w.wrk.run(port, 1, m.idle_latency_seconds, watch, uri)
        proxy.check()
        assert sim.popen.stdin is not None
        sim.popen.stdin.close()
        done = read_tagged_line(sim, "DONE", timeout=60)
        held = ready["held"]
        after = None
        if client:  # again without them: brackets the "with" figure against drift
            procs.stop(sim)
            w.wait_quiet("scrape latency after the idle clients left")
            after = w.wrk.run(port, 1, m.idle_latency_seconds, watch, uri)
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
             f"{ticks_ms(c1 - c0) / max(1, held):.3f} ms per idle client"],
            ["proxy CPU while only holding them", f"{idle_cpu / 10:.1f} % of a core"],
        ]  # fmt: skip
        if without and with_:
            rows += _idle_latency_rows(w, held, without, with_, after)
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


# --------------------------------------------------------------------------- profile


def section_profile(w: World, outdir: Path) -> None:
    """py-spy of the proxy and the client under an extra wrk -c8 run (--profile DIR)."""
    if w.proxied_error or not (w.proxy and w.client):
        return
    why = pyspy_error()
    if why:
        w.report.note(f"profile not run: {why}")
        return
    outdir.mkdir(parents=True, exist_ok=True)
    secs = max(5, w.mode.wrk_seconds)
    recs = []
    for name, proc in (("proxy", w.proxy), ("client", w.client)):
        raw = outdir / f"{name}-1k-c8.txt"
        recs.append((name, raw, start_pyspy(proc.pid, raw, secs + 1)))
    time.sleep(0.5)
    r = w.wrk.run(w.proxy_port, 8, secs, w.watch(), scrape_uri(FQDN, w.nginx_port, "1k"))
    for name, raw, p in recs:
        err = finish_pyspy(p, raw)
        if err is not None:
            w.report.note(f"py-spy {name}: {err}")
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


# --------------------------------------------------------------------------- cluster

CLUSTER_FQDN = "cluster.example"
#: pushprox_scrapes_total outcomes other than success that a cluster row reports.
FAILED_OUTCOMES = (
    "cancelled", "timeout", "client_silent", "unknown_client", "client_error", "queue_full",
    "shutdown", "error", "peer_unreachable", "routing_unavailable",
)  # fmt: skip


@dataclass
class Replicas:
    """Redis and two proxies in cluster mode (--redis), for the cluster section."""

    redis: Proc
    redis_port: int
    a: Proc
    a_port: int
    b: Proc
    b_port: int

    def check(self) -> None:
        """BenchError if one of them has exited."""
        for p in (self.redis, self.a, self.b):
            p.check()

    def polls(self) -> float:
        """Polls both replicas have answered so far."""
        return sum(metric_total(port, "pushprox_http_requests_total", 'path="/poll"')
                   for port in (self.a_port, self.b_port))  # fmt: skip

    def forwarded(self) -> float:
        """Scrapes both replicas have forwarded to the other so far."""
        return sum(metric_total(port, "pushprox_cluster_forwarded_scrapes_total")
                   for port in (self.a_port, self.b_port))  # fmt: skip

    def outcomes_after_drain(self) -> dict[str, float]:
        """Scrapes both replicas have ended so far, by outcome other than success, once none
        is in flight (at most the scrape timeout wrk sends, 10 s, plus a margin)."""
        deadline = time.monotonic() + 12.0
        while time.monotonic() < deadline and any(
            metric_total(port, "pushprox_scrapes_in_flight") for port in (self.a_port, self.b_port)
        ):
            time.sleep(0.2)
        return {
            outcome: sum(metric_total(port, "pushprox_scrapes_total", f'outcome="{outcome}"')
                         for port in (self.a_port, self.b_port))
            for outcome in FAILED_OUTCOMES
        }  # fmt: skip


@dataclass(frozen=True)
class ClusterRun:
    """One wrk run against the cluster, with what Redis and the replicas counted meanwhile."""

    load: LoadResult
    redis: RedisCounts | None
    polls: float
    forwarded: float
    #: Scrapes that the replicas ended otherwise than with success, by outcome; "cancelled"
    #: is wrk hanging up at the end of its run (up to one per connection when all is well).
    failed: dict[str, float]

    def per_scrape(self, n: float) -> str:
        """A count per scrape of this run."""
        return fmt(n / self.load.requests, 3) if self.load.requests else "-"

    def error_text(self) -> str:
        """wrk's errors, and how the replicas ended scrapes that did not succeed."""
        text = self.load.error_text()
        ended = ", ".join(f"{k} {v:.0f}" for k, v in self.failed.items() if v)
        if not ended:
            return text
        return f"{text}; replicas: {ended}"

    def writes_per_poll(self) -> str:
        """Routes written to Redis per poll answered."""
        if self.redis is None or not self.polls:
            return "-"
        return fmt(self.redis.writes / self.polls, 3)


def _cluster_run(
    w: World,
    rs: Replicas | None,
    port: int,
    conns: int,
    watch: dict[str, list[int]],
    uri: str,
    poll_port: int | None = None,
) -> ClusterRun:
    """wrk against `port`, reading Redis' commandstats and the replicas' counters around it.

    Without `rs` (the single proxy) polls are read from `poll_port` and Redis is not asked."""

    def polls() -> float:
        if rs is not None:
            return rs.polls()
        assert poll_port is not None
        return metric_total(poll_port, "pushprox_http_requests_total", 'path="/poll"')

    calls0 = redis_calls(rs.redis_port) if rs else {}
    polls0, fwd0 = polls(), rs.forwarded() if rs else 0.0
    failed0 = rs.outcomes_after_drain() if rs else {}
    load = w.wrk.run(port, conns, w.mode.wrk_seconds, watch, uri)
    polls1, fwd1 = polls(), rs.forwarded() if rs else 0.0
    counts = RedisCounts.between(calls0, redis_calls(rs.redis_port)) if rs else None
    failed = {k: v - failed0[k] for k, v in rs.outcomes_after_drain().items()} if rs else {}
    if rs:
        rs.check()
    return ClusterRun(load, counts, polls1 - polls0, fwd1 - fwd0, failed)


def _cluster_row(
    w: World,
    rs: Replicas | None,
    what: str,
    port: int,
    conns: int,
    watch: dict[str, list[int]],
    uri: str,
    clients: list[Proc],
) -> ClusterRun:
    """One measured row once the machine is quiet; BenchError if a client died meanwhile."""
    w.wait_quiet(f"cluster {what}")
    run = _cluster_run(w, rs, port, conns, watch, uri, poll_port=port)
    for c in clients:
        c.check()
    print(f"  cluster {what}: {run.load.rate:.0f}/s p50 {run.load.p50_ms:.2f} ms "
          f"cpu {run.load.cpu_ms}", file=sys.stderr, flush=True)  # fmt: skip
    return run


def _start_replicas(w: World) -> Replicas:
    redis, redis_port = start_redis(w.procs)
    token = peer_token_file(w.procs.tmp)
    a, a_port = start_replica(w.procs, "replica-a", redis_port, token)
    b, b_port = start_replica(w.procs, "replica-b", redis_port, token)
    return Replicas(redis, redis_port, a, a_port, b, b_port)


def _cluster_scrape_rows(w: World, rs: Replicas) -> None:
    """A forwarded scrape (wrk → B, the client polls A) against a local one (wrk → A) and
    against a single proxy without --redis, at 1 and 8 connections."""
    client = start_client(w.procs, rs.a_port, w.nginx_port, CLUSTER_FQDN)
    try:
        wait_scrape_ok(rs.a, rs.a_port, client, CLUSTER_FQDN, w.nginx_port)
        # B learns A from the heartbeat, and where the client polls from Redis.
        wait_scrape_ok(rs.b, rs.b_port, client, CLUSTER_FQDN, w.nginx_port)
        uri = scrape_uri(CLUSTER_FQDN, w.nginx_port, "1k")
        cluster_watch = {"A": [rs.a.pid], "B": [rs.b.pid], "client": [client.pid]}
        paths: list[tuple[str, int, str, dict[str, list[int]], Replicas | None]] = [
            ("replica A, the client polls A (local)", rs.a_port, uri, cluster_watch, rs),
            ("replica B → A (forwarded)", rs.b_port, uri, cluster_watch, rs),
        ]
        if w.proxy and w.client and not w.proxied_error:
            paths.insert(0, ("single proxy, no --redis", w.proxy_port,
                             scrape_uri(FQDN, w.nginx_port, "1k"),
                             {"A": [w.proxy.pid], "client": [w.client.pid]}, None))  # fmt: skip
        for _, port, u, _, _ in paths:
            w.wrk.run(port, 8, w.mode.warmup_seconds, {}, u)
        for conns in (1, 8):
            for label, port, u, watch, replicas in paths:
                run = _cluster_row(w, replicas, f"{label} c{conns}", port, conns, watch, u,
                                   [client])  # fmt: skip
                w.report.cluster.append([label, str(conns), *_cluster_cells(run)])
    finally:
        w.procs.stop(client)


def _cluster_cells(run: ClusterRun) -> list[str]:
    r = run.load
    a, b = r.per_req("A"), r.per_req("B")
    both = None if a is None else a + (b or 0.0)
    return [
        fmt(r.rate, 0), fmt(r.p50_ms), fmt(r.p99_ms),
        fmt(a, 3), fmt(b, 3), fmt(both, 3), fmt(r.per_req("client"), 3),
        run.per_scrape(run.polls),
        "-" if run.redis is None else run.per_scrape(run.redis.script_calls),
        "-" if run.redis is None else run.per_scrape(run.redis.commands),
        run.writes_per_poll(),
        run.error_text(), fmt(r.other_cores, 2),
    ]  # fmt: skip


def _balancer_rows(w: World, rs: Replicas) -> None:
    """Scrapes/s of one replica against two behind nginx (stream, round robin): clients poll
    through the balancer, wrk scrapes them in turn through it."""
    lb, port_one, port_two = start_balancer(w.procs, rs.a_port, (rs.a_port, rs.b_port))
    lb_pids = [lb.pid, *children_of(lb.pid)]
    try:
        for label, port, prefix in (("one replica (A)", port_one, "one"),
                                    ("two replicas (A, B)", port_two, "two")):  # fmt: skip
            fqdns = [f"{prefix}-{i}.example" for i in range(LB_CLIENTS)]
            clients = [start_client(w.procs, port, w.nginx_port, f) for f in fqdns]
            try:
                for c, f in zip(clients, fqdns, strict=True):
                    wait_scrape_ok(lb, port, c, f, w.nginx_port)
                uris = " ".join(scrape_uri(f, w.nginx_port, "1k") for f in fqdns)
                watch = {"A": [rs.a.pid], "B": [rs.b.pid], "clients": [c.pid for c in clients],
                         "lb": lb_pids, "redis": [rs.redis.pid]}  # fmt: skip
                w.wrk.run(port, 8, w.mode.warmup_seconds, {}, uris)
                for conns in (8, 32):
                    run = _cluster_row(w, rs, f"{label} c{conns}", port, conns, watch, uris,
                                       clients)  # fmt: skip
                    w.report.cluster_lb.append([label, str(conns), *_balancer_cells(run)])
            finally:
                for c in clients:
                    w.procs.stop(c)
    finally:
        w.procs.stop(lb)


def _balancer_cells(run: ClusterRun) -> list[str]:
    r = run.load
    a, b = r.per_req("A") or 0.0, r.per_req("B") or 0.0
    busy = " / ".join(f"{r.cpu_ms[k] / r.seconds / 10:.0f}" for k in ("A", "B", "clients"))
    return [
        fmt(r.rate, 0), fmt(r.p50_ms), fmt(r.p99_ms),
        f"{a:.3f} / {b:.3f}", fmt(a + b, 3), fmt(r.per_req("clients"), 3),
        fmt(r.per_req("lb"), 3), fmt(r.per_req("redis"), 3),
        f"{100 * run.forwarded / max(1, r.requests):.0f} %",
        "-" if run.redis is None else run.per_scrape(run.redis.script_calls),
        run.error_text(), busy, fmt(r.other_cores, 2),
    ]  # fmt: skip


def _cluster_idle_rows(w: World, rs: Replicas) -> None:
    """Idle clients polling replica A: Redis memory and calls per client, A's RSS per
    client, and how long GET /clients takes on B (which lists them from Redis)."""
    n = w.mode.idle_n
    sim = None
    try:
        time.sleep(1.0)
        mem0 = int(redis_info(rs.redis_port, "memory")["used_memory"])
        calls0 = redis_calls(rs.redis_port)
        rss0 = wait_rss_stable(rs.a.pid, settle=0.5)
        sim = w.procs.start(
            "cluster-idle-clients",
            [sys.executable, IDLE_SIM, "--port", str(rs.a_port), "-n", str(n), "--hold", "600"],
            nofile=n + 1024,
            pipes=True,
        )
        ready = read_tagged_line(sim, "READY", timeout=300)
        held = ready["held"]
        # Until every route is written (before any GET /clients, whose script is counted too).
        deadline = time.monotonic() + 60.0
        counts = RedisCounts.between(calls0, redis_calls(rs.redis_port))
        while counts.writes < held and time.monotonic() < deadline:
            time.sleep(0.5)
            counts = RedisCounts.between(calls0, redis_calls(rs.redis_port))
        mem1 = int(redis_info(rs.redis_port, "memory")["used_memory"])
        listed = wait_listed(rs.b_port, "idle-", held)
        rss1 = wait_rss_stable(rs.a.pid, settle=1.0)
        times = []
        usec0 = redis_calls(rs.redis_port, "usec")
        for _ in range(5):
            t0 = time.monotonic()
            status, body = http_get(rs.b_port, "/clients", timeout=60.0)
            times.append(time.monotonic() - t0)
            if status != 200:
                raise BenchError(f"GET /clients on replica B: HTTP {status}")
        usec1 = redis_calls(rs.redis_port, "usec")
        # The listing script's time (EVALSHA includes the commands it runs); the heartbeats
        # meanwhile add a few microseconds each.
        script_ms = sum(usec1.get(k, 0) - usec0.get(k, 0) for k in ("evalsha", "eval")) / 5000
        rs.check()
        w.report.cluster_redis += [
            ["idle clients polling replica A (held / listed by GET /clients on B)",
             f"{held:,} / {'unusable' if listed is None else f'{listed:,}'}"],
            ["routes written for them (Redis script calls; commands incl. the scripts')",
             f"{counts.writes:,} ({counts.script_calls:,}; {counts.commands:,})"],
            ["**Redis memory per client** (INFO memory used_memory)",
             f"**{(mem1 - mem0) / max(1, held):,.0f} bytes** "
             f"({mb(mem0 / 1024)} → {mb(mem1 / 1024)} MB)"],
            ["replica A RSS per idle client (cluster mode)",
             f"{(rss1 - rss0) / max(1, held):.1f} KB ({mb(rss0)} → {mb(rss1)} MB)"],
            [f"GET /clients on replica B with {held:,} clients (from Redis), median of 5",
             f"{statistics.median(times) * 1000:,.0f} ms ({len(body):,} bytes), of which "
             f"Redis ran the listing script {script_ms:,.0f} ms"],
        ]  # fmt: skip
    except (BenchError, OSError, KeyError, ValueError) as e:
        w.report.cluster_redis.append(["idle clients in the cluster", "failed (see notes)"])
        w.report.note(f"cluster idle clients: {e}")
    finally:
        if sim is not None:
            w.procs.stop(sim)


def _heartbeat_rows(w: World, rs: Replicas) -> None:
    """Redis calls while nothing happens: the two replicas' heartbeats."""
    calls0, t0 = redis_calls(rs.redis_port), time.monotonic()
    time.sleep(5.0)
    counts = RedisCounts.between(calls0, redis_calls(rs.redis_port))
    secs = time.monotonic() - t0
    w.report.cluster_redis.append(
        ["heartbeats (one script call each), per replica and second, while idle",
         f"{counts.heartbeats / secs / 2:.2f}"]
    )  # fmt: skip


def section_cluster(w: World) -> None:
    """Cluster mode: a forwarded scrape against a local one, one replica against two behind
    nginx, and what Redis does and holds per poll, scrape and client."""
    why = w.proxy_error or w.client_error or cluster_tools_error()
    if why:
        w.report.cluster.append(["cluster", NOT_RUN])
        w.report.note(f"cluster section not run: {why}")
        return
    rs = _start_replicas(w)
    try:
        parts: list[tuple[str, Callable[[World, Replicas], None]]] = [
            ("heartbeats", _heartbeat_rows),
            ("forwarded against local scrapes", _cluster_scrape_rows),
            ("one replica against two behind nginx", _balancer_rows),
            ("idle clients", _cluster_idle_rows),
        ]
        for name, part in parts:
            try:
                part(w, rs)
            except (BenchError, OSError) as e:
                w.report.note(f"cluster, {name}: {e}")
            rs.check()
    finally:
        for p in (rs.b, rs.a, rs.redis):
            w.procs.stop(p)
