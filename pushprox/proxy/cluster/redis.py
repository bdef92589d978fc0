# -*- test-case-name: tests.test_cluster_redis -*-
"""
The replica's connection to Redis: one pipelined connection that always comes back.

``RedisClient`` keeps one TCP (or TLS) connection to Redis, made again by a
``ClientService`` as soon as it is lost, 0.1 s at first and then at most every second.
Commands are pipelined on it and their replies matched in order; Redis runs commands one
at a time anyway, so a second connection would only add a second queue.

What a call's timeout does, and does not do: a caller stops waiting (its Deferred is
cancelled) but the connection stays, and the late reply is read and dropped when it
comes.  A Redis paused for a few seconds (a snapshot's fork, ``SIGSTOP``, a failover)
then costs no connection: the pipeline resumes where it stood.  A connection whose
oldest call has waited ``dead_after`` seconds without a byte from Redis is taken for dead
(a network path that dropped without a reset) and made again.  ``AUTH`` and ``SELECT``
run before a new connection is used, under the same limit; if they fail or do not
answer, the connection is dropped and tried again: it is never given up.

Every waiting call has an owner that removes it: the reply, the connection's loss, or
its caller's cancellation (a call waiting for a connection is dropped from the list of
waiters when cancelled).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: A reply: text, a number, nothing, or a list of replies (errors are raised).
Reply = Any

_CONNECTION_LOST = Failure(ConnectionLost())


class RedisError(Exception):
    """Redis answered a command with an error."""


class RedisNotConnected(Exception):
    """No connection to Redis could be used for the call."""


def encode_command(arguments: Sequence[object]) -> bytes:
    """One command in Redis' protocol (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, bytes):
            data = argument
        elif isinstance(argument, str):
            data = argument.encode("utf-8")
        elif isinstance(argument, (int, float)) and not isinstance(argument, bool):
            data = repr(argument).encode("ascii")
        else:
            raise TypeError(f"cannot send {type(argument).__name__} to Redis")
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


class ReplyParser:
    """
    Redis' replies (RESP2) from the bytes as they arrive.

    It resumes where the last bytes ended, nested arrays included, so a large reply
    arriving in many segments is read once, not again from its start at each segment.
    Bulk strings are decoded as UTF-8 (a byte that is not becomes U+FFFD).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Arrays being filled: [length expected, items so far].
        self._stack: list[tuple[int, list[Reply]]] = []

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by ``data``; errors come as ``RedisError`` values."""
        buffer = self._buffer
        buffer += data
        position, size = 0, len(buffer)
        stack = self._stack
        replies: list[Reply] = []
        while position < size:
            end = buffer.find(b"\r\n", position)
            if end < 0:
                break
            kind = buffer[position]
            value: Reply
            if kind == 0x24:  # $ bulk string
                length = int(buffer[position + 1:end])
                if length < 0:
                    value, position = None, end + 2
                else:
                    if end + 4 + length > size:
                        break
                    value = buffer[end + 2:end + 2 + length].decode("utf-8", "replace")
                    position = end + 4 + length
            elif kind == 0x2A:  # * array
                length = int(buffer[position + 1:end])
                position = end + 2
                if length > 0:
                    stack.append((length, []))
                    continue
                value = None if length < 0 else []
            elif kind == 0x3A:  # : integer
                value, position = int(buffer[position + 1:end]), end + 2
            elif kind == 0x2B:  # + simple string
                value = buffer[position + 1:end].decode("utf-8", "replace")
                position = end + 2
            elif kind == 0x2D:  # - error
                value = RedisError(buffer[position + 1:end].decode("utf-8", "replace"))
                position = end + 2
            else:
                raise ValueError(f"not a Redis reply: {bytes(buffer[position:end])[:40]!r}")
            while stack:
                length, items = stack[-1]
                items.append(value)
                if len(items) < length:
                    break
                stack.pop()
                value = items
            else:
                replies.append(value)
        del buffer[:position]
        return replies


