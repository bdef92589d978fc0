# -*- test-case-name: tests.test_cluster -*-
"""
Where each scrape goes in a cluster: here, or to the replica that holds the client's poll.

``ClusterCoordinator`` implements ``ICoordinator`` around the single-process
``Coordinator``, which keeps this replica's polls, scrapes and timeouts as it always
did.  A scrape is served here when a poll of its FQDN is held here, when it was routed
between replicas ``MAX_HOPS`` times already, or when Redis names no other live replica;
otherwise it is forwarded.  Every poll is noted in the routing table.  A
scrape queued here for its client's next poll follows that poll when it lands on another
replica (announced through Redis, ``RouteTable.on_moved``).  While
Redis does not answer, a scrape follows the route Redis gave last for its client, or asks
again until its timeout leaves no room: a Redis paused for a moment fails no scrape.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from pushprox.proxy.cluster.forwarding import Peers, PeerUnreachable
from pushprox.proxy.cluster.routes import RedisUnavailable, RouteTable
from pushprox.proxy.coordinator import (
    ClientInfo,
    ClientStatus,
    Coordinator,
    CoordinatorError,
    ICoordinator,
    IScrapeAnswer,
    Scrape,
)
from pushprox.shared import wire

#: How long to wait for a client between replicas to poll again before asking Redis
#: again where it went.
RETRY = 0.05
#: How long to wait before asking Redis again when it did not answer, for a client whose
#: route this replica has not seen before.
REDIS_RETRY = 0.1
#: How often a scrape queued here checks whether its client went to another replica.
RECALL_AFTER = 0.25

#: A scrape is routed through Redis at most twice: once to the replica Redis names, and
#: once more if the client's next poll went elsewhere meanwhile.  Never in a loop.
MAX_HOPS = 2
#: A scrape queued for a poll that lands elsewhere follows it, up to this many hops in
#: all: each hop follows a real poll, so this bounds a client that moves at every poll.
MAX_FOLLOW = 6


def _hops(value: bytes | None) -> int:
    """How many times a scrape was forwarded already (from the hop header)."""
    if value is None:
        return 0
    return int(value) if value.isdigit() else MAX_HOPS


#: How long a replica that could not be reached is skipped: by then its clients have
#: polled another one, or its heartbeat has expired.
PEER_DOWN = 5.0


class RoutingUnavailable(CoordinatorError):
    """Redis cannot say which replica a client polls, and it does not poll this one."""

    status, outcome = 503, "routing_unavailable"


class ClientsUnavailable(CoordinatorError):
    """Redis cannot list the cluster's clients: no list rather than a partial one."""

    status, outcome = 503, "clients_unavailable"


