"""
Cluster mode's pure parts: Redis addresses, which replica a route names, peer tokens, hop
counts, and the options that go together.  (The cluster itself, with a real Redis, real
replicas, nginx and Prometheus, is tested end to end in tests/e2e/test_cluster.py.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from pushprox.proxy import tap as proxy_tap
from pushprox.proxy.assembly import ClusterSetup
from pushprox.proxy.cluster.coordinator import MAX_HOPS, _hops
from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.proxy.cluster.owners import Owner, OwnerSeal
from pushprox.proxy.cluster.routes import (
    RedisAddress,
    RedisUnavailable,
    RouteTable,
    _newest_per_url,
)
from pushprox.proxy.cluster.service import default_peer_url
from pushprox.proxy.coordinator import Coordinator
from pushprox.proxy.push import Push
from pushprox.shared.auth import Denied, PeerAuth
from pushprox.shared.config import ProxyConfig


class RedisAddressTests(SynchronousTestCase):
    """``--redis`` URLs."""

    def test_urls(self) -> None:
        """Host, port, database, password and TLS are read; a password file wins."""
        for url, password, expected in [
            ("redis://r.example", None, RedisAddress("r.example", 6379, 0, None, False)),
            ("redis://:s%40cret@10.0.0.5:6380/2", None,
             RedisAddress("10.0.0.5", 6380, 2, "s@cret", False)),
            ("rediss://r.example:6390/1", "from-file",
             RedisAddress("r.example", 6390, 1, "from-file", True)),
        ]:
            with self.subTest(url=url):
                self.assertEqual(RedisAddress.from_url(url, password), expected)

    def test_sentinel_urls(self) -> None:
        """Sentinels (26379 by default, IPv6 in brackets), the primary's name, a database."""
        address = RedisAddress.from_url(
            "redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380,[::1]:26381/pushprox/2")
        self.assertEqual(address, RedisAddress(
            "", 0, 2, "pw", False, sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380),
                                              ("::1", 26381)), service="pushprox"))
        tls = RedisAddress.from_url("rediss+sentinel://s1/main", ca_file="ca.pem")
        self.assertEqual((tls.tls, tls.ca_file, tls.service, tls.db),
                         (True, "ca.pem", "main", 0))
        for url, message in [
            ("redis+sentinel://s1", "redis+sentinel://s1: the primary's name (/SERVICE) is "
             "missing"),
            ("redis+sentinel://s1:x/main", "redis+sentinel://s1:x/main: malformed port"),
            ("redis+sentinel://s1,/main", "redis+sentinel://s1,/main: a sentinel without a "
             "host"),
            ("redis+sentinel://s1/main/zero", "redis+sentinel://s1/main/zero: the database "
             "must be a number"),
        ]:
            with self.subTest(url=url):
                error = self.assertRaises(ValueError, RedisAddress.from_url, url)
                self.assertEqual(str(error), message)

    def test_a_ca_file_wants_tls(self) -> None:
        """--redis-ca-file with a plain redis:// URL is a mistake, said at once."""
        error = self.assertRaises(ValueError, RedisAddress.from_url, "redis://r", None,
                                  "ca.pem")
        self.assertEqual(str(error), "redis://r: a CA file is for rediss:// (TLS) only")

    def test_bad_urls(self) -> None:
        """Another scheme, no host, a database that is not a number, a bad port."""
        for url, message in [
            ("http://r.example",
             "http://r.example is not a redis://, rediss:// or redis+sentinel:// URL"),
            ("redis://", "redis:// is not a redis://, rediss:// or redis+sentinel:// URL"),
            ("redis://r.example/zero", "redis://r.example/zero: the database must be a number"),
            ("redis://r.example:port", "redis://r.example:port: malformed port"),
        ]:
            with self.subTest(url=url):
                error = self.assertRaises(ValueError, RedisAddress.from_url, url)
                self.assertEqual(str(error), message)


