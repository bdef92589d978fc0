#!/usr/bin/env python3
"""Idle-client simulator for the pushprox benchmark.

Opens N raw TCP connections to a pushprox proxy; on connection i it sends

    POST /poll HTTP/1.1
    Content-Length: ...

    idle-i.example

and holds it, like N PushProx clients whose targets nobody scrapes.

Prints one line ``READY {json}`` on stdout once every connection is open and its poll
written, then holds them until stdin is closed (or a line is read from it) or
``--hold`` seconds have passed, closes them all and prints ``DONE {json}``.

When the proxy answers a poll with a 2xx (a bounded long poll ending), that simulated
client polls again on a new connection, as a real one would (at most ``--max-repolls``
times in all).  Any other answer, or a connection the proxy closes, is counted and not
retried: the counts in READY/DONE tell whether the proxy really held N polls.

With ``--reconnect`` each simulated client behaves as a real one whose proxy goes
away: a connection that fails or ends without an answer is tried again after a
jittered exponential backoff (``--retry-initial-wait`` to ``--retry-max-wait``, x1.5,
each wait between half and all of its step, as pushprox's client does), without end;
READY still waits for every first connection.

Raises its own RLIMIT_NOFILE to fit N.  Only connects to the host given (127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import resource
import sys
import time


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.open = 0  # connections currently open
        self.held = 0  # open with a poll written and no answer yet
        self.connected = 0  # successful connects (including re-polls)
        self.connect_failed = 0
        self.connect_retries = 0
        self.status: collections.Counter[str] = collections.Counter()
        self.peer_closed = 0  # closed by the proxy without an answer
        self.repolls = 0
        self.reconnects = 0  # connections tried again after a failure or loss (--reconnect)
        self.attempts: dict[int, int] = {}  # failed attempts in a row, by client
        self.stopping = False
        self.conns: set[PollProtocol] = set()
        self.sem = asyncio.Semaphore(args.concurrency)
        self.pending: set[asyncio.Task[None]] = set()

    def request(self, i: int) -> bytes:
        body = f"{self.args.prefix}{i}.example".encode()
        return (
            b"POST /poll HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"User-Agent: pushprox-bench-idle/1\r\n"
            b"Content-Type: \r\n"
            b"Content-Length: %d\r\n"
            b"\r\n%s" % (self.args.host.encode(), self.args.port, len(body), body)
        )

    def stats(self) -> dict[str, object]:
        return {
            "n": self.args.n,
            "open": self.open,
            "held": self.held,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "connect_retries": self.connect_retries,
            "answers": dict(self.status),
            "peer_closed": self.peer_closed,
            "repolls": self.repolls,
            "reconnects": self.reconnects,
        }

    def backoff(self, i: int) -> float:
        """The next wait of client i: its step, between half and all of it."""
        attempt = self.attempts.get(i, 0)
        self.attempts[i] = attempt + 1
        step = min(self.args.retry_initial_wait * 1.5**attempt, self.args.retry_max_wait)
        return step * (0.5 + random.random() / 2)

    def reconnect_later(self, i: int) -> None:
        """--reconnect: try client i again after its backoff."""
        if self.stopping:
            return
        self.reconnects += 1

        async def again() -> None:
            await asyncio.sleep(self.backoff(i))
            await self.connect_once(i)

        t = asyncio.get_running_loop().create_task(again())
        self.pending.add(t)
        t.add_done_callback(self.pending.discard)

    async def connect_once(self, i: int) -> None:
        """--reconnect: one attempt; a failure schedules the next."""
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        try:
            async with self.sem:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: PollProtocol(self, i), self.args.host, self.args.port
                    ),
                    self.args.connect_timeout,
                )
        except (OSError, asyncio.TimeoutError):
            self.reconnect_later(i)

    async def connect(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(self.args.retries + 1):
            if self.stopping:
                return
            async with self.sem:
                try:
                    await asyncio.wait_for(
                        loop.create_connection(
                            lambda: PollProtocol(self, i), self.args.host, self.args.port
                        ),
                        self.args.connect_timeout,
                    )
                    return
                except (OSError, asyncio.TimeoutError):
                    pass
            if attempt < self.args.retries:
                self.connect_retries += 1
                await asyncio.sleep(0.2 * (attempt + 1))
        self.connect_failed += 1

    def repoll(self, i: int) -> None:
        if self.stopping or self.repolls >= self.args.max_repolls:
            return
        self.repolls += 1
        t = asyncio.get_running_loop().create_task(self.connect(i))
        self.pending.add(t)
        t.add_done_callback(self.pending.discard)


class PollProtocol(asyncio.Protocol):
    def __init__(self, sim: Sim, i: int) -> None:
        self.sim = sim
        self.i = i
        self.buf = b""
        self.answered = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sim.conns.add(self)
        self.sim.open += 1
        self.sim.held += 1
        self.sim.connected += 1
        self.sim.attempts.pop(self.i, None)
        transport.write(self.sim.request(self.i))

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.buf += data
        if b"\r\n" not in self.buf:
            if len(self.buf) > 4096:
                self.buf = self.buf[:4096]
            return
        line = self.buf.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        code = parts[1] if len(parts) > 1 else "?"
        self.answered = True
        self.sim.held -= 1
        self.sim.status[code] += 1
        assert self.transport is not None
        self.transport.close()
        if code.startswith("2"):
            self.sim.repoll(self.i)
        elif self.sim.args.reconnect:
            self.sim.reconnect_later(self.i)  # e.g. the 503 of a proxy shutting down

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.conns.discard(self)
        self.sim.open -= 1
        if not self.answered:
            self.sim.held -= 1
            if not self.sim.stopping:
                self.sim.peer_closed += 1
                if self.sim.args.reconnect:
                    self.sim.reconnect_later(self.i)


async def wait_for_stop(hold: float) -> None:
    loop = asyncio.get_running_loop()
    stdin_done = loop.run_in_executor(None, sys.stdin.readline)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stdin_done, hold)


async def main_async(args: argparse.Namespace) -> None:
    sim = Sim(args)
    t0 = time.monotonic()
    await asyncio.gather(*(sim.connect(i) for i in range(args.n)))
    ready = sim.stats()
    ready["seconds"] = round(time.monotonic() - t0, 3)
    print("READY", json.dumps(ready), flush=True)
    await wait_for_stop(args.hold)
    done = sim.stats()
    sim.stopping = True
    for t in list(sim.pending):
        t.cancel()
    for c in list(sim.conns):
        if c.transport is not None:
            c.transport.abort()
    await asyncio.sleep(0.1)
    print("DONE", json.dumps(done), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=10000, help="number of idle clients")
    p.add_argument("--prefix", default="idle-", help="FQDN = PREFIX<i>.example")
    p.add_argument("--hold", type=float, default=300.0, help="hold at most this long (s)")
    p.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--max-repolls", type=int, default=100000)
    p.add_argument("--reconnect", action="store_true",
                   help="try lost connections again with backoff, without end")
    p.add_argument("--retry-initial-wait", type=float, default=1.0)
    p.add_argument("--retry-max-wait", type=float, default=5.0)
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("this benchmark only talks to the loopback interface")
    got = raise_nofile(args.n + 256)
    if got < args.n + 64:
        print(f"warning: RLIMIT_NOFILE is {got}, below n={args.n}", file=sys.stderr)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
