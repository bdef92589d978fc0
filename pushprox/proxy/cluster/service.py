# -*- test-case-name: tests.test_cluster -*-
"""
A replica's part in the cluster: built from the options' values, kept alive, and drained
on stop.

``ClusterReplica`` is the proxy's ``ProxyVariant`` in cluster mode (``pushprox.proxy.assembly``):
``build`` makes the routing table, the peer connections and the ``ClusterCoordinator``
from ``--redis``, ``--peer-url`` and ``--peer-token-file``.  ``HeartbeatService`` tells
Redis every few seconds that this replica lives and learns the others.
``DrainingListeners`` holds the listening ports: on SIGTERM it first withdraws this
replica's routes, answers its held polls so that their clients poll another replica at
once, and waits for the scrapes in flight, and only then closes the ports.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from pushprox.proxy.cluster.coordinator import ClusterCoordinator
from pushprox.proxy.cluster.forwarding import Peers
from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.proxy.cluster.owners import OwnerSeal
from pushprox.proxy.cluster.redis import RedisClient
from pushprox.proxy.cluster.routes import RedisAddress, RedisUnavailable, RouteTable, connect
from pushprox.proxy.coordinator import Coordinator, ICoordinator
from pushprox.proxy.push import PushForwarder
from pushprox.proxy.site import PushProxSite
from pushprox.shared.auth import PeerAuth
from pushprox.shared.config import ProxyConfig
from pushprox.shared.metrics import ProxyMetrics


@dataclass
class Cluster:
    """The parts of cluster mode that a replica's services are built from."""

    coordinator: ClusterCoordinator
    local: Coordinator
    routes: RouteTable
    peers: Peers
    redis: RedisClient
    subscriber: RedisClient


def default_peer_url(listen: Sequence[str]) -> str | None:
    """``http://`` + this host's FQDN + the first plain TCP port listened on, if any."""
    for description in listen:
        kind, _, rest = description.partition(":")
        if kind == "tcp":
            port = rest.split(":")[0].removeprefix("port=")
            if port.isdigit():
                return f"http://{socket.getfqdn()}:{port}"
    return None


def build(reactor: Any, config: ProxyConfig, metrics: ProxyMetrics, *, redis_url: str,
          redis_password: str | None, peer_url: str, peer_token: str,
          redis_ca_file: str | None = None) -> Cluster:
    """Connect to Redis and make this replica's coordinator."""
    address = RedisAddress.from_url(redis_url, redis_password, redis_ca_file)
    cluster_metrics = ClusterMetrics(metrics.registry)
    replica_id = secrets.token_hex(4)
    redis = connect(reactor, address, timeout=0.5)
    # A second connection, subscribed to the announcements of clients that moved.
    subscriber = connect(reactor, address, timeout=0.5)
    routes = RouteTable(redis, replica_id=replica_id, peer_url=peer_url, clock=reactor,
                        registration_timeout=config.registration_timeout,
                        metrics=cluster_metrics, subscriber=subscriber,
                        seal=OwnerSeal(peer_token))
    connections = (redis, subscriber)
    cluster_metrics.watch_redis(
        lambda: sum(1 for connection in connections if connection.connected),
        lambda: sum(connection.connections for connection in connections))
    peers = Peers(reactor, routes, peer_token, cluster_metrics)
    local = Coordinator(reactor, config, id_prefix=routes.scrape_id_prefix)
    coordinator = ClusterCoordinator(local, routes, peers, reactor)
    return Cluster(coordinator=coordinator, local=local, routes=routes, peers=peers,
                   redis=redis, subscriber=subscriber)


