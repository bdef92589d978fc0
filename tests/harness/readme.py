"""The README's shell blocks that tests run as written, each found by the marker above it."""

from __future__ import annotations

import re

from tests.harness.processes import SOURCE_ROOT


def shell_block(marker: str) -> str:
    """The ``sh`` block right after ``marker`` in the README."""
    readme = (SOURCE_ROOT / "README.md").read_text()
    found = re.search(re.escape(marker) + r"\n```sh\n(.*?)\n```", readme, re.DOTALL)
    assert found is not None, f"the README's block after {marker!r} is gone"
    return found.group(1)
