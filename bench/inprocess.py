#!/usr/bin/env python3
"""The proxy's own CPU per scrape, in process: no sockets, no other program in the way.

    python bench/inprocess.py [--baseline REV] [--scrapes N] [--rounds R]

Drives the proxy's site over in-memory transports (a client's poll, Prometheus' scrape,
the client's push of a 1 KB page) and reads the process CPU time per scrape.  Unlike the
wrk rows of run.py this figure hardly moves with the rest of the machine's load, so a
change to the proxy's hot path can be compared with another revision (``--baseline``, run
from a temporary git worktree) in alternating rounds of one run; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in a child interpreter whose PYTHONPATH is the revision measured.
MEASURE = r'''
import re, sys, time
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from pushprox.shared import wire
from pushprox.proxy.coordinator import Coordinator
from pushprox.proxy.site import PushProxSite

clock = Clock()
site = PushProxSite(Coordinator(clock), clock=clock)

def connect():
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport

scraper, scraper_out = connect()
client, client_out = connect()
pusher, pusher_out = connect()
POLL = (b"POST /poll HTTP/1.1\r\nHost: proxy\r\nUser-Agent: pushprox-client/0.1.0\r\n"
        b"X-PushProx-Poll-Timeout: 25\r\nX-PushProx-Labels: \r\n"
        b"Content-Length: 13\r\n\r\nnode1.example")
SCRAPE = (b"GET http://node1.example:9100/metrics HTTP/1.1\r\nHost: node1.example:9100\r\n"
          b"User-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n"
          b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")
PAGE = b"x" * 1024
ID = re.compile(rb"\r\nId: ([0-9a-f.-]+)\r\n")

def one_scrape():
    client.dataReceived(POLL)
    scraper.dataReceived(SCRAPE)
    scrape_id = ID.search(client_out.value()).group(1).decode()
    client_out.clear()
    body = wire.encode_response_head(
        status=200, reason=b"OK", headers=[(b"Content-Type", b"text/plain; version=0.0.4")],
        scrape_id=scrape_id, length=len(PAGE)) + PAGE
    pusher.dataReceived(b"POST /push HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))
    answer = scraper_out.value()
    assert b" 200 " in answer.split(b"\r\n", 1)[0] and answer.endswith(PAGE), answer[:200]
    scraper_out.clear()
    pusher_out.clear()

count = int(sys.argv[1])
for _ in range(500):
    one_scrape()
started = time.process_time()
for _ in range(count):
    one_scrape()
print((time.process_time() - started) / count * 1e6)
'''


def measure(tree: Path, scrapes: int) -> float:
    """Microseconds of CPU per scrape for the pushprox in ``tree``."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(scrapes)], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> None:
    """Alternate rounds of this tree and the baseline; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision measured beside this tree")
    parser.add_argument("--scrapes", type=int, default=5000, help="scrapes per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each tree")
    args = parser.parse_args()
    trees = {"this tree": REPO}
    with tempfile.TemporaryDirectory(prefix="pushprox-inprocess-") as temp:
        if args.baseline:
            worktree = Path(temp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach",
                            str(worktree), args.baseline], check=True, capture_output=True)
            trees[f"baseline {args.baseline}"] = worktree
        try:
            results: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    results[name].append(measure(tree, args.scrapes))
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(Path(temp) / "baseline")], check=False, capture_output=True)
    print(f"| tree | proxy CPU µs per scrape, median of {args.rounds} | rounds |")
    print("| --- | --- | --- |")
    for name, values in results.items():
        rounds = ", ".join(f"{value:.0f}" for value in values)
        print(f"| {name} | {statistics.median(values):.0f} | {rounds} |")


if __name__ == "__main__":
    main()
