"""
Cluster mode's pure parts: Redis addresses, which replica a route names, peer tokens, hop
counts, and the options that go together.  (The cluster itself, with a real Redis, real
replicas, nginx and Prometheus, is tested end to end in tests/e2e/test_cluster.py.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from pushprox import proxy_tap
from pushprox.auth import Denied, PeerAuth
from pushprox.cluster.coordinator import MAX_HOPS, _hops
from pushprox.cluster.routes import RedisAddress, _newest_per_url
from pushprox.cluster.service import default_peer_url


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

    def test_bad_urls(self) -> None:
        """Another scheme, no host, a database that is not a number, a bad port."""
        for url, message in [
            ("http://r.example", "http://r.example is not a redis:// or rediss:// URL"),
            ("redis://", "redis:// is not a redis:// or rediss:// URL"),
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
        for argv, message in [
            (["--redis", "redis://r"], "--redis needs --peer-token-file: replicas "
             "authenticate each other with it"),
            (["--peer-url", "http://a:8080"], "--peer-url needs --redis"),
            (["--peer-token-file", str(token)], "--peer-token-file needs --redis"),
            (["--redis", "http://r", "--peer-token-file", str(token)],
             "--redis http://r: http://r is not a redis:// or rediss:// URL"),
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
        self.assertEqual((options["peer-token"], options["peer-url"], options["redis"]),
                         ("peer-token-0123456789abcdef", "http://10.0.0.7:8080",
                          "redis://r:6379/1"))
