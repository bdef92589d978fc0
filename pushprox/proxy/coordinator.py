# -*- test-case-name: tests.test_coordinator -*-
"""
Pair Prometheus' scrapes with clients' polls and pushes.

The coordinator is the proxy's memory: which clients are registered (and how their
scrapes ended, for the status page), which polls are waiting, which scrapes are queued
or waiting for their push.  It owns every
timeout, on an injected clock, and every entry it keeps has an owner that removes it:
a scrape ends by its push, its timeout, cancellation or shutdown; a poll ends by a
scrape, cancellation (the client hung up), its own timeout or shutdown.

A registered client that holds no poll for ``client_silence_timeout`` seconds is
*silent*: a healthy client polls again as soon as a poll is answered, so its link is
presumed lost (a NAT or firewall forgot it, a mobile link stalled).  Scrapes of a
silent client fail at once with ``ClientSilent`` instead of waiting for their timeout,
and a scrape queued for a client that goes silent fails at that moment.  Silence is
worked out from ``ClientInfo.last_seen`` when asked, so it costs no timer per client.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from pushprox.proxy.channel import AnswerableRequest
from pushprox.shared import wire
from pushprox.shared.config import ProxyConfig

#: A timer firing this much before a deadline is early, not at it (float rounding).
_EARLY = 1e-6
#: Time a client needs to pass a scrape to its target and push back, kept out of the
#: timeout the client is given so that its own error arrives before our 504.
CLIENT_MARGIN = 0.1


class CoordinatorError(Exception):
    """
    A scrape, poll or push that cannot go on; ``str()`` is the one-line reason.

    ``status`` is what the request gets, ``outcome`` how a scrape is counted.
    """

    status = 500
    outcome = "error"


class UnknownClient(CoordinatorError):
    """No client is registered under the scrape's FQDN."""

    status, outcome = 404, "unknown_client"


class ScrapeTimeout(CoordinatorError):
    """The client did not answer within the scrape timeout."""

    status, outcome = 504, "timeout"


class QueueFull(CoordinatorError):
    """Too many scrapes are already queued for this client."""

    status, outcome = 503, "queue_full"


class TooManyClients(CoordinatorError):
    """Registering one more client would exceed the limit."""

    status = 503


class TooManyPolls(CoordinatorError):
    """This FQDN already holds as many polls as allowed."""

    status = 429


class UnknownScrape(CoordinatorError):
    """A push names a scrape id that is unknown, answered or expired."""


class ForeignScrape(CoordinatorError):
    """A push for a scrape that was handed to another client."""


class ClientSilent(CoordinatorError):
    """The client has held no poll for longer than the silence timeout."""

    status, outcome = 503, "client_silent"


class ShuttingDown(CoordinatorError):
    """The proxy is stopping."""

    status, outcome = 503, "shutdown"


class ScrapeState(enum.Enum):
    """Where a scrape is in its life."""

    QUEUED = "queued"  # waiting for a poll of its client
    SENT = "sent"  # handed to a poll, waiting for the push
    RESPONDING = "responding"  # a push is relaying the response
    DONE = "done"


class IScrapeAnswer(Interface):
    """
    A client's answer to a scrape, as the scrape's Deferred hands it to Prometheus' side.

    Either the pushed response, streamed while the push arrives, or an error of the
    client's or the push's with a status of our own.
    """

    status = Attribute("The status code Prometheus gets (int).")
    failure = Attribute("The one-line reason when the answer is an error, else None.")

    def deliver(request: AnswerableRequest) -> None:
        """
        Answer Prometheus' ``request`` with it; the body may still be on its way.

        Whoever delivers it calls ``abort`` if Prometheus hangs up before the end.
        """

    def abort() -> None:
        """
        Cut the answer off (the scrape's time ran out, the proxy stops, or Prometheus
        hung up).
        """


