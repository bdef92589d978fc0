"""
The Grafana dashboard of ``deploy/grafana``: every expression names metrics that the
proxy, the client or a cluster replica exports, and it shows what an operator looks for.
(``tests/e2e/test_dashboard_queries.py`` runs every expression in a real Prometheus.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.shared.metrics import ClientMetrics, ProxyMetrics

DASHBOARD = (Path(__file__).resolve().parent.parent
             / "deploy" / "grafana" / "pushprox-dashboard.json")
#: Series names a family of each type exposes, by the suffixes Prometheus stores.
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created")}
METRIC_NAME = re.compile(r"\bpushprox_[a-zA-Z0-9_:]*")


def exported_names(exposition: str) -> set[str]:
    """Series names an exposition's ``# TYPE`` lines promise (labelled families included)."""
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + suffix for suffix in SUFFIXES[kind])
    return names


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables."""
    expressions = [target["expr"] for panel in dashboard["panels"]
                   for target in panel.get("targets", [])]
    expressions += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
                    if variable["type"] == "query"]
    return expressions


class DashboardTests(SynchronousTestCase):
    """deploy/grafana/pushprox-dashboard.json against the metrics the code defines."""

    def setUp(self) -> None:
        self.dashboard = json.loads(DASHBOARD.read_text())
        cluster = CollectorRegistry()
        ClusterMetrics(cluster)
        self.exported = set()
        for registry in (ProxyMetrics().registry, ClientMetrics().registry, cluster):
            self.exported |= exported_names(generate_latest(registry).decode())

    def test_every_expression_names_exported_metrics(self) -> None:
        """Each expression names at least one metric, and only metrics that exist."""
        expressions = dashboard_expressions(self.dashboard)
        self.assertGreater(len(expressions), 20)
        for expression in expressions:
            names = set(METRIC_NAME.findall(expression))
            self.assertTrue(names, expression)
            self.assertEqual(names - self.exported, set(), expression)

    def test_exported_names_are_read_from_the_families(self) -> None:
        """The check above would catch a misspelt name: the set is exact, not permissive."""
        self.assertIn("pushprox_scrapes_total", self.exported)
        self.assertIn("pushprox_scrape_duration_seconds_bucket", self.exported)
        self.assertIn("pushprox_cluster_redis_up", self.exported)
        self.assertNotIn("pushprox_scrapes", self.exported)
        self.assertNotIn("pushprox_polls_waiting_total", self.exported)

    def test_dashboard_shows_what_operators_look_for(self) -> None:
        """Clients, scrapes by outcome, durations, polls waiting, limits hit, clients' errors."""
        used = {name for expression in dashboard_expressions(self.dashboard)
                for name in METRIC_NAME.findall(expression)}
        for name in ("pushprox_proxy_clients", "pushprox_scrapes_total",
                     "pushprox_scrape_duration_seconds_bucket", "pushprox_polls_waiting",
                     "pushprox_limit_exceeded_total", "pushprox_client_scrape_errors_total",
                     "pushprox_client_poll_errors_total", "pushprox_cluster_redis_up"):
            self.assertIn(name, used)
        outcome_panels = [panel for panel in self.dashboard["panels"]
                          if any("by (outcome)" in t["expr"] for t in panel.get("targets", []))]
        self.assertEqual(len(outcome_panels), 1)

    def test_panels_do_not_overlap_and_have_unique_ids(self) -> None:
        """Grafana lays panels out by gridPos: two on one cell would hide each other."""
        cells: dict[tuple[int, int], str] = {}
        ids = [panel["id"] for panel in self.dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in self.dashboard["panels"]:
            position = panel["gridPos"]
            self.assertLessEqual(position["x"] + position["w"], 24, panel["title"])
            for x in range(position["x"], position["x"] + position["w"]):
                for y in range(position["y"], position["y"] + position["h"]):
                    self.assertNotIn((x, y), cells, f"{panel['title']} over {cells.get((x, y))}")
                    cells[(x, y)] = panel["title"]
