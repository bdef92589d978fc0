"""
Fixtures for the end-to-end tests: every process a test needs, stopped at the end.

A test asks for ``stack`` (``tests.harness.stack.Stack``; ``plain_stack``, from
``tests/conftest.py``, when it starts no pushprox program, so that it runs even where the
twistd plugins do not) and starts what it needs through it (``stack.proxy()``,
``stack.client(...)``, ``stack.node_exporter()``, ``stack.exporter(...)``,
``stack.prometheus(...)``).  Each process runs in its own
directory under the test's ``tmp_path``, in its own session, logging to a file there; all
of them are stopped when the test ends, pass or fail, and a failed test's report carries
the tail of each log (``tests/conftest.py``).

Without /usr/bin/prometheus or /usr/bin/prometheus-node-exporter the tests skip, unless
``PUSHPROX_REQUIRE_E2E=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e import skip_or_fail
from tests.harness.processes import subprocess_env, twistd_argv
from tests.harness.prometheus import NODE_EXPORTER, PROMETHEUS
from tests.harness.stack import Stack


def _missing_binaries() -> list[str]:
    return [
        f"{path} is missing (Debian package {package})"
        for path, package in (
            (PROMETHEUS, "prometheus"),
            (NODE_EXPORTER, "prometheus-node-exporter"),
        )
        if not os.access(path, os.X_OK)
    ]


@pytest.fixture(scope="session", autouse=True)
def _require_e2e_binaries() -> None:
    """Skip without Prometheus/node_exporter; fail instead when PUSHPROX_REQUIRE_E2E=1."""
    missing = _missing_binaries()
    if not missing:
        return
    reason = "end-to-end tests need " + "; ".join(missing)
    skip_or_fail(reason)


@pytest.fixture(scope="session")
def _twistd_plugins() -> None:
    """Fail every test at once, saying why, unless the twistd plugins of pushprox run."""
    for plugin in ("pushprox-proxy", "pushprox-client"):
        argv = twistd_argv(plugin, ["--help"])
        try:
            done = subprocess.run(
                argv, capture_output=True, env=subprocess_env(), timeout=60, check=False
            )
        except OSError as error:
            pytest.fail(f"{' '.join(argv)}: {error}", pytrace=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
            pytest.fail(
                f"{' '.join(argv)} exited with {done.returncode} (is pushprox installed with "
                f"`pip install --config-settings editable_mode=compat -e .`?):\n{output[-2000:]}",
                pytrace=False,
            )


@pytest.fixture
def stack(plain_stack: Stack, _twistd_plugins: None) -> Stack:
    """``plain_stack``, once the twistd plugins of pushprox are known to run."""
    return plain_stack
