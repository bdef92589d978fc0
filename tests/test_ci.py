"""What CI's own helpers read from the project: ``.ci/oldest.py``'s floors."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def oldest() -> ModuleType:
    """``.ci/oldest.py``, loaded as a module."""
    spec = importlib.util.spec_from_file_location("ci_oldest", ROOT / ".ci" / "oldest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oldest_pins_the_floors_of_pyproject() -> None:
    """The pins CI tests as the oldest supported are pyproject.toml's ``>=`` floors."""
    tomllib = pytest.importorskip("tomllib")
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    floors = {}
    for requirement in dependencies:
        found = re.fullmatch(r"([a-z-]+)(\[[^]]*\])?>=([^,; ]+)", requirement)
        if found and found.group(1) in ("twisted", "treq"):
            floors[found.group(1)] = f"{found.group(1)}{found.group(2) or ''}=={found.group(3)}"
    assert oldest().pins() == [floors["twisted"], floors["treq"]]