class ReplicaTests(SynchronousTestCase):
    """Which replica a route leads to."""

    def test_a_restarted_replica_does_not_inherit_routes(self) -> None:
        """Two replicas at one URL: only the newest is a route's destination."""
        replicas = _newest_per_url({
            "old": ("http://10.0.0.1:8080", 100.0),
            "new": ("http://10.0.0.1:8080", 200.0),
            "other": ("http://10.0.0.2:8080", 50.0),
        })
        self.assertEqual(replicas, {"new": "http://10.0.0.1:8080",
                                    "other": "http://10.0.0.2:8080"})

    def test_default_peer_url(self) -> None:
        """The first plain TCP port listened on; none without one."""
        url = default_peer_url(["ssl:8443:privateKey=k.pem", "tcp:8080:interface=0.0.0.0"])
        assert url is not None
        self.assertTrue(url.startswith("http://") and url.endswith(":8080"), url)
        self.assertIsNone(default_peer_url(["unix:/run/pushprox.sock"]))

    def test_hops(self) -> None:
        """A missing hop header is none; an unreadable one is taken as the limit."""
        self.assertEqual([_hops(None), _hops(b"1"), _hops(b"2"), _hops(b"x")],
                         [0, 1, 2, MAX_HOPS])


class PeerAuthTests(SynchronousTestCase):
    """The shared peer token."""

    def test_right_wrong_and_none(self) -> None:
        """The right token makes a peer, none makes an ordinary request, a wrong one 403."""
        auth = PeerAuth("peer-token-0123456789abcdef")
        self.assertTrue(auth.is_peer(b"peer-token-0123456789abcdef"))
        self.assertFalse(auth.is_peer(None))
        denied = self.assertRaises(Denied, auth.is_peer, b"peer-token-wrong")
        self.assertEqual((denied.code, denied.message), (403, "wrong peer token"))


class ClusterOptionsTests(SynchronousTestCase):
    """The cluster options of ``twistd pushprox-proxy``."""

    def parse(self, *argv: str) -> proxy_tap.Options:
        options = proxy_tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_cluster_mode_needs_its_options(self) -> None:
        """--redis wants a peer token; the peer flags want --redis; bad URLs are named."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        token = directory / "token"
        token.write_text("peer-token-0123456789abcdef\n")
        short = directory / "short-token"
        short.write_text("0123456789abcde\n")
        for argv, message in [
            (["--redis", "redis://r"], "--redis needs --peer-token-file: replicas "
             "authenticate each other with it"),
            (["--peer-url", "http://a:8080"], "--peer-url needs --redis"),
            (["--peer-token-file", str(token)], "--peer-token-file needs --redis"),
            (["--redis", "http://r", "--peer-token-file", str(token)],
             "--redis http://r: http://r is not a redis://, rediss:// or redis+sentinel:// URL"),
            (["--redis", "redis://r", "--peer-token-file", str(short)],
             f"--peer-token-file: the token in {short} is shorter than 16 characters (make "
             "one with: head -c 32 /dev/urandom | base64)"),
            (["--redis", "redis://r", "--peer-token-file", str(token), "--listen",
              "unix:/tmp/pushprox-test.sock"],
             "--redis needs --peer-url when no tcp: port is listened on"),
        ]:
            with self.subTest(argv=argv):
                error = self.assertRaises(usage.UsageError, self.parse, *argv)
                self.assertEqual(str(error), message)

    def test_cluster_options_read(self) -> None:
        """The token is read from its file; the peer URL given is kept."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        token = directory / "token"
        token.write_text("peer-token-0123456789abcdef\n")
        options = self.parse("--redis", "redis://r:6379/1", "--peer-token-file", str(token),
                             "--peer-url", "http://10.0.0.7:8080")
        self.assertEqual(options.setup().cluster, ClusterSetup(
            redis_url="redis://r:6379/1", peer_url="http://10.0.0.7:8080",
            peer_token="peer-token-0123456789abcdef"))




