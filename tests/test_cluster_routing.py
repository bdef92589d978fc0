"""
Where a cluster replica sends a scrape, on a fake routing table and fake peers, on a
Clock: routes from Redis, the last route while Redis does not answer, and a queued scrape
that follows its client's poll to another replica.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushprox.proxy.cluster.coordinator import (
    MAX_FOLLOW,
    RECALL_AFTER,
    REDIS_RETRY,
    RETRY,
    ClusterCoordinator,
    RoutingUnavailable,
)
from pushprox.proxy.cluster.routes import RedisUnavailable, Route
from pushprox.proxy.coordinator import Coordinator, IScrapeAnswer, UnknownClient
from pushprox.shared import wire
from pushprox.shared.config import ProxyConfig

HERE = "http://10.0.0.1:8080"
THERE = "http://10.0.0.2:8080"
URL = b"http://node1.example:9100/metrics"


class FakeRoutes:
    """The routing table's face to the coordinator; ``answers`` is what Redis says."""

    def __init__(self) -> None:
        self.peer_url = HERE
        self.timeout = 0.5
        self.on_lost: Any = None
        self.on_moved: Any = None
        #: Route per FQDN; None: Redis does not answer.
        self.answers: dict[str, Route | None] = {}
        self.last: dict[str, Route] = {}
        self.lookups = 0

    async def route(self, fqdn: str) -> Route:
        self.lookups += 1
        answer = self.answers.get(fqdn)
        if answer is None:
            raise RedisUnavailable("timeout")
        return answer

    def last_route(self, fqdn: str) -> Route | None:
        return self.last.get(fqdn)

    def note_poll(self, fqdn: str, labels: dict[str, str] | None) -> None:
        """Nothing to write."""

    def poll_ended(self, fqdn: str) -> None:
        """Nothing to write."""


