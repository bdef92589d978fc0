"""The yardstick section (--go DIR): pushprox against the upstream Go PushProx, side by side.

Both pairs run at once, fresh, on the shared nginx: Go's proxy and client (DIR/pushprox-proxy,
DIR/pushprox-client, built from the Go PushProx's source; never committed) and ours as
the `pushprox-proxy` / `pushprox-client` commands (what the container images run), both
clients polling as 127.0.0.1 so that the scrape URI is the same.  For each page (1k, 57k) and
connection count (1, 8), wrk runs in proxy form against each proxy in alternating rounds (Go
first in odd rounds, ours first in even ones); each cell is the median of the rounds, then
every round's value.  Memory: VmRSS of each program after start (registered, one scrape),
after a second of scrapes, and after all the rounds; for ours also with TLS between proxy and
client (an ssl: listener beside the plain one the scrapes use, an https:// proxy URL, a
throw-away certificate made with openssl) and under `twistd -n`.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from measurement import LoadResult, errors_text, rss_kb, wait_quiet, wait_rss_stable
from processes import VENV_BIN, BenchError, Proc, Procs, free_port, wait_port
from report import fmt, mb
from scenarios import World
from services import HIGH_NOFILE, PAGES, TWISTD, scrape_uri, wait_scrape_ok

#: Both clients poll under this name, so that both pairs scrape the same URI.
FQDN = "127.0.0.1"
#: (page, connections) of the load runs, in the order they run.
LOADS = [("1k", 1), ("57k", 1), ("1k", 8), ("57k", 8)]
GO_PROGRAMS = ("pushprox-proxy", "pushprox-client")


@dataclass
class Pair:
    """One proxy and its client, and their VmRSS (kB) at the moments measured."""

    label: str
    proxy: Proc
    port: int
    client: Proc
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # moment -> (proxy, client)

    def watch(self, nginx_pids: list[int]) -> dict[str, list[int]]:
        """The pids whose CPU a run reports."""
        return {"nginx": nginx_pids, "proxy": [self.proxy.pid], "client": [self.client.pid]}

    def note_rss(self, moment: str, settle: bool = True) -> None:
        """Record both programs' VmRSS (once it has settled, with `settle`)."""
        read: Callable[[int], int] = wait_rss_stable if settle else rss_kb
        self.rss[moment] = (read(self.proxy.pid), read(self.client.pid))

    def check(self) -> None:
        """BenchError if either program has exited."""
        self.proxy.check()
        self.client.check()


def go_error(go_dir: Path) -> str | None:
    """None when DIR holds both Go programs, else what is missing."""
    missing = [name for name in GO_PROGRAMS if not (go_dir / name).is_file()]
    if missing:
        return (f"{', '.join(missing)} missing in {go_dir} (go build ./cmd/proxy and "
                "./cmd/client of the Go PushProx, see docs/dev/benchmarks.md)")
    return None


def client_args(nginx_port: int) -> list[str]:
    """Our client's arguments: the name polled as, the pages allowed, and its /metrics on a
    port of its own, as Go's client serves its own (`--metrics-addr`)."""
    args = ["--fqdn", FQDN, "--allow-port", str(nginx_port),
            "--metrics-listen", f"tcp:{free_port()}:interface=127.0.0.1"]
    for page in PAGES:
        args += ["--allow-path", f"/{page}"]
    return args


def start_go(procs: Procs, go_dir: Path, nginx_port: int) -> Pair:
    """Go's proxy and client, as the Go PushProx's README starts them."""
    port, metrics_port = free_port(), free_port()
    proxy = procs.start("go-proxy", [str(go_dir / "pushprox-proxy"),
                                     f"--web.listen-address=127.0.0.1:{port}",
                                     "--log.level=error"])  # fmt: skip
    wait_port(port, proxy)
    client = procs.start("go-client", [str(go_dir / "pushprox-client"), f"--fqdn={FQDN}",
                                       f"--proxy-url=http://127.0.0.1:{port}",
                                       f"--metrics-addr=127.0.0.1:{metrics_port}",
                                       "--log.level=error"])  # fmt: skip
    pair = Pair("Go", proxy, port, client)
    wait_scrape_ok(proxy, port, client, FQDN, nginx_port)
    return pair


