# -*- test-case-name: tests.test_client_roster -*-
"""
The client's names at run time: a ``ClientService`` for each, and the targets file that
may change them.

``ClientRoster`` owns one ``ClientService`` per name (its children), from ``--fqdn`` and
``--targets-file``.  ``reload`` re-reads the file: a new name gets its service (it polls at
once), a removed one has its service stopped (its polls are cancelled at once, so the proxy
stops counting on it), a name whose address changed gets a new service.  A file that
cannot be read or parsed changes nothing; ``reload`` raises ``ValueError`` with the reason,
which ``pushprox.shared.reload`` (SIGHUP, a changed file) logs in one line.  The roster also
owns the connections its services share, closed when it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from pushprox.client.names import ClientName, check_unique, parse_targets


def read_targets_file(path: str) -> list[ClientName]:
    """The names in the targets file ``path``; ``ValueError`` says why it cannot be used."""
    try:
        with open(path, encoding="utf-8") as targets:
            text = targets.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read it: {error}") from None
    return parse_targets(text)


def _key(name: ClientName) -> str:
    return name.fqdn.lower().rstrip(".")


class ClientRoster(MultiService):
    """A client service per name; the targets file re-read on ``reload``."""

    log = Logger()

    def __init__(self, *, fixed: Sequence[ClientName], targets_file: str | None,
                 from_file: Sequence[ClientName], make_client: Callable[[ClientName], IService],
                 close_connections: Callable[[], Deferred[Any]]) -> None:
        super().__init__()
        self._fixed = list(fixed)
        self._targets_file = targets_file
        self._make_client = make_client
        self._close_connections = close_connections
        #: The service of each name, by its name in lower case.
        self._clients: dict[str, tuple[ClientName, IService]] = {}
        for name in [*fixed, *from_file]:
            self._add(name)

    def names(self) -> list[ClientName]:
        """The names served now, in the order they were added."""
        return [name for name, _ in self._clients.values()]

    def clients(self) -> list[IService]:
        """The client service of each name served now."""
        return [service for _, service in self._clients.values()]

    def _add(self, name: ClientName) -> None:
        service = self._make_client(name)
        self._clients[_key(name)] = (name, service)
        service.setServiceParent(self)  # started at once if the roster runs

    def reload(self) -> None:
        """
        Re-read the targets file and apply its names.  A file that cannot be used
        changes nothing and raises ``ValueError`` saying why (``pushprox.shared.reload`` logs it).
        """
        path = self._targets_file
        if path is None:
            return
        try:
            from_file = read_targets_file(path)
            check_unique([*self._fixed, *from_file])
        except ValueError as error:
            raise ValueError(f"{path}: {error}; the {len(self._clients)} names served "
                             "stay") from None
        wanted = {_key(name): name for name in [*self._fixed, *from_file]}
        removed = [name for key, (name, _) in self._clients.items() if wanted.get(key) != name]
        for name in removed:
            _, service = self._clients.pop(_key(name))
            service.disownServiceParent()
        added = [name for key, name in wanted.items() if key not in self._clients]
        for name in added:
            self._add(name)
        self.log.info("Targets file {path} read: {count} names, added: {added}, removed: "
                      "{removed}", path=path, count=len(self._clients),
                      added=", ".join(map(str, added)) or "none",
                      removed=", ".join(map(str, removed)) or "none")

    def stopService(self) -> Deferred[None]:
        """Stop every client, then close the connections they shared."""
        stopped = super().stopService()
        assert stopped is not None
        return DeferredList([stopped]).addCallback(
            lambda _: self._close_connections()).addCallback(lambda _: None)
