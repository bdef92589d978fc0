"""
A fault-injecting TCP relay, run as a helper process between a client and the proxy.

``python tests/faultrelay.py TARGET_PORT PORTS_FILE`` listens on two free ports of
127.0.0.1 and writes ``RELAY CONTROL`` into PORTS_FILE: connections to RELAY are relayed
to TARGET_PORT; CONTROL takes one command per line and answers ``ok`` (or ``error: …``):

- ``pass DIR``: relay normally (new connections; a blackholed one stays dead, as a
  connection that a NAT or firewall forgot does when the link comes back);
- ``blackhole DIR``: bytes in DIR vanish, nothing is closed, no FIN, no RST: every
  connection that carries a byte in DIR while this holds is dead for good;
- ``delay DIR SECONDS``: bytes in DIR arrive SECONDS late;
- ``throttle DIR BYTES_PER_SECOND``: bytes in DIR trickle at that rate, the sender
  paused while it waits (TCP flow control, as a slow link gives);
- ``cut DIR BYTES``: after BYTES more bytes in DIR, close both sides (FIN);
- ``reset``: abort every open connection at once (RST);
- ``connections``: answers the number of open relayed connections;
- ``bytes DIR``: answers how many bytes have been relayed in DIR (``up`` or ``down``).

Bytes keep their order whatever the faults (bytes passed after a delay wait for the
delayed ones), and the relay passes flow control on: a side that does not read pauses
the other side's sender, as a direct connection would.

DIR is ``up`` (client to proxy), ``down`` (proxy to client) or ``both``.  Tests drive
it with ``FaultRelay`` (below), from a synchronous test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.harness.processes import ProcessGroup

DIRECTIONS = ("up", "down")
#: Bytes a direction holds back (delayed) before it stops reading its sender.
HELD_BACK = 64 * 1024


class Rules:
    """What happens to bytes in each direction now, and the connections open."""

    def __init__(self) -> None:
        self.mode: dict[str, tuple[str, float]] = {d: ("pass", 0.0) for d in DIRECTIONS}
        self.connections: set[Any] = set()
        self.relayed: dict[str, int] = {d: 0 for d in DIRECTIONS}


def _serve(target_port: int, ports_file: str) -> None:
    from twisted.internet import protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.protocols.basic import LineReceiver

    rules = Rules()

    class Half:
        """One direction of one relayed connection."""

        dead: bool
        budget: float | None
        queue: deque[bytes]
        dripping: bool
        due: float
        held: deque[bytes]
        held_back: int
        held_paused: bool

        def __init__(self, direction: str, pair: Relayed) -> None:
            self.direction = direction
            self.pair = pair
            self.dead = False
            self.budget = None
            self.queue = deque()
            self.dripping = False
            #: When the last delayed bytes are due: later bytes must not overtake them.
            self.due = 0.0
            #: Delayed bytes not written yet, oldest first, their size, and whether they
            #: paused the sender.
            self.held = deque()
            self.held_back = 0
            self.held_paused = False

        def forward(self, data: bytes, source: Any, sink: Any) -> None:
            if self.dead:
                return
            mode, value = rules.mode[self.direction]
            if mode == "blackhole":
                self.dead = True
                return
            if mode == "cut":
                if self.budget is None:
                    self.budget = value
                if len(data) >= self.budget:
                    self._write(sink, data[:int(self.budget)])
                    self.pair.close()
                    return
                self.budget -= len(data)
            now = reactor.seconds()
            if mode == "delay" or self.held:
                self.due = max(now + (value if mode == "delay" else 0.0), self.due)
                self.held_back += len(data)
                # Each timer writes the oldest bytes held, whichever fires first: timers due
                # at (nearly) the same moment may fire in any order, bytes may not.
                self.held.append(data)
                reactor.callLater(self.due - now, self._write_held, source, sink)
                if self.held_back > HELD_BACK and not self.held_paused:
                    self.held_paused = True
                    source.pauseProducing()
            elif mode == "throttle":
                self.queue.append(data)
                source.pauseProducing()
                if not self.dripping:
                    self.dripping = True
                    self._drip(source, sink, value)
            else:
                self._write(sink, data)

        def _write_held(self, source: Any, sink: Any) -> None:
            data = self.held.popleft()
            self.held_back -= len(data)
            self._write(sink, data)
            if self.held_paused and self.held_back <= HELD_BACK:
                self.held_paused = False
                source.resumeProducing()

        def _write(self, sink: Any, data: bytes) -> None:
            if not self.dead:
                rules.relayed[self.direction] += len(data)
                sink.write(data)

        def _drip(self, source: Any, sink: Any, rate: float) -> None:
            step = max(int(rate / 20), 1)
            if not self.queue:
                self.dripping = False
                source.resumeProducing()
                return
            data = self.queue.popleft()
            if len(data) > step:
                self.queue.appendleft(data[step:])
            self._write(sink, data[:step])
            reactor.callLater(min(step, len(data)) / rate, self._drip, source, sink, rate)

    class Relayed:
        """A client's connection and ours to the target."""

        def __init__(self, client: Inbound) -> None:
            self.client = client
            self.target: Outbound | None = None
            self.up = Half("up", self)
            self.down = Half("down", self)
            self.pending: list[bytes] = []

        def close(self, abort: bool = False) -> None:
            for side in (self.client, self.target):
                if side is not None and side.transport is not None:
                    # A paused sender registered as producer would hold the close back.
                    side.transport.unregisterProducer()
                    if abort:
                        side.transport.abortConnection()
                    else:
                        side.transport.loseConnection()

    class Outbound(protocol.Protocol):
        transport: Any

        def __init__(self, pair: Relayed) -> None:
            self.pair = pair

        def connectionMade(self) -> None:
            self.pair.target = self
            # Flow control: a side whose peer does not read stops reading the other.
            self.transport.registerProducer(self.pair.client.transport, True)
            self.pair.client.transport.registerProducer(self.transport, True)
            for data in self.pair.pending:
                self.pair.up.forward(data, self.pair.client.transport, self.transport)
            self.pair.pending = []

        def dataReceived(self, data: bytes) -> None:
            self.pair.down.forward(data, self.transport, self.pair.client.transport)

        def connectionLost(self, reason: Any = None) -> None:
            if not (self.pair.down.dead or self.pair.up.dead):
                self.pair.client.transport.unregisterProducer()
                self.pair.client.transport.loseConnection()

    class Inbound(protocol.Protocol):
        transport: Any
        pair: Relayed

        def connectionMade(self) -> None:
            self.pair = Relayed(self)
            rules.connections.add(self.pair)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", target_port)
            connecting = endpoint.connect(protocol.Factory.forProtocol(
                lambda: Outbound(self.pair)))
            connecting.addErrback(self.target_unreachable)

        def target_unreachable(self, reason: Any) -> None:
            self.transport.loseConnection()

        def dataReceived(self, data: bytes) -> None:
            if self.pair.target is None:
                self.pair.pending.append(data)
            else:
                self.pair.up.forward(data, self.transport, self.pair.target.transport)

        def connectionLost(self, reason: Any = None) -> None:
            rules.connections.discard(self.pair)
            target = self.pair.target
            if target is not None and not (self.pair.down.dead or self.pair.up.dead):
                target.transport.unregisterProducer()
                target.transport.loseConnection()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            words = line.decode().split()
            try:
                self.sendLine(self.command(words).encode())
            except (ValueError, IndexError, KeyError) as error:
                self.sendLine(f"error: {error}".encode())

        def command(self, words: list[str]) -> str:
            if words == ["reset"]:
                for pair in list(rules.connections):
                    pair.close(abort=True)
                return "ok"
            if words == ["connections"]:
                return str(len(rules.connections))
            if words[0] == "bytes":
                return str(rules.relayed[words[1]])
            mode, where, *rest = words
            if mode not in ("pass", "blackhole", "delay", "throttle", "cut"):
                raise ValueError(f"unknown fault {mode}")
            directions = DIRECTIONS if where == "both" else (where,)
            for direction in directions:
                if direction not in DIRECTIONS:
                    raise ValueError(f"unknown direction {where}")
                rules.mode[direction] = (mode, float(rest[0]) if rest else 0.0)
                if mode == "cut":
                    for pair in rules.connections:
                        getattr(pair, direction).budget = None
            return "ok"

    ports: list[int] = []

    def listening(port: Any) -> None:
        ports.append(port.getHost().port)
        if len(ports) == 2:
            Path(ports_file).write_text(f"{ports[0]} {ports[1]}\n")

    relay = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    relay.listen(protocol.Factory.forProtocol(Inbound)).addCallback(listening)
    control = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    control.listen(protocol.Factory.forProtocol(Control)).addCallback(listening)
    reactor.run()


class FaultRelay:
    """The relay process seen from a synchronous test: start it, send it faults."""

    port: int
    control_port: int

    def __init__(self, target_port: int, group: ProcessGroup) -> None:
        from tests.harness.waiting import wait_for

        ports_file = group.directory("faultrelay") / "relay-ports"
        self.process = group.start(
            "faultrelay",
            [sys.executable, str(Path(__file__).resolve()), str(target_port), str(ports_file)])

        def ports() -> list[int] | None:
            text = ports_file.read_text() if ports_file.exists() else ""
            return [int(p) for p in text.split()] if text.endswith("\n") else None

        self.port, self.control_port = wait_for(ports, timeout=15, what="the relay's ports",
                                                watch=[self.process])

    def command(self, line: str) -> str:
        """Send one control command; its answer."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                data = sock.recv(1024)
                if not data:
                    break
                answer += data
        text = answer.decode().strip()
        if text.startswith("error"):
            raise AssertionError(f"relay refused {line!r}: {text}")
        return text


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(subprocess.list2cmdline(["usage:", sys.argv[0], "TARGET_PORT", "PORTS_FILE"]))
    _serve(int(sys.argv[1]), sys.argv[2])