class RedisProtocol(Protocol):
    """One connection to Redis: commands written at once, replies matched in order."""

    def __init__(self, clock: IReactorTime, dead_after: float,
                 made: Callable[[RedisProtocol], None]) -> None:
        self._clock = clock
        self._dead_after = dead_after
        self._made = made
        self._parser = ReplyParser()
        #: Calls sent and not answered yet, oldest first: (their Deferred, sent at).
        self._pending: deque[tuple[Deferred[Reply], float]] = deque()
        self._last_read = 0.0
        self.lost: Deferred[None] = Deferred()
        #: Called with each message of a channel this connection subscribed to.
        self.on_message: Callable[[str, str], None] | None = None

    def connectionMade(self) -> None:
        """Keep the connection alive through idle network equipment."""
        self._last_read = self._clock.seconds()
        set_keepalive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keepalive is not None:
            set_keepalive(1)
        self._made(self)

    def stalled(self) -> bool:
        """Whether the oldest call has waited too long with no byte from Redis."""
        if not self._pending:
            return False
        now = self._clock.seconds()
        waited = now - max(self._pending[0][1], self._last_read)
        return waited >= self._dead_after

    def call(self, arguments: Sequence[object]) -> Deferred[Reply]:
        """Send one command; its reply (an error reply fails the Deferred)."""
        # Cancelling only stops the caller's wait: the reply is still read, then dropped.
        answer: Deferred[Reply] = Deferred(lambda _: None)
        self._pending.append((answer, self._clock.seconds()))
        assert self.transport is not None
        self.transport.write(encode_command(arguments))
        return answer

    def dataReceived(self, data: bytes) -> None:
        """Match each complete reply with the oldest call."""
        self._last_read = self._clock.seconds()
        try:
            replies = self._parser.feed(data)
        except ValueError:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for reply in replies:
            if (self.on_message is not None and isinstance(reply, list) and len(reply) == 3
                    and reply[0] == "message"):
                self.on_message(str(reply[1]), str(reply[2]))
                continue
            if not self._pending:
                # A reply to nothing: the stream is out of step; start over.
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            answer, _ = self._pending.popleft()
            if isinstance(reply, RedisError) and str(reply).startswith("READONLY"):
                # A primary turned replica (a failover): find the primary again.
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]
            if answer.called:
                continue
            if isinstance(reply, RedisError):
                answer.errback(reply)
            else:
                answer.callback(reply)

    def connectionLost(self, reason: Failure = _CONNECTION_LOST) -> None:
        """Every call still waiting fails."""
        pending, self._pending = self._pending, deque()
        for answer, _ in pending:
            if not answer.called:
                answer.errback(RedisNotConnected(
                    f"the connection to Redis was lost: {reason.getErrorMessage()}"))
        self.lost.callback(None)


class _Factory(Factory):
    noisy = False

    def __init__(self, clock: IReactorTime, dead_after: float,
                 made: Callable[[RedisProtocol], None]) -> None:
        self._clock = clock
        self._dead_after = dead_after
        self._made = made

    def buildProtocol(self, addr: object) -> RedisProtocol:
        protocol = RedisProtocol(self._clock, self._dead_after, self._made)
        protocol.factory = self
        return protocol