def start_ours(procs: Procs, nginx_port: int, label: str, tls: Path | None = None,
               twistd: bool = False) -> Pair:
    """Our proxy and client as the commands (or under `twistd -n`); with `tls` (a folder
    holding cert.pem and key.pem for 127.0.0.1), TLS between them."""
    port = free_port()
    name = label.replace(" ", "-")
    listen = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    url = f"http://127.0.0.1:{port}/"
    client_tls: list[str] = []
    if tls is not None:
        # The client polls and pushes over TLS; the scrapes still come in on the plain port.
        tls_port = free_port()
        listen += ["--listen", f"ssl:{tls_port}:interface=127.0.0.1"
                   f":privateKey={tls / 'key.pem'}:certKey={tls / 'cert.pem'}"]
        url = f"https://127.0.0.1:{tls_port}/"
        client_tls = ["--tls-cacert", str(tls / "cert.pem")]

    def program(which: str) -> list[str]:
        if twistd:
            return [TWISTD, "--pidfile=", "-n", which]
        return [str(VENV_BIN / which)]

    proxy = procs.start(f"{name}-proxy", [*program("pushprox-proxy"), *listen],
                        nofile=HIGH_NOFILE)
    wait_port(port, proxy, timeout=60)
    client = procs.start(f"{name}-client", [*program("pushprox-client"), "--proxy-url", url,
                                            *client_tls, *client_args(nginx_port)],
                         nofile=HIGH_NOFILE)  # fmt: skip
    pair = Pair(label, proxy, port, client)
    wait_scrape_ok(proxy, port, client, FQDN, nginx_port)
    return pair


def make_certificate(folder: Path) -> Path | None:
    """A self-signed certificate and key for 127.0.0.1 in `folder`; None without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder


# --------------------------------------------------------------------------- load rounds

#: A figure of one run, its label and digits.
MEASURES: list[tuple[str, Callable[[LoadResult], float | None], int]] = [
    ("scrapes/s", lambda r: r.rate, 0),
    ("p50 ms", lambda r: r.p50_ms, 3),
    ("p99 ms", lambda r: r.p99_ms, 3),
    ("proxy CPU µs/scrape", lambda r: _us(r.per_req("proxy")), 0),
    ("client CPU µs/scrape", lambda r: _us(r.per_req("client")), 0),
    ("other load, cores", lambda r: r.other_cores, 2),
]


def _us(ms: float | None) -> float | None:
    return None if ms is None else ms * 1000


def rounds_cell(values: list[float | None], digits: int) -> str:
    """The median of the rounds' values, then each round's value in parentheses."""
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    each = ", ".join(fmt(v, digits) for v in values)
    return f"{fmt(statistics.median(got), digits)} ({each})"


def ratio_cell(ours: list[float | None], go: list[float | None]) -> str:
    """Median of ours over median of Go's."""
    a, b = ([v for v in vs if v is not None] for vs in (ours, go))
    if not a or not b or not statistics.median(b):
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


@dataclass
class Yardstick:
    """The state of one yardstick section: its pairs, the load runner, the rows."""

    pairs: list[Pair]  # Go's, then ours
    nginx_port: int
    nginx_pids: list[int]
    run_wrk: Callable[[int, int, dict[str, list[int]], str], LoadResult]
    wait_quiet: Callable[[str], None]
    rounds: int
    note: Callable[[str], None]
    rows: list[list[str]] = field(default_factory=list)

    def one_run(self, pair: Pair, page: str, conns: int, what: str) -> LoadResult | None:
        """One measured wrk run on `pair`, None (and a note) if it failed."""
        self.wait_quiet(what)
        try:
            r = self.run_wrk(pair.port, conns, pair.watch(self.nginx_pids),
                             scrape_uri(FQDN, self.nginx_port, page))  # fmt: skip
            pair.check()
        except (BenchError, OSError) as e:
            self.note(f"{what}: {e}")
            return None
        cpu = ", ".join(f"{k} {v / max(1, r.requests) * 1000:.0f} µs"
                        for k, v in r.cpu_ms.items() if k != "nginx")  # fmt: skip
        print(f"  {what}: {r.rate:.0f}/s p50 {r.p50_ms:.3f} ms, per scrape {cpu}",
              file=sys.stderr, flush=True)  # fmt: skip
        return r

    def load(self, page: str, conns: int) -> None:
        """`rounds` alternating rounds of one page and connection count; its table rows."""
        go, ours = self.pairs
        runs: dict[str, list[LoadResult | None]] = {go.label: [], ours.label: []}
        for i in range(self.rounds):
            for pair in (go, ours) if i % 2 == 0 else (ours, go):
                what = f"yardstick {page} c{conns} round {i + 1} {pair.label}"
                runs[pair.label].append(self.one_run(pair, page, conns, what))
        for n, (label, figure, digits) in enumerate(MEASURES):
            values = {k: [None if r is None else figure(r) for r in rs] for k, rs in runs.items()}
            first = f"{page} ({PAGES[page]:,} B)" if n == 0 else ""
            self.rows.append([
                first, str(conns) if n == 0 else "", label,
                rounds_cell(values[go.label], digits), rounds_cell(values[ours.label], digits),
                "-" if label.startswith("other") else ratio_cell(values[ours.label],
                                                                 values[go.label]),
            ])  # fmt: skip
        errors = {k: errors_text([r for r in rs if r is not None]) for k, rs in runs.items()}
        self.rows.append(["", "", "wrk errors, all rounds", errors[go.label],
                          errors[ours.label], "-"])  # fmt: skip


