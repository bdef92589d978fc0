"""
Prometheus reads a proxy configured by ``--web.config.file`` as it reads any exporter
behind exporter-toolkit: ``/metrics`` scraped with ``scheme: https``, ``basic_auth`` and
``tls_config``, ``/clients`` read by ``http_sd_configs`` with the same, and the
discovered clients scraped through the proxy's TLS listener.
"""

from __future__ import annotations

import base64

import pytest

from tests.harness.credentials import write_web_config
from tests.harness.processes import twistd_argv
from tests.harness.prometheus import direct_job
from tests.harness.stack import STARTUP_TIMEOUT, Proxy, Stack
from tests.harness.waiting import free_port

pytestmark = pytest.mark.e2e

USER, PASSWORD = "prometheus", "exporter-toolkit-style"


def test_prometheus_reads_metrics_and_clients_through_the_web_config(stack: Stack) -> None:
    """basic_auth and tls_config in Prometheus' jobs, the web configuration file's TLS
    and users on the proxy: the proxy is up, its clients discovered and scraped."""
    directory = stack.directory("web")
    ca = stack.web_config_certificate(directory)
    web = write_web_config(directory, users={USER: PASSWORD},
                           headers={"X-Content-Type-Options": "nosniff"})
    port = free_port()
    process = stack.start("proxy", [*stack_twistd("pushprox-proxy"), "--web.config.file",
                                    str(web), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    proxy = Proxy(port, process, True, ca.cert_path, [("Authorization", basic(PASSWORD))])
    proxy.wait_ready()
    assert proxy.get("/clients", headers=[]).status == 401
    exporter = stack.exporter("shared")
    fqdns = ["node1.example", "node2.example"]
    for fqdn in fqdns:
        stack.client(proxy, fqdn, [exporter.port], extra=["--tls-cacert", ca.cert_path])
    credentials = {"username": USER, "password": PASSWORD}
    tls_config = {"ca_file": ca.cert_path}
    prometheus = stack.prometheus([
        {
            "job_name": "discovered",
            "proxy_url": f"{proxy.url}/",
            "tls_config": tls_config,
            "http_sd_configs": [{"url": f"{proxy.url}/clients", "refresh_interval": "1s",
                                 "basic_auth": credentials, "tls_config": tls_config}],
            "relabel_configs": [{
                "source_labels": ["__address__"], "regex": "([^:]+)(?::\\d+)?",
                "target_label": "__address__", "replacement": f"${{1}}:{exporter.port}",
            }],
        },
        direct_job("pushprox", [f"127.0.0.1:{port}"], scheme="https",
                   basic_auth=credentials, tls_config=tls_config),
    ])
    prometheus.wait_up("pushprox", [f"127.0.0.1:{port}"], timeout=STARTUP_TIMEOUT)
    prometheus.wait_up("discovered", [f"{fqdn}:{exporter.port}" for fqdn in fqdns],
                       timeout=STARTUP_TIMEOUT)
    assert prometheus.by_instance('pushprox_proxy_clients{job="pushprox"}') == {
        f"127.0.0.1:{port}": 2.0}


def basic(password: str) -> str:
    """The Authorization value of USER with ``password``."""
    return "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()


def stack_twistd(plugin: str) -> list[str]:
    """``twistd -n --pidfile= PLUGIN``, as the stack starts it."""
    return twistd_argv(plugin, [])
