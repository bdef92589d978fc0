"""Shell blocks of the README and the guide that tests run as written, found by their marker."""

from __future__ import annotations

import re
from collections.abc import Mapping

from tests.e2e import skip_or_fail
from tests.harness.processes import SOURCE_ROOT, Process
from tests.harness.prometheus import NODE_EXPORTER, NODE_EXPORTER_DISABLED
from tests.harness.rawhttp import http_get
from tests.harness.stack import STARTUP_TIMEOUT, Stack
from tests.harness.waiting import port_open, wait_for


def shell_block(marker: str, page: str = "README.md") -> str:
    """The ``sh`` block right after ``marker`` in ``page`` (the README, or one of docs/)."""
    text = (SOURCE_ROOT / page).read_text()
    found = re.search(re.escape(marker) + r"\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert found is not None, f"the block after {marker!r} in {page} is gone"
    return found.group(1)


def fixed_ports_and_exporter(stack: Stack, ports: Mapping[int, str], block: str) -> Process:
    """
    What a block of fixed ports needs before it runs: each of ``ports`` free (else the test
    skips naming the ones taken, and fails under PUSHPROX_REQUIRE_E2E=1), and node_exporter
    serving on 9100 as the block expects; its process.
    """
    taken = [f"{port} ({what})" for port, what in ports.items() if port_open(port)]
    if taken:
        skip_or_fail(f"{block} uses fixed ports, taken here: " + ", ".join(taken))
    node = stack.start("node_exporter", [
        str(NODE_EXPORTER), "--web.listen-address=127.0.0.1:9100",
        *(f"--no-collector.{collector}" for collector in NODE_EXPORTER_DISABLED)])
    wait_for(lambda: http_get("http://127.0.0.1:9100/metrics").status == 200,
             timeout=STARTUP_TIMEOUT, what="node_exporter on 9100", watch=[node])
    return node
