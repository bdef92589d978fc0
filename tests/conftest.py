"""
The test tiers, and the log tail of every process a failed test started in its report.

Three tiers, as pytest markers: ``in_memory`` (no socket, no process: fakes, ``Clock``,
``StringTransport``; the quick run is ``pytest -m in_memory``), ``processes`` (real
sockets on 127.0.0.1 or real programs: twistd, redis-server, nginx...) and ``e2e``
(everything under ``tests/e2e``: a real Prometheus and the rest).  A test is marked
``processes`` by hand (on its class or module); ``e2e`` and ``in_memory`` are given here.
An ``in_memory`` test that makes a socket of any kind, or starts a process, fails, saying
that it belongs to ``processes``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import ProcessGroup
from tests.harness.stack import Stack

#: Where a fixture puts the processes of its test (the e2e ``stack``).
PROCESS_GROUP = pytest.StashKey[ProcessGroup]()


@pytest.fixture
def plain_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """
    The processes of this test (``tests.harness.stack.Stack``), their logs in its report
    when it fails; all stopped at its end, even when it fails.
    """
    stack = Stack(tmp_path)
    request.node.stash[PROCESS_GROUP] = stack
    try:
        yield stack
    finally:
        stack.stop_all()


def _process_group(item: pytest.Item) -> ProcessGroup | None:
    group = item.stash.get(PROCESS_GROUP, None)
    if group is None:
        # A TestCase keeps its processes in ``self.processes`` (test_integration).
        group = getattr(getattr(item, "instance", None), "processes", None)
    return group if isinstance(group, ProcessGroup) else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the log tail of every process of a failed test to its report."""
    report = yield
    group = _process_group(item)
    if report.failed and group is not None:
        for title, text in group.log_sections():
            report.sections.append((title, text))
    return report


def installed_package_problem() -> str | None:
    """
    Why the pushprox the tests import is not an installed, non-editable copy outside the
    checkout, or None when it is.
    """
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    from tests.harness.processes import PACKAGE_ROOT, SOURCE_ROOT

    if PACKAGE_ROOT == SOURCE_ROOT:
        return f"pushprox is imported from the checkout ({SOURCE_ROOT}), not the installed wheel"
    try:
        installed = distribution("pushprox")
    except PackageNotFoundError:
        return "pushprox is imported but not installed"
    direct_url = json.loads(installed.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        return "pushprox is installed in editable mode, not from the wheel"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """
    With ``PUSHPROX_TEST_INSTALLED=1`` (as CI sets it), refuse to run unless the tests
    import the installed wheel: a pushprox found in the checkout would prove the tree,
    not what users install.
    """
    if os.environ.get("PUSHPROX_TEST_INSTALLED") != "1":
        return
    problem = installed_package_problem()
    if problem is not None:
        pytest.exit(f"PUSHPROX_TEST_INSTALLED=1: {problem}", returncode=3)


_E2E = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier: ``e2e`` by its folder, else ``in_memory`` unless
    it is marked ``processes``."""
    for item in items:
        if _E2E in item.path.resolve().parents:
            if item.get_closest_marker("e2e") is None:
                item.add_marker(pytest.mark.e2e)
        elif item.get_closest_marker("processes") is None:
            item.add_marker(pytest.mark.in_memory)


def _refused(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(
            f"an in_memory test {what}: mark its class or module @pytest.mark.processes "
            "(tests/conftest.py says what each tier may use)")
    return refuse


@pytest.fixture(autouse=True)
def _in_memory_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """An ``in_memory`` test may not make a socket of any kind, nor start a process."""
    if request.node.get_closest_marker("in_memory") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        # Any socket at all, not only one that binds or connects: a socket pair, or one
        # that listens or sends a datagram without binding first, is a real socket too.
        patch.setattr(socket.socket, "__init__", _refused("made a socket"))
        patch.setattr(socket, "socketpair", _refused("made a socket pair"))
        for name in ("bind", "connect", "connect_ex"):
            patch.setattr(socket.socket, name, _refused(f"used a socket ({name})"))
        patch.setattr(subprocess.Popen, "__init__", _refused("started a process"))
        for name in ("fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                patch.setattr(os, name, _refused(f"started a process ({name})"))
        yield
