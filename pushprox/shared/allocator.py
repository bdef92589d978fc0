# -*- test-case-name: tests.test_allocator -*-
"""
Memory that start-up freed, given back to the system once the program has started.

Importing Twisted, prometheus-client and our modules (some 480 of them) and starting the
services allocates and frees about a megabyte in glibc's heap that the program does not
need again: glibc keeps freed memory for reuse, so it stays in the process's RSS. A
collection of Python's garbage, then glibc's ``malloc_trim(0)`` (which also releases the
free pages in the middle of the heap, not only at its top), gives it back once; the
programs' RSS stays that much lower under load (docs/performance.md, "Memory").

Only glibc has ``malloc_trim``; with another C library (musl, macOS's) nothing is done.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Where the kernel counts this process's resident pages exactly, by walking its page
#: tables (Linux 4.14 and later).
SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
#: Where older kernels say it; this ``VmRSS`` is the kernel's running count, which lags the
#: page tables by up to a few dozen pages per CPU.
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class GivenBack:
    """The process's RSS in kB before the collection and the trim, and after them."""

    rss_before_kb: int
    rss_after_kb: int

    @property
    def kb(self) -> int:
        """How many kB the process's RSS went down."""
        return self.rss_before_kb - self.rss_after_kb


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when the C library is not glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name
        return None
    if not version or not version.startswith("glibc"):
        return None
    import ctypes  # here: only a glibc process needs it (Twisted imports it anyway)

    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim


def rss_kb() -> int | None:
    """
    This process's RSS in kB: exact from ``smaps_rollup``, else the kernel's running
    ``VmRSS``; None where ``/proc`` says neither.
    """
    for path, field in ((SMAPS_ROLLUP, "Rss:"), (STATUS, "VmRSS:")):
        try:
            with path.open() as lines:
                for line in lines:
                    if line.startswith(field):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


def give_back_freed_memory(
        malloc_trim: Callable[[], Callable[[int], int] | None] = glibc_malloc_trim,
) -> GivenBack | None:
    """
    Collect Python's garbage and have glibc return the free pages of its heap to the
    system; what the RSS went down by, or None (nothing done) without glibc or ``/proc``.
    """
    trim = malloc_trim()
    if trim is None:
        return None
    before = rss_kb()
    gc.collect()
    trim(0)
    after = rss_kb()
    if before is None or after is None:
        return None
    return GivenBack(before, after)
