#!/usr/bin/env python3
"""pushprox benchmark: scrapes through pushprox vs. directly against nginx.

    python bench/run.py [--quick] [--profile DIR] [--breakdown] [--keep] [--baseline REV]
                        [--go DIR] [--only SECTION]

Starts (all on 127.0.0.1, ports chosen free, each process in its own working
directory under one temp dir, everything stopped at the end, also on Ctrl-C):

- nginx (Debian's), its own generated config, serving static exposition-like pages
  /1k, /57k and /10m: the target, fast enough not to be the bottleneck;
- `twistd -n pushprox-proxy` and `twistd -n pushprox-client` as real processes;
- wrk (load), curl (10 MB page), bench/idle_clients.py (10,000 idle polls, and
  5,000 clients that reconnect after a proxy restart);
- tests/soak.py (scrapes, churn, bad inputs and faults for 30 minutes).

Prints one Markdown report and writes it to bench/results.md (see bench/README.md
for what each row means).  The proxied rows need the pushprox twistd plugins; when
they are missing or fail, the direct rows are still measured and the report says
exactly what failed.

This file holds the command line and the order of the sections; scenarios.py says
what each section runs, measurement.py how it is measured, services.py how nginx and
pushprox are started, processes.py how every child is started and stopped, and
report.py how the results are written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from breakdown import section_breakdown
from faults import section_soak, section_storm
from measurement import MachineCpu
from processes import BENCH, BenchError, Procs
from report import Report, machine_header
from scenarios import (
    Mode,
    World,
    remove_baseline_checkout,
    run_section,
    section_big,
    section_client_memory,
    section_cluster,
    section_idle,
    section_one_connection,
    section_profile,
    section_throughput,
    start_world,
)
from yardstick import section_yardstick

SECTIONS = [
    "yardstick", "throughput", "one", "breakdown", "big", "idle", "memory", "cluster", "storm",
    "soak",
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    """The command line (see bench/README.md)."""
    ap = argparse.ArgumentParser(description="pushprox benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="shorter runs, 10,000 scrapes")
    ap.add_argument("--idle", type=int, help="number of idle clients (default 10,000)")
    ap.add_argument("--scrapes", type=int, help="scrapes for the client memory row")
    ap.add_argument("--storm", type=int, help="simulated clients in the reconnect storm "
                    "(default 5,000)")
    ap.add_argument("--soak-seconds", type=float,
                    help="length of the soak (default 1800; 120 with --quick)")
    ap.add_argument("--one-rounds", type=int, default=3, metavar="N",
                    help="alternating rounds of the one-connection section (default 3)")
    ap.add_argument("--output", default=str(BENCH / "results.md"), help="Markdown file")
    ap.add_argument("--profile", metavar="DIR", help="also py-spy the proxy and client")
    ap.add_argument(
        "--breakdown", action="store_true",
        help="where a scrape's CPU goes at one connection (py-spy, strace); on with --profile",
    )  # fmt: skip
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
        "--go", metavar="DIR",
        help="first measure against the Go PushProx built in DIR (its pushprox-proxy and "
        "pushprox-client), side by side in alternating rounds",
    )  # fmt: skip
    ap.add_argument(
        "--skip", action="append", default=[],
        choices=SECTIONS, help="skip a section",
    )  # fmt: skip
    ap.add_argument(
        "--only", action="append", default=[], choices=SECTIONS,
        help="run only this section (repeatable)",
    )  # fmt: skip
    return ap.parse_args()


def sections(
    w: World, profile: str | None, breakdown: bool, go: str | None
) -> list[tuple[str, Callable[[], None]]]:
    """The sections in the order they run: the yardstick first (the machine is at its
    quietest), the shared pair's next, the fresh processes' last."""
    steps: list[tuple[str, Callable[[], None]]] = []
    if go:
        steps.append(("yardstick", lambda: section_yardstick(w, Path(go))))
    steps += [
        ("throughput", lambda: section_throughput(w)),
        ("one", lambda: section_one_connection(w)),
    ]
    if profile or breakdown:
        steps.append(("breakdown", lambda: section_breakdown(w, profile)))
    steps += [
        ("big", lambda: section_big(w)),
        ("memory", lambda: section_client_memory(w)),
        ("cluster", lambda: section_cluster(w)),
    ]
    if profile:
        steps.append(("profile", lambda: section_profile(w, Path(profile))))
    steps.append(("idle", lambda: section_idle(w)))
    steps.append(("storm", lambda: section_storm(w)))
    steps.append(("soak", lambda: section_soak(w)))
    return steps


def stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all end the run through KeyboardInterrupt (and cleanup)."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)


def main() -> int:
    """Run the sections, print the report and write it; 1 if aborted or interrupted."""
    args = parse_args()
    mode = Mode.make(args.quick, args.idle, args.scrapes, args.storm, args.soak_seconds)
    mode.quiet_wait = args.quiet_wait
    mode.one_rounds = args.one_rounds
    report = Report(mode, baseline=args.baseline, go_dir=args.go)
    stop_on_signals()
    start = MachineCpu.now()
    tmp = Path(tempfile.mkdtemp(prefix="pushprox-bench-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
    baseline_checkout = tmp / "baseline-checkout"
    procs = Procs(tmp)
    failed = False
    try:
        report.header = machine_header()
        print("\n".join(report.header), file=sys.stderr, flush=True)
        w = start_world(procs, report, mode, args.baseline, baseline_checkout)
        for name, section in sections(w, args.profile, args.breakdown, args.go):
            if name not in args.skip and (not args.only or name in args.only):
                run_section(w, name, section)
    except KeyboardInterrupt:
        report.interrupted = True
    except BenchError as e:
        failed = True
        report.note(f"benchmark aborted: {e}")
    finally:
        procs.stop_all()
        if args.baseline:
            remove_baseline_checkout(baseline_checkout)
        # Every child has been waited for now, so its CPU is in own_cpu_seconds().
        end = MachineCpu.now()
        report.header.append(
            f"Run took {end.seconds_since(start) / 60:.1f} min; processes not started by the "
            f"benchmark used {max(0.0, end.other_cores_since(start)):.2f} cores on average "
            f"meanwhile (machine has {os.cpu_count()})"
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
