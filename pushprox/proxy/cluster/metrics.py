# -*- test-case-name: tests.test_cluster -*-
"""The figures a replica adds to its ``/metrics`` in cluster mode."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Redis calls take well under a millisecond on a local network; seconds mean trouble.
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: The cluster's gauges: ``pushprox_cluster_<key>``, with their help texts.
_CLUSTER_GAUGES = {
    "redis_up": "1 while Redis answers; 0 while this replica routes only its own clients.",
    "replicas": "Live replicas seen at the last heartbeat.",
    "redis_connections": "Connections to Redis ready for use (2 when all is well: calls, "
                         "and the subscription to clients' moves).",
    "redis_connects": "Connections to Redis made since start, the first ones included (a "
                      "count that grows means Redis or the way to it keeps dropping them).",
    "routes": "Clients whose route this replica wrote (it saw their last poll).",
}


class ClusterMetrics:
    """Forwarded scrapes and pushes, Redis errors and latency, routes held."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.forwarded_scrapes = Counter(
            "pushprox_cluster_forwarded_scrapes_total",
            "Scrapes forwarded to the replica that holds the client's poll, by the status "
            "code that replica answered (0: it could not be reached).", ["code"], registry=r)
        self.forwarded_pushes = Counter(
            "pushprox_cluster_forwarded_pushes_total",
            "Pushes forwarded to the replica that owns their scrape, by the status code "
            "that replica answered (0: it could not be reached).", ["code"], registry=r)
        self.redis_errors = Counter(
            "pushprox_cluster_redis_errors_total",
            "Redis calls that failed or timed out.", registry=r)
        self.redis_latency = Histogram(
            "pushprox_cluster_redis_latency_seconds", "Time Redis took to answer a call.",
            buckets=REDIS_BUCKETS, registry=r)
        gauges = {key: Gauge(f"pushprox_cluster_{key}", text, registry=r)
                  for key, text in _CLUSTER_GAUGES.items()}
        self.redis_up = gauges["redis_up"]
        self.redis_up.set(1)
        self.replicas = gauges["replicas"]
        self.redis_connections = gauges["redis_connections"]
        self.redis_connects = gauges["redis_connects"]
        self.routes = gauges["routes"]

    def watch_routes(self, count: Callable[[], float]) -> None:
        """Read the routes gauge at collection time."""
        self.routes.set_function(count)

    def watch_replicas(self, count: Callable[[], float]) -> None:
        """Read the replicas gauge at collection time."""
        self.replicas.set_function(count)

    def watch_redis(self, connected: Callable[[], float], made: Callable[[], float]) -> None:
        """Read the Redis connection gauges at collection time."""
        self.redis_connections.set_function(connected)
        self.redis_connects.set_function(made)
