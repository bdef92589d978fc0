# -*- test-case-name: tests.test_version -*-
"""
pushprox's version, as installed: ``pyproject.toml`` is its one source, read here from the
installed distribution's metadata, for ``--version``, the status page and
``pushprox_build_info``.

The metadata is found as ``importlib.metadata`` finds it (the first directory on
``sys.path`` that holds a ``pushprox-VERSION.dist-info`` or a ``pushprox.egg-info``), and its
``Version`` field read here: ``importlib.metadata`` itself would add 12 modules (an e-mail
parser, csv, its path machinery) and about 0.7 MB to every process for one line of text.
``tests/test_packaging.py`` compares the two.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from pathlib import Path

#: The distribution whose version this is.
DISTRIBUTION = "pushprox"
#: The metadata files of an installed distribution: a wheel's (also an editable install's) and
#: setuptools' older form, as patterns under a ``sys.path`` directory.
METADATA_FILES = (f"{DISTRIBUTION}-*.dist-info/METADATA", f"{DISTRIBUTION}.egg-info/PKG-INFO",
                  f"{DISTRIBUTION}-*.egg-info/PKG-INFO")


def metadata_version(path: Path) -> str | None:
    """The ``Version`` field of the core metadata file at ``path`` (its header block)."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "version":
                return value.strip()
    return None


@cache
def package_version() -> str:
    """The installed pushprox version, or ``unknown`` when running from a bare checkout."""
    for entry in sys.path:
        directory = Path(entry or os.curdir)
        if not directory.is_dir():
            continue
        for pattern in METADATA_FILES:
            for path in sorted(directory.glob(pattern)):
                found = metadata_version(path)
                if found:
                    return found
    return "unknown"


def twisted_version() -> str:
    """The version of the Twisted running us."""
    from twisted import __version__

    return __version__


def version_line(program: str) -> str:
    """What ``--version`` prints: ``pushprox-proxy, version 0.2.0 (Python …, Twisted …)``."""
    return (f"{program}, version {package_version()} "
            f"(Python {platform.python_version()}, Twisted {twisted_version()})")


def build_labels() -> dict[str, str]:
    """The labels of ``pushprox_build_info``."""
    return {"version": package_version(), "python_version": platform.python_version(),
            "twisted_version": twisted_version()}
