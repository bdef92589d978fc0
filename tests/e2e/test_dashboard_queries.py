"""
The Grafana dashboard's expressions in a real Prometheus that scrapes a real proxy and a
real client (and, through them, an exporter): each evaluates without error, and each
metric it names outside cluster mode is in the running programs' own /metrics.
"""

from __future__ import annotations

import json

import pytest

from tests.harness.prometheus import direct_job, proxied_job
from tests.harness.rawhttp import http_get
from tests.harness.stack import Stack
from tests.harness.waiting import free_port
from tests.test_dashboard import DASHBOARD, METRIC_NAME, dashboard_expressions, exported_names

pytestmark = pytest.mark.e2e

#: Grafana's variables, as the dashboard gives them to Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$proxy_job": "proxy", "$client_job": "client"}


def test_dashboard_expressions_run_against_the_real_programs(stack: Stack) -> None:
    """Every expression is valid PromQL, on metrics the proxy and client really serve."""
    exporter = stack.exporter("alpha")
    proxy = stack.proxy()
    metrics_port = free_port()
    stack.client(proxy, "node1.example", [exporter.port],
                 extra=["--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1"])
    instance = f"node1.example:{exporter.port}"
    prometheus = stack.prometheus([
        proxied_job("through", [instance], proxy.port),
        direct_job("proxy", [f"127.0.0.1:{proxy.port}"]),
        direct_job("client", [f"127.0.0.1:{metrics_port}"]),
    ])
    prometheus.wait_up("through", [instance])
    prometheus.wait_up("proxy", [f"127.0.0.1:{proxy.port}"])
    prometheus.wait_up("client", [f"127.0.0.1:{metrics_port}"])

    served = (exported_names(proxy.get("/metrics").text)
              | exported_names(http_get(f"http://127.0.0.1:{metrics_port}/metrics").text))
    dashboard = json.loads(DASHBOARD.read_text())
    for expression in dashboard_expressions(dashboard):
        if expression.startswith("label_values("):  # Grafana's own function
            metric = expression.removeprefix("label_values(").split(",")[0]
            assert metric in served, metric
            continue
        query = expression
        for variable, value in VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        prometheus.query(query)  # raises with Prometheus' error when it is not valid
        names = set(METRIC_NAME.findall(expression))
        if not any(name.startswith("pushprox_cluster_") for name in names):
            assert names <= served, names - served
    # The figures are those of this proxy: it has a client and has proxied scrapes.
    [clients] = prometheus.query('sum(pushprox_proxy_clients{job=~"proxy"})')
    assert clients["value"][1] == "1"
