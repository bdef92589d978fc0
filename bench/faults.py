"""The sections about faults: a proxy restart with thousands of clients, and the soak.

*Reconnect storm*: a fresh proxy with ``--storm`` simulated clients (``idle_clients.py
--reconnect``: each one comes back after a jittered backoff, as a real client does) and
20 real clients; the proxy is stopped and started again on the same port; the rows say
how long until every client is registered again, the new proxy's peak memory and CPU, and
what scrapes of the real clients saw meanwhile.

*Soak*: ``tests/soak.py`` (rounds of mixed scrapes, client churn, bad inputs and faults
through the tests' fault-injecting relay) for ``--soak-seconds``, with the memory and
descriptors of the proxy and of a long-lived client at its start, their highest and
once it settled at the end.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from measurement import Background, CpuSampler, RssSampler, rss_kb, status_kb
from processes import ENV, REPO, BenchError, Proc, http_get, read_tagged_line
from report import fmt, mb
from services import scrape_uri, start_client, start_proxy, wait_listed

if TYPE_CHECKING:
    from scenarios import World

#: Real clients in the storm, besides the simulated ones.
STORM_REAL = 20
#: Scrapes go on this long after every client is back.
STORM_AFTER = 5.0
#: How long the proxy stays down between its stop and its start.
STORM_DOWN = 1.0


@dataclass
class ScrapeRecord:
    """One scrape during the storm."""

    at: float
    fqdn: str
    status: int  # 0: the connection failed
    seconds: float


@dataclass
class StormScraper(Background):
    """Scrapes the real clients one after another in a thread, as Prometheus would."""

    port: int
    nginx_port: int
    fqdns: list[str]
    records: list[ScrapeRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._prepare()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            fqdn = self.fqdns[index % len(self.fqdns)]
            index += 1
            started = time.monotonic()
            try:
                status, _ = http_get(self.port, scrape_uri(fqdn, self.nginx_port, "1k"),
                                     f"{fqdn}:{self.nginx_port}", 5.0)
            except (OSError, http.client.HTTPException):
                status = 0
                self._stop.wait(0.05)  # the proxy is not listening: do not spin
            self.records.append(ScrapeRecord(started, fqdn, status,
                                             time.monotonic() - started))

    def summary(self) -> dict[str, Any]:
        """Scrapes before and after each client was back, and the latency once back."""
        back: dict[str, float] = {}
        before_back = after_back = 0
        latencies = []
        for record in self.records:
            if record.status == 200:
                back.setdefault(record.fqdn, record.at)
            if record.fqdn in back:
                if record.status == 200:
                    latencies.append(record.seconds * 1000)
                else:
                    after_back += 1
            else:
                before_back += 1
        latencies.sort()
        return {
            "scrapes": len(self.records),
            "failed_before_back": before_back,
            "failed_after_back": after_back,
            "back": back,
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
        }


def section_storm(w: World) -> None:
    """Stop and start the proxy under --storm simulated and 20 real clients."""
    n = w.mode.storm_n
    if w.proxy_error or w.client_error:
        w.report.storm.append(["reconnect storm", "not run (see notes)"])
        return
    procs = w.procs
    started: list[Proc] = []
    total = n + STORM_REAL
    try:
        proxy, port = start_proxy(procs, "proxy-storm")
        started.append(proxy)
        real = [f"storm-real-{i}.example" for i in range(STORM_REAL)]
        for fqdn in real:
            started.append(start_client(procs, port, w.nginx_port, fqdn))
        sim = procs.start(
            "storm-clients",
            [sys.executable, str(REPO / "bench" / "idle_clients.py"), "--port", str(port),
             "-n", str(n), "--prefix", "storm-sim-", "--reconnect", "--hold", "3600",
             "--concurrency", "256"],
            nofile=n + 1024, pipes=True,
        )  # fmt: skip
        started.append(sim)
        read_tagged_line(sim, "READY", timeout=300)
        listed = wait_listed(port, "storm-", total, timeout=120)
        if listed != total:
            raise BenchError(f"only {listed} of {total} clients registered before the restart")
        rss_before = rss_kb(proxy.pid)

        stopping = time.monotonic()
        procs.stop(proxy)
        time.sleep(STORM_DOWN)
        proxy, _ = start_proxy(procs, "proxy-storm-again", port=port)
        started.append(proxy)
        listening = time.monotonic()
        with StormScraper(port, w.nginx_port, real) as scraper, \
                RssSampler({"proxy": proxy.pid}, interval=0.05) as memory, \
                CpuSampler(proxy.pid) as cpu:  # fmt: skip
            listed = wait_listed(port, "storm-", total, timeout=300)
            all_back = time.monotonic() - listening
            time.sleep(STORM_AFTER)
        hwm = status_kb(proxy.pid, "VmHWM")
        rss_after = rss_kb(proxy.pid)
        scrapes = scraper.summary()
        real_back = max(scrapes["back"].values(), default=listening) - listening
    except (BenchError, OSError, KeyError) as e:
        w.report.storm.append(["reconnect storm", "failed (see notes)"])
        w.report.note(f"reconnect storm: {e}")
        return
    finally:
        for p in reversed(started):
            procs.stop(p)
    w.report.storm += [
        ["clients registered before the restart", f"{n:,} simulated + {STORM_REAL} real"],
        ["proxy down (SIGTERM → listening again)", f"{listening - stopping:.1f} s"],
        ["**time until every client is registered again**",
         f"**{all_back:.1f} s** ({listed:,} of {total:,} listed)"
         if listed == total else f"not all back in 300 s: {listed:,} of {total:,}"],
        [f"time until the {STORM_REAL} real clients are all scraped again",
         f"{real_back:.1f} s ({len(scrapes['back'])} of {STORM_REAL} back)"],
        ["proxy RSS before the restart (all clients held) → after the storm",
         f"{mb(rss_before)} → {mb(rss_after)} MB"],
        ["**proxy peak RSS during the storm** (sampled every 50 ms; VmHWM)",
         f"**{mb(memory.peak['proxy'])} MB**; {mb(hwm)} MB"],
        ["proxy CPU during the storm: total; busiest 0.5 s",
         f"{cpu.cpu_seconds:.1f} s; {cpu.peak_percent:.0f} % of a core"],
        ["scrapes of the real clients during the storm (one after another)",
         f"{scrapes['scrapes']:,}"],
        ["failed before their client was back (refused while down, then 404)",
         f"{scrapes['failed_before_back']:,}"],
        ["**failed after their client was back**", f"**{scrapes['failed_after_back']:,}**"],
        ["p50 / p99 of the scrapes once their client was back",
         f"{fmt(scrapes['p50_ms'])} / {fmt(scrapes['p99_ms'])} ms"],
    ]  # fmt: skip


def section_soak(w: World) -> None:
    """tests/soak.py for --soak-seconds: memory and descriptors of both programs."""
    seconds = w.mode.soak_seconds
    try:
        soak = w.procs.start(
            "soak", [sys.executable, "-m", "tests.soak", "--seconds", str(seconds)],
            pipes=True, env=dict(ENV, PYTHONPATH=str(REPO)),
        )
        try:
            result = read_tagged_line(soak, "SOAK", timeout=seconds + 600)
            soak.popen.wait(120)  # it stops its own processes after the SOAK line
        finally:
            w.procs.stop(soak)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        w.report.soak.append(["soak", "failed (see notes)"])
        w.report.note(f"soak: {e}")
        return
    first, last, samples = result["first"], result["settled"], result["samples"]

    def figure(key: str, unit: str) -> str:
        highest = max(sample[key] for sample in samples) if samples else first[key]
        show = mb if unit == "MB" else (lambda value: f"{value:,}")
        return f"{show(first[key])} → {show(highest)} → {show(last[key])} {unit}"

    statuses = result["statuses"]
    failed = {key: count for key, count in statuses.items()
              if key.startswith(("steady", "churn")) and not key.endswith(" 200")
              and "/forbidden" not in key}  # the refused path's 502 is the expected answer
    w.report.soak += [
        ["rounds played (each: 9 scrapes, 5 bad inputs, one fault)",
         f"{result['rounds']:,} in {seconds / 60:.1f} min"],
        ["**proxy RSS**: start → highest → end", f"**{figure('proxy_rss_kb', 'MB')}**"],
        ["**proxy open fds**: start → highest → end", f"**{figure('proxy_fds', 'fds')}**"],
        ["**client RSS**: start → highest → end", f"**{figure('client_rss_kb', 'MB')}**"],
        ["**client open fds**: start → highest → end", f"**{figure('client_fds', 'fds')}**"],
        ["scrapes of the two clients that did not get 200 (faults, restarts)",
         ", ".join(f"{key}: {count:,}" for key, count in sorted(failed.items())) or "none"],
        ["bad inputs answered 4xx",
         f"{sum(c for k, c in statuses.items() if k.startswith('bad input 4')):,} of "
         f"{sum(c for k, c in statuses.items() if k.startswith('bad input')):,}"],
    ]  # fmt: skip