RSS_MOMENTS = [
    ("start", "after start (registered, one scrape)"),
    ("scrapes", "after 1 s of scrapes (wrk -c1, 1k)"),
    ("end", "after all the rounds"),
]


#: A pair's label and its VmRSS readings (moment -> (proxy kB, client kB)).
RssColumn = tuple[str, dict[str, tuple[int, int]]]


def rss_rows(go: Pair, others: list[RssColumn]) -> list[list[str]]:
    """VmRSS of each program at each moment: Go's, then ours with the ratio to Go's."""
    rows = []
    for index, program in enumerate(("proxy", "client")):
        for moment, text in RSS_MOMENTS:
            if moment not in go.rss:
                continue
            base = go.rss[moment][index]
            row = [program if moment == "start" else "", text, mb(base)]
            for _, readings in others:
                kb = readings.get(moment, (0, 0))[index]
                row.append(f"{mb(kb)} ({kb / base:.2f} x)" if kb and base else "-")
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- the section


def _scrape_a_second(w: World, pair: Pair) -> None:
    """wrk -c1 for a second on the 1k page: "a few scrapes" before the second RSS reading."""
    w.wrk.run(pair.port, 1, 1, {}, scrape_uri(FQDN, w.nginx_port, "1k"))


def _memory_only(w: World, label: str, tls: Path | None = None, twistd: bool = False
                 ) -> RssColumn:
    """Start one more pair of ours, read its RSS after start and after scrapes, stop it."""
    try:
        pair = start_ours(w.procs, w.nginx_port, label, tls=tls, twistd=twistd)
    except BenchError as e:
        w.report.note(f"yardstick: {label} did not start: {e}")
        return label, {}
    try:
        pair.note_rss("start")
        _scrape_a_second(w, pair)
        pair.note_rss("scrapes")
    except (BenchError, OSError) as e:
        w.report.note(f"yardstick: {label}: {e}")
    finally:
        w.procs.stop(pair.client)
        w.procs.stop(pair.proxy)
    return label, pair.rss


def section_yardstick(w: World, go_dir: Path) -> None:
    """pushprox against the Go PushProx: alternating wrk rounds, then memory (see the module
    docstring)."""
    error = go_error(go_dir)
    if error:
        raise BenchError(error)
    go = start_go(w.procs, go_dir, w.nginx_port)
    ours = start_ours(w.procs, w.nginx_port, "pushprox")
    pairs = [go, ours]
    for pair in pairs:
        pair.note_rss("start")
    for pair in pairs:
        _scrape_a_second(w, pair)
        pair.note_rss("scrapes")
    own = [p for pair in pairs for p in (pair.proxy.pid, pair.client.pid)]

    def quiet(what: str) -> None:
        wait_quiet([*own, *(p for ps in w.watch().values() for p in ps)],
                   w.mode.quiet_wait, what)

    def run_wrk(port: int, conns: int, watch: dict[str, list[int]], uri: str) -> LoadResult:
        return w.wrk.run(port, conns, w.mode.wrk_seconds, watch, uri)

    ys = Yardstick(pairs, w.nginx_port, w.nginx_pids, run_wrk, quiet, w.mode.one_rounds,
                   w.report.note)
    for page, conns in LOADS:
        for pair in pairs:  # warm-up, not measured
            with contextlib.suppress(BenchError, OSError):
                w.wrk.run(pair.port, 8, w.mode.warmup_seconds, {}, scrape_uri(FQDN, w.nginx_port,
                                                                                page))
        ys.load(page, conns)
    for pair in pairs:
        pair.note_rss("end", settle=False)
        w.procs.stop(pair.client)
        w.procs.stop(pair.proxy)
    w.report.yardstick = ys.rows
    others: list[RssColumn] = [(ours.label, ours.rss)]
    tls = make_certificate(w.procs.tmp / "yardstick-tls")
    if tls is None:
        w.report.note("yardstick: no openssl command, so no figure with TLS")
    else:
        others.append(_memory_only(w, "pushprox with TLS", tls=tls))
    others.append(_memory_only(w, "pushprox under twistd", twistd=True))
    w.report.yardstick_rss_columns = [label for label, _ in others]
    w.report.yardstick_rss = rss_rows(go, others)
