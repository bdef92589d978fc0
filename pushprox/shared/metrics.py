# -*- test-case-name: tests.test_metrics -*-
"""
Metric definitions of the proxy and the client, and what ``/metrics`` answers.

Each service gets its own ``CollectorRegistry`` (never the global one), so that
several services in one process, and tests, do not share counters.  Names that the
upstream Go PushProx exports are kept, so that existing dashboards keep working.

The metrics counted on every request and every scrape are L{ReactorCounter} and
L{ReactorHistogram}: plain Python numbers updated without prometheus-client's lock and
per-call checks, exported through the same families prometheus-client's own ``Counter``
and ``Histogram`` give (tests/test_metrics.py compares the two expositions).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from pushprox.shared.answers import Answerable, refusal
from pushprox.shared.created_series import created_series_wanted
from pushprox.shared.version import build_labels

if TYPE_CHECKING:
    from pushprox.shared.auth import ScraperAuth

#: Buckets for scrape durations: from a local 1 ms scrape to a 5 minute timeout.
SCRAPE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                  30, 60, 120, 300)


class ReactorCounterSeries:
    """One series of a L{ReactorCounter}: a float and its creation time."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative) to the series."""
        self.value += amount


class ReactorHistogramSeries:
    """One series of a L{ReactorHistogram}: a count per bucket, a sum, a creation time."""

    __slots__ = ("_upper_bounds", "counts", "created", "sum")

    def __init__(self, upper_bounds: tuple[float, ...]) -> None:
        self._upper_bounds = upper_bounds
        #: Observations per bucket, not cumulated: ``counts[i]`` counts the values
        #: above ``upper_bounds[i - 1]`` and at most ``upper_bounds[i]``.
        self.counts = [0.0] * len(upper_bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count one observed value (seconds, for all of ours)."""
        self.sum += amount
        # The first bound >= amount, as prometheus-client's ``amount <= bound`` search;
        # the last bound is +Inf, so every number lands in a bucket.
        self.counts[bisect_left(self._upper_bounds, amount)] += 1.0


SeriesT = TypeVar("SeriesT", ReactorCounterSeries, ReactorHistogramSeries)
FamilyT = TypeVar("FamilyT", CounterMetricFamily, HistogramMetricFamily)


class _ReactorMetric(Collector, Generic[SeriesT, FamilyT]):
    """What L{ReactorCounter} and L{ReactorHistogram} share: series by label values.

    Updated only from the reactor thread, which is why no lock is taken: both programs
    count and collect on the reactor (``/metrics`` is rendered there too), so an update
    and a collection never overlap.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None, new_series: Callable[[], SeriesT]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._new_series: Callable[[], SeriesT] = new_series
        #: Series by label values, in the order they were first used (the exposition's).
        self._series: dict[tuple[str, ...], SeriesT] = {}
        #: The one series of a metric without labels, made at once as prometheus-client's.
        self._unlabelled: SeriesT | None = None
        if not self.labelnames:
            self._unlabelled = self._series[()] = new_series()
        if registry is not None:
            registry.register(self)

    def labels(self, *labelvalues: str) -> SeriesT:
        """The series of these label values, made on first use."""
        series = self._series.get(labelvalues)
        if series is None:
            if not self.labelnames or len(labelvalues) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, "
                                 f"not {labelvalues}")
            series = self._series[labelvalues] = self._new_series()
        return series

    def _only_series(self) -> SeriesT:
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use labels()")
        return self._unlabelled

    def _family(self) -> FamilyT:
        raise NotImplementedError

    def _add_series(self, family: FamilyT, labelvalues: tuple[str, ...], series: SeriesT,
                    created: bool) -> None:
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        """The family without samples, for the registry's check of duplicate names."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """One family with the samples of every series, in the order they were made."""
        family = self._family()
        created = created_series_wanted()
        for labelvalues, series in self._series.items():
            self._add_series(family, labelvalues, series, created)
        return [family]


class ReactorCounter(_ReactorMetric[ReactorCounterSeries, CounterMetricFamily]):
    """A counter for the reactor thread, exported as prometheus-client's ``Counter``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry | None) -> None:
        super().__init__(name, documentation, labelnames, registry, ReactorCounterSeries)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the counter's one series (a counter without labels)."""
        self._only_series().inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add_series(self, family: CounterMetricFamily, labelvalues: tuple[str, ...],
                    series: ReactorCounterSeries, created: bool) -> None:
        """``_total`` and ``_created``, as prometheus-client's ``Counter`` writes them."""
        family.add_metric(labelvalues, series.value,
                          created=series.created if created else None)


