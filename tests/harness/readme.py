"""Shell blocks of the README and the guide that tests run as written, found by their marker."""

from __future__ import annotations

import re

from tests.harness.processes import SOURCE_ROOT


def shell_block(marker: str, page: str = "README.md") -> str:
    """The ``sh`` block right after ``marker`` in ``page`` (the README, or one of docs/)."""
    text = (SOURCE_ROOT / page).read_text()
    found = re.search(re.escape(marker) + r"\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert found is not None, f"the block after {marker!r} in {page} is gone"
    return found.group(1)
