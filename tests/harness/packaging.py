"""
What the project ships: its wheel and source distribution, built once by CI
(``python -m build``) and named by ``PUSHPROX_WHEEL`` and ``PUSHPROX_SDIST``, or built here
with pip when a test needs one and none was named.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from functools import cache
from pathlib import Path

from tests.harness.processes import SOURCE_ROOT

#: Where CI names the wheel and the source distribution it built and installed.
WHEEL_VARIABLE = "PUSHPROX_WHEEL"
SDIST_VARIABLE = "PUSHPROX_SDIST"
#: The trees whose every file the wheel must hold.
SHIPPED_TREES = ("pushprox", "twisted/plugins")
#: What the trees may hold that is not shipped: caches of Python and of twistd.
_NOT_SHIPPED = re.compile(r"(^|/)__pycache__/|\.py[cod]$|(^|/)dropin\.cache$")


def pyproject_version() -> str:
    """The version ``pyproject.toml`` gives: the one source of pushprox's version."""
    text = (SOURCE_ROOT / "pyproject.toml").read_text()
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert found is not None, "pyproject.toml names no version"
    return found.group(1)


def tree_files() -> set[str]:
    """Every file of the shipped trees in the checkout, as paths relative to it."""
    files: set[str] = set()
    for tree in SHIPPED_TREES:
        for path in (SOURCE_ROOT / tree).rglob("*"):
            relative = path.relative_to(SOURCE_ROOT).as_posix()
            if path.is_file() and not _NOT_SHIPPED.search(relative):
                files.add(relative)
    return files


@cache
def wheel() -> Path:
    """The wheel under test: ``PUSHPROX_WHEEL``, or one built from the checkout now."""
    named = os.environ.get(WHEEL_VARIABLE)
    if named:
        return Path(named).resolve()
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"pushprox-test-wheel-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(directory), str(SOURCE_ROOT)],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (built,) = directory.glob("pushprox-*.whl")
    return built


def wheel_names(path: Path) -> set[str]:
    """The names of the files a wheel holds."""
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


def wheel_record(path: Path) -> str:
    """The wheel's RECORD: each file it installs with its hash."""
    with zipfile.ZipFile(path) as archive:
        (record,) = (name for name in archive.namelist()
                     if name.endswith(".dist-info/RECORD"))
        return archive.read(record).decode()


def sdist_names(path: Path) -> set[str]:
    """The files of a source distribution, relative to its top folder."""
    with tarfile.open(path) as archive:
        return {member.name.split("/", 1)[1] for member in archive.getmembers()
                if member.isfile() and "/" in member.name}


def code_lines(record: str) -> list[str]:
    """
    The lines of a RECORD that name pushprox's own files with their hashes: what a wheel
    ships and an install of it holds (an install adds compiled files and its own records).
    """
    return sorted(line for line in record.splitlines()
                  if line.startswith(("pushprox/", "twisted/plugins/pushprox"))
                  and "__pycache__" not in line)
