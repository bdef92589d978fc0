#!/usr/bin/env python3
"""Twisted's reactors side by side: pushprox on its default (epoll) reactor, on Twisted's
asyncio reactor over asyncio's own loop, and on it over uvloop.

    python bench/reactors.py [--reactors default,uvloop,asyncio] [--rounds 5] [--seconds 10]

One proxy and one client per reactor, all running at once on the same nginx (the bench's
1 KB page); wrk in proxy form at one and at eight connections against each pair in
alternating rounds (the order reversed every other round).  Per run: scrapes/s, p50, and
the CPU time (utime + stime) of the proxy and of the client per scrape; then the medians.
uvloop is not a dependency of pushprox: the uvloop pair needs it installed in the venv
(``pip install uvloop``) and is left out, with a line saying so, when it is not.

The pairs are the ``pushprox-proxy`` and ``pushprox-client`` commands, started through this
file (``--program proxy|client ARGS``), which installs the reactor asked for before the
command imports its modules.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

#: The environment variable that tells a started program which reactor to install.
REACTOR_VARIABLE = "PUSHPROX_BENCH_REACTOR"
REACTORS = ("default", "uvloop", "asyncio")


def install_reactor(kind: str) -> None:
    """Install Twisted's asyncio reactor on uvloop's or asyncio's loop; nothing for
    ``default``."""
    if kind == "default":
        return
    import asyncio

    from twisted.internet import asyncioreactor

    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def program(which: str, argv: list[str]) -> None:
    """Run ``pushprox-<which>`` with ``argv`` on the reactor the environment names."""
    install_reactor(os.environ.get(REACTOR_VARIABLE, "default"))
    from pushprox import commands

    sys.argv = [f"pushprox-{which}", *argv]
    commands.proxy() if which == "proxy" else commands.client()


def measure(kinds: list[str], rounds: int, seconds: int) -> None:
    """Start a pair per reactor, run the alternating rounds, print every run and the
    medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measurement import Wrk
    from processes import ENV, VENV_BIN, Procs, free_port, wait_port
    from services import HIGH_NOFILE, scrape_uri, start_nginx, wait_scrape_ok
    from yardstick import FQDN, Pair, client_args

    python = str(VENV_BIN / "python")
    tmp = Path(tempfile.mkdtemp(prefix="pushprox-reactors-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
    procs = Procs(tmp)
    try:
        _, nginx_port = start_nginx(procs, tmp)
        wrk = Wrk(nginx_port)
        pairs: dict[str, Pair] = {}
        for kind in kinds:
            env = dict(ENV, **{REACTOR_VARIABLE: kind})
            port = free_port()
            proxy = procs.start(f"{kind}-proxy", [
                python, __file__, "--program", "proxy", "--listen",
                f"tcp:{port}:interface=127.0.0.1"], nofile=HIGH_NOFILE, env=env)
            wait_port(port, proxy, timeout=60)
            client = procs.start(f"{kind}-client", [
                python, __file__, "--program", "client", "--proxy-url",
                f"http://127.0.0.1:{port}/", *client_args(nginx_port)],
                nofile=HIGH_NOFILE, env=env)
            wait_scrape_ok(proxy, port, client, FQDN, nginx_port)
            pairs[kind] = Pair(kind, proxy, port, client)
        uri = scrape_uri(FQDN, nginx_port, "1k")
        for pair in pairs.values():  # warm-up, not measured
            wrk.run(pair.port, 8, 3, {}, uri)
        runs: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {
            (kind, conns): [] for kind in kinds for conns in (1, 8)}
        for number in range(rounds):
            order = kinds if number % 2 == 0 else kinds[::-1]
            for conns in (1, 8):
                for kind in order:
                    pair = pairs[kind]
                    result = wrk.run(pair.port, conns, seconds, {
                        "proxy": [pair.proxy.pid], "client": [pair.client.pid]}, uri)
                    scrapes = max(result.requests, 1)
                    row = (result.rate, result.p50_ms, result.cpu_ms["proxy"] / scrapes,
                           result.cpu_ms["client"] / scrapes)
                    runs[(kind, conns)].append(row)
                    print(f"round {number + 1}, {conns} conn, {kind:8} {row[0]:7.0f} scrapes/s"
                          f"  p50 {row[1]:.3f} ms  proxy / client CPU {row[2] * 1000:.0f} / "
                          f"{row[3] * 1000:.0f} µs per scrape  wrk errors {result.error_text()}"
                          f"  other processes {result.other_cores or 0:.2f} cores", flush=True)
        print(f"\nmedians of {rounds} rounds of {seconds} s, wrk -t1 in proxy form, 1 KB page")
        print("| connections | reactor | scrapes/s | p50 | proxy / client CPU per scrape |")
        print("| --- | --- | --- | --- | --- |")
        for conns in (1, 8):
            for kind in kinds:
                rate, p50, proxy_ms, client_ms = (
                    statistics.median(column) for column in zip(*runs[(kind, conns)],
                                                                strict=True))
                print(f"| {conns} | {kind} | {rate:,.0f} | {p50:.3f} ms | "
                      f"{proxy_ms * 1000:.0f} / {client_ms * 1000:.0f} µs |")
    finally:
        procs.stop_all()


def main() -> None:
    """Measure (see the module docstring), or run one program (``--program``)."""
    if len(sys.argv) > 2 and sys.argv[1] == "--program":
        program(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reactors", default=",".join(REACTORS),
                        help="comma-separated, of: " + ", ".join(REACTORS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    args = parser.parse_args()
    kinds = [kind for kind in args.reactors.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in REACTORS]
    if unknown:
        parser.error(f"unknown reactor {', '.join(unknown)}")
    if "uvloop" in kinds and importlib.util.find_spec("uvloop") is None:
        print("uvloop is not installed (pip install uvloop): measuring without it")
        kinds.remove("uvloop")
    measure(kinds, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
