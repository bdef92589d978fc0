#!/usr/bin/env python3
"""Where a program's memory goes once its modules are imported, as its command imports them.

    python bench/footprint.py [proxy|client] [ARGS...]

Runs a child interpreter that imports the program's module and the reactor the way
``pushprox-proxy`` / ``pushprox-client`` do with ARGS (without the TLS libraries unless ARGS
name TLS, without asyncio), then prints its VmRSS and what makes it up: the mapped files by
resident size (``/proc/self/smaps``), anonymous memory and Python's allocator arenas.  A second
child, with ``PYTHONTRACEMALLOC`` on (whose bookkeeping makes its own RSS meaningless), prints
the Python objects allocated by each package's code, by the innermost frame outside the import
machinery.
"""

from __future__ import annotations

import os
import subprocess
import sys

IMPORTS = r'''
import collections, importlib, os, sys, tempfile, tracemalloc
from pushprox.shared.footprint import program_imports

side, argv = sys.argv[1], sys.argv[2:]
with program_imports(argv, os.environ):
    importlib.import_module(f"pushprox.{side}.tap")
    from twisted.internet import reactor  # noqa: F401
'''

MEMORY = IMPORTS + r'''
status = {line.split(":")[0]: line.split()[1] for line in open("/proc/self/status")
          if line.startswith(("VmRSS", "RssAnon", "RssFile"))}
print(f"{side}: VmRSS {int(status['VmRSS']) / 1024:.1f} MB (anonymous "
      f"{int(status['RssAnon']) / 1024:.1f}, files {int(status['RssFile']) / 1024:.1f}), "
      f"{len(sys.modules)} modules, TLS libraries {'in' if 'OpenSSL' in sys.modules else 'out'}")

mapped = collections.Counter()
name = "[anonymous]"
for line in open("/proc/self/smaps"):
    fields = line.split()
    if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
        name = fields[5] if len(fields) > 5 else "[anonymous]"
    elif fields[0] == "Rss:":
        mapped[name] += int(fields[1])
print("\nresident by mapping (kB), and Python's allocator:")
for path, kb in mapped.most_common(12):
    print(f"  {kb:7,}  {path}")

with tempfile.TemporaryFile("w+") as stats:  # _debugmallocstats writes to file descriptor 2
    saved = os.dup(2)
    os.dup2(stats.fileno(), 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
    stats.seek(0)
    for line in stats:
        if line.startswith(("# arenas allocated current", "# bytes in allocated blocks")):
            print("  " + line.strip())
'''

OBJECTS = IMPORTS + r'''
snapshot = tracemalloc.take_snapshot()
by_package = collections.Counter()
for statistic in snapshot.statistics("traceback"):
    frames = [f.filename for f in statistic.traceback if not f.filename.startswith("<frozen")]
    where = frames[-1] if frames else "?"
    for marker in ("site-packages/", "python3.11/", "/pushprox/"):
        if marker in where:
            where = ("pushprox/" if marker == "/pushprox/" else "") + where.split(marker)[-1]
    parts = where.split("/")
    package = "/".join(parts[:2]) if parts[0] in ("twisted", "pushprox") and len(parts) > 2 \
        else parts[0]
    by_package[package] += statistic.size
print(f"\nPython objects by the package whose code made them (tracemalloc, "
      f"{sum(by_package.values()) / 1024 / 1024:.1f} MB in all):")
for package, size in by_package.most_common(20):
    print(f"  {size / 1024:7,.0f} kB  {package}")
'''


def main() -> None:
    """Run the child for the program and arguments given (see the module docstring)."""
    side = sys.argv[1] if len(sys.argv) > 1 else "proxy"
    if side not in ("proxy", "client"):
        raise SystemExit("usage: bench/footprint.py [proxy|client] [ARGS...]")
    args = [side, *sys.argv[2:]]
    subprocess.run([sys.executable, "-c", MEMORY, *args], check=True)
    subprocess.run([sys.executable, "-c", OBJECTS, *args], check=True,
                   env=dict(os.environ, PYTHONTRACEMALLOC="25"))


if __name__ == "__main__":
    main()
