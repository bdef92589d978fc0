"""End-to-end tests: a real Prometheus scrapes real exporters through real pushprox processes."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it instead under PUSHPROX_REQUIRE_E2E=1 (CI)."""
    if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
        pytest.fail(reason + " (PUSHPROX_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(reason)