@dataclass(eq=False, slots=True)
class Scrape:
    """One proxied scrape from the moment Prometheus asks until it is answered."""

    scrape_id: str
    fqdn: str
    method: bytes
    url: bytes
    headers: Sequence[tuple[bytes, bytes]]
    deadline: float
    deferred: Deferred[IScrapeAnswer]
    state: ScrapeState = ScrapeState.QUEUED
    #: The principal (authenticated name, or None) of the client that received it.
    principal: str | None = None
    timer: IDelayedCall | None = None
    #: The answer being relayed, cut off if the timeout strikes meanwhile.
    answer: IScrapeAnswer | None = None

    def payload(self, now: float) -> bytes:
        """The poll answer's body: this request in proxy form with the time left."""
        remaining = max(self.deadline - now - CLIENT_MARGIN, 0.001)
        return wire.encode_scrape_request(
            method=self.method,
            url=self.url,
            headers=self.headers,
            scrape_id=self.scrape_id,
            timeout=remaining,
        )


@dataclass(eq=False, slots=True)
class _Poll:
    fqdn: str
    principal: str | None
    deferred: Deferred[Scrape | None]
    timer: IDelayedCall | None = None


@dataclass(slots=True)
class ScrapeRecord:
    """
    How a client's scrapes have ended: the last one, and counts since it registered.

    Kept up to date by ``record_scrape`` once per scrape, so it is a handful of plain
    fields; a client that was never scraped has none.
    """

    #: When the last scrape ended or its answer began to be relayed (clock seconds).
    last_at: float = 0.0
    #: The status Prometheus got (499 when it hung up first).
    last_status: int = 0
    #: From Prometheus' request to the answer (or failure), in seconds.
    last_seconds: float = 0.0
    #: The one-line reason when the proxy or the client made the answer an error.
    last_error: str | None = None
    #: Scrapes that ended, whatever their outcome.
    scrapes: int = 0
    #: Scrapes that did not give Prometheus a 2xx (``up`` was 0).
    errors: int = 0
    #: Scrapes answered 504: no answer in time.
    timeouts: int = 0

    def add(self, at: float, status: int, seconds: float, error: str | None) -> None:
        """Count one ended scrape and remember it as the last."""
        self.last_at = at
        self.last_status = status
        self.last_seconds = seconds
        self.last_error = error
        self.scrapes += 1
        if not 200 <= status < 300:
            self.errors += 1
            if status == 504:
                self.timeouts += 1


@dataclass(slots=True)
class ClientInfo:
    """A registered client as listed by ``/clients``."""

    fqdn: str
    #: When the client last held or ended a poll (the coordinator's clock).
    last_seen: float
    labels: dict[str, str] = field(default_factory=dict)
    #: None until the client's first scrape ends.
    scrapes: ScrapeRecord | None = None
    #: When a silent client was last seen (see the module docstring), else None.
    silent_since: float | None = None


@dataclass(frozen=True)
class ClientStatus:
    """A registered client as the status page shows it: a copy, taken at one moment."""

    fqdn: str
    labels: dict[str, str]
    #: The last time the client polled or pushed (clock seconds).
    last_seen: float
    #: Polls of this client the proxy holds right now.
    polls_held: int
    #: Scrapes waiting for a poll of this client.
    scrapes_queued: int
    scrapes: ScrapeRecord | None


