"""The harness itself, without pushprox: Prometheus scrapes the test targets directly.

When a pushprox scenario fails, these tell whether the targets, certificates and
Prometheus set-up are sound, so the failure is pushprox's.
"""

from __future__ import annotations

import pytest

from tests.harness.prometheus import direct_job, metric_names_in_exposition
from tests.harness.rawhttp import http_get
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e


def test_prometheus_scrapes_the_test_targets_directly(plain_stack: Stack) -> None:
    """node_exporter, the test exporter over HTTP and over HTTPS (test CA) are all up."""
    stack = plain_stack
    ca = stack.certificate_authority()
    tls = ca.issue("server", ["node1.example", "localhost", "127.0.0.1"], client=False)
    node = stack.node_exporter()
    plain = stack.exporter("plain")
    secure = stack.exporter("secure", tls=tls)
    prometheus = stack.prometheus(
        [
            direct_job("node", [f"127.0.0.1:{node.port}"]),
            direct_job("plain", [f"127.0.0.1:{plain.port}"]),
            direct_job(
                "secure",
                [f"127.0.0.1:{secure.port}"],
                scheme="https",
                tls_config={"ca_file": ca.cert_path, "server_name": "node1.example"},
            ),
        ]
    )

    prometheus.wait_up("node", [f"127.0.0.1:{node.port}"])
    prometheus.wait_up("plain", [f"127.0.0.1:{plain.port}"])
    prometheus.wait_up("secure", [f"127.0.0.1:{secure.port}"])
    info = prometheus.query('e2e_exporter_info{job=~"plain|secure"}')
    assert {(s["metric"]["job"], s["metric"]["name"], s["metric"]["host"]) for s in info} == {
        ("plain", "plain", f"127.0.0.1:{plain.port}"),
        ("secure", "secure", f"127.0.0.1:{secure.port}"),
    }
    direct = http_get(f"http://127.0.0.1:{node.port}/metrics")
    assert "node_exporter_build_info" in metric_names_in_exposition(direct.text)
