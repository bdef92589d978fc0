"""
A soak: mixed scrapes, client churn, bad inputs and faults against one real proxy, with
the resident memory and open file descriptors of the proxy and of a long-lived client
sampled as it runs.

``tests/test_soak.py`` runs a short one and asserts that both stay flat; the benchmark
runs it for 30 minutes and reports the samples::

    python -m tests.soak --seconds 1800

prints one ``SOAK {json}`` line at the end: the samples, the scrapes by status and the
rounds played.  Each round: good scrapes of a client behind the fault-injecting relay
and of one connected directly, a scrape of an unknown client, a path the client refuses,
five kinds of bad input, and in turn one fault (every connection reset, a push cut off
in the middle of its body, the churning client killed with SIGKILL and started again).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.faultrelay import FaultRelay
from tests.harness.exporter import Page
from tests.harness.rawhttp import (
    http_request_bytes,
    raw_http,
    scrape_request,
    scrape_via_proxy,
)
from tests.harness.stack import Client, Stack
from tests.harness.waiting import wait_for

#: A page of about 600 KB: many writes, so that a cut lands in the middle of its body.
LARGE = b"".join(b'soak_series{instance="%06d"} %d\n' % (i, i) for i in range(20000))
PAGES = {
    "/metrics": Page(b"soak_up 1\n" * 50, [("Content-Type", "text/plain")]),
    "/large": Page(LARGE, [("Content-Type", "text/plain")]),
}
STEADY = "steady.example"
CHURN = "churn.example"


def status_kb(pid: int, key: str) -> int:
    """A kB figure of ``/proc/PID/status``: ``VmRSS``, ``VmHWM``…"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` in kB."""
    return status_kb(pid, "VmRSS")


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    """The proxy's and the steady client's memory and descriptors after a round."""

    round: int
    seconds: float
    proxy_rss_kb: int
    proxy_fds: int
    client_rss_kb: int
    client_fds: int


