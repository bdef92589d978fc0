"""
The oldest Twisted and treq pushprox supports: the ``>=`` floors in pyproject.toml.

Prints them as pins (``twisted[tls]==X treq==Y``); with ``--install``, installs them into
the running interpreter's environment. Used by ``.ci/run`` and ``tox -e twisted-oldest``,
so that the floors are written in one place.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

#: The packages whose floor is tested, as pyproject.toml names them.
PACKAGES = ("twisted", "treq")


def pins() -> list[str]:
    """``name[extras]==floor`` of each package in ``PACKAGES``."""
    # A quoted requirement string of the dependency list (tomllib is Python 3.11's, and
    # pushprox runs on 3.10).
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    found: list[str] = []
    for package in PACKAGES:
        match = re.search('"' + re.escape(package) + r'(\[[^]"]*\])?>=([^",; ]+)"', text)
        if match is None:
            sys.exit(f".ci/oldest.py: no '{package}>=' floor in pyproject.toml")
        found.append(f"{package}{match.group(1) or ''}=={match.group(2)}")
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pins()], check=True)
    else:
        print(" ".join(pins()))
