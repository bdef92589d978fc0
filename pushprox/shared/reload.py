# -*- test-case-name: tests.test_reload -*-
"""
Settings read from files, re-read without a restart.

Whatever either program reads from a file (certificates, keys, CA bundles, token and
password files...) registers here with a name and a function that re-reads it.  The
function raises ``ValueError`` with a one-line reason when the new file is not usable,
and must then leave the setting in force untouched.  SIGHUP re-reads every registered
setting (``Reloader.reload_all``) and says in one line what was reloaded; a setting
registered with the paths it reads is also re-read when one of those files changes
(``Reloader.check_files``, run every ``--tls-reload-interval`` seconds by
``WatchFiles``), which is how renewed certificates are picked up with no signal.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["ReloadOnHangup", "Reloader", "WatchFiles", "file_signature"]

#: What tells one version of a file from the next: device, inode, size, modification
#: time (nanoseconds); None when the file cannot be read.  ``os.stat`` follows symbolic
#: links, so a link swapped to a new target (as Kubernetes does for a mounted secret)
#: changes it even when every file keeps its modification time.
FileSignature = tuple[int, int, int, int] | None


def file_signature(path: str) -> FileSignature:
    """The signature of the file at ``path`` now."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@dataclass
class _Setting:
    """One file-backed setting: its name, how to re-read it, the files it reads."""

    name: str
    reload: Callable[[], None]
    paths: tuple[str, ...]
    signatures: tuple[FileSignature, ...] = field(default=())

    def current_signatures(self) -> tuple[FileSignature, ...]:
        return tuple(file_signature(path) for path in self.paths)


class Reloader:
    """The registry of file-backed settings, and the one place that re-reads them."""

    log = Logger()

    def __init__(self) -> None:
        self._settings: list[_Setting] = []

    def register(self, name: str, reload: Callable[[], None], *,
                 watch: Sequence[str] = ()) -> None:
        """
        Re-read ``name`` with ``reload`` on SIGHUP, and whenever one of ``watch`` changes.

        ``reload`` raises ``ValueError`` (one line, naming the file) to refuse a new file;
        the setting in force must then stay as it was.
        """
        setting = _Setting(name, reload, tuple(watch))
        setting.signatures = setting.current_signatures()
        self._settings.append(setting)

    @property
    def names(self) -> list[str]:
        """The names of the registered settings, in registration order."""
        return [setting.name for setting in self._settings]

    def _reload(self, setting: _Setting) -> str | None:
        """Re-read one setting; return the reason it was refused, or None."""
        setting.signatures = setting.current_signatures()
        try:
            setting.reload()
        except ValueError as error:
            return str(error)
        except Exception as error:
            # A bug, not a bad file: said with its traceback, and SIGHUP and the periodic
            # look go on for the other settings.
            self.log.failure("Reloading {setting}", setting=setting.name)
            return f"unexpected {type(error).__name__}: {error}"
        return None

    def reload_all(self) -> tuple[list[str], list[str]]:
        """Re-read every setting (SIGHUP); return the names reloaded and those refused."""
        reloaded: list[str] = []
        refused: list[str] = []
        for setting in self._settings:
            reason = self._reload(setting)
            if reason is None:
                reloaded.append(setting.name)
                continue
            refused.append(setting.name)
            self.log.error("SIGHUP: {setting} not reloaded, the one in force stays: {reason}",
                           setting=setting.name, reason=reason)
        if not self._settings:
            self.log.info("SIGHUP: nothing is read from files, nothing to reload")
        else:
            self.log.info("SIGHUP: reloaded {reloaded}{refused}",
                          reloaded=", ".join(reloaded) or "nothing",
                          refused=f"; refused {', '.join(refused)}" if refused else "")
        return reloaded, refused

    def check_files(self) -> list[str]:
        """Re-read the settings whose files changed; return the names reloaded."""
        reloaded: list[str] = []
        for setting in self._settings:
            if not setting.paths or setting.current_signatures() == setting.signatures:
                continue
            reason = self._reload(setting)
            if reason is None:
                reloaded.append(setting.name)
                self.log.info("{setting}: changed files reloaded ({paths})",
                              setting=setting.name, paths=", ".join(setting.paths))
            else:
                # Said once per change: the files are looked at again only when they
                # change again (a certificate renewed before its key, say).
                self.log.warn("{setting}: changed files refused, the one in force stays: "
                              "{reason}", setting=setting.name, reason=reason)
        return reloaded


class ReloadOnHangup(Service):
    """Calls ``reload`` on SIGHUP (in the reactor thread) instead of letting it stop us."""

    def __init__(self, reload: Callable[[], object], reactor: Any) -> None:
        self._reload = reload
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        """Install the handler."""
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._reload)
        )

    def stopService(self) -> None:
        """Put the previous handler back."""
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


class WatchFiles(Service):
    """While running, has ``reloader`` look for changed files every ``interval`` seconds."""

    def __init__(self, reloader: Reloader, clock: IReactorTime, interval: float) -> None:
        self._reloader = reloader
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Start looking."""
        super().startService()
        self._loop = LoopingCall(self._reloader.check_files)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        """Stop looking."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
