"""Small text files that a test writes into a directory of its own, removed after it."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase


class FileTestCase(SynchronousTestCase):
    """A test case that writes small text files into its own directory."""

    _directory: str | None = None

    def write(self, name: str, text: str) -> str:
        """Write ``text`` to a file called ``name`` and return its path."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="pushprox-test-files-")
            self.addCleanup(shutil.rmtree, self._directory, ignore_errors=True)
        path = os.path.join(self._directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
