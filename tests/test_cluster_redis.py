"""
Cluster mode's Redis connection: its reply parser on bytes, and the connection itself
against a real redis-server that is paused (SIGSTOP), slowed and stopped under it.
"""

from __future__ import annotations

import itertools
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.proxy.cluster.redis import (
    RedisClient,
    RedisError,
    RedisNotConnected,
    ReplyParser,
    encode_command,
    redis_endpoint,
)
from pushprox.proxy.cluster.routes import RouteTable
from tests.harness.cluster import REDIS_SERVER, missing, start_redis
from tests.harness.processes import ProcessGroup
from tests.harness.waiting import free_port, port_open, wait_for
from tests.tlsfixtures import CertificateAuthority

_reactor: Any = reactor


class ReplyParserTests(SynchronousTestCase):
    """Replies read from bytes, however they are split."""

    REPLIES = (b"+OK\r\n-NOSCRIPT No matching script\r\n:42\r\n$-1\r\n*-1\r\n*0\r\n"
               b"$5\r\nn\xc3\xa9ud\r\n*3\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n$1\r\nb\r\n")

    def expected(self) -> list[Any]:
        return ["OK", "NOSCRIPT No matching script", 42, None, None, [], "néud",
                ["a", [1, ""], "b"]]

    @staticmethod
    def comparable(replies: list[Any]) -> list[Any]:
        return [str(reply) if isinstance(reply, RedisError) else reply for reply in replies]

    def test_whole(self) -> None:
        """Every kind of reply, nested arrays included, in one segment."""
        replies = ReplyParser().feed(self.REPLIES)
        self.assertIsInstance(replies[1], RedisError)
        self.assertEqual(self.comparable(replies), self.expected())

    def test_byte_by_byte(self) -> None:
        """The same replies one byte at a time: each completed once, in order."""
        parser = ReplyParser()
        replies: list[Any] = []
        for index in range(len(self.REPLIES)):
            replies += parser.feed(self.REPLIES[index:index + 1])
        self.assertEqual(self.comparable(replies), self.expected())

    @given(st.lists(st.integers(min_value=1, max_value=len(REPLIES) - 1), max_size=8))
    def test_any_split(self, cuts: list[int]) -> None:
        """Split anywhere: the same replies."""
        parser = ReplyParser()
        replies: list[Any] = []
        edges = [0, *sorted(set(cuts)), len(self.REPLIES)]
        for start, end in itertools.pairwise(edges):
            replies += parser.feed(self.REPLIES[start:end])
        self.assertEqual(self.comparable(replies), self.expected())

    def test_not_redis(self) -> None:
        """A stream that is not Redis' protocol is refused (the connection is dropped)."""
        self.assertRaises(ValueError, ReplyParser().feed, b"HTTP/1.1 200 OK\r\n")

    def test_encode(self) -> None:
        """Commands go out as arrays of bulk strings."""
        self.assertEqual(encode_command(["HGET", "k", 1.5, 2, b"\xff"]),
                         b"*5\r\n$4\r\nHGET\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\n2\r\n$1\r\n\xff\r\n")
        self.assertRaises(TypeError, encode_command, ["SET", None])


class _RealRedisTestCase(TestCase):
    """A test that starts its own redis-server(s), in a process group of its own."""

    timeout = 60
    #: The prefix of the test's temporary folder.
    folder_prefix = "pushprox-redis-"

    def setUp(self) -> None:
        gone = missing()
        if any("redis" in item for item in gone):
            self.skipTest("needs " + "; ".join(gone))
        self.root = Path(tempfile.mkdtemp(prefix=self.folder_prefix))
        self.group = ProcessGroup(self.root)
        self.addCleanup(self.group.stop_all)


