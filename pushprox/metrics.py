# -*- test-case-name: tests.test_metrics -*-
"""
Metric definitions of the proxy and the client, and the ``/metrics`` resource.

Each service gets its own ``CollectorRegistry`` (never the global one), so that
several services in one process, and tests, do not share counters.  Names that the
upstream Go PushProx exports are kept, so that existing dashboards keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

if TYPE_CHECKING:
    # The web server is imported only where a site is built: a client without
    # --metrics-listen does not pay for it.
    from twisted.web.server import Request, Site

#: Buckets for scrape durations: from a local 1 ms scrape to a 5 minute timeout.
SCRAPE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                  30, 60, 120, 300)


class ProxyMetrics:
    """The proxy's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter(
            "pushprox_http_requests_total",
            "Requests to the proxy's own endpoints, by status code and path.",
            ["code", "path"], registry=r)
        self.http_duration = Histogram(
            "pushprox_http_duration_seconds",
            "Time taken to answer requests to the proxy's own endpoints, by path.",
            ["path"], registry=r)
        self.proxied_requests = Counter(
            "pushprox_proxied_requests_total",
            "Scrapes proxied to clients, by the status code given to the scraper.",
            ["code"], registry=r)
        self.scrapes = Counter(
            "pushprox_scrapes_total",
            "Scrapes by outcome: success (relayed from the target, any status), "
            "unknown_client, client_silent, timeout, client_error, queue_full, cancelled, "
            "bad_request, unauthorized, shutdown, error.",
            ["outcome"], registry=r)
        self.scrape_duration = Histogram(
            "pushprox_scrape_duration_seconds",
            "Time from the scraper's request to the end of the relayed response.",
            buckets=SCRAPE_BUCKETS, registry=r)
        self.limit_exceeded = Counter(
            "pushprox_limit_exceeded_total",
            "Requests refused because a configured limit was reached, by limit.",
            ["limit"], registry=r)
        self.clients = Gauge("pushprox_proxy_clients", "Number of registered clients.",
                             registry=r)
        self.clients_silent = Gauge(
            "pushprox_clients_silent",
            "Registered clients that have held no poll for --client-silence-timeout.",
            registry=r)
        self.pushes_broken = Counter(
            "pushprox_pushes_broken_total",
            "Pushes whose connection ended before their body did: the scraper got an "
            "incomplete answer.", registry=r)
        self.connections_refused = Counter(
            "pushprox_connections_refused_total",
            "New connections closed at once because the proxy had no file descriptor "
            "left (ulimit -n).", registry=r)
        self.accept_errors = Counter(
            "pushprox_accept_errors_total",
            "Failures to accept a new connection that left it waiting, by error "
            "(ENFILE: the system is out of file descriptors; ENOBUFS, ENOMEM).",
            ["error"], registry=r)
        self.polls_waiting = Gauge(
            "pushprox_polls_waiting",
            "Number of client polls held open, waiting for a scrape.", registry=r)
        self.scrapes_queued = Gauge(
            "pushprox_scrapes_queued",
            "Number of scrapes waiting for a poll of their client.", registry=r)
        self.scrapes_in_flight = Gauge(
            "pushprox_scrapes_in_flight",
            "Number of scrapes not yet answered (queued, sent to a client, or relaying).",
            registry=r)

        # Children of labelled metrics, looked up once: labels() costs several
        # microseconds, and these are counted for every request.
        self._request_children: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._scrape_children: dict[tuple[int, str], tuple[Any, Any]] = {}

    def count_request(self, code: int, path: str, seconds: float) -> None:
        """Count one answered request to the proxy's own endpoint ``path``."""
        children = self._request_children.get((code, path))
        if children is None:
            children = (self.http_requests.labels(str(code), path),
                        self.http_duration.labels(path))
            self._request_children[(code, path)] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_scrape(self, code: int, outcome: str) -> None:
        """Count one proxied scrape by the code given to the scraper and its outcome."""
        children = self._scrape_children.get((code, outcome))
        if children is None:
            children = (self.proxied_requests.labels(str(code)), self.scrapes.labels(outcome))
            self._scrape_children[(code, outcome)] = children
        children[0].inc()
        children[1].inc()

    def scrape_totals(self) -> dict[str, int]:
        """Scrapes proxied since the start, by outcome (for the status page)."""
        return {
            sample.labels["outcome"]: int(sample.value)
            for family in self.scrapes.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def watch(
        self,
        *,
        clients: Callable[[], float],
        polls_waiting: Callable[[], float],
        scrapes_queued: Callable[[], float],
        scrapes_in_flight: Callable[[], float],
        clients_silent: Callable[[], float],
    ) -> None:
        """Read the gauges from the coordinator at collection time."""
        self.clients.set_function(clients)
        self.polls_waiting.set_function(polls_waiting)
        self.scrapes_queued.set_function(scrapes_queued)
        self.scrapes_in_flight.set_function(scrapes_in_flight)
        self.clients_silent.set_function(clients_silent)


#: The client's counters: ``pushprox_client_<key>_total``, with their help texts.
_CLIENT_COUNTERS = {
    "scrapes": "Scrape requests received from the proxy.",
    "scrape_errors": "Scrapes of targets that failed (refused, unreachable, timed out).",
    "push_errors": "Pushes to the proxy that failed.",
    "poll_errors": "Polls of the proxy that failed or were answered with something unreadable.",
}


class ClientMetrics:
    """The client's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        counters = {key: Counter(f"pushprox_client_{key}_total", text, registry=r)
                    for key, text in _CLIENT_COUNTERS.items()}
        self.scrapes = counters["scrapes"]
        self.scrape_errors = counters["scrape_errors"]
        self.push_errors = counters["push_errors"]
        self.poll_errors = counters["poll_errors"]
        self.scrape_duration = Histogram(
            "pushprox_client_scrape_duration_seconds",
            "Time from receiving a scrape request to the end of its push.",
            buckets=SCRAPE_BUCKETS, registry=r)


class MetricsResource(Resource):
    """Renders one registry in the exposition format the scraper asks for."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Encode the registry's current values."""
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self._registry)


def metrics_site(registry: CollectorRegistry) -> Site:
    """A site that serves ``/metrics`` of one registry and logs no access lines."""
    from twisted.web.server import Site

    class MetricsSite(Site):
        noisy = False

        def log(self, request: Any) -> None:
            """Scrapes of the client's metrics are not worth a log line each."""

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return MetricsSite(root)
