"""
The guide's two replicas on one machine (docs/replicas.md), run as written with the
pushprox that the tests import (in CI, the wheel as pip installed it): redis-server, two
replicas, a client polling the first, and a scrape through the second, forwarded, prints
node_exporter's metrics.

The block uses fixed ports (Redis' 6379, 8081, 8082 and the exporter's 9100); when one is
taken the test skips naming it, and fails under PUSHPROX_REQUIRE_E2E=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import skip_or_fail
from tests.harness import cluster
from tests.harness.readme import fixed_ports_and_exporter, shell_block
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

MARKER = "<!-- replicas: tests/e2e/test_replicas_block.py runs this block as written -->"
PORTS = {6379: "Redis", 8081: "the first replica", 8082: "the second replica",
         9100: "the exporter"}


def test_two_replicas_block_works_as_pasted(stack: Stack, tmp_path: Path) -> None:
    """The scrape through the replica without the poll prints the exporter's page."""
    missing = cluster.missing()
    if missing:
        skip_or_fail("the replicas example needs " + ", ".join(missing))
    fixed_ports_and_exporter(stack, PORTS, "the replicas example")

    # A shell whose PATH starts with the virtualenv of the installed pushprox, as a user's
    # with that virtualenv activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin", "/usr/bin",
                            "/sbin", "/bin"])
    try:
        block = shell_block(MARKER, "docs/replicas.md")
        shell = stack.start("replicas", ["bash", "-c", block], cwd=tmp_path,
                            env={"PATH": path, "PYTHONPATH": ""})
        assert shell.wait_exit(120), shell.log_tail()
        output = shell.log_text()
        assert shell.returncode == 0, output
    finally:
        # redis-server --daemonize leaves the shell's session: stop it here, pass or fail.
        subprocess.run([str(cluster.REDIS_CLI), "-p", "6379", "shutdown", "nosave"],
                       capture_output=True, timeout=10, check=False)
    # The first curl: node_exporter's page through the second replica.
    assert re.search(r"^# (HELP|TYPE) \w+", output, re.MULTILINE), output
    # The second: both replicas list the client, the second one included.
    assert '"node1.example"' in output, output
    for log in ("replica-8081.log", "replica-8082.log", "client.log"):
        text = (tmp_path / log).read_text()
        assert "Traceback" not in text and "ModuleNotFoundError" not in text, text
