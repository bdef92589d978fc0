#!/usr/bin/env python3
"""The proxy's or the client's own CPU per scrape, read in its own process.

    python bench/inprocess.py [--baseline REV] [--scrapes N] [--rounds R] [--side client]

Drives the proxy's site over in-memory transports (a client's poll, Prometheus' scrape,
the client's push of a 1 KB page) and reads the process CPU time per scrape.  Unlike the
wrk rows of run.py this figure hardly moves with the rest of the machine's load, so a
change to the proxy's hot path can be compared with another revision (``--baseline``, run
from a temporary git worktree) in alternating rounds of one run; medians are printed.

With ``--side client`` the client is measured instead: a real ``ClientService`` on the
real reactor, over sockets of 127.0.0.1, against a peer process that plays both the proxy
(it hands out one scrape at a time: the next poll is answered once the push has come, as
one Prometheus connection makes it) and the target (a 1 KB page with Content-Length).
Only the client's process CPU time is read.
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


# The client's peer: the proxy's and the target's side, on two ports it prints.
PEER = r'''
import re
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

PAGE = b"".join(b"series_%04d 1\n" % i for i in range(79))[:1024]
TARGET_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE))
PUSH_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)

class Peer(Protocol):
    buffer = b""
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

class Target(Peer):
    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            self.buffer = self.buffer.partition(b"\r\n\r\n")[2]
            self.transport.write(TARGET_ANSWER)

state = {"ready": 1, "held": None}

class Proxy(Peer):
    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            found = LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            if head.startswith(b"POST /poll"):
                if state["ready"]:
                    state["ready"] -= 1
                    self.transport.write(POLL_ANSWER)
                else:
                    state["held"] = self
            else:
                self.transport.write(PUSH_ANSWER)
                held, state["held"] = state["held"], None
                if held is not None:
                    held.transport.write(POLL_ANSWER)
                else:
                    state["ready"] += 1

proxy = reactor.listenTCP(0, Factory.forProtocol(Proxy), interface="127.0.0.1")
target = reactor.listenTCP(0, Factory.forProtocol(Target), interface="127.0.0.1")
SCRAPE = (b"GET http://node1.example:%d/metrics HTTP/1.1\r\nHost: node1.example:%d\r\n"
          b"User-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n"
          b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
          b"Id: 1\r\nX-Prometheus-Scrape-Timeout: 10.000000\r\n\r\n"
          % (target.getHost().port, target.getHost().port))
POLL_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SCRAPE), SCRAPE)
print(proxy.getHost().port, target.getHost().port, flush=True)
reactor.run()
'''

# Runs in a child interpreter whose PYTHONPATH is the revision measured.
MEASURE_CLIENT = r'''
import inspect, subprocess, sys, time
from twisted.internet import reactor
from pushprox.client.service import ClientConfig, ClientService, make_connections
from pushprox.shared.metrics import ClientMetrics

peer = subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=subprocess.PIPE)
proxy_port, target_port = map(int, peer.stdout.readline().split())
count = int(sys.argv[1])
warm = 500
config = ClientConfig(proxy_url=f"http://127.0.0.1:{proxy_port}/", fqdn="node1.example",
                      target_host="127.0.0.1", allow_any=True)
link, targets, pools = make_connections(reactor, config.endpoint("poll"))
parameters = inspect.signature(ClientService).parameters
targets_kw = "target_link" if "target_link" in parameters else "target_agent"
metrics = ClientMetrics()
service = ClientService(config, reactor=reactor, proxy_link=link, metrics=metrics,
                        pools=pools, **{targets_kw: targets})
counted = [0, 0.0]
started_inc = metrics.scrapes.inc

def inc(amount=1.0):
    started_inc(amount)
    counted[0] += 1
    if counted[0] == warm:
        counted[1] = time.process_time()
    elif counted[0] == warm + count:
        print((time.process_time() - counted[1]) / count * 1e6, flush=True)
        peer.kill()
        reactor.stop()

metrics.scrapes.inc = inc
service.startService()
reactor.run()
'''


def measure(tree: Path, scrapes: int, side: str = "proxy") -> float:
    """Microseconds of CPU per scrape for the pushprox in ``tree``."""
    argv = ([sys.executable, "-c", MEASURE, str(scrapes)] if side == "proxy"
            else [sys.executable, "-c", MEASURE_CLIENT, str(scrapes), PEER])
    done = subprocess.run(argv, cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> None:
    """Alternate rounds of this tree and the baseline; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision measured beside this tree")
    parser.add_argument("--scrapes", type=int, default=5000, help="scrapes per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each tree")
    parser.add_argument("--side", choices=("proxy", "client"), default="proxy",
                        help="the program measured (default: proxy)")
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
                    results[name].append(measure(tree, args.scrapes, args.side))
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(Path(temp) / "baseline")], check=False, capture_output=True)
    print(f"| tree | {args.side} CPU µs per scrape, median of {args.rounds} | rounds |")
    print("| --- | --- | --- |")
    for name, values in results.items():
        rounds = ", ".join(f"{value:.0f}" for value in values)
        print(f"| {name} | {statistics.median(values):.0f} | {rounds} |")


if __name__ == "__main__":
    main()
