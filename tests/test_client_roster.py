"""Tests for ``pushprox.client.roster``: a service per name, the targets file reloaded."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushprox.client.names import ClientName
from pushprox.client.roster import ClientRoster, read_targets_file


class NameService(Service):
    """Stands for a ClientService: records its name and whether it runs."""

    def __init__(self, name: ClientName) -> None:
        self.client_name = name


class ClientRosterTests(SynchronousTestCase):
    """Names added, removed and kept by ``reload``."""

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        self.path = directory / "targets"
        self.path.write_text("# site A\nb.example=10.0.0.2\nc.example  # the gateway\n")
        self.made: list[NameService] = []
        self.closed = 0
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.roster = ClientRoster(
            fixed=[ClientName("a.example")], targets_file=str(self.path),
            from_file=read_targets_file(str(self.path)), make_client=self.make,
            close_connections=self.close)
        self.roster.startService()

    def make(self, name: ClientName) -> NameService:
        service = NameService(name)
        self.made.append(service)
        return service

    def close(self) -> Deferred[Any]:
        self.closed += 1
        return succeed(None)

    def running(self) -> list[str]:
        return [str(cast(NameService, s).client_name) for s in self.roster if s.running]

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.events
                if event.get("log_namespace", "").startswith("pushprox.client.roster")]

    def test_names_at_start(self) -> None:
        """--fqdn's names, then the file's, each with its own running service."""
        self.assertEqual(self.running(), ["a.example", "b.example=10.0.0.2", "c.example"])

    def test_reload_adds_removes_and_changes(self) -> None:
        """New names start, removed ones stop, a changed address gets a new service."""
        first = list(self.made)
        self.path.write_text("b.example=10.0.0.3\nd.example\n")
        self.roster.reload()
        self.assertEqual(self.running(), ["a.example", "b.example=10.0.0.3", "d.example"])
        self.assertEqual([s.running for s in first], [True, False, False])
        self.assertEqual(self.logged()[-1],
                         f"Targets file {self.path} read: 3 names, added: "
                         "b.example=10.0.0.3, d.example, removed: b.example=10.0.0.2, c.example")

    def test_bad_file_keeps_the_names(self) -> None:
        """A bad line, a name twice (with --fqdn's too) or a missing file: a ValueError
        saying why (logged by pushprox.shared.reload), and nothing changes."""
        for text, reason in (("b.example\nnot a name\n", "line 2: not a name: not a host name"),
                             ("A.EXAMPLE\n", "A.EXAMPLE is given twice"),
                             (None, "cannot read it:")):
            if text is None:
                self.path.unlink()
            else:
                self.path.write_text(text)
            with self.assertRaises(ValueError) as raised:
                self.roster.reload()
            self.assertTrue(str(raised.exception).startswith(f"{self.path}: {reason}"),
                            str(raised.exception))
            self.assertTrue(str(raised.exception).endswith("; the 3 names served stay"))
            self.assertEqual(self.running(), ["a.example", "b.example=10.0.0.2", "c.example"])
        self.assertEqual(len(self.made), 3)

    def test_stop_closes_the_shared_connections_after_the_clients(self) -> None:
        """Every client stops, then the connections are closed, once."""
        self.successResultOf(self.roster.stopService())
        self.assertEqual(self.running(), [])
        self.assertEqual(self.closed, 1)
