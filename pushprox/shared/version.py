# -*- test-case-name: tests.test_version -*-
"""
pushprox's version, as installed: ``pyproject.toml`` is its one source, read here through
the installed distribution's metadata (``importlib.metadata``), for ``--version``, the
status page and ``pushprox_build_info``.
"""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version

#: The distribution whose version this is.
DISTRIBUTION = "pushprox"


@cache
def package_version() -> str:
    """The installed pushprox version, or ``unknown`` when running from a bare checkout."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
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