def redis_endpoint(reactor: Any, host: str, port: int, *, tls: bool,
                   ca_file: str | None = None, timeout: float = 2.0) -> IStreamClientEndpoint:
    """
    Where to connect: TCP, or TLS checking that the certificate names ``host``
    (against ``ca_file`` when given, the system's trust store otherwise).
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return with_tls(host, endpoint, ca_file) if tls else endpoint


def with_tls(host: str, endpoint: IStreamClientEndpoint,
             ca_file: str | None = None) -> IStreamClientEndpoint:
    """TLS over ``endpoint``: the certificate must name ``host`` and chain to the CA."""
    from twisted.internet.ssl import (
        optionsForClientTLS,
        platformTrust,
        trustRootFromCertificates,
    )

    trust: Any = platformTrust()
    if ca_file is not None:
        from pushprox.shared.tls import load_certificates

        trust = trustRootFromCertificates(load_certificates(ca_file))
    return wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Connects to the primary that Redis Sentinel names for ``service``.

    Each connection asks the sentinels in turn (the one that answered last first) where
    the primary is, then connects there; ``RedisClient(primary_only=True)`` checks with
    ``ROLE`` that it is one.  A failover is followed by the next connection: the old
    primary's connections break, or it answers ``READONLY`` once demoted, and the client
    connects again.
    """

    log = Logger()

    def __init__(self, reactor: Any, sentinels: Sequence[tuple[str, int]], service: str, *,
                 timeout: float = 2.0,
                 wrap: Callable[[str, IStreamClientEndpoint], IStreamClientEndpoint]
                 | None = None) -> None:
        self._reactor = reactor
        self._sentinels = list(sentinels)
        self._service = service
        self._timeout = timeout
        self._wrap = wrap
        #: Where the primary was found last.
        self.primary: tuple[str, int] | None = None

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """Ask the sentinels, then connect to the primary they name."""
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> Any:
        host, port = await self._ask()
        if self.primary != (host, port):
            self.log.info("Redis Sentinel names {host}:{port} as the primary of {service}",
                          host=host, port=port, service=self._service)
            self.primary = (host, port)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self._reactor, host, port,
                                                           timeout=self._timeout)
        if self._wrap is not None:
            endpoint = self._wrap(host, endpoint)
        return await endpoint.connect(factory)

    async def _ask(self) -> tuple[str, int]:
        errors = []
        for index, (host, port) in enumerate(list(self._sentinels)):
            try:
                address = await self._ask_one(host, port)
            except Exception as error:
                errors.append(f"{host}:{port}: {error}")
                continue
            if index:
                # The one that answered is asked first next time.
                self._sentinels.insert(0, self._sentinels.pop(index))
            return address
        raise RedisNotConnected("no sentinel named a primary of "
                                f"{self._service}: {'; '.join(errors)}")

    async def _ask_one(self, host: str, port: int) -> tuple[str, int]:
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        protocol = RedisProtocol(self._reactor, self._timeout, lambda _: None)
        connecting = connectProtocol(endpoint, protocol)
        connecting.addTimeout(self._timeout, self._reactor)
        await connecting
        try:
            answer = protocol.call(["SENTINEL", "get-master-addr-by-name", self._service])
            answer.addTimeout(self._timeout, self._reactor)
            reply = await answer
        finally:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
        if not isinstance(reply, list) or len(reply) != 2:
            raise RedisError(f"it knows no primary named {self._service}")
        return str(reply[0]), int(reply[1])


