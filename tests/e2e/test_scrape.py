"""Prometheus scrapes real exporters through a real proxy and client: the happy paths."""

from __future__ import annotations

import pytest

from tests.harness.prometheus import direct_job, metric_names_in_exposition, proxied_job
from tests.harness.rawhttp import http_get
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

# Series Prometheus adds to every scrape; they are in both jobs, so they do not hide a
# difference, but they must not make an empty proxied scrape look like a match.
SYNTHETIC = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}


def test_node_exporter_through_the_proxy_matches_a_direct_scrape(stack: Stack) -> None:
    """node_exporter behind a client is up, and yields the same series names as directly."""
    node = stack.node_exporter()
    proxy = stack.proxy()
    stack.client(proxy, "node1.example", [node.port])
    proxied = f"node1.example:{node.port}"
    prometheus = stack.prometheus(
        [
            direct_job("direct", [f"127.0.0.1:{node.port}"]),
            proxied_job("proxied", [proxied], proxy.port),
        ]
    )

    prometheus.wait_up("proxied", [proxied])
    build_info = prometheus.query('node_exporter_build_info{job="proxied"}')
    assert [s["metric"]["instance"] for s in build_info] == [proxied]

    # Both jobs scrape the same exporter every second; the stored name sets converge.
    def same_names() -> bool:
        direct_names = prometheus.metric_names("direct")
        proxied_names = prometheus.metric_names("proxied")
        assert direct_names == proxied_names, (
            f"only direct: {sorted(direct_names - proxied_names)}; "
            f"only proxied: {sorted(proxied_names - direct_names)}"
        )
        return True

    wait_for(same_names, timeout=10, what="the same metric names directly and through the proxy")
    names = prometheus.metric_names("proxied") - SYNTHETIC
    exposed = metric_names_in_exposition(http_get(f"http://127.0.0.1:{node.port}/metrics").text)
    assert len(names) > 100, sorted(names)
    assert names <= exposed, sorted(names - exposed)


def test_several_clients_and_exporters_are_never_mixed_up(stack: Stack) -> None:
    """Two clients, two exporters behind one: each scrape is answered by the right exporter."""
    alpha = stack.exporter("alpha")
    beta = stack.exporter("beta")
    gamma = stack.exporter("gamma")
    proxy = stack.proxy()
    stack.client(proxy, "node1.example", [alpha.port, beta.port])
    stack.client(proxy, "node2.example", [gamma.port])
    expected = {
        f"node1.example:{alpha.port}": "alpha",
        f"node1.example:{beta.port}": "beta",
        f"node2.example:{gamma.port}": "gamma",
    }
    prometheus = stack.prometheus([proxied_job("multi", sorted(expected), proxy.port)])

    prometheus.wait_up("multi", list(expected))

    def answered_by_the_right_exporter() -> bool:
        # Every series ever stored, so that one mixed-up scrape long gone still shows.
        seen = {
            (s["instance"], s["name"], s["host"])
            for s in prometheus.series('e2e_exporter_info{job="multi"}')
        }
        # The exporter saw the Host header Prometheus asked for (the FQDN, not 127.0.0.1).
        assert seen == {(instance, name, instance) for instance, name in expected.items()}, seen
        return True

    wait_for(answered_by_the_right_exporter, timeout=10,
             what="each exporter under its own instance")
    # Several rounds of scrapes later, still only the right pairs (no late mix-up).
    requests = prometheus.by_instance('e2e_exporter_requests_total{job="multi"}')
    wait_for(
        lambda: all(
            value >= requests[instance] + 3
            for instance, value in prometheus.by_instance(
                'e2e_exporter_requests_total{job="multi"}'
            ).items()
        ),
        timeout=15,
        what="three more scrapes of every exporter",
    )
    answered_by_the_right_exporter()
    prometheus.wait_up("multi", list(expected), timeout=1)


def test_https_target_through_the_client(stack: Stack) -> None:
    """`params: {_scheme: [https]}` makes the client scrape over TLS, trusting the given CA."""
    ca = stack.certificate_authority()
    tls = ca.issue("server", ["node1.example", "localhost", "127.0.0.1"], client=False)
    secure = stack.exporter("secure", tls=tls)
    proxy = stack.proxy()
    stack.client(
        proxy, "node1.example", [secure.port], extra=["--target-tls-cacert", ca.cert_path]
    )
    instance = f"node1.example:{secure.port}"
    prometheus = stack.prometheus(
        [proxied_job("secure", [instance], proxy.port, params={"_scheme": ["https"]})]
    )

    prometheus.wait_up("secure", [instance])
    samples = prometheus.query('e2e_exporter_info{job="secure"}')
    assert [(s["metric"]["name"], s["metric"]["path"]) for s in samples] == [
        ("secure", "/metrics")
    ], samples
