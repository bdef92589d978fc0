#!/usr/bin/env python3
"""Memory given back after start, side by side: the programs as they are (they give back
what start-up freed, ``pushprox.shared.allocator``), without that, and the other ways tried.

    python bench/allocator.py [--variants given-back,kept,...] [--rounds 3] [--seconds 30]

Each round starts one proxy and one client per variant, all at once, on the same nginx
(the bench's 1 KB page), and reads each program's VmRSS (once settled) after start
(registered, one scrape), after a second of scrapes (wrk -c1), after SECONDS of wrk -c1
and after SECONDS more of wrk -c8, with the CPU time (utime + stime) of the proxy and the
client per scrape in those two runs; the variants' order turns every round (each variant
runs first in turn).  Then the medians of the rounds.

The variants (``VARIANTS``):

- ``given-back``: the ``pushprox-proxy`` and ``pushprox-client`` commands as they are;
- ``kept``: the same without giving anything back;
- ``at-import``: ``kept``, with the collection and glibc's ``malloc_trim(0)`` made right after
  the imports, before the service is made and started;
- ``frozen``: ``given-back`` with ``gc.freeze()`` after the collection, before the trim;
- ``trim-threshold``, ``mmap-threshold``, ``arena-max``: ``kept`` with glibc's
  ``M_TRIM_THRESHOLD`` or ``M_MMAP_THRESHOLD`` set to 128 KiB (their default, but fixed:
  no longer raised as the program frees large blocks), or ``M_ARENA_MAX`` to 1, by
  ``mallopt`` before the imports.

The pairs are the commands, started through this file (``--program VARIANT proxy|client
ARGS``), which sets the variant up before the command imports its modules.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

VARIANTS = ("given-back", "kept", "at-import", "frozen", "trim-threshold", "mmap-threshold",
            "arena-max")
#: glibc's mallopt parameters (malloc.h).
MALLOPT = {"trim-threshold": (-1, 128 * 1024), "mmap-threshold": (-3, 128 * 1024),
           "arena-max": (-8, 1)}
#: When VmRSS is read, in the order read.
MOMENTS = ("start", "1 s of scrapes", "c1 run", "c8 run")


def set_up(variant: str) -> None:
    """Prepare this process for ``variant`` before pushprox's modules are imported."""
    import ctypes
    from collections.abc import Callable

    from pushprox import commands
    from pushprox.shared import allocator
    from pushprox.shared.allocator import GivenBack

    if variant in MALLOPT:
        ctypes.CDLL(None).mallopt(*MALLOPT[variant])
    if variant == "given-back":
        return
    shipped = allocator.give_back_freed_memory
    trim = allocator.glibc_malloc_trim

    def frozen(malloc_trim: Callable[[], Callable[[int], int] | None] = trim
               ) -> GivenBack | None:
        gc.collect()
        gc.freeze()
        return shipped(malloc_trim)

    def kept(malloc_trim: Callable[[], Callable[[int], int] | None] = trim) -> GivenBack | None:
        return None

    allocator.give_back_freed_memory = frozen if variant == "frozen" else kept
    if variant == "at-import":
        run = commands.run

        def trimmed_run(options: Any, make_service: Any, argv: list[str] | None = None) -> None:
            shipped()
            run(options, make_service, argv)

        commands.run = trimmed_run


def program(variant: str, which: str, argv: list[str]) -> None:
    """Run ``pushprox-<which>`` with ``argv`` as ``variant``."""
    set_up(variant)
    from pushprox import commands

    sys.argv = [f"pushprox-{which}", *argv]
    commands.proxy() if which == "proxy" else commands.client()