@dataclass
class Soak:
    """One proxy, a client behind the relay, a client that churns, and what they did."""

    stack: Stack
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: list[Sample] = field(default_factory=list)
    rounds: int = 0
    #: Pushes cut off in the middle of their body.
    cuts: int = 0

    def __post_init__(self) -> None:
        self.exporter = self.stack.exporter("pages", pages=PAGES)
        self.proxy = self.stack.proxy(extra=["--client-silence-timeout", "2"])
        self.relay = FaultRelay(self.proxy.port, self.stack)
        paths = [arg for path in PAGES for arg in ("--allow-path", path)]
        self.steady = self.stack.client(
            self.proxy, STEADY, [self.exporter.port], wait=False,
            proxy_url=f"http://127.0.0.1:{self.relay.port}/",
            extra=[*paths, "--poll-timeout", "2", "--poll-grace", "2"])
        self.churn = self.start_churn()
        self.started = time.monotonic()
        self.wait_scrapes_work(STEADY)

    def start_churn(self) -> Client:
        """The client that is killed and started again, under a new process name each time."""
        name = f"client-{CHURN}-{self.rounds}"
        return self.stack.client(self.proxy, CHURN, [self.exporter.port], name=name,
                                 wait=False)

    def url(self, fqdn: str, path: str = "/metrics") -> str:
        """A scrape of ``fqdn``'s exporter page ``path``."""
        return f"http://{fqdn}:{self.exporter.port}{path}"

    def scrape(self, fqdn: str, path: str = "/metrics", timeout: float = 5.0) -> int:
        """One scrape through the proxy; its status, counted (0: the connection failed)."""
        try:
            status = scrape_via_proxy(self.proxy.port, self.url(fqdn, path),
                                      timeout=timeout).status
        except (OSError, AssertionError):
            status = 0
        self.statuses[f"{fqdn.split('.')[0]} {path} {status}"] += 1
        return status

    def wait_scrapes_work(self, fqdn: str) -> None:
        """Until a scrape of ``fqdn`` succeeds (after a fault, or a restart)."""
        wait_for(lambda: self.scrape(fqdn, timeout=2.0) == 200, timeout=60, interval=0.2,
                 what=f"scrapes of {fqdn} to work",
                 watch=[self.proxy.process, self.steady.process])

    def bad_inputs(self) -> None:
        """Requests that must each get a 4xx, counted by their status."""
        large_head = [("X-Filler", "x" * 20000)]
        for what, request in (
            ("malformed", b"GET\r\n\r\n"),
            ("oversized head", http_request_bytes("GET", "/metrics", large_head)),
            ("push of an unknown scrape", http_request_bytes(
                "POST", "/push", body=b"HTTP/1.1 200 OK\r\nId: no-such-id\r\n\r\n")),
            ("poll without a name", http_request_bytes("POST", "/poll", body=b"")),
            ("connect", b"CONNECT node:443 HTTP/1.1\r\nHost: node:443\r\n\r\n"),
        ):
            try:
                status = raw_http(self.proxy.port, request, timeout=5).status
            except (OSError, AssertionError):
                status = 0
            self.statuses[f"bad input {status}"] += 1
            if not 400 <= status < 500:
                raise AssertionError(f"{what}: answered {status}, not a 4xx")

    def cut_push(self) -> None:
        """A push cut off in the middle of its body; the scraper reads what it gets."""
        self.relay.command("cut up 100000")
        self.cuts += 1
        request = scrape_request(self.url(STEADY, "/large"), 5.0)
        try:
            with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as sock:
                sock.sendall(request)
                while sock.recv(65536):
                    pass
        except OSError:
            pass
        self.relay.command("pass both")

    def fault(self) -> None:
        """This round's fault, in turn."""
        kind = self.rounds % 3
        if kind == 0:
            self.relay.command("reset")
        elif kind == 1:
            self.cut_push()
        else:
            self.churn.process.kill()
            self.stack.forget(self.churn.process)
            self.churn = self.start_churn()

    def round(self) -> None:
        """Scrapes of every kind, bad inputs, a fault, and the steady client back."""
        for _ in range(5):
            self.scrape(STEADY)
        self.scrape(STEADY, "/large")
        self.scrape(CHURN, timeout=2.0)
        if self.scrape("nobody.example", timeout=2.0) != 404:
            raise AssertionError("a scrape of an unknown client did not get its 404")
        if self.scrape(STEADY, "/forbidden") != 502:
            raise AssertionError("a path the client refuses did not get its 502")
        self.bad_inputs()
        self.fault()
        self.wait_scrapes_work(STEADY)
        self.rounds += 1
        self.samples.append(self.sample())

    def sample(self) -> Sample:
        """Memory and descriptors of the proxy and the steady client now."""
        proxy, client = self.proxy.process.pid, self.steady.process.pid
        assert proxy is not None and client is not None
        return Sample(self.rounds, round(time.monotonic() - self.started, 1),
                      rss_kb(proxy), open_fds(proxy), rss_kb(client), open_fds(client))

    def settled_fds(self, baseline: Sample, slack: int) -> Sample:
        """
        A sample whose descriptor counts are within ``slack`` of ``baseline``'s, once
        connections a fault left behind have closed (or the last one taken).
        """
        def settled() -> Sample | None:
            now = self.sample()
            return now if (now.proxy_fds <= baseline.proxy_fds + slack
                           and now.client_fds <= baseline.client_fds + slack) else None

        try:
            return wait_for(settled, timeout=30, what="descriptors to settle", interval=0.5)
        except AssertionError:
            return self.sample()


def main() -> None:
    """Run a soak for ``--seconds`` and print its figures as one ``SOAK {json}`` line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800.0)
    args = parser.parse_args()
    # SIGTERM ends the soak through ``finally``, so that its processes are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    tmp = Path(tempfile.mkdtemp(prefix="pushprox-soak-"))
    stack = Stack(tmp)
    try:
        soak = Soak(stack)
        first = soak.sample()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            soak.round()
            print(f"round {soak.rounds}: {soak.samples[-1]}", file=sys.stderr, flush=True)
        last = soak.settled_fds(first, 0)
        print("SOAK " + json.dumps({
            "rounds": soak.rounds,
            "first": first.__dict__,
            "samples": [sample.__dict__ for sample in soak.samples],
            "settled": last.__dict__,
            "statuses": dict(soak.statuses),
        }), flush=True)
    finally:
        stack.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
