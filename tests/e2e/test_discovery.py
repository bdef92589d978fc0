"""Service discovery: Prometheus reads the proxy's /clients through http_sd_configs."""

from __future__ import annotations

import pytest

from tests.harness.prometheus import direct_job
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_prometheus_discovers_and_scrapes_every_registered_client(stack: Stack) -> None:
    """Every client registered at the proxy becomes a target, also one that comes later."""
    exporter = stack.exporter("shared")
    proxy = stack.proxy()
    fqdns = ["node1.example", "node2.example", "node3.example"]
    for number, fqdn in enumerate(fqdns, 1):
        # Labels a client gives itself reach the targets through /clients.
        stack.client(proxy, fqdn, [exporter.port],
                     extra=["--label", f"site=site {number}", "--label", "fleet=edge"])
    prometheus = stack.prometheus(
        [
            {
                "job_name": "discovered",
                "proxy_url": f"{proxy.url}/",
                "http_sd_configs": [{"url": f"{proxy.url}/clients", "refresh_interval": "1s"}],
                # /clients lists bare FQDNs: give them the exporters' port.
                "relabel_configs": [
                    {
                        "source_labels": ["__address__"],
                        "regex": "([^:]+)(?::\\d+)?",
                        "target_label": "__address__",
                        "replacement": f"${{1}}:{exporter.port}",
                    }
                ],
            },
            # The proxy's own metrics, scraped directly (no proxy_url).
            direct_job("pushprox", [f"127.0.0.1:{proxy.port}"]),
        ]
    )

    instances = [f"{fqdn}:{exporter.port}" for fqdn in fqdns]
    prometheus.wait_up("discovered", instances)
    for number, instance in enumerate(instances, 1):
        labels = prometheus.target("discovered", instance)["labels"]
        assert (labels["site"], labels["fleet"]) == (f"site {number}", "edge"), labels

    stack.client(proxy, "node4.example", [exporter.port])
    instances.append(f"node4.example:{exporter.port}")
    prometheus.wait_up("discovered", instances, timeout=30)
    # Each scrape reached the exporter under its own name, through its own client.
    hosts = {
        s["metric"]["instance"]: s["metric"]["host"]
        for s in prometheus.query('e2e_exporter_info{job="discovered"}')
    }
    assert hosts == {instance: instance for instance in instances}
    wait_for(
        lambda: (
            prometheus.by_instance('pushprox_proxy_clients{job="pushprox"}')
            == {f"127.0.0.1:{proxy.port}": 4.0}
        ),
        timeout=10,
        what="the proxy's own pushprox_proxy_clients 4, scraped by Prometheus",
    )
