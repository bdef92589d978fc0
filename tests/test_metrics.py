"""
Tests for L{pushprox.shared.metrics}: the cheap counters and histograms of the hot path export
exactly what prometheus-client's own ``Counter`` and ``Histogram`` would.

Each comparison builds L{ProxyMetrics} (or L{ClientMetrics}) twice, once as shipped and once with
prometheus-client's classes in place of L{ReactorCounter} and L{ReactorHistogram}, plays
the same events on both at the same (fake) wall-clock times, and compares the whole
registry: its families and both exposition formats, byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar
from unittest import mock

import prometheus_client
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared import metrics
from pushprox.shared.created_series import created_series_wanted
from pushprox.shared.metrics import (
    SCRAPE_BUCKETS,
    ClientMetrics,
    ProxyMetrics,
    ReactorCounter,
    ReactorHistogram,
)

BOUNDED = settings(max_examples=150, deadline=None, database=None)

#: Durations on both sides of every bucket bound of both histograms, the bounds
#: themselves (a value equal to a bound counts in that bound's bucket), and beyond.
BOUNDS = sorted(set(SCRAPE_BUCKETS) | {float(b) for b in Histogram.DEFAULT_BUCKETS[:-1]})
durations = st.one_of(
    st.sampled_from(BOUNDS),
    st.floats(min_value=0.0, max_value=400.0),
    st.just(float("inf")),
)
request_events = st.tuples(
    st.just("request"),
    st.sampled_from([200, 204, 400, 401, 404, 413, 431, 499, 500, 503]),
    st.sampled_from(["/poll", "/push", "/metrics", "/clients", "/-/ready", "(scrape)"]),
    durations,
)
scrape_events = st.tuples(
    st.just("scrape"),
    st.sampled_from([200, 404, 499, 502, 503, 504]),
    st.sampled_from(["success", "unknown_client", "timeout", "cancelled", "client_error"]),
    st.just(0.0),
)
duration_events = st.tuples(st.just("duration"), st.just(0), st.just(""), durations)
events = st.lists(st.one_of(request_events, scrape_events, duration_events), max_size=40)

Event = tuple[str, int, str, float]
ServiceMetrics = TypeVar("ServiceMetrics", ProxyMetrics, ClientMetrics)


@contextmanager
def prometheus_client_classes() -> Iterator[None]:
    """While inside, the services' metrics are built from prometheus-client's classes."""
    with mock.patch.multiple(metrics, ReactorCounter=Counter, ReactorHistogram=Histogram):
        yield


client_events = st.lists(st.one_of(
    st.tuples(st.sampled_from(["scrapes", "scrape_errors", "push_errors", "poll_errors"]),
              st.just(0.0)),
    st.tuples(st.just("scrape_duration"), durations),
), max_size=40)


class ExpositionTests(SynchronousTestCase):
    """The /metrics of both programs is the same as with prometheus-client's classes."""

    def setUp(self) -> None:
        # Both implementations stamp series with time.time() when they are made.
        self.now = 1_700_000_000.25
        self.patch(time, "time", lambda: self.now)

    def pair(self, kind: type[ServiceMetrics]) -> tuple[ServiceMetrics, ServiceMetrics]:
        """The metrics as shipped, and the same built from prometheus-client's classes."""
        shipped = kind()
        with prometheus_client_classes():
            reference = kind()
        # Not the implementation compared with itself:
        self.assertIsInstance(shipped.scrape_duration, ReactorHistogram)
        self.assertIsInstance(shipped.scrapes, ReactorCounter)
        self.assertIsInstance(reference.scrape_duration, Histogram)
        self.assertIsInstance(reference.scrapes, Counter)
        return shipped, reference

    def play(self, events: list[Event], *all_metrics: ProxyMetrics) -> None:
        """Play ``events`` on each of ``all_metrics``, a second of wall clock apart."""
        for kind, code, label, seconds in events:
            self.now += 1.0
            for each in all_metrics:
                if kind == "request":
                    each.count_request(code, label, seconds)
                elif kind == "scrape":
                    each.count_scrape(code, label)
                else:
                    each.scrape_duration.observe(seconds)

    def assertSameExposition(self, shipped: CollectorRegistry,
                             reference: CollectorRegistry) -> None:
        """Both registries give the same families and the same text in both formats."""
        self.assertEqual(list(shipped.collect()), list(reference.collect()))
        self.assertEqual(generate_latest(shipped).decode(),
                         generate_latest(reference).decode())
        self.assertEqual(generate_openmetrics(shipped).decode(),
                         generate_openmetrics(reference).decode())

    @BOUNDED
    @given(events=events)
    @example(events=[("request", 200, "/poll", 0.005), ("request", 200, "/poll", 0.0050001),
                     ("duration", 0, "", 0.001), ("duration", 0, "", 300.0),
                     ("duration", 0, "", 301.0)])
    def test_same_exposition_for_any_events(self, events: list[Event]) -> None:
        """Any sequence of requests, scrapes and durations exports the same samples."""
        shipped, reference = self.pair(ProxyMetrics)
        self.play(events, shipped, reference)
        self.assertSameExposition(shipped.registry, reference.registry)
        self.assertEqual(shipped.scrape_totals(), reference.scrape_totals())

    def test_values_of_a_known_sequence(self) -> None:
        """A few events give the exact counts, bucket and sums one works out by hand."""
        shipped, _ = self.pair(ProxyMetrics)
        self.play([("request", 200, "/poll", 0.004), ("request", 200, "/poll", 0.005),
                   ("request", 404, "/poll", 0.2), ("scrape", 504, "timeout", 0.0),
                   ("duration", 0, "", 10.0)], shipped)
        value = shipped.registry.get_sample_value
        self.assertEqual(value("pushprox_http_requests_total",
                               {"code": "200", "path": "/poll"}), 2.0)
        self.assertEqual(value("pushprox_http_requests_created",
                               {"code": "404", "path": "/poll"}), 1_700_000_003.25)
        self.assertEqual(value("pushprox_http_duration_seconds_bucket",
                               {"path": "/poll", "le": "0.005"}), 2.0)
        self.assertEqual(value("pushprox_http_duration_seconds_bucket",
                               {"path": "/poll", "le": "0.1"}), 2.0)
        self.assertEqual(value("pushprox_http_duration_seconds_count", {"path": "/poll"}), 3.0)
        self.assertAlmostEqual(value("pushprox_http_duration_seconds_sum", {"path": "/poll"}),
                               0.209)
        self.assertEqual(value("pushprox_scrapes_total", {"outcome": "timeout"}), 1.0)
        self.assertEqual(value("pushprox_proxied_requests_total", {"code": "504"}), 1.0)
        self.assertEqual(value("pushprox_scrape_duration_seconds_bucket", {"le": "5.0"}), 0.0)
        self.assertEqual(value("pushprox_scrape_duration_seconds_bucket", {"le": "10.0"}), 1.0)
        self.assertEqual(value("pushprox_scrape_duration_seconds_created"), 1_700_000_000.25)
        self.assertEqual(shipped.scrape_totals(), {"timeout": 1})

    def test_created_series_follow_prometheus_client(self) -> None:
        """With prometheus-client's _created series turned off, ours are off too."""
        if created_series_wanted():
            prometheus_client.disable_created_metrics()
            self.addCleanup(prometheus_client.enable_created_metrics)
        self.assertFalse(created_series_wanted(), "pushprox.shared.created_series: "
                         "prometheus-client's Counter no longer says whether _created "
                         "series are written")
        prometheus_client.enable_created_metrics()
        self.assertTrue(created_series_wanted(), "pushprox.shared.created_series: "
                        "prometheus-client's Counter no longer says whether _created "
                        "series are written")
        prometheus_client.disable_created_metrics()
        shipped, reference = self.pair(ProxyMetrics)
        self.play([("request", 200, "/push", 0.01), ("scrape", 200, "success", 0.0),
                   ("duration", 0, "", 0.02)], shipped, reference)
        self.assertSameExposition(shipped.registry, reference.registry)
        self.assertNotIn("_created", generate_latest(shipped.registry).decode())

    @BOUNDED
    @given(events=client_events)
    def test_same_client_exposition_for_any_events(
            self, events: list[tuple[str, float]]) -> None:
        """The client's counters and scrape histogram export the same samples."""
        shipped, reference = self.pair(ClientMetrics)
        for name, seconds in events:
            self.now += 1.0
            for each in (shipped, reference):
                if name == "scrape_duration":
                    each.scrape_duration.observe(seconds)
                else:
                    getattr(each, name).inc()
        self.assertSameExposition(shipped.registry, reference.registry)

    def test_wrong_number_of_labels_is_refused(self) -> None:
        """labels() with too few or too many values raises, as prometheus-client's does."""
        shipped, reference = self.pair(ProxyMetrics)
        for each in (shipped, reference):
            self.assertRaises(ValueError, each.http_requests.labels, "200")
            self.assertRaises(ValueError, each.http_duration.labels, "/poll", "extra")
        self.assertRaises(ValueError, shipped.scrape_duration.labels, "x")

    def test_names_are_registered(self) -> None:
        """A second metric of the same name in one registry is refused at once."""
        shipped, _ = self.pair(ProxyMetrics)
        self.assertRaises(ValueError, Counter, "pushprox_scrapes_total", "again",
                          registry=shipped.registry)
        self.assertRaises(ValueError, ReactorHistogram, "pushprox_http_duration_seconds",
                          "again", registry=shipped.registry)

    def test_unsorted_buckets_are_refused(self) -> None:
        """Buckets out of order are a programming error, refused as prometheus-client does."""
        self.assertRaises(ValueError, ReactorHistogram, "h", "h", buckets=(1.0, 0.5),
                          registry=None)