class FakePeers:
    """Records forwarded scrapes; each waits for the test to answer it."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, int, Deferred[IScrapeAnswer]]] = []

    def forward_scrape(self, peer: str, method: bytes, url: bytes,
                       headers: list[tuple[bytes, bytes]], timeout: float, hops: int = 1,
                       ) -> Deferred[IScrapeAnswer]:
        answer: Deferred[IScrapeAnswer] = Deferred()
        self.forwarded.append((peer, hops, answer))
        return answer


class RoutingTests(SynchronousTestCase):
    """A scrape of a client that does not poll this replica."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.local = Coordinator(self.clock, ProxyConfig(), id_prefix="self0001.")
        self.routes = FakeRoutes()
        self.peers = FakePeers()
        self.cluster = ClusterCoordinator(self.local, self.routes,  # type: ignore[arg-type]
                                          self.peers, self.clock)  # type: ignore[arg-type]

    def registered_without_poll(self, fqdn: str = "node1.example") -> None:
        """The client polled here once and hung up: known here, no poll held."""
        poll = self.cluster.poll(fqdn, None, None)
        poll.cancel()
        poll.addErrback(lambda _: None)

    def scrape(self, hops: int = 0, timeout: float = 10.0) -> Deferred[IScrapeAnswer]:
        headers = [(wire.HOP_HEADER, b"%d" % hops)] if hops else []
        return self.cluster.scrape("node1.example", b"GET", URL, headers, timeout)

    def test_forwarded_where_redis_says(self) -> None:
        """Redis names another replica: forwarded there, one hop."""
        self.routes.answers["node1.example"] = Route(peer=THERE, known=True)
        scraped = self.scrape()
        self.assertEqual([(peer, hops) for peer, hops, _ in self.peers.forwarded],
                         [(THERE, 1)])
        self.assertNoResult(scraped)

    def test_redis_silent_the_last_route_is_followed(self) -> None:
        """Redis does not answer: the route it gave last is used, no 503."""
        self.routes.last["node1.example"] = Route(peer=THERE, known=True)
        self.scrape()
        self.assertEqual([(peer, hops) for peer, hops, _ in self.peers.forwarded],
                         [(THERE, 1)])

    def test_redis_silent_asked_again_until_it_answers(self) -> None:
        """No route known: Redis is asked again every REDIS_RETRY, then followed."""
        scraped = self.scrape()
        self.clock.advance(REDIS_RETRY)
        self.clock.advance(REDIS_RETRY)
        self.assertEqual((self.routes.lookups, self.peers.forwarded), (3, []))
        self.routes.answers["node1.example"] = Route(peer=THERE, known=True)
        self.clock.advance(REDIS_RETRY)
        self.assertEqual([peer for peer, _, _ in self.peers.forwarded], [THERE])
        self.assertNoResult(scraped)

    def test_redis_silent_for_the_whole_timeout_is_503(self) -> None:
        """No route, Redis silent: 503 naming Redis while the scraper still waits."""
        scraped = self.scrape(timeout=2.0)
        ended: list[float] = []

        def end(result: object) -> object:
            ended.append(self.clock.seconds())
            return result

        scraped.addBoth(end)
        while not ended:
            self.clock.advance(REDIS_RETRY / 2)
        self.assertLess(ended[0], 2.0)
        error = self.failureResultOf(scraped, RoutingUnavailable).value
        self.assertEqual(str(error), "node1.example does not poll this replica, and Redis, "
                         "which knows where it polls, cannot be reached")
        self.assertEqual(error.status, 503)

    def test_a_queued_scrape_follows_the_poll(self) -> None:
        """
        Served here (the hop limit of routing reached), queued for a poll: when the
        client's poll lands on another replica, the scrape goes there at once.
        """
        self.registered_without_poll()
        scraped = self.scrape(hops=2)
        self.assertEqual(self.local.queued_scrape_count(), 1)
        self.routes.on_moved("node1.example", THERE)
        self.assertEqual([(peer, hops) for peer, hops, _ in self.peers.forwarded],
                         [(THERE, 3)])
        self.assertEqual(self.local.queued_scrape_count(), 0)
        self.assertNoResult(scraped)
        self.assertEqual(self.cluster._moves, {})

    def test_a_move_announcement_missed_is_caught_up_from_redis(self) -> None:
        """No announcement: Redis is asked every RECALL_AFTER, and the scrape follows."""
        self.registered_without_poll()
        self.scrape(hops=2)
        self.routes.answers["node1.example"] = Route(peer=THERE, known=True)
        self.clock.advance(RECALL_AFTER)
        self.assertEqual([(peer, hops) for peer, hops, _ in self.peers.forwarded],
                         [(THERE, 3)])

    def test_routed_here_but_unknown_here_is_routed_again(self) -> None:
        """
        Sent here by another replica (the hop limit of routing reached) for a client that
        never polled here: it moved on meanwhile, so Redis is asked again a moment later
        and the scrape follows it, where a 404 would deny a client the cluster knows.
        """
        self.routes.answers["node1.example"] = Route(peer=THERE, known=True)
        scraped = self.scrape(hops=2)
        self.assertEqual((self.routes.lookups, self.peers.forwarded), (0, []))
        self.clock.advance(RETRY)
        self.assertEqual([(peer, hops) for peer, hops, _ in self.peers.forwarded],
                         [(THERE, 3)])
        self.assertNoResult(scraped)

    def test_routed_here_unknown_everywhere_is_404(self) -> None:
        """The same when the cluster does not know the client either: 404 once asked."""
        self.routes.answers["node1.example"] = Route(peer=None, known=False)
        scraped = self.scrape(hops=2)
        self.clock.advance(RETRY)
        self.assertEqual(self.failureResultOf(scraped, UnknownClient).value.status, 404)
        self.assertTrue(self.local.is_idle())

    def test_following_stops_at_the_hop_limit(self) -> None:
        """A scrape that has followed its client MAX_FOLLOW times waits where it is."""
        self.registered_without_poll()
        scraped = self.scrape(hops=MAX_FOLLOW)
        self.routes.on_moved("node1.example", THERE)
        self.assertEqual(self.peers.forwarded, [])
        self.assertEqual(self.local.queued_scrape_count(), 1)
        scraped.cancel()
        self.failureResultOf(scraped)
        self.assertTrue(self.local.is_idle())

    def test_nothing_is_left_when_the_scrape_ends(self) -> None:
        """A queued scrape cancelled (Prometheus hung up): no watcher, no timer left."""
        self.registered_without_poll()
        scraped = self.scrape(hops=2)
        scraped.cancel()
        self.failureResultOf(scraped)
        self.clock.advance(RECALL_AFTER)
        self.assertEqual(self.cluster._moves, {})
        self.assertTrue(self.local.is_idle())
        self.assertEqual(self.clock.getDelayedCalls(), [])