class OwnerSealTests(SynchronousTestCase):
    """The owner a scrape id names, sealed with the peer token."""

    def test_sealed_ids_name_their_owner(self) -> None:
        """An id made with the token names its replica and URL; the same token reads it."""
        seal = OwnerSeal("peer-token-0123456789abcdef")
        scrape_id = seal.prefix("a1b2c3d4", "http://10.0.0.7:8080") + "0f0e-uuid"
        self.assertEqual(OwnerSeal("peer-token-0123456789abcdef").owner(scrape_id),
                         Owner("a1b2c3d4", "http://10.0.0.7:8080"))

    def test_a_forged_or_foreign_seal_names_no_url(self) -> None:
        """Another token's seal, a URL swapped in, garbage: no URL to send a push to."""
        seal = OwnerSeal("peer-token-0123456789abcdef")
        other = OwnerSeal("another-token-0123456789abcdef").prefix("a1b2c3d4",
                                                                   "http://evil.example")
        replica, _, sealed, _ = seal.prefix("a1b2c3d4", "http://10.0.0.7:8080").split(".")
        swapped = other.split(".")[1]
        for scrape_id in [other + "x", f"{replica}.{swapped}.{sealed}.x",
                          f"{replica}.!!.{sealed}.x", f"{replica}.{swapped}.%%.x"]:
            with self.subTest(scrape_id=scrape_id):
                self.assertEqual(seal.owner(scrape_id), Owner("a1b2c3d4", None))

    def test_ids_without_a_url(self) -> None:
        """A replica id alone (no URL), or no replica at all (a single proxy's id)."""
        seal = OwnerSeal("peer-token-0123456789abcdef")
        self.assertEqual(seal.owner("a1b2c3d4.0f0e-uuid"), Owner("a1b2c3d4", None))
        self.assertIsNone(seal.owner("0f0e2a6c-7b8d-4c1e-9f00-123456789abc"))
        self.assertIsNone(seal.owner(".x"))


class ReplicaOfTests(SynchronousTestCase):
    """Where a push goes, from its scrape id, without Redis."""

    def table(self, url: str = "http://10.0.0.7:8080") -> RouteTable:
        return RouteTable(None, replica_id="self0001", peer_url=url, clock=Clock(),
                          registration_timeout=60.0,
                          metrics=ClusterMetrics(CollectorRegistry()),
                          seal=OwnerSeal("peer-token-0123456789abcdef"))

    def test_sealed_owner_found_without_redis(self) -> None:
        """Another replica's sealed id: its URL, even before any heartbeat saw it."""
        table = self.table()
        other = OwnerSeal("peer-token-0123456789abcdef").prefix("peer0002",
                                                                 "http://10.0.0.8:8080")
        self.assertEqual(table.replica_of(other + "uuid"), "http://10.0.0.8:8080")
        self.assertIsNone(table.replica_of(table.scrape_id_prefix + "uuid"))

    def test_never_forwarded_to_itself(self) -> None:
        """An id of an earlier run at this URL (another replica id) is claimed here."""
        table = self.table()
        earlier = OwnerSeal("peer-token-0123456789abcdef").prefix("gone0003",
                                                                   "http://10.0.0.7:8080")
        self.assertIsNone(table.replica_of(earlier + "uuid"))


class _OwnerUnknown:
    """A push forwarder whose owner lookup fails (Redis cannot be reached)."""

    def owner(self, scrape_id: str) -> Deferred[str | None]:
        return fail(RedisUnavailable("Not received in 0.5 seconds"))

    def forward(self, peer: str, principal: str | None, push_poll: bool,
                transport: IPushProducer | None) -> Any:
        raise AssertionError("a push whose owner is unknown must not be forwarded")


class PushOwnerTests(SynchronousTestCase):
    """A push whose owner cannot be looked up."""

    def test_refused_503_not_404(self) -> None:
        """Redis cannot say who owns the scrape: 503 (push again later), not 404."""
        coordinator = Coordinator(Clock(), ProxyConfig())
        push = Push(coordinator, ProxyConfig(), None, None, forwarder=_OwnerUnknown())
        push.feed(b"HTTP/1.1 200 OK\r\nId: peer0002.0f0e\r\nContent-Length: 2\r\n\r\nok")
        assert push.settled is not None
        self.assertTrue(push.settled.called)
        refusal = push.end()
        assert refusal is not None
        self.assertEqual((refusal.code, refusal.message),
                         (503, "the proxy that owns this scrape cannot be looked up now: "
                          "Not received in 0.5 seconds"))
        self.assertTrue(coordinator.is_idle())
        self.flushLoggedErrors()
