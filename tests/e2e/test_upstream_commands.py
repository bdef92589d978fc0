"""
Upstream PushProx's own end-to-end check, run against our commands as it is written for
the Go binaries: ``pushprox-proxy`` on its default port 8080, ``pushprox-client`` with
``--fqdn`` and ``--proxy-url`` (its /metrics on the default 9369), node_exporter on its
default 9100, and a real Prometheus that must store ``node_exporter_build_info``.

Those three ports are fixed, as in upstream's check. When one of them is taken on this
machine the test cannot run as written: it skips naming the port, and fails instead under
PUSHPROX_REQUIRE_E2E=1, so CI never passes without having run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.e2e import skip_or_fail
from tests.harness.prometheus import NODE_EXPORTER, NODE_EXPORTER_DISABLED
from tests.harness.rawhttp import http_get
from tests.harness.stack import STARTUP_TIMEOUT, Stack
from tests.harness.waiting import port_open, wait_for

pytestmark = pytest.mark.e2e

UPSTREAM_PORTS = {8080: "pushprox-proxy", 9369: "pushprox-client's /metrics",
                  9100: "node_exporter"}


def _command(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package (pip install .) to get its "
                    "console scripts", pytrace=False)
    return str(path)


def _require_upstream_ports() -> None:
    taken = [f"{port} ({what})" for port, what in UPSTREAM_PORTS.items() if port_open(port)]
    if not taken:
        return
    reason = ("upstream's end-to-end check uses fixed ports, and these are taken on "
              "127.0.0.1: " + ", ".join(taken))
    skip_or_fail(reason)


def test_upstream_end_to_end_check_with_our_commands(stack: Stack) -> None:
    """The commands as upstream's check starts them; Prometheus stores node_exporter's info."""
    _require_upstream_ports()
    node = stack.start("node_exporter", [
        str(NODE_EXPORTER), "--web.listen-address=127.0.0.1:9100",
        *(f"--no-collector.{collector}" for collector in NODE_EXPORTER_DISABLED)])
    wait_for(lambda: http_get("http://127.0.0.1:9100/metrics").status == 200,
             timeout=STARTUP_TIMEOUT, what="node_exporter on 9100", watch=[node])

    # Exactly upstream's command lines, --fqdn added (upstream's CI uses the host name).
    proxy = stack.start("proxy", [_command("pushprox-proxy"), "--log.level=debug",
                                  "--log.format=json"])
    wait_for(lambda: http_get("http://127.0.0.1:8080/clients").status == 200,
             timeout=STARTUP_TIMEOUT, what="pushprox-proxy on 8080", watch=[proxy])
    client = stack.start("client", [_command("pushprox-client"), "--log.level=debug",
                                    "--fqdn=localhost", "--proxy-url=http://localhost:8080"])
    wait_for(lambda: len(http_get("http://127.0.0.1:8080/clients").json()) == 1,
             timeout=STARTUP_TIMEOUT, what="the client in /clients", watch=[proxy, client])

    prometheus = stack.prometheus([{
        "job_name": "pushprox",
        "proxy_url": "http://127.0.0.1:8080",
        "static_configs": [{"targets": ["localhost:9100"]}],
    }])
    result = wait_for(lambda: prometheus.query("node_exporter_build_info"), timeout=60,
                        what="node_exporter_build_info in Prometheus",
                        watch=[prometheus.process, proxy, client, node])
    assert [sample["metric"]["instance"] for sample in result] == ["localhost:9100"]

    # Upstream's --log.level=debug logs every scrape; our JSON lines say which one.
    def scrape_logged() -> list[dict[str, object]]:
        # The harness writes its own start line into the log; the rest is the proxy's.
        lines = [json.loads(line) for line in proxy.log_path.read_text().splitlines()
                 if not line.startswith("=== ")]
        return [line for line in lines
                if line.get("status") == 200 and line.get("fqdn") == "localhost"]

    [first, *_] = wait_for(scrape_logged, timeout=10, what="a scrape in the proxy's JSON log",
                             watch=[proxy])
    assert first["url"] == "http://localhost:9100/metrics"
    assert "level=info" in client.log_path.read_text()  # logfmt, upstream's default