class ICoordinator(Interface):
    """What the proxy's resources need from a coordinator (in memory or shared)."""

    draining = Attribute("True while the proxy drains: polls are answered at once, empty.")

    def scrape(
        fqdn: str,
        method: bytes,
        url: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        timeout: float,
    ) -> Deferred[IScrapeAnswer]:
        """
        Ask the client registered as ``fqdn`` to scrape ``url``.

        Fires with the answer the push passes to ``respond``; fails with a
        CoordinatorError.  Cancel it when Prometheus hangs up.
        """

    def poll(
        fqdn: str,
        principal: str | None,
        timeout: float | None,
        labels: dict[str, str] | None = None,
    ) -> Deferred[Scrape | None]:
        """
        Register ``fqdn`` (with ``labels`` for ``/clients``, when given) and wait for a
        scrape for it.

        Fires with the scrape, or None after ``timeout`` seconds. Cancel it when the
        client hangs up.
        """

    def requeue(scrape: Scrape) -> None:
        """Put back a scrape whose poll's connection died before it was written."""

    def claim(scrape_id: str, principal: str | None) -> Scrape:
        """Take the scrape a push answers; raises UnknownScrape or ForeignScrape."""

    def take_queued(fqdn: str, principal: str | None) -> Scrape | None:
        """The next scrape queued for ``fqdn`` at once, or None: a poll that never waits."""

    def respond(scrape: Scrape, answer: IScrapeAnswer) -> None:
        """Hand a claimed scrape's answer to its Prometheus request."""

    def finish(scrape: Scrape) -> None:
        """Forget a scrape whose response has been relayed or abandoned."""

    def clients() -> list[ClientInfo] | Deferred[list[ClientInfo]]:
        """The registered clients, sorted by FQDN (at once, or when a shared store says)."""

    def client_statuses() -> list[ClientStatus] | Deferred[list[ClientStatus]]:
        """The registered clients with their polls and scrapes now, sorted by FQDN."""

    def record_scrape(fqdn: str, status: int, seconds: float, error: str | None) -> None:
        """
        Remember how a scrape of ``fqdn`` ended: the ``status`` Prometheus got after
        ``seconds``, and the one-line ``error`` when it was ours or the client's.

        Called once per scrape: keep it to a few field updates.
        """

    def shutdown() -> None:
        """Fail every waiting scrape and poll with ShuttingDown."""

    def client_count() -> int:
        """Number of registered clients."""

    def silent_client_count() -> int:
        """Number of registered clients that hold no poll past the silence timeout."""

    def waiting_poll_count() -> int:
        """Number of polls held open."""

    def queued_scrape_count() -> int:
        """Number of scrapes waiting for a poll."""

    def scrapes_in_flight() -> int:
        """Number of scrapes not yet answered."""


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
#: Random hex digits from the OS, drawn 128 ids at a time (one system call, not 128).
_random_hex: list[str] = []
# A forked process draws its own: two processes must never hand out the same ids.
os.register_at_fork(after_in_child=_random_hex.clear)


