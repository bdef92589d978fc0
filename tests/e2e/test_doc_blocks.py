"""
Shell blocks of the guide run as written, in a directory whose ``.venv`` is the virtualenv
of the pushprox under test (in CI, the wheel as pip installed it), as in a checkout after
the quick start: the console scripts in the foreground, and both programs as twistd
daemons; each block scrapes node_exporter through the proxy and stops what it started.

The blocks use the ports of a first run (8080, 9100, and the client's 9369); when one is
taken the test skips naming it, and fails under PUSHPROX_REQUIRE_E2E=1.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.harness.readme import fixed_ports_and_exporter, shell_block
from tests.harness.stack import Stack
from tests.harness.waiting import port_open, wait_for

pytestmark = pytest.mark.e2e

CONSOLE_SCRIPTS = (
    "<!-- console scripts: tests/e2e/test_doc_blocks.py runs this block as written -->")
DAEMONS = "<!-- daemons: tests/e2e/test_doc_blocks.py runs this block as written -->"
PORTS = {8080: "the proxy", 9100: "the exporter", 9369: "the client's /metrics"}


def run_block(stack: Stack, directory: Path, page: str, marker: str) -> str:
    """Run the block after ``marker`` on ``page`` in ``directory``; its output."""
    fixed_ports_and_exporter(stack, PORTS, "the block")
    (directory / ".venv").symlink_to(sys.prefix)
    path = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
    shell = stack.start("block", ["bash", "-c", shell_block(marker, page)], cwd=directory,
                        env={"PATH": path, "PYTHONPATH": ""})
    assert shell.wait_exit(120), shell.log_tail()
    output = shell.log_text()
    assert shell.returncode == 0, output
    # curl's output: the first lines of node_exporter's page, through the proxy.
    assert re.search(r"^# (HELP|TYPE) \w+", output, re.MULTILINE), output
    wait_for(lambda: not (port_open(8080) or port_open(9369)), timeout=30,
             what="ports 8080 and 9369 closed: the block stopped what it started")
    return output


def test_console_scripts_block_works_as_pasted(stack: Stack, tmp_path: Path) -> None:
    """pushprox-proxy and pushprox-client with upstream's flags: a scrape, then both stop."""
    output = run_block(stack, tmp_path, "docs/install.md", CONSOLE_SCRIPTS)
    assert "Traceback" not in output, output


def test_daemons_block_works_as_pasted(stack: Stack, tmp_path: Path) -> None:
    """Both as twistd daemons: a scrape, then SIGTERM; each removes its pidfile."""
    run_block(stack, tmp_path, "docs/systemd.md", DAEMONS)
    pidfiles = [tmp_path / f"{program}.pid" for program in ("proxy", "client")]
    wait_for(lambda: not any(pidfile.exists() for pidfile in pidfiles), timeout=30,
             what="both daemons gone, their pidfiles removed")
    for program in ("proxy", "client"):
        log = (tmp_path / f"{program}.log").read_text()
        assert "Traceback" not in log, log