class ReactorHistogram(_ReactorMetric[ReactorHistogramSeries, HistogramMetricFamily]):
    """A histogram for the reactor thread, exported as prometheus-client's ``Histogram``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry | None,
                 buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in increasing order")
        if bounds[-1] != INF:
            bounds.append(INF)
        upper_bounds = tuple(bounds)
        self._le = tuple(floatToGoString(bound) for bound in upper_bounds)
        super().__init__(name, documentation, labelnames, registry,
                         lambda: ReactorHistogramSeries(upper_bounds))

    def observe(self, amount: float) -> None:
        """Count one value in the histogram's one series (a histogram without labels)."""
        self._only_series().observe(amount)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add_series(self, family: HistogramMetricFamily, labelvalues: tuple[str, ...],
                    series: ReactorHistogramSeries, created: bool) -> None:
        """Cumulative buckets, ``_count``, ``_sum`` and ``_created``, as ``Histogram``."""
        cumulative = 0.0
        buckets = []
        for le, count in zip(self._le, series.counts, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        family.add_metric(labelvalues, buckets, series.sum)
        if created:
            family.samples.append(Sample(
                f"{self.name}_created", dict(zip(self.labelnames, labelvalues, strict=True)),
                series.created))


def scrape_duration_histogram(name: str, documentation: str,
                              registry: CollectorRegistry) -> ReactorHistogram:
    """A histogram of scrape durations, in the buckets both programs share."""
    return ReactorHistogram(name, documentation, buckets=SCRAPE_BUCKETS, registry=registry)


def build_info(registry: CollectorRegistry) -> Gauge:
    """``pushprox_build_info``: 1, with the version running as labels (as Go exporters do)."""
    labels = build_labels()
    gauge = Gauge("pushprox_build_info",
                  "A metric with a constant '1' value labeled by the version of pushprox, "
                  "Python and Twisted that runs.", list(labels), registry=registry)
    gauge.labels(**labels).set(1)
    return gauge


class ProxyMetrics:
    """The proxy's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.build_info = build_info(r)
        # Counted for every request or every scrape: the cheap kind (see the module
        # docstring); the rest is counted rarely and stays prometheus-client's.
        self.http_requests = ReactorCounter(
            "pushprox_http_requests_total",
            "Requests to the proxy's own endpoints, by status code and path.",
            ["code", "path"], registry=r)
        self.http_duration = ReactorHistogram(
            "pushprox_http_duration_seconds",
            "Time taken to answer requests to the proxy's own endpoints, by path.",
            ["path"], registry=r)
        self.proxied_requests = ReactorCounter(
            "pushprox_proxied_requests_total",
            "Scrapes proxied to clients, by the status code given to the scraper.",
            ["code"], registry=r)
        self.scrapes = ReactorCounter(
            "pushprox_scrapes_total",
            "Scrapes by outcome: success (relayed from the target, any status), "
            "unknown_client, client_silent, timeout, client_error, queue_full, cancelled, "
            "bad_request, unauthorized, shutdown, error.",
            ["outcome"], registry=r)
        self.scrape_duration = scrape_duration_histogram(
            "pushprox_scrape_duration_seconds",
            "Time from the scraper's request to the end of the relayed response.", r)
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

        # Series of labelled metrics, looked up once per label values: labels() would
        # build the code's string and a tuple for every request.
        self._request_children: dict[
            tuple[int, str], tuple[ReactorCounterSeries, ReactorHistogramSeries]] = {}
        self._scrape_children: dict[
            tuple[int, str], tuple[ReactorCounterSeries, ReactorCounterSeries]] = {}

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
        self.build_info = build_info(r)
        # Counted from the reactor thread only, and per scrape: the cheap kind.
        counters = {key: ReactorCounter(f"pushprox_client_{key}_total", text, registry=r)
                    for key, text in _CLIENT_COUNTERS.items()}
        self.scrapes = counters["scrapes"]
        self.scrape_errors = counters["scrape_errors"]
        self.push_errors = counters["push_errors"]
        self.poll_errors = counters["poll_errors"]
        self.scrape_duration = scrape_duration_histogram(
            "pushprox_client_scrape_duration_seconds",
            "Time from receiving a scrape request to the end of its push.", r)
        self.proxy_url_in_use = Gauge(
            "pushprox_client_proxy_url_in_use",
            "Names of this client polling through each --proxy-url now.",
            ["url"], registry=r)


def metrics_answer(request: Answerable, registry: CollectorRegistry,
                   auth: ScraperAuth | None) -> bytes:
    """
    The answer to ``GET /metrics``, set on ``request``: the refusal when ``auth`` (the
    scrapers' checks, the web configuration file's users) does not allow it, else the
    registry's values in the exposition format the ``Accept`` header asks for.  The one
    place that decides it, for the proxy's endpoint and the client's listener.
    """
    refused = refusal(request, auth)
    if refused is not None:
        return refused
    accept = request.getHeader(b"accept")
    encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
    request.setHeader(b"content-type", content_type.encode("ascii"))
    return encoder(registry)