def new_scrape_id() -> str:
    """
    A random UUID (version 4, 122 bits from the OS) as text, the form scrape ids take.

    What ``str(uuid.uuid4())`` gives, in a fraction of its time: one is made a scrape.
    """
    if not _random_hex:
        drawn = os.urandom(16 * 128).hex()
        _random_hex.extend(drawn[start:start + 32] for start in range(0, len(drawn), 32))
    h = _random_hex.pop()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Waiters:
    """Deferreds waiting for a moment (no scrape in flight, no request unanswered)."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self, *, ready: bool) -> Deferred[None]:
        """Fires when ``fire`` is next called, or at once when the moment is ``ready``."""
        if ready:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        return deferred

    def fire(self) -> None:
        """The moment has come: fire every waiter."""
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)


_Item = TypeVar("_Item")


def _discard(table: dict[str, deque[_Item]], fqdn: str, item: _Item) -> None:
    """Remove ``item`` from the line of ``fqdn``, and the line once it is empty."""
    line = table.get(fqdn)
    if line is not None:
        with contextlib.suppress(ValueError):
            line.remove(item)
        if not line:
            del table[fqdn]


@implementer(ICoordinator)
class Coordinator:
    """The in-memory coordinator of a single proxy process."""

    log = Logger()

    def __init__(self, clock: IReactorTime, config: ProxyConfig | None = None, *,
                 id_prefix: str = "") -> None:
        self._clock = clock
        #: Starts every scrape id: in a cluster, it names the replica that owns the scrape.
        self.id_prefix = id_prefix
        #: Polls are answered at once (with no scrape) while the proxy drains.
        self.draining = False
        config = config or ProxyConfig()
        self.registration_timeout = config.registration_timeout
        self.max_queued_per_client = config.max_queued_per_client
        self.max_clients = config.max_clients
        self.max_polls_per_client = config.max_polls_per_client
        self.client_silence_timeout = config.client_silence_timeout
        self._clients: OrderedDict[str, ClientInfo] = OrderedDict()
        self._polls: dict[str, deque[_Poll]] = {}
        self._queues: dict[str, deque[Scrape]] = {}
        self._scrapes: dict[str, Scrape] = {}
        self._stopping = False
        #: Fired once no scrape is in flight (see ``when_no_scrapes``).
        self._no_scrapes = Waiters()

    # -- counts, for metrics and for tests asserting that nothing is left --

    def client_count(self) -> int:
        """Number of registered clients (expired ones are dropped first)."""
        self._expire_clients()
        return len(self._clients)

    def waiting_poll_count(self) -> int:
        """Number of polls held open."""
        return sum(len(polls) for polls in self._polls.values())

    def queued_scrape_count(self) -> int:
        """Number of scrapes waiting for a poll."""
        return sum(len(queue) for queue in self._queues.values())

    def scrapes_in_flight(self) -> int:
        """Number of scrapes not yet answered (queued, sent or relaying)."""
        return len(self._scrapes)

    def has_poll(self, fqdn: str) -> bool:
        """Whether a poll of ``fqdn`` is held here now."""
        return fqdn in self._polls

    def holding(self) -> list[ClientInfo]:
        """The registered clients that hold a poll here now."""
        return [self._clients[fqdn] for fqdn in self._polls if fqdn in self._clients]

    def knows(self, fqdn: str) -> bool:
        """Whether ``fqdn`` is registered here (expired registrations excluded)."""
        self._expire_clients()
        return fqdn in self._clients

    def drain(self) -> None:
        """Answer every held poll with no scrape, and new polls at once: the proxy is
        leaving, its clients should poll elsewhere; scrapes already handed out go on."""
        self.draining = True
        for polls in list(self._polls.values()):
            for poll in list(polls):
                self._end_poll(poll)
                poll.deferred.callback(None)

    def recall(self, deferred: Deferred[IScrapeAnswer]) -> bool:
        """Take back a scrape still queued (its Deferred never fires); False if it went."""
        for scrape in self._scrapes.values():
            if scrape.deferred is deferred:
                if scrape.state is not ScrapeState.QUEUED:
                    return False
                self._end_scrape(scrape)
                return True
        return False

    def when_no_scrapes(self) -> Deferred[None]:
        """Fires once no scrape is in flight here (at once if none is)."""
        return self._no_scrapes.wait(ready=not self._scrapes)

    def silent_client_count(self) -> int:
        """Number of registered clients that are silent (see the module docstring)."""
        now = self._clock.seconds()
        return sum(1 for fqdn in self._clients if self._silent_since(fqdn, now) is not None)

    def is_idle(self) -> bool:
        """True when no scrape, poll or queue entry is held (clients may be)."""
        return not (self._scrapes or self._polls or self._queues)

    # -- scrapes --

    def scrape(self, fqdn: str, method: bytes, url: bytes,
               headers: Sequence[tuple[bytes, bytes]], timeout: float,
               ) -> Deferred[IScrapeAnswer]:
        """See L{ICoordinator.scrape}."""
        if self._stopping:
            return fail(ShuttingDown("the proxy is shutting down"))
        self._expire_clients()
        if fqdn not in self._clients:
            return fail(UnknownClient(f"no client is registered as {fqdn}"))
        if fqdn not in self._polls:
            # Only a client that holds no poll can be silent or have a queue.
            silence = self._silence(fqdn)
            if silence is not None:
                return fail(silence)
            queued = len(self._queues.get(fqdn, ()))
            if queued >= self.max_queued_per_client:
                return fail(QueueFull(f"{queued} scrapes are already queued for {fqdn}"))
        scrape_id = self.id_prefix + new_scrape_id()
        deferred: Deferred[IScrapeAnswer] = Deferred(lambda d: self._cancel_scrape(scrape_id))
        scrape = Scrape(scrape_id, fqdn, method, url, headers,
                        self._clock.seconds() + timeout, deferred)
        self._scrapes[scrape_id] = scrape
        self._dispatch(scrape)
        self._arm(scrape)
        return deferred

    def _dispatch(self, scrape: Scrape, *, front: bool = False) -> None:
        polls = self._polls.get(scrape.fqdn)
        if polls:
            poll = polls.popleft()
            if not polls:
                del self._polls[scrape.fqdn]
            self._deliver(poll, scrape)
            return
        queue = self._queues.setdefault(scrape.fqdn, deque())
        if front:
            queue.appendleft(scrape)
        else:
            queue.append(scrape)

    def _deliver(self, poll: _Poll, scrape: Scrape) -> None:
        if poll.timer is not None and poll.timer.active():
            poll.timer.cancel()
        scrape.state = ScrapeState.SENT
        scrape.principal = poll.principal
        self._touch(poll.fqdn)
        poll.deferred.callback(scrape)

    def _end_scrape(self, scrape: Scrape) -> None:
        if scrape.state is ScrapeState.QUEUED:
            _discard(self._queues, scrape.fqdn, scrape)
        scrape.state = ScrapeState.DONE
        self._scrapes.pop(scrape.scrape_id, None)
        if not self._scrapes:
            self._no_scrapes.fire()
        if scrape.timer is not None and scrape.timer.active():
            scrape.timer.cancel()
        scrape.timer = None
        scrape.answer = None

    def _cancel_scrape(self, scrape_id: str) -> None:
        scrape = self._scrapes.get(scrape_id)
        if scrape is not None:
            self._end_scrape(scrape)

    def _arm(self, scrape: Scrape) -> None:
        """
        Set the scrape's timer: at its deadline, or earlier, when its client would
        become silent, while it waits in the queue.
        """
        if scrape.timer is not None and scrape.timer.active():
            scrape.timer.cancel()
        due = scrape.deadline
        info = self._clients.get(scrape.fqdn)
        if scrape.state is ScrapeState.QUEUED and info is not None:
            due = min(due, info.last_seen + self.client_silence_timeout)
        delay = max(due - self._clock.seconds(), 0.0)
        scrape.timer = self._clock.callLater(delay, self._scrape_due, scrape)

    def _scrape_due(self, scrape: Scrape) -> None:
        """The scrape's timer: its client went silent, its time is up, or neither yet."""
        scrape.timer = None
        if scrape.state is ScrapeState.QUEUED:
            silence = self._silence(scrape.fqdn)
            if silence is not None:
                self._end_with(scrape, silence)
                return
        # An early check (the client polled meanwhile): wait on for the deadline.
        if scrape.deadline - self._clock.seconds() > _EARLY:
            self._arm(scrape)
            return
        self._expire_scrape(scrape)

    def _silent_since(self, fqdn: str, now: float) -> float | None:
        """When a silent client was last seen, or None if it is not silent."""
        info = self._clients.get(fqdn)
        if info is None or fqdn in self._polls:
            return None
        if now - info.last_seen < self.client_silence_timeout:
            return None
        return info.last_seen

    def _silence(self, fqdn: str) -> ClientSilent | None:
        """The error for scrapes of ``fqdn`` if it is silent (logged once per silence)."""
        now = self._clock.seconds()
        since = self._silent_since(fqdn, now)
        if since is None:
            return None
        info = self._clients[fqdn]
        if info.silent_since != since:
            info.silent_since = since
            self.log.warn(
                "Client {fqdn} has held no poll for {seconds:.1f}s: its connection is "
                "presumed lost, scrapes of it fail at once until it polls again",
                fqdn=fqdn, seconds=now - since)
        return ClientSilent(
            f"client {fqdn} has not polled for {now - since:.1f}s (its connection is "
            f"presumed lost; the limit is {self.client_silence_timeout:g}s)"
        )

    def _expire_scrape(self, scrape: Scrape) -> None:
        scrape.timer = None
        where = "no poll arrived" if scrape.state is ScrapeState.QUEUED else "no push arrived"
        self._end_with(scrape, ScrapeTimeout(
            f"client {scrape.fqdn} did not answer within the scrape timeout ({where})"
        ))

    def _end_with(self, scrape: Scrape, error: CoordinatorError) -> None:
        """End a scrape: cut off the answer being relayed, or fail it with ``error``."""
        state, answer = scrape.state, scrape.answer
        self._end_scrape(scrape)
        if state is not ScrapeState.RESPONDING:
            scrape.deferred.errback(error)
        elif answer is not None:
            answer.abort()

    def requeue(self, scrape: Scrape) -> None:
        """See L{ICoordinator.requeue}."""
        if scrape.state is not ScrapeState.SENT or scrape.scrape_id not in self._scrapes:
            return
        self.log.info(
            "Scrape {scrape_id} for {fqdn} requeued: its poll's connection was gone",
            scrape_id=scrape.scrape_id,
            fqdn=scrape.fqdn,
        )
        scrape.state = ScrapeState.QUEUED
        scrape.principal = None
        self._dispatch(scrape, front=True)
        self._arm(scrape)

    # -- polls --

    def poll(
        self,
        fqdn: str,
        principal: str | None,
        timeout: float | None,
        labels: dict[str, str] | None = None,
    ) -> Deferred[Scrape | None]:
        """See L{ICoordinator.poll}."""
        if self.draining:
            return succeed(None)
        if self._stopping:
            return fail(ShuttingDown("the proxy is shutting down"))
        try:
            self._register(fqdn)
        except TooManyClients as error:
            return fail(error)
        if labels is not None:
            self._clients[fqdn].labels = labels
        scrape = self._pop_queued(fqdn, principal)
        if scrape is not None:
            return succeed(scrape)
        if self.draining:
            return succeed(None)
        polls = self._polls.setdefault(fqdn, deque())
        if len(polls) >= self.max_polls_per_client:
            if not polls:
                del self._polls[fqdn]
            return fail(
                TooManyPolls(f"{fqdn} already holds {len(polls)} polls, the limit")
            )
        deferred: Deferred[Scrape | None] = Deferred(lambda d: self._end_poll(poll))
        poll = _Poll(fqdn=fqdn, principal=principal, deferred=deferred)
        if timeout is not None:
            poll.timer = self._clock.callLater(timeout, self._expire_poll, poll)
        polls.append(poll)
        return deferred

    def _register(self, fqdn: str) -> None:
        if fqdn not in self._clients:
            self._expire_clients()
            if len(self._clients) >= self.max_clients:
                raise TooManyClients(f"{len(self._clients)} clients are registered, the limit")
            self._clients[fqdn] = ClientInfo(fqdn=fqdn, last_seen=self._clock.seconds())
            self.log.info("Client {fqdn} registered", fqdn=fqdn)
        else:
            info = self._clients[fqdn]
            if info.silent_since is not None:
                self.log.info("Client {fqdn} polls again after {seconds:.1f}s of silence",
                              fqdn=fqdn, seconds=self._clock.seconds() - info.silent_since)
                info.silent_since = None
            self._touch(fqdn)

    def _touch(self, fqdn: str) -> None:
        info = self._clients.get(fqdn)
        if info is not None:
            info.last_seen = self._clock.seconds()
            self._clients.move_to_end(fqdn)

    def _end_poll(self, poll: _Poll) -> None:
        if poll.timer is not None and poll.timer.active():
            poll.timer.cancel()
        poll.timer = None
        _discard(self._polls, poll.fqdn, poll)
        self._touch(poll.fqdn)

    def _expire_poll(self, poll: _Poll) -> None:
        poll.timer = None
        self._end_poll(poll)
        poll.deferred.callback(None)

    def _expire_clients(self) -> None:
        cutoff = self._clock.seconds() - self.registration_timeout
        while self._clients:
            fqdn, info = next(iter(self._clients.items()))
            if info.last_seen > cutoff:
                return
            if fqdn in self._polls:
                # Holding a poll right now: seen now.
                self._touch(fqdn)
                continue
            del self._clients[fqdn]
            self.log.info("Client {fqdn} expired: no poll for {seconds}s",
                          fqdn=fqdn, seconds=self.registration_timeout)

    def take_queued(self, fqdn: str, principal: str | None) -> Scrape | None:
        """See L{ICoordinator.take_queued}."""
        if self._stopping or fqdn not in self._clients:
            return None
        self._touch(fqdn)
        return self._pop_queued(fqdn, principal)

    def _pop_queued(self, fqdn: str, principal: str | None) -> Scrape | None:
        """Hand the first scrape queued for ``fqdn`` to ``principal``, if there is one."""
        queue = self._queues.get(fqdn)
        if not queue:
            return None
        scrape = queue.popleft()
        if not queue:
            del self._queues[fqdn]
        scrape.state = ScrapeState.SENT
        scrape.principal = principal
        return scrape

    # -- pushes --

    def claim(self, scrape_id: str, principal: str | None) -> Scrape:
        """See L{ICoordinator.claim}."""
        scrape = self._scrapes.get(scrape_id)
        if scrape is None or scrape.state is not ScrapeState.SENT:
            raise UnknownScrape(f"no scrape {scrape_id} is waiting for a push")
        if scrape.principal != principal:
            raise ForeignScrape(f"scrape {scrape_id} was not sent to {principal}")
        scrape.state = ScrapeState.RESPONDING
        return scrape

    def respond(self, scrape: Scrape, answer: IScrapeAnswer) -> None:
        """See L{ICoordinator.respond}."""
        scrape.answer = answer
        scrape.deferred.callback(answer)

    def finish(self, scrape: Scrape) -> None:
        """See L{ICoordinator.finish}."""
        self._end_scrape(scrape)

    # -- the rest --

    def clients(self) -> list[ClientInfo]:
        """See L{ICoordinator.clients}."""
        self._expire_clients()
        for fqdn, info in self._clients.items():
            if self._silence(fqdn) is None:
                info.silent_since = None
        return sorted(self._clients.values(), key=lambda client: client.fqdn)

    def client_statuses(self) -> list[ClientStatus]:
        """See L{ICoordinator.client_statuses}."""
        return [
            ClientStatus(
                fqdn=client.fqdn,
                labels=dict(client.labels),
                last_seen=client.last_seen,
                polls_held=len(self._polls.get(client.fqdn, ())),
                scrapes_queued=len(self._queues.get(client.fqdn, ())),
                scrapes=copy.copy(client.scrapes),
            )
            for client in self.clients()
        ]

    def record_scrape(self, fqdn: str, status: int, seconds: float,
                      error: str | None) -> None:
        """See L{ICoordinator.record_scrape}."""
        client = self._clients.get(fqdn)
        if client is None:
            return
        record = client.scrapes
        if record is None:
            record = client.scrapes = ScrapeRecord()
        record.add(self._clock.seconds(), status, seconds, error)

    def shutdown(self) -> None:
        """See L{ICoordinator.shutdown}."""
        self._stopping = True
        for scrape in list(self._scrapes.values()):
            self._end_with(scrape, ShuttingDown("the proxy is shutting down"))
        for polls in list(self._polls.values()):
            for poll in list(polls):
                self._end_poll(poll)
                poll.deferred.errback(ShuttingDown("the proxy is shutting down"))
