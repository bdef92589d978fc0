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