class RedisClient:
    """
    Cluster mode's Redis: commands on one connection that is made again whenever lost.

    ``call`` fails at once (``RedisNotConnected``) only when too many calls are waiting
    already; otherwise it waits for a connection, which its caller bounds with a timeout.
    """

    log = Logger()

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, *, db: int = 0,
                 password: str | None = None, dead_after: float = 5.0,
                 max_waiting: int = 10_000, primary_only: bool = False) -> None:
        self._clock: IReactorTime = reactor
        self._primary_only = primary_only
        self._db = db
        self._password = password
        self._dead_after = dead_after
        self._max_waiting = max_waiting
        self._protocol: RedisProtocol | None = None
        #: Calls waiting for a connection: (Deferred handed out, its command).
        self._waiting: list[tuple[Deferred[Reply], Sequence[object]]] = []
        self._scripts: dict[str, str] = {}
        #: Channels subscribed to, each with what takes its messages.
        self._channels: dict[str, Callable[[str], None]] = {}
        #: Connections made so far (the first one included).
        self.connections = 0
        # The handshake runs once connected, not as ClientService's prepareConnection:
        # a connection that one rejects is neither closed nor safely closable.  A
        # connection whose handshake fails is closed, and ClientService makes another.
        self._service = ClientService(
            endpoint, _Factory(reactor, dead_after, self._connected),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=1.0, factor=2.0),
            clock=reactor)

    def start(self) -> None:
        """Connect now, and again whenever the connection is lost."""
        self._service.startService()

    @property
    def connected(self) -> bool:
        """Whether a connection is ready for calls."""
        return self._protocol is not None

    def _connected(self, protocol: RedisProtocol) -> None:
        Deferred.fromCoroutine(self._prepare(protocol))

    async def _prepare(self, protocol: RedisProtocol) -> None:
        """Authenticate and pick the database, within the limit, or drop the connection."""
        try:
            for command in self._handshake():
                answer = protocol.call(command)
                answer.addTimeout(self._dead_after, self._clock)
                reply = await answer
                if command[0] == "ROLE" and (not isinstance(reply, list) or not reply
                                             or reply[0] != "master"):
                    role = reply[0] if isinstance(reply, list) and reply else reply
                    raise RedisError(f"this Redis is a {role}, not the primary")
        except Exception as error:
            self.log.warn("A new connection to Redis failed before its first use ({error}): "
                          "connecting again", error=error)
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        if protocol.lost.called:
            return
        if self._channels:
            protocol.on_message = self._message
            for channel in self._channels:
                protocol.call(["SUBSCRIBE", channel]).addErrback(lambda _: None)
        self._protocol = protocol
        self.connections += 1
        protocol.lost.addCallback(lambda _: self._forget(protocol))
        waiting, self._waiting = self._waiting, []
        for answer, command in waiting:
            if not answer.called:
                protocol.call(command).chainDeferred(answer)

    def subscribe(self, channel: str, receive: Callable[[str], None]) -> None:
        """
        Give each message of ``channel`` to ``receive``, on this connection and on every
        one made after it; only ``PING`` may be called on it then (which the stall
        check needs now and then).  Messages published while no connection is up are
        lost: whoever relies on them needs another way to catch up.
        """
        self._channels[channel] = receive
        protocol = self._protocol
        if protocol is not None:
            protocol.on_message = self._message
            protocol.call(["SUBSCRIBE", channel]).addErrback(lambda _: None)

    def _message(self, channel: str, data: str) -> None:
        receive = self._channels.get(channel)
        if receive is None:
            return
        try:
            receive(data)
        except Exception:
            self.log.failure("A message of {channel} could not be taken", channel=channel)

    def _handshake(self) -> list[Sequence[object]]:
        commands: list[Sequence[object]] = []
        if self._password is not None:
            commands.append(["AUTH", self._password])
        if self._db:
            commands.append(["SELECT", self._db])
        if self._primary_only:
            commands.append(["ROLE"])
        # A connection is used only once Redis has answered on it (over TLS, once the
        # handshake, certificate checks included, has succeeded).
        return commands or [["PING"]]

    def _forget(self, protocol: RedisProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def call(self, *arguments: object) -> Deferred[Reply]:
        """Run one command; its reply.  Cancel the Deferred to stop waiting."""
        protocol = self._protocol
        if protocol is not None and protocol.stalled():
            self.log.warn("Redis has not answered for {seconds}s on its connection: "
                          "connecting again", seconds=self._dead_after)
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            protocol = self._protocol = None
        if protocol is not None:
            return protocol.call(arguments)
        if len(self._waiting) >= self._max_waiting:
            return fail(RedisNotConnected(
                f"no connection to Redis, and {len(self._waiting)} calls wait for one"))

        def cancel(answer: Deferred[Reply]) -> None:
            self._waiting = [entry for entry in self._waiting if entry[0] is not answer]

        answer: Deferred[Reply] = Deferred(cancel)
        self._waiting.append((answer, arguments))
        return answer

    def waiting(self) -> int:
        """Calls waiting for a connection (each ends by one, or by its cancellation)."""
        return len(self._waiting)

    def eval(self, script: str, keys: Sequence[str], arguments: Sequence[object]
             ) -> Deferred[Reply]:
        """Run a Lua script, by its hash once Redis knows it."""
        digest = self._scripts.get(script)
        if digest is None:
            digest = self._scripts[script] = hashlib.sha1(script.encode("utf-8")).hexdigest()
        call = self.call("EVALSHA", digest, len(keys), *keys, *arguments)

        def unknown_script(failure: Failure) -> Deferred[Reply] | Failure:
            if failure.check(RedisError) and str(failure.value).startswith("NOSCRIPT"):
                return self.call("EVAL", script, len(keys), *keys, *arguments)
            return failure

        return call.addErrback(unknown_script)

    def hget(self, key: str, field: str) -> Deferred[Reply]:
        """The value of ``field`` in the hash ``key``, or ``None``."""
        return self.call("HGET", key, field)

    def disconnect(self) -> Deferred[None]:
        """Stop connecting and close the connection; waiting calls fail."""
        waiting, self._waiting = self._waiting, []
        for answer, _ in waiting:
            if not answer.called:
                answer.errback(RedisNotConnected("the connection to Redis is closing"))
        stopped: Deferred[None] = self._service.stopService()
        return stopped