@implementer(ICoordinator)
class ClusterCoordinator:
    """A replica's coordinator: local polls and scrapes, shared routes, forwarding."""

    log = Logger()

    def __init__(self, local: Coordinator, routes: RouteTable, peers: Peers,
                 clock: IReactorTime) -> None:
        self.local = local
        self._routes = routes
        routes.on_lost = self._write_routes_again
        routes.on_moved = self._moved
        #: Scrapes queued here waiting to hear where their client polls next, by FQDN.
        self._moves: dict[str, set[Deferred[str | None]]] = {}
        #: Peer URL → until when it is taken for down (it refused a forwarded scrape).
        self._down: dict[str, float] = {}
        self._peers = peers
        self._clock = clock

    @property
    def draining(self) -> bool:
        """See L{ICoordinator.draining}."""
        return self.local.draining

    # -- scrapes --

    def scrape(self, fqdn: str, method: bytes, url: bytes,
               headers: Sequence[tuple[bytes, bytes]], timeout: float,
               ) -> Deferred[IScrapeAnswer]:
        """See L{ICoordinator.scrape}: here, or forwarded to the replica with the poll."""
        hops = _hops(wire.header_value(headers, wire.HOP_HEADER))
        if self.local.has_poll(fqdn) and not self.local.draining:
            return self.local.scrape(fqdn, method, url, headers, timeout)
        if hops >= MAX_HOPS and not self.local.knows(fqdn) and hops < MAX_FOLLOW:
            # Sent here by a replica that Redis sent it to, but the client never polled
            # here: it is moving between replicas faster than the table says.  Ask again
            # once the table has caught up, rather than answer 404 for a client the
            # cluster knows.
            return Deferred.fromCoroutine(
                self._route(fqdn, method, url, list(headers), timeout, hops, settle=True))
        if hops >= MAX_HOPS:
            # Served here, whatever Redis says; but if it waits for a poll that lands
            # elsewhere, it follows.
            deadline = self._clock.seconds() + timeout
            queued = self.local.scrape(fqdn, method, url, headers, timeout)
            return Deferred.fromCoroutine(
                self._watch(queued, fqdn, method, url, list(headers), deadline, hops))
        return Deferred.fromCoroutine(
            self._route(fqdn, method, url, list(headers), timeout, hops))

    async def _route(self, fqdn: str, method: bytes, url: bytes,
                     headers: list[tuple[bytes, bytes]], timeout: float,
                     hops: int, settle: bool = False) -> IScrapeAnswer:
        """
        Forward to the replica Redis names; serve here when that is this one, or when the
        cluster does not know the client (404 at once, unless it polls here).  A client the
        cluster knows but that has no live route is between replicas (the one it polled
        left or died): wait for its next poll to say where it went.  With ``settle``,
        Redis is asked only after L{RETRY}: the scrape was routed here already.
        """
        deadline = self._clock.seconds() + timeout
        if settle and self._clock.seconds() + RETRY < deadline:
            await deferLater(self._clock, RETRY, lambda: None)
        while True:
            left = deadline - self._clock.seconds()
            if self.local.has_poll(fqdn) and not self.local.draining:
                return await self.local.scrape(fqdn, method, url, headers, left)
            try:
                route = await self._routes.route(fqdn)
            except RedisUnavailable:
                if self.local.knows(fqdn):
                    left = deadline - self._clock.seconds()
                    return await self._watch(self.local.scrape(fqdn, method, url, headers, left),
                                             fqdn, method, url, headers, deadline, hops)
                last = self._routes.last_route(fqdn)
                if last is not None and last.peer not in self._unreachable():
                    route = last
                elif self._clock.seconds() + REDIS_RETRY + self._routes.timeout < deadline:
                    # Redis paused (a snapshot, a failover): ask again while time is left.
                    await deferLater(self._clock, REDIS_RETRY, lambda: None)
                    continue
                else:
                    raise RoutingUnavailable(
                        f"{fqdn} does not poll this replica, and Redis, which knows where "
                        "it polls, cannot be reached") from None
            peer = route.peer if route.peer not in self._unreachable() else None
            if peer is not None and peer != self._routes.peer_url:
                left = deadline - self._clock.seconds()
                try:
                    return await self._peers.forward_scrape(peer=peer, method=method,
                                                            url=url, headers=headers,
                                                            timeout=left, hops=hops + 1)
                except PeerUnreachable:
                    # Died or left: its clients poll another replica within their retry.
                    self._down[peer] = self._clock.seconds() + PEER_DOWN
                    if self._clock.seconds() + RETRY >= deadline:
                        raise
                    await deferLater(self._clock, RETRY, lambda: None)
                    continue
            if peer == self._routes.peer_url and not self.local.draining:
                # Routed here, between two polls: queued for the next one, unless that
                # goes to another replica (through another of the client's connections).
                left = deadline - self._clock.seconds()
                queued = self.local.scrape(fqdn, method, url, headers, left)
                return await self._watch(queued, fqdn, method, url, headers, deadline, hops)
            # Known to the cluster but routed nowhere: its last replica left or died, and
            # its next poll, wherever it lands, will say where it went.
            between_replicas = self.local.draining or (peer is None and route.known)
            if not between_replicas or self._clock.seconds() + RETRY >= deadline:
                left = max(deadline - self._clock.seconds(), 0.001)
                return await self._watch(self.local.scrape(fqdn, method, url, headers, left),
                                         fqdn, method, url, headers, deadline, hops)
            await deferLater(self._clock, RETRY, lambda: None)

    async def _watch(self, queued: Deferred[IScrapeAnswer], fqdn: str, method: bytes,
                     url: bytes, headers: list[tuple[bytes, bytes]], deadline: float,
                     hops: int) -> IScrapeAnswer:
        """A scrape queued here: taken back and forwarded if its client polls elsewhere."""
        outcome: Deferred[IScrapeAnswer] = Deferred(lambda _: queued.cancel())

        def settle(result: object) -> None:
            if not outcome.called:
                outcome.callback(result)  # type: ignore[arg-type]

        queued.addBoth(settle)
        watching = Deferred.fromCoroutine(self._recall_if_moved(
            queued, outcome, fqdn, method, url, headers, deadline, hops))
        watching.addErrback(lambda failure: self.log.failure(
            "Watching a queued scrape of {fqdn} failed", failure, fqdn=fqdn))
        return await outcome

    async def _recall_if_moved(self, queued: Deferred[IScrapeAnswer],
                               outcome: Deferred[IScrapeAnswer], fqdn: str, method: bytes,
                               url: bytes, headers: list[tuple[bytes, bytes]],
                               deadline: float, hops: int) -> None:
        """
        Wait for the client's next poll to land elsewhere (announced through Redis), or
        check Redis now and then in case an announcement was missed; then take the
        scrape back and send it where the poll is.
        """
        while (not outcome.called and hops < MAX_FOLLOW
               and self._clock.seconds() + RETRY < deadline):
            moved = self._next_move(fqdn)
            moved.addTimeout(min(RECALL_AFTER, max(deadline - self._clock.seconds(), 0.001)),
                             self._clock, onTimeoutCancel=lambda result, timeout: None)
            peer = await moved
            if outcome.called:
                return
            if peer is None:
                try:
                    peer = (await self._routes.route(fqdn)).peer
                except RedisUnavailable:
                    continue
            if (outcome.called or peer is None or peer == self._routes.peer_url
                    or peer in self._unreachable() or not self.local.recall(queued)):
                continue
            forwarded = self._peers.forward_scrape(
                peer=peer, method=method, url=url, headers=headers,
                timeout=deadline - self._clock.seconds(), hops=hops + 1)
            forwarded.chainDeferred(outcome)
            return

    def _next_move(self, fqdn: str) -> Deferred[str | None]:
        """The peer URL where ``fqdn``'s next poll lands, once announced; cancellable."""

        def forget(waiter: Deferred[str | None]) -> None:
            waiters = self._moves.get(fqdn)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._moves[fqdn]

        waiter: Deferred[str | None] = Deferred(forget)
        self._moves.setdefault(fqdn, set()).add(waiter)
        return waiter

    def _moved(self, fqdn: str, peer: str) -> None:
        """``fqdn``'s poll landed on ``peer``: scrapes of it queued here follow it."""
        for waiter in self._moves.pop(fqdn, ()):
            waiter.callback(peer)

    def _unreachable(self) -> set[str]:
        """Peers that could not be reached a moment ago (forgotten after PEER_DOWN)."""
        now = self._clock.seconds()
        for peer in [peer for peer, until in self._down.items() if until <= now]:
            del self._down[peer]
        return set(self._down)

    def _write_routes_again(self) -> None:
        """Note in Redis every client that holds a poll here now."""
        for client in self.local.holding():
            self._routes.note_poll(client.fqdn, client.labels)

    # -- polls --

    def poll(self, fqdn: str, principal: str | None, timeout: float | None,
             labels: dict[str, str] | None = None) -> Deferred[Scrape | None]:
        """See L{ICoordinator.poll}; the poll is noted in the shared routing table."""
        if self.local.draining:
            return self.local.poll(fqdn, principal, timeout, labels)
        self._routes.note_poll(fqdn, labels)
        polled = self.local.poll(fqdn, principal, timeout, labels)

        def ended(result: Scrape | None) -> Scrape | None:
            self._routes.poll_ended(fqdn)
            return result

        return polled.addBoth(ended)

    def clients(self) -> Deferred[list[ClientInfo]]:
        """
        Every client of the cluster; fails (503) when Redis cannot say: this replica's
        clients alone would make Prometheus drop every other target, where a failed
        refresh keeps the targets it had.
        """
        return Deferred.fromCoroutine(self._clients())

    async def _clients(self) -> list[ClientInfo]:
        local = self.local.clients()
        try:
            shared = await self._routes.clients()
        except RedisUnavailable as error:
            raise ClientsUnavailable(
                f"the cluster's clients cannot be listed: Redis cannot be reached ({error}); "
                f"this replica alone knows {len(local)} of them") from None
        merged = {client.fqdn: client for client in shared}
        for client in local:
            merged[client.fqdn] = client
        return sorted(merged.values(), key=lambda client: client.fqdn)

    # -- the rest is the local coordinator's --

    def client_statuses(self) -> list[ClientStatus]:
        """
        The clients polling this replica, with their polls and scrapes: a scrape is
        recorded where its client's poll is, so each replica's page shows its own clients.
        """
        return self.local.client_statuses()

    def record_scrape(self, fqdn: str, status: int, seconds: float,
                      error: str | None) -> None:
        """See L{ICoordinator.record_scrape}: kept only where the client polls."""
        self.local.record_scrape(fqdn, status, seconds, error)

    def requeue(self, scrape: Scrape) -> None:
        """See L{ICoordinator.requeue}."""
        self.local.requeue(scrape)

    def claim(self, scrape_id: str, principal: str | None) -> Scrape:
        """See L{ICoordinator.claim}."""
        return self.local.claim(scrape_id, principal)

    def take_queued(self, fqdn: str, principal: str | None) -> Scrape | None:
        """See L{ICoordinator.take_queued}."""
        return self.local.take_queued(fqdn, principal)

    def respond(self, scrape: Scrape, answer: IScrapeAnswer) -> None:
        """See L{ICoordinator.respond}."""
        self.local.respond(scrape, answer)

    def finish(self, scrape: Scrape) -> None:
        """See L{ICoordinator.finish}."""
        self.local.finish(scrape)

    def shutdown(self) -> None:
        """See L{ICoordinator.shutdown}."""
        self.local.shutdown()

    def client_count(self) -> int:
        """Clients registered with this replica."""
        return self.local.client_count()

    def silent_client_count(self) -> int:
        """Clients registered with this replica that are silent."""
        return self.local.silent_client_count()

    def waiting_poll_count(self) -> int:
        """See L{ICoordinator.waiting_poll_count}."""
        return self.local.waiting_poll_count()

    def queued_scrape_count(self) -> int:
        """See L{ICoordinator.queued_scrape_count}."""
        return self.local.queued_scrape_count()

    def scrapes_in_flight(self) -> int:
        """See L{ICoordinator.scrapes_in_flight}."""
        return self.local.scrapes_in_flight()
