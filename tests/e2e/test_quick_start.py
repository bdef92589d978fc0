"""
The README's quick start, run as written: its shell block, pasted into bash in a fresh
copy of the checkout, installs pushprox into a new virtualenv, starts the proxy and a
client, and a scrape of node_exporter through the proxy prints its metrics.

The block uses the ports of a first run (8080, 9100, and the client's 9369); when one is
taken on this machine the test skips naming it, and fails under PUSHPROX_REQUIRE_E2E=1.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.harness.processes import SOURCE_ROOT
from tests.harness.readme import fixed_ports_and_exporter, shell_block
from tests.harness.stack import Stack

pytestmark = pytest.mark.e2e

MARKER = "<!-- quick start: tests/e2e/test_quick_start.py runs this block as written -->"
PORTS = {8080: "the proxy", 9100: "the exporter", 9369: "the client's /metrics"}
#: What a user's checkout holds that the install reads.
CHECKOUT = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "pushprox",
            "twisted/plugins/pushprox_plugins.py")


def quick_start_block() -> str:
    """The shell block after the marker in the README."""
    return shell_block(MARKER)


def test_readme_quick_start_works_as_pasted(stack: Stack, tmp_path: Path) -> None:
    """Installed, started, scraped through the proxy: node_exporter's metrics print."""
    fixed_ports_and_exporter(stack, PORTS, "the quick start")
    checkout = tmp_path / "checkout"
    for name in CHECKOUT:
        source, target = SOURCE_ROOT / name, checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)

    block = quick_start_block()
    # A fresh shell: nothing of the tests' virtualenv on its path.
    path = os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep)
                           if not Path(part, "pytest").exists())
    shell = stack.start("quick-start", ["bash", "-c", block], cwd=checkout,
                        env={"PATH": path, "PYTHONPATH": ""})
    assert shell.wait_exit(600), shell.log_tail()
    output = shell.log_text()
    assert shell.returncode == 0, output
    # curl's output: the first lines of node_exporter's page, through the proxy.
    assert re.search(r"^# (HELP|TYPE) \w+", output, re.MULTILINE), output
    assert "404" not in output and "no client" not in output, output