@pytest.mark.processes
class RedisClientTests(_RealRedisTestCase):
    """One connection to a real redis-server, through its faults."""

    def setUp(self) -> None:
        super().setUp()
        self.redis, self.port = start_redis(self.group)

    def client(self, **options: Any) -> RedisClient:
        client = RedisClient(_reactor, redis_endpoint(_reactor, "127.0.0.1", self.port,
                                                      tls=False), **options)
        client.start()
        self.addCleanup(client.disconnect)
        return client

    @staticmethod
    def call(client: RedisClient, *arguments: object, timeout: float = 0.5) -> Deferred[Any]:
        answer = client.call(*arguments)
        answer.addTimeout(timeout, _reactor)
        return answer

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(_reactor, seconds, lambda: None)

    def freeze(self, seconds: float) -> None:
        """Pause redis-server for ``seconds`` (SIGSTOP, then SIGCONT)."""
        self.redis.send_signal(signal.SIGSTOP)
        self.addCleanup(self.redis.send_signal, signal.SIGCONT)
        _reactor.callLater(seconds, self.redis.send_signal, signal.SIGCONT)

    async def test_commands_and_scripts(self) -> None:
        """Calls, errors, and a script sent once by its hash, again after SCRIPT FLUSH."""
        client = self.client(db=3)
        self.assertEqual(await self.call(client, "HSET", "h", "f", "v"), 1)
        self.assertEqual(await client.hget("h", "f"), "v")
        with self.assertRaises(RedisError):
            await self.call(client, "NOSUCHCOMMAND")
        script = "return {KEYS[1], ARGV[1], redis.call('HGET', KEYS[1], 'f')}"
        self.assertEqual(await client.eval(script, ["h"], [7]), ["h", "7", "v"])
        await self.call(client, "SCRIPT", "FLUSH")
        self.assertEqual(await client.eval(script, ["h"], [8]), ["h", "8", "v"])
        self.assertEqual(client.connections, 1)

    async def test_a_paused_redis_costs_no_connection(self) -> None:
        """Paused 2 s: calls meanwhile time out, the next ones after it are answered."""
        client = self.client(db=1)
        self.assertEqual(await self.call(client, "PING"), "PONG")
        self.freeze(2.0)
        failed = 0
        for _ in range(6):
            try:
                await self.call(client, "PING", timeout=0.25)
            except Exception:
                failed += 1
        self.assertGreaterEqual(failed, 5)
        await self.sleep(1.0)
        self.assertEqual(await self.call(client, "PING"), "PONG")
        self.assertEqual(client.connections, 1)

    async def test_a_reconnect_whose_select_stalls_is_tried_again(self) -> None:
        """
        The connection taken for dead while Redis is paused; the new one's SELECT gets no
        answer in time either: it is dropped and made again until Redis answers.
        """
        client = self.client(db=2, dead_after=0.5)
        self.assertEqual(await self.call(client, "PING"), "PONG")
        self.freeze(4.0)
        failures = []
        for _ in range(8):
            try:
                await self.call(client, "PING", timeout=0.25)
            except Exception as error:
                failures.append(error)
            await self.sleep(0.1)
        self.assertEqual(len(failures), 8)
        self.assertFalse(client.connected)
        await self.sleep(2.0)
        self.assertEqual(await self.call(client, "PING", timeout=3.0), "PONG")
        self.assertGreaterEqual(client.connections, 2)
        # The database chosen holds on the new connection.
        info = await self.call(client, "CLIENT", "INFO")
        self.assertIn(" db=2 ", info)

    async def test_calls_while_redis_is_down_are_not_kept(self) -> None:
        """Redis stopped: each call ends at its timeout and leaves nothing behind."""
        client = self.client()
        self.assertEqual(await self.call(client, "PING"), "PONG")
        self.redis.stop()
        await self.sleep(0.2)
        for _ in range(50):
            with self.assertRaises(TimeoutError):
                await self.call(client, "PING", timeout=0.02)
        self.assertEqual(client.waiting(), 0)
        self.redis.start()
        await self.sleep(1.5)
        self.assertEqual(await self.call(client, "PING", timeout=2.0), "PONG")

    async def test_too_many_waiting_calls_fail_at_once(self) -> None:
        """Past the limit of calls waiting for a connection, a call fails at once."""
        self.redis.stop()
        client = self.client(max_waiting=3)
        waiting = [client.call("PING") for _ in range(3)]
        with self.assertRaises(RedisNotConnected):
            await client.call("PING")
        for call in waiting:
            call.cancel()
            call.addErrback(lambda _: None)
        self.assertEqual(client.waiting(), 0)

    async def test_a_replica_is_not_taken_for_the_primary(self) -> None:
        """primary_only: a Redis whose ROLE is not master is dropped, never used."""
        replica_port = free_port()
        directory = self.group.directory("redis-replica")
        self.group.start("redis-replica", [
            str(REDIS_SERVER), "--port", str(replica_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(directory),
            "--replicaof", "127.0.0.1", str(self.port)])
        await self.sleep(0.5)
        primary = self.client(primary_only=True)
        self.assertEqual(await self.call(primary, "PING", timeout=3.0), "PONG")
        replica = RedisClient(_reactor, redis_endpoint(_reactor, "127.0.0.1", replica_port,
                                                       tls=False), primary_only=True)
        replica.start()
        self.addCleanup(replica.disconnect)
        await self.sleep(1.5)
        self.assertFalse(replica.connected)
        self.assertEqual(replica.connections, 0)
        self.flushLoggedErrors()


@pytest.mark.processes
class RouteTableTests(_RealRedisTestCase):
    """The routing table's scripts in a real redis-server."""

    def setUp(self) -> None:
        super().setUp()
        self.redis, self.port = start_redis(self.group)
        self.client = RedisClient(_reactor, redis_endpoint(_reactor, "127.0.0.1", self.port,
                                                           tls=False))
        self.client.start()
        self.addCleanup(self.client.disconnect)

    def table(self, replica: str, url: str, skew: float = 0.0) -> RouteTable:
        return RouteTable(self.client, replica_id=replica, peer_url=url, clock=_reactor,
                          registration_timeout=60.0,
                          metrics=ClusterMetrics(CollectorRegistry()),
                          wall_clock=lambda: time.time() + skew)

    async def test_liveness_does_not_compare_the_replicas_clocks(self) -> None:
        """A replica whose clock is an hour ahead and one on time see each other."""
        ahead = self.table("ahead001", "http://10.0.0.1:8080", skew=3600.0)
        on_time = self.table("ontime02", "http://10.0.0.2:8080")
        for _ in range(2):
            await ahead.heartbeat()
            await on_time.heartbeat()
        self.assertEqual(ahead.replicas, on_time.replicas)
        self.assertEqual(set(ahead.replicas), {"ahead001", "ontime02"})
        # A client noted by the one ahead is live for the other.
        ahead.note_poll("node1.example", {"site": "a"})
        await deferLater(_reactor, 0.1, lambda: None)
        route = await on_time.route("node1.example")
        self.assertEqual((route.peer, route.known), ("http://10.0.0.1:8080", True))
        self.assertEqual([client.fqdn for client in await on_time.clients()],
                         ["node1.example"])

    async def test_a_malformed_replica_record_breaks_no_heartbeat(self) -> None:
        """Not JSON, no time, not an object: dropped, and every heartbeat goes on."""
        table = self.table("self0001", "http://10.0.0.1:8080")
        for name, value in [("junk1", "not json"), ("junk2", '{"url": "x"}'),
                            ("junk3", "[1, 2]"), ("junk4", '{"seen": "soon"}')]:
            await self.client.call("HSET", "pushprox:replicas", name, value)
        await table.heartbeat()
        self.assertEqual(table.replicas, {"self0001": "http://10.0.0.1:8080"})
        self.assertEqual(await self.client.call("HKEYS", "pushprox:replicas"), ["self0001"])


@pytest.mark.processes
class RedisTLSTests(_RealRedisTestCase):
    """rediss://: the server's certificate must name the host and chain to the CA."""

    folder_prefix = "pushprox-redis-tls-"

    def setUp(self) -> None:
        super().setUp()
        root = self.root
        authority = CertificateAuthority(str(root / "pki"), "redis-test-ca")
        self.ca = authority.cert_path
        issued = authority.issue(str(root / "pki" / "redis"), ["localhost"])
        self.port = free_port()
        directory = self.group.directory("redis-tls")
        self.group.start("redis-tls", [
            str(REDIS_SERVER), "--port", "0", "--tls-port", str(self.port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--tls-cert-file", issued.cert,
            "--tls-key-file", issued.key, "--tls-ca-cert-file", self.ca,
            "--tls-auth-clients", "no"])
        wait_for(lambda: port_open(self.port), timeout=30, what="redis-server with TLS")

    def client(self, host: str, ca_file: str | None) -> RedisClient:
        client = RedisClient(_reactor, redis_endpoint(_reactor, host, self.port, tls=True,
                                                      ca_file=ca_file))
        client.start()
        self.addCleanup(client.disconnect)
        return client

    async def test_the_right_name_and_ca(self) -> None:
        """The certificate names localhost and chains to the CA given: connected."""
        client = self.client("localhost", self.ca)
        answer = client.call("PING")
        answer.addTimeout(5, _reactor)
        self.assertEqual(await answer, "PONG")

    async def test_another_name_or_ca_is_refused(self) -> None:
        """Reached as 127.0.0.1 (not in the certificate), or without the CA: no connection."""
        wrong_name = self.client("127.0.0.1", self.ca)
        unknown_ca = self.client("localhost", None)
        await deferLater(_reactor, 1.5, lambda: None)
        self.assertEqual((wrong_name.connections, unknown_ca.connections), (0, 0))
        self.flushLoggedErrors()