class ClusterReplica:
    """
    The proxy's ``ProxyVariant`` in cluster mode: the ``ClusterCoordinator``, the peers
    that pushes are forwarded to, the heartbeat, and listeners that drain before closing.
    """

    def __init__(self, reactor: Any, config: ProxyConfig, metrics: ProxyMetrics, *,
                 redis_url: str, redis_password: str | None, peer_url: str,
                 peer_token: str, redis_ca_file: str | None = None) -> None:
        self.cluster = build(reactor, config, metrics, redis_url=redis_url,
                             redis_password=redis_password, redis_ca_file=redis_ca_file,
                             peer_url=peer_url, peer_token=peer_token)
        self.coordinator: ICoordinator = self.cluster.coordinator
        self.peer_auth: PeerAuth | None = PeerAuth(peer_token)
        self.push_forwarder: PushForwarder | None = self.cluster.peers
        self._reactor = reactor
        self._grace = config.shutdown_grace

    def add_services(self, service: MultiService, site: PushProxSite) -> MultiService:
        """
        The listeners first, so that they stop last (draining shuts the coordinator
        down once the site is quiet), then the heartbeat, which stops first.
        """
        listeners = DrainingListeners(self.cluster, site, self._reactor, self._grace)
        listeners.setServiceParent(service)
        HeartbeatService(self.cluster).setServiceParent(service)
        return listeners


class HeartbeatService(Service):
    """Tells Redis every few seconds that this replica lives; learns the others."""

    log = Logger()

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._loop = LoopingCall(self._beat)

    def startService(self) -> None:
        """Beat at once, then every heartbeat interval."""
        super().startService()
        routes = self._cluster.routes
        self.log.info("Cluster replica {replica} at {url}", replica=routes.replica_id,
                      url=routes.peer_url)
        self._loop.start(routes.heartbeat_interval, now=True)

    def _beat(self) -> Deferred[None]:
        async def beat() -> None:
            # A failure is counted and logged by the routing table.
            with contextlib.suppress(RedisUnavailable):
                await self._cluster.routes.heartbeat()
        return Deferred.fromCoroutine(beat())

    def stopService(self) -> None:
        """Stop beating (the drain withdraws this replica)."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()


class DrainingListeners(MultiService):
    """The listening ports of a replica, closed only once the replica has drained."""

    log = Logger()

    def __init__(self, cluster: Cluster, site: PushProxSite, clock: Any, grace: float) -> None:
        super().__init__()
        self._cluster = cluster
        self._clock = clock
        self._grace = grace
        #: The site on these ports: its requests are answered before the process ends,
        #: so it counts them.
        self.site = site
        site.count_requests = True

    def stopService(self) -> Deferred[None]:
        """Withdraw, answer held polls, wait for scrapes in flight; then close the ports."""
        return Deferred.fromCoroutine(self._drain())

    async def _quiet(self, deadline: float) -> None:
        """Wait until every request accepted before the ports closed has its answer."""
        site = self.site
        while self._clock.seconds() < deadline:
            waiting = site.when_quiet()
            waiting.addTimeout(max(deadline - self._clock.seconds(), 0.001), self._clock)
            try:
                await waiting
            except Exception:
                self.log.warn("{n} requests still unanswered after the grace period",
                              n=site.in_progress)
                return
            # A connection accepted just before the ports closed may send its request
            # a moment later.
            await deferLater(self._clock, 0.2, lambda: None)
            if not site.in_progress:
                return

    async def _drain(self) -> None:
        cluster = self._cluster
        try:
            dropped = await cluster.routes.withdraw()
            self.log.info("Leaving the cluster: {n} routes withdrawn", n=dropped)
        except RedisUnavailable:
            self.log.warn("Leaving the cluster without withdrawing routes: Redis cannot be "
                          "reached; they expire by themselves")
        cluster.local.drain()
        in_flight = cluster.local.scrapes_in_flight()
        if in_flight:
            self.log.info("Waiting up to {grace}s for {n} scrapes in flight",
                          grace=self._grace, n=in_flight)
            waiting = cluster.local.when_no_scrapes()
            waiting.addTimeout(self._grace, self._clock)
            try:
                await waiting
            except Exception:
                self.log.warn("{n} scrapes still in flight after {grace}s",
                              n=cluster.local.scrapes_in_flight(), grace=self._grace)
        await super().stopService()
        await self._quiet(deadline=self._clock.seconds() + self._grace)
        # What is left (queued scrapes, late polls) is answered 503 as a single proxy does.
        cluster.local.shutdown()
        await deferLater(self._clock, 0.2, lambda: None)
        await cluster.peers.close()
        for connection in (cluster.subscriber, cluster.redis):
            with contextlib.suppress(Exception):
                await connection.disconnect()