def measure(variants: list[str], rounds: int, seconds: int) -> None:
    """Run the rounds (see the module docstring), print every reading and the medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measurement import Wrk, wait_rss_stable
    from processes import VENV_BIN, Procs, free_port, wait_port
    from services import HIGH_NOFILE, scrape_uri, start_nginx, wait_scrape_ok
    from yardstick import FQDN, Pair, client_args

    python = str(VENV_BIN / "python")
    tmp = Path(tempfile.mkdtemp(prefix="pushprox-allocator-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
    procs = Procs(tmp)
    # (variant, moment) -> [(proxy kB, client kB)]; (variant, conns) -> [(proxy, client µs)]
    rss: dict[tuple[str, str], list[tuple[int, int]]] = {}
    cpu: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        _, nginx_port = start_nginx(procs, tmp)
        wrk = Wrk(nginx_port)
        uri = scrape_uri(FQDN, nginx_port, "1k")
        for number in range(rounds):
            turn = number % len(variants)
            order = variants[turn:] + variants[:turn]
            pairs: dict[str, Pair] = {}
            for variant in order:
                port = free_port()
                proxy = procs.start(f"{variant}-proxy", [
                    python, __file__, "--program", variant, "proxy", "--listen",
                    f"tcp:{port}:interface=127.0.0.1"], nofile=HIGH_NOFILE)
                wait_port(port, proxy, timeout=60)
                client = procs.start(f"{variant}-client", [
                    python, __file__, "--program", variant, "client", "--proxy-url",
                    f"http://127.0.0.1:{port}/", *client_args(nginx_port)], nofile=HIGH_NOFILE)
                wait_scrape_ok(proxy, port, client, FQDN, nginx_port)
                pairs[variant] = Pair(variant, proxy, port, client)

            def note(variant: str, moment: str, pairs: dict[str, Pair] = pairs,
                     number: int = number) -> None:
                pair = pairs[variant]
                reading = (wait_rss_stable(pair.proxy.pid), wait_rss_stable(pair.client.pid))
                rss.setdefault((variant, moment), []).append(reading)
                print(f"round {number + 1}, {variant:14} RSS {moment:14} proxy "
                      f"{reading[0]} kB, client {reading[1]} kB", flush=True)

            for variant in order:
                note(variant, MOMENTS[0])
            for variant in order:
                wrk.run(pairs[variant].port, 1, 1, {}, uri)
                note(variant, MOMENTS[1])
            for conns, moment in ((1, MOMENTS[2]), (8, MOMENTS[3])):
                for variant in order:
                    pair = pairs[variant]
                    result = wrk.run(pair.port, conns, seconds, {
                        "proxy": [pair.proxy.pid], "client": [pair.client.pid]}, uri)
                    scrapes = max(result.requests, 1)
                    per = (result.cpu_ms["proxy"] / scrapes * 1000,
                           result.cpu_ms["client"] / scrapes * 1000)
                    cpu.setdefault((variant, conns), []).append(per)
                    print(f"round {number + 1}, {variant:14} {conns} conn: {result.rate:.0f} "
                          f"scrapes/s, proxy / client CPU {per[0]:.0f} / {per[1]:.0f} µs per "
                          f"scrape, wrk errors {result.error_text()}, other processes "
                          f"{result.other_cores or 0:.2f} cores", flush=True)
                    note(variant, moment)
            for pair in pairs.values():
                procs.stop(pair.client)
                procs.stop(pair.proxy)
    finally:
        procs.stop_all()
    print(f"\nmedians of {rounds} rounds; VmRSS in MB (MiB), proxy / client; wrk -t1 runs of "
          f"{seconds} s in proxy form, 1 KB page")
    print("| variant | " + " | ".join(f"after {m}" for m in MOMENTS)
          + " | CPU per scrape, c1 | CPU per scrape, c8 |")
    print("| --- |" + " --- |" * (len(MOMENTS) + 2))
    for variant in variants:
        cells = []
        for moment in MOMENTS:
            proxy_kb, client_kb = (statistics.median(c) for c in zip(*rss[(variant, moment)],
                                                                      strict=True))
            cells.append(f"{proxy_kb / 1024:.2f} / {client_kb / 1024:.2f}")
        for conns in (1, 8):
            proxy_us, client_us = (statistics.median(c) for c in zip(*cpu[(variant, conns)],
                                                                      strict=True))
            cells.append(f"{proxy_us:.0f} / {client_us:.0f} µs")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    """Measure (see the module docstring), or run one program (``--program``)."""
    if len(sys.argv) > 3 and sys.argv[1] == "--program":
        program(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30, help="per wrk run")
    args = parser.parse_args()
    variants = [variant for variant in args.variants.split(",") if variant]
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}")
    measure(variants, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
