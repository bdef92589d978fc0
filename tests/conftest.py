"""The log tail of every process a failed test started goes into its report."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.processes import ProcessGroup

#: Where a fixture puts the processes of its test (the e2e ``stack``).
PROCESS_GROUP = pytest.StashKey[ProcessGroup]()


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
    import os

    if os.environ.get("PUSHPROX_TEST_INSTALLED") != "1":
        return
    problem = installed_package_problem()
    if problem is not None:
        pytest.exit(f"PUSHPROX_TEST_INSTALLED=1: {problem}", returncode=3)
