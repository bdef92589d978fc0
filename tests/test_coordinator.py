"""
Tests for L{pushprox.proxy.coordinator}: every way a scrape and a poll can end, on a L{Clock}.

Each test ends by checking that the coordinator holds nothing (no scrape, poll or queue
entry) and that no timer is left on the clock: nothing outlives its request.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from pushprox.proxy.channel import AnswerableRequest
from pushprox.proxy.coordinator import (
    CLIENT_MARGIN,
    ClientInfo,
    ClientSilent,
    Coordinator,
    ForeignScrape,
    ICoordinator,
    IScrapeAnswer,
    QueueFull,
    Scrape,
    ScrapeState,
    ScrapeTimeout,
    ShuttingDown,
    TooManyClients,
    TooManyPolls,
    UnknownClient,
    UnknownScrape,
    new_scrape_id,
)
from pushprox.shared import wire
from pushprox.shared.config import ProxyConfig

NODE = "node1.example"
OTHER = "node2.example"
URL = b"http://node1.example:9100/metrics?foo=bar"
HEADERS = (
    (b"Accept", b"text/plain;version=0.0.4"),
    (b"User-Agent", b"Prometheus/3.0.0"),
    (b"X-Prometheus-Scrape-Timeout-Seconds", b"10"),
)


@implementer(IScrapeAnswer)
class RecordingAnswer:
    """A scrape answer that notes in a list when it is aborted."""

    status = 200
    failure = None

    def __init__(self, aborted: list[Any] | None = None, mark: Any = True) -> None:
        self._aborted = aborted if aborted is not None else []
        self._mark = mark

    def deliver(self, request: AnswerableRequest) -> None:
        """Not used by the coordinator."""

    def abort(self) -> None:
        """Note the abort."""
        self._aborted.append(self._mark)


class CoordinatorTestCase(SynchronousTestCase):
    """A coordinator on a fresh clock, with helpers to scrape, poll and check emptiness."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.coordinator = Coordinator(self.clock)

    def scrape(
        self, fqdn: str = NODE, timeout: float = 10.0, url: bytes = URL
    ) -> Deferred[Any]:
        """Start a scrape of ``url`` on ``fqdn``."""
        return self.coordinator.scrape(fqdn, b"GET", url, HEADERS, timeout)

    def poll(
        self, fqdn: str = NODE, principal: str | None = None, timeout: float | None = None
    ) -> Deferred[Scrape | None]:
        """Start a poll of ``fqdn``."""
        return self.coordinator.poll(fqdn, principal, timeout)

    def register(self, fqdn: str = NODE) -> None:
        """Register ``fqdn`` with a poll that times out at once."""
        poll = self.poll(fqdn, timeout=0)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(poll))

    def sent_scrape(self, fqdn: str = NODE, principal: str | None = None,
                    timeout: float = 10.0) -> tuple[Deferred[Any], Scrape]:
        """A scrape of registered ``fqdn`` handed to a poll: its Deferred and itself."""
        poll = self.poll(fqdn, principal)
        scraped = self.scrape(fqdn, timeout)
        scrape = self.successResultOf(poll)
        assert scrape is not None
        return scraped, scrape

    def counts(self) -> tuple[int, int, int]:
        """Polls waiting, scrapes queued, scrapes in flight."""
        return (
            self.coordinator.waiting_poll_count(),
            self.coordinator.queued_scrape_count(),
            self.coordinator.scrapes_in_flight(),
        )

    def assertIdle(self) -> None:
        """The coordinator holds no scrape, poll or queue, and no timer is pending."""
        self.assertEqual(self.counts(), (0, 0, 0))
        self.assertTrue(self.coordinator.is_idle())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InterfaceTests(CoordinatorTestCase):
    """Coordinator is an ICoordinator."""

    def test_coordinator_provides_icoordinator(self) -> None:
        """Coordinator instances and the class match the ICoordinator interface."""
        self.assertTrue(verifyObject(ICoordinator, self.coordinator))
        self.assertTrue(verifyClass(ICoordinator, Coordinator))
        self.assertIdle()

    def test_new_coordinator_is_idle(self) -> None:
        """A new coordinator holds nothing and knows no client."""
        self.assertEqual(self.coordinator.client_count(), 0)
        self.assertEqual(self.coordinator.clients(), [])
        self.assertIdle()


class ScrapeDeliveryTests(CoordinatorTestCase):
    """Scrapes meet polls in either order and are answered by a push."""

    def test_unknown_client_gets_error_at_once(self) -> None:
        """A scrape for an FQDN that never polled fails at once with UnknownClient."""
        failure = self.failureResultOf(self.scrape(), UnknownClient)
        self.assertEqual(str(failure.value), "no client is registered as node1.example")
        self.assertIdle()

    def test_queued_scrape_goes_to_next_poll(self) -> None:
        """A scrape queued for a registered client is the answer of its next poll."""
        self.register()
        scraped = self.scrape(timeout=10.0)
        self.assertNoResult(scraped)
        self.assertEqual(self.counts(), (0, 1, 1))
        self.assertFalse(self.coordinator.is_idle())
        self.clock.advance(3.0)
        scrape = self.successResultOf(self.poll(principal="client-1"))
        assert scrape is not None
        self.assertEqual(
            (scrape.fqdn, scrape.method, scrape.url, scrape.state, scrape.principal),
            (NODE, b"GET", URL, ScrapeState.SENT, "client-1"),
        )
        self.assertEqual(self.counts(), (0, 0, 1))
        request = wire.decode_scrape_request(scrape.payload(self.clock.seconds()))
        # 10 s asked, 3 s spent queued, CLIENT_MARGIN kept back: 6.9 s for the client.
        self.assertEqual(CLIENT_MARGIN, 0.1)
        self.assertEqual(
            request,
            wire.ScrapeRequest(
                scrape_id=scrape.scrape_id,
                method=b"GET",
                url=URL,
                headers=(
                    (b"Host", b"node1.example:9100"),
                    (b"Accept", b"text/plain;version=0.0.4"),
                    (b"User-Agent", b"Prometheus/3.0.0"),
                    (b"Id", scrape.scrape_id.encode("ascii")),
                    (b"X-Prometheus-Scrape-Timeout-Seconds", b"6.9"),
                ),
                timeout=6.9,
            ),
        )
        self.assertNoResult(scraped)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_payload_timeout_never_drops_below_a_millisecond(self) -> None:
        """When less than CLIENT_MARGIN is left, the client is given 0.001 s."""
        self.register()
        scraped = self.scrape(timeout=0.05)
        scrape = self.successResultOf(self.poll())
        assert scrape is not None
        request = wire.decode_scrape_request(scrape.payload(self.clock.seconds()))
        self.assertEqual(request.timeout, 0.001)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_waiting_poll_gets_scrape_at_once(self) -> None:
        """A scrape for a client holding a poll is delivered at once, poll timer gone."""
        poll = self.poll(principal="client-1", timeout=30.0)
        self.assertNoResult(poll)
        self.assertEqual(self.counts(), (1, 0, 0))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        scraped = self.scrape(timeout=10.0)
        scrape = self.successResultOf(poll)
        assert scrape is not None
        self.assertEqual((scrape.state, scrape.principal), (ScrapeState.SENT, "client-1"))
        self.assertEqual(self.counts(), (0, 0, 1))
        self.assertEqual(
            [call.getTime() for call in self.clock.getDelayedCalls()], [10.0]
        )
        request = wire.decode_scrape_request(scrape.payload(self.clock.seconds()))
        self.assertEqual(
            (request.url, request.scrape_id, request.timeout),
            (URL, scrape.scrape_id, 10.0 - CLIENT_MARGIN),
        )
        self.assertNoResult(scraped)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_claim_and_respond_fire_scrape_with_response(self) -> None:
        """claim then respond fires the scrape's Deferred with the response object."""
        scraped, scrape = self.sent_scrape(principal="client-1")
        claimed = self.coordinator.claim(scrape.scrape_id, "client-1")
        self.assertIs(claimed, scrape)
        self.assertEqual(scrape.state, ScrapeState.RESPONDING)
        self.assertNoResult(scraped)
        aborted: list[bool] = []
        answer = RecordingAnswer(aborted, True)
        self.coordinator.respond(claimed, answer)
        self.assertIs(self.successResultOf(scraped), answer)
        self.assertEqual(self.counts(), (0, 0, 1))
        self.coordinator.finish(claimed)
        self.assertEqual((scrape.state, aborted), (ScrapeState.DONE, []))
        self.assertIdle()

    def test_finish_forgets_scrape_and_its_timer(self) -> None:
        """After finish the scrape's timer is gone and its id cannot be claimed again."""
        scraped, scrape = self.sent_scrape()
        claimed = self.coordinator.claim(scrape.scrape_id, None)
        answer = RecordingAnswer()
        self.coordinator.respond(claimed, answer)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.coordinator.finish(claimed)
        self.assertIs(self.successResultOf(scraped), answer)
        error = self.assertRaises(UnknownScrape, self.coordinator.claim, scrape.scrape_id, None)
        self.assertEqual(
            str(error), f"no scrape {scrape.scrape_id} is waiting for a push"
        )
        self.clock.advance(60.0)
        self.assertIdle()

    def test_each_scrape_gets_its_own_id(self) -> None:
        """Two scrapes of one client carry different ids and go to polls in order."""
        self.register()
        first, second = self.scrape(url=b"http://node1.example/a"), self.scrape(
            url=b"http://node1.example/b"
        )
        got = [self.successResultOf(self.poll()), self.successResultOf(self.poll())]
        self.assertEqual(
            [scrape.url for scrape in got if scrape is not None],
            [b"http://node1.example/a", b"http://node1.example/b"],
        )
        ids = {scrape.scrape_id for scrape in got if scrape is not None}
        self.assertEqual(len(ids), 2)
        for scraped in (first, second):
            scraped.cancel()
            self.failureResultOf(scraped, CancelledError)
        self.assertIdle()


class ScrapeIdTests(SynchronousTestCase):
    """Scrape ids are random version 4 UUIDs in their usual text form."""

    def test_ids_are_random_version_4_uuids(self) -> None:
        """
        Each id reads back as the same RFC 4122 version 4 UUID, none repeats, and the
        random digits (the variant's among them) take every value they may.
        """
        ids = [new_scrape_id() for _ in range(2000)]
        for scrape_id in ids:
            parsed = uuid.UUID(scrape_id)
            self.assertEqual((str(parsed), parsed.version, parsed.variant),
                             (scrape_id, 4, uuid.RFC_4122))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual({scrape_id[19] for scrape_id in ids}, set("89ab"))
        self.assertEqual({scrape_id[0] for scrape_id in ids}, set("0123456789abcdef"))


class ScrapeEndTests(CoordinatorTestCase):
    """Timeouts, cancellation and pushes that do not belong."""

    def test_timeout_while_queued_fails_with_scrape_timeout(self) -> None:
        """A scrape no poll picks up fails with ScrapeTimeout at its deadline."""
        self.register()
        scraped = self.scrape(timeout=5.0)
        self.clock.advance(4.999)
        self.assertNoResult(scraped)
        self.clock.advance(0.001)
        failure = self.failureResultOf(scraped, ScrapeTimeout)
        self.assertEqual(
            str(failure.value),
            "client node1.example did not answer within the scrape timeout "
            "(no poll arrived)",
        )
        self.assertIdle()
        poll = self.poll(timeout=1.0)
        self.clock.advance(1.0)
        self.assertIsNone(self.successResultOf(poll))
        self.assertIdle()

    def test_timeout_while_sent_fails_with_scrape_timeout(self) -> None:
        """A scrape handed to a poll but never pushed fails with ScrapeTimeout."""
        scraped, scrape = self.sent_scrape(timeout=5.0)
        self.clock.advance(5.0)
        failure = self.failureResultOf(scraped, ScrapeTimeout)
        self.assertEqual(
            str(failure.value),
            "client node1.example did not answer within the scrape timeout "
            "(no push arrived)",
        )
        self.assertEqual(scrape.state, ScrapeState.DONE)
        self.assertRaises(UnknownScrape, self.coordinator.claim, scrape.scrape_id, None)
        self.assertIdle()

    def test_timeout_while_responding_aborts_relay(self) -> None:
        """A scrape still relaying at its deadline has its abort callable called once."""
        scraped, scrape = self.sent_scrape(timeout=5.0)
        claimed = self.coordinator.claim(scrape.scrape_id, None)
        aborted: list[str] = []
        answer = RecordingAnswer(aborted, "aborted")
        self.coordinator.respond(claimed, answer)
        self.assertIs(self.successResultOf(scraped), answer)
        self.clock.advance(4.9)
        self.assertEqual(aborted, [])
        self.clock.advance(0.1)
        self.assertEqual(aborted, ["aborted"])
        self.assertIdle()
        self.coordinator.finish(claimed)
        self.assertEqual(aborted, ["aborted"])
        self.assertIdle()

    def test_cancel_while_queued_removes_scrape(self) -> None:
        """Prometheus hanging up on a queued scrape removes it: no later poll gets it."""
        self.register()
        scraped = self.scrape()
        self.assertEqual(self.counts(), (0, 1, 1))
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()
        poll = self.poll(timeout=1.0)
        self.assertNoResult(poll)
        self.clock.advance(1.0)
        self.assertIsNone(self.successResultOf(poll))
        self.assertIdle()

    def test_cancel_while_sent_removes_scrape_and_later_claim_fails(self) -> None:
        """Prometheus hanging up on a sent scrape removes it; its push is UnknownScrape."""
        scraped, scrape = self.sent_scrape()
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertEqual(scrape.state, ScrapeState.DONE)
        self.assertIdle()
        error = self.assertRaises(UnknownScrape, self.coordinator.claim, scrape.scrape_id, None)
        self.assertEqual(str(error), f"no scrape {scrape.scrape_id} is waiting for a push")
        self.assertIdle()

    def test_cancel_after_respond_changes_nothing_until_finish(self) -> None:
        """Once responded, cancelling the fired Deferred neither aborts nor forgets it."""
        scraped, scrape = self.sent_scrape()
        claimed = self.coordinator.claim(scrape.scrape_id, None)
        aborted: list[bool] = []
        answer = RecordingAnswer(aborted, True)
        self.coordinator.respond(claimed, answer)
        scraped.cancel()
        self.assertIs(self.successResultOf(scraped), answer)
        self.assertEqual((self.counts(), aborted), ((0, 0, 1), []))
        self.coordinator.finish(claimed)
        self.assertIdle()

    def test_claim_by_another_principal_is_foreign(self) -> None:
        """A push from another principal raises ForeignScrape; the right one still claims."""
        scraped, scrape = self.sent_scrape(principal="client-1")
        error = self.assertRaises(
            ForeignScrape, self.coordinator.claim, scrape.scrape_id, "client-2"
        )
        self.assertEqual(
            str(error), f"scrape {scrape.scrape_id} was not sent to client-2"
        )
        self.assertRaises(ForeignScrape, self.coordinator.claim, scrape.scrape_id, None)
        self.assertEqual(scrape.state, ScrapeState.SENT)
        claimed = self.coordinator.claim(scrape.scrape_id, "client-1")
        answer = RecordingAnswer()
        self.coordinator.respond(claimed, answer)
        self.coordinator.finish(claimed)
        self.assertIs(self.successResultOf(scraped), answer)
        self.assertIdle()

    def test_claim_twice_is_unknown(self) -> None:
        """A second push for a scrape already being answered raises UnknownScrape."""
        scraped, scrape = self.sent_scrape()
        claimed = self.coordinator.claim(scrape.scrape_id, None)
        error = self.assertRaises(UnknownScrape, self.coordinator.claim, scrape.scrape_id, None)
        self.assertEqual(str(error), f"no scrape {scrape.scrape_id} is waiting for a push")
        self.assertEqual(scrape.state, ScrapeState.RESPONDING)
        answer = RecordingAnswer()
        self.coordinator.respond(claimed, answer)
        self.coordinator.finish(claimed)
        self.assertIs(self.successResultOf(scraped), answer)
        self.assertIdle()

    def test_claim_of_unknown_or_queued_scrape_is_unknown(self) -> None:
        """An id never issued, or one still queued, raises UnknownScrape."""
        self.assertRaises(UnknownScrape, self.coordinator.claim, "no-such-id", None)
        self.register()
        scraped = self.scrape()
        scrape = self.successResultOf(self.poll())
        assert scrape is not None
        self.coordinator.requeue(scrape)
        self.assertEqual(scrape.state, ScrapeState.QUEUED)
        self.assertRaises(UnknownScrape, self.coordinator.claim, scrape.scrape_id, None)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()


class RequeueTests(CoordinatorTestCase):
    """A scrape handed to a dead poll goes back to the front of the queue."""

    def test_requeued_scrape_goes_to_front_and_next_poll_gets_it(self) -> None:
        """After a dead poll, the requeued scrape precedes scrapes queued since."""
        scraped_a, scrape_a = self.sent_scrape(principal="dead")
        self.assertEqual(scrape_a.url, URL)
        scraped_b = self.scrape(url=b"http://node1.example/b")
        self.assertEqual(self.counts(), (0, 1, 2))
        self.coordinator.requeue(scrape_a)
        self.assertEqual((scrape_a.state, scrape_a.principal), (ScrapeState.QUEUED, None))
        self.assertEqual(self.counts(), (0, 2, 2))
        self.clock.advance(2.0)
        again = self.successResultOf(self.poll(principal="alive"))
        self.assertIs(again, scrape_a)
        self.assertEqual((scrape_a.state, scrape_a.principal), (ScrapeState.SENT, "alive"))
        request = wire.decode_scrape_request(scrape_a.payload(self.clock.seconds()))
        self.assertEqual(request.timeout, 10.0 - 2.0 - CLIENT_MARGIN)
        then = self.successResultOf(self.poll())
        assert then is not None
        self.assertEqual(then.url, b"http://node1.example/b")
        claimed = self.coordinator.claim(scrape_a.scrape_id, "alive")
        answer = RecordingAnswer()
        self.coordinator.respond(claimed, answer)
        self.coordinator.finish(claimed)
        self.assertIs(self.successResultOf(scraped_a), answer)
        scraped_b.cancel()
        self.failureResultOf(scraped_b, CancelledError)
        self.assertIdle()

    def test_requeue_with_poll_waiting_delivers_at_once(self) -> None:
        """A requeued scrape goes straight to a poll already waiting."""
        scraped, scrape = self.sent_scrape(principal="dead")
        waiting = self.poll(principal="alive", timeout=30.0)
        self.coordinator.requeue(scrape)
        self.assertIs(self.successResultOf(waiting), scrape)
        self.assertEqual((scrape.state, scrape.principal), (ScrapeState.SENT, "alive"))
        self.assertEqual(self.counts(), (0, 0, 1))
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_requeue_keeps_original_deadline(self) -> None:
        """A requeued scrape still times out at its first deadline."""
        scraped, scrape = self.sent_scrape(timeout=5.0)
        self.clock.advance(4.0)
        self.coordinator.requeue(scrape)
        self.clock.advance(1.0)
        failure = self.failureResultOf(scraped, ScrapeTimeout)
        self.assertIn("(no poll arrived)", str(failure.value))
        self.assertIdle()

    def test_requeue_of_ended_scrape_does_nothing(self) -> None:
        """Requeueing a scrape that was cancelled or is being answered changes nothing."""
        scraped, scrape = self.sent_scrape()
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.coordinator.requeue(scrape)
        self.assertEqual(scrape.state, ScrapeState.DONE)
        self.assertIdle()
        scraped, scrape = self.sent_scrape()
        claimed = self.coordinator.claim(scrape.scrape_id, None)
        self.coordinator.requeue(scrape)
        self.assertEqual((scrape.state, self.counts()), (ScrapeState.RESPONDING, (0, 0, 1)))
        answer = RecordingAnswer()
        self.coordinator.respond(claimed, answer)
        self.coordinator.finish(claimed)
        self.assertIs(self.successResultOf(scraped), answer)
        self.assertIdle()


class LimitTests(CoordinatorTestCase):
    """Queues, polls and clients are bounded by configuration."""

    def test_queue_limit_refuses_one_more_scrape(self) -> None:
        """Beyond max_queued_per_client scrapes queued, a scrape fails with QueueFull."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_queued_per_client=2))
        self.register()
        queued = [self.scrape(), self.scrape()]
        failure = self.failureResultOf(self.scrape(), QueueFull)
        self.assertEqual(
            str(failure.value), "2 scrapes are already queued for node1.example"
        )
        self.assertEqual(self.counts(), (0, 2, 2))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        for scraped in queued:
            scraped.cancel()
            self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_queue_limit_does_not_apply_when_poll_waits(self) -> None:
        """With max_queued_per_client 0, a scrape still goes to a poll that waits."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_queued_per_client=0))
        poll = self.poll()
        scraped = self.scrape()
        scrape = self.successResultOf(poll)
        assert scrape is not None
        self.assertEqual(scrape.state, ScrapeState.SENT)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_zero_queue_limit_queues_no_scrape(self) -> None:
        """With max_queued_per_client 0, a scrape with no poll waiting gets QueueFull."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_queued_per_client=0))
        self.register()
        scraped = self.scrape()
        self.addCleanup(scraped.addErrback, lambda failure: None)
        self.addCleanup(scraped.cancel)
        failure = self.failureResultOf(scraped, QueueFull)
        self.assertEqual(str(failure.value), "0 scrapes are already queued for node1.example")
        self.assertIdle()

    def test_poll_limit_refuses_one_more_poll(self) -> None:
        """Beyond max_polls_per_client polls held, a poll fails with TooManyPolls."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_polls_per_client=2))
        held = [self.poll(timeout=30.0), self.poll(timeout=30.0)]
        failure = self.failureResultOf(self.poll(timeout=30.0), TooManyPolls)
        self.assertEqual(str(failure.value), "node1.example already holds 2 polls, the limit")
        self.assertEqual(self.counts(), (2, 0, 0))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        other = self.poll(OTHER, timeout=30.0)
        self.assertNoResult(other)
        for poll in [*held, other]:
            poll.cancel()
            self.failureResultOf(poll, CancelledError)
        self.assertIdle()

    def test_zero_poll_limit_leaves_nothing_behind(self) -> None:
        """With max_polls_per_client 0 every poll fails and no empty entry remains."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_polls_per_client=0))
        failure = self.failureResultOf(self.poll(), TooManyPolls)
        self.assertEqual(str(failure.value), "node1.example already holds 0 polls, the limit")
        self.assertIdle()

    def test_client_limit_refuses_one_more_client(self) -> None:
        """Beyond max_clients registered, a new FQDN's poll fails with TooManyClients."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(max_clients=1))
        self.register(NODE)
        failure = self.failureResultOf(self.poll(OTHER), TooManyClients)
        self.assertEqual(str(failure.value), "1 clients are registered, the limit")
        self.assertEqual([info.fqdn for info in self.coordinator.clients()], [NODE])
        self.failureResultOf(self.scrape(OTHER), UnknownClient)
        self.register(NODE)
        self.assertIdle()

    def test_client_limit_frees_up_when_registration_expires(self) -> None:
        """Once a client's registration expired, another FQDN may register."""
        self.coordinator = Coordinator(
            self.clock, ProxyConfig(max_clients=1, registration_timeout=60.0)
        )
        self.register(NODE)
        self.clock.advance(60.0)
        self.register(OTHER)
        self.assertEqual(
            self.coordinator.clients(), [ClientInfo(fqdn=OTHER, last_seen=60.0)]
        )
        self.assertIdle()


class PollTests(CoordinatorTestCase):
    """Polls end by a scrape, their timeout, cancellation or shutdown."""

    def test_poll_timeout_fires_none(self) -> None:
        """A poll no scrape arrives for fires None after its timeout and is forgotten."""
        poll = self.poll(timeout=30.0)
        self.clock.advance(29.9)
        self.assertNoResult(poll)
        self.assertEqual(self.counts(), (1, 0, 0))
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(poll))
        self.assertEqual(self.coordinator.clients(), [ClientInfo(fqdn=NODE, last_seen=30.0)])
        self.assertIdle()

    def test_poll_without_timeout_waits_for_ever(self) -> None:
        """A poll without a timeout sets no timer and waits until cancelled."""
        poll = self.poll(timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10_000.0)
        self.assertNoResult(poll)
        poll.cancel()
        self.failureResultOf(poll, CancelledError)
        self.assertIdle()

    def test_cancelled_poll_is_removed(self) -> None:
        """A poll whose client hung up is removed; a later scrape queues instead."""
        poll = self.poll(timeout=30.0)
        self.clock.advance(5.0)
        poll.cancel()
        self.failureResultOf(poll, CancelledError)
        self.assertIdle()
        self.assertEqual(self.coordinator.clients(), [ClientInfo(fqdn=NODE, last_seen=5.0)])
        scraped = self.scrape()
        self.assertEqual(self.counts(), (0, 1, 1))
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_polls_are_answered_first_come_first_served(self) -> None:
        """With several polls waiting, the oldest gets the scrape."""
        first = self.poll(principal="first", timeout=30.0)
        second = self.poll(principal="second", timeout=30.0)
        scraped = self.scrape()
        scrape = self.successResultOf(first)
        assert scrape is not None
        self.assertEqual(scrape.principal, "first")
        self.assertNoResult(second)
        self.assertEqual(self.counts(), (1, 0, 1))
        second.cancel()
        self.failureResultOf(second, CancelledError)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_scrape_goes_only_to_its_own_fqdn(self) -> None:
        """A poll of another FQDN does not receive the scrape."""
        other = self.poll(OTHER, timeout=30.0)
        self.register(NODE)
        scraped = self.scrape(NODE)
        self.assertNoResult(other)
        self.assertEqual(self.counts(), (1, 1, 1))
        other.cancel()
        self.failureResultOf(other, CancelledError)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()


class RegistrationTests(CoordinatorTestCase):
    """Clients are registered by polls and forgotten registration_timeout later."""

    def test_registration_expires_without_polls(self) -> None:
        """registration_timeout after its last poll a client is gone; scrapes get 404."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=300.0))
        self.register()
        self.clock.advance(299.0)
        self.assertEqual(self.coordinator.clients(),
                         [ClientInfo(fqdn=NODE, last_seen=0.0, silent_since=0.0)])
        self.assertEqual(self.coordinator.client_count(), 1)
        self.clock.advance(2.0)
        self.assertEqual(self.coordinator.clients(), [])
        self.assertEqual(self.coordinator.client_count(), 0)
        self.failureResultOf(self.scrape(), UnknownClient)
        self.assertIdle()

    def test_registration_does_not_expire_while_poll_is_held(self) -> None:
        """A client holding a poll stays registered however long the poll lasts."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=300.0))
        poll = self.poll(timeout=None)
        self.clock.advance(1000.0)
        self.assertEqual(
            self.coordinator.clients(), [ClientInfo(fqdn=NODE, last_seen=1000.0)]
        )
        scraped = self.scrape()
        scrape = self.successResultOf(poll)
        assert scrape is not None
        self.assertEqual(scrape.fqdn, NODE)
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_each_poll_renews_registration(self) -> None:
        """A client polling every 200 s of a 300 s registration never expires."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=300.0))
        for _ in range(5):
            self.register()
            self.clock.advance(200.0)
        self.assertEqual(
            self.coordinator.clients(),
            [ClientInfo(fqdn=NODE, last_seen=800.0, silent_since=800.0)],
        )
        self.assertIdle()

    def test_clients_lists_every_registered_client_with_last_poll(self) -> None:
        """clients() lists each registered FQDN once, sorted, with its last poll time."""
        self.register("c.example")
        self.clock.advance(1.0)
        self.register("a.example")
        self.clock.advance(1.0)
        self.register("b.example")
        self.clock.advance(1.0)
        self.register("c.example")
        self.assertEqual(
            self.coordinator.clients(),
            [
                ClientInfo(fqdn="a.example", last_seen=1.0),
                ClientInfo(fqdn="b.example", last_seen=2.0),
                ClientInfo(fqdn="c.example", last_seen=3.0),
            ],
        )
        self.assertEqual(self.coordinator.client_count(), 3)
        self.assertEqual(self.coordinator.clients()[0].labels, {})
        self.assertIdle()

    def test_expiry_follows_last_poll_not_registration_order(self) -> None:
        """A client registered first but polling since outlives one that went silent."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=10.0))
        self.register("a.example")
        self.clock.advance(1.0)
        self.register("b.example")
        self.clock.advance(5.0)
        self.register("a.example")
        self.clock.advance(5.0)
        self.assertEqual(
            self.coordinator.clients(), [ClientInfo(fqdn="a.example", last_seen=6.0)]
        )
        self.assertIdle()

    def test_expiry_keeps_the_clients_seen_since(self) -> None:
        """Only clients silent for registration_timeout are dropped, others stay."""
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=10.0))
        self.register("a.example")
        self.clock.advance(5.0)
        self.register("b.example")
        self.clock.advance(6.0)
        self.assertEqual(
            self.coordinator.clients(), [ClientInfo(fqdn="b.example", last_seen=5.0)]
        )
        self.assertIdle()


class SilenceTests(CoordinatorTestCase):
    """A client that holds no poll for client_silence_timeout is silent: no more waiting."""

    def setUp(self) -> None:
        super().setUp()
        self.coordinator = Coordinator(self.clock, ProxyConfig(client_silence_timeout=10.0))

    def assert_scrape_goes_to(self, poll: Deferred[Scrape | None]) -> None:
        """A scrape goes to ``poll`` at once; cancelled, it leaves nothing behind."""
        scraped = self.scrape()
        self.assertIsNotNone(self.successResultOf(poll))
        scraped.cancel()
        self.failureResultOf(scraped, CancelledError)
        self.assertIdle()

    def test_scrape_of_a_silent_client_fails_at_once(self) -> None:
        """Ten seconds after its last poll ended, a scrape of the client fails at once."""
        self.register()
        self.clock.advance(9.9)
        waiting = self.scrape(timeout=30.0)
        self.assertNoResult(waiting)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.clock.advance(0.1)
        failure = self.failureResultOf(self.scrape(timeout=30.0), ClientSilent)
        self.assertEqual(
            str(failure.value),
            "client node1.example has not polled for 10.0s (its connection is presumed "
            "lost; the limit is 10s)",
        )
        self.assertEqual(self.coordinator.silent_client_count(), 1)
        self.assertEqual(self.coordinator.clients(),
                         [ClientInfo(fqdn=NODE, last_seen=0.0, silent_since=0.0)])
        self.assertIdle()

    def test_queued_scrape_fails_when_its_client_goes_silent(self) -> None:
        """A scrape queued 4 s after the last poll fails 6 s later, not at its timeout."""
        self.register()
        self.clock.advance(4.0)
        scraped = self.scrape(timeout=30.0)
        self.clock.advance(5.9)
        self.assertNoResult(scraped)
        self.clock.advance(0.1)
        self.failureResultOf(scraped, ClientSilent)
        self.assertIdle()

    def test_queued_scrape_taken_by_a_poll_keeps_its_deadline(self) -> None:
        """The early silence check of a queued scrape that a poll took ends nothing."""
        self.register()
        scraped = self.scrape(timeout=30.0)
        self.clock.advance(5.0)
        self.assertIsNotNone(self.successResultOf(self.poll()))
        self.clock.advance(24.9)
        self.assertNoResult(scraped)
        self.clock.advance(0.1)
        failure = self.failureResultOf(scraped, ScrapeTimeout)
        self.assertIn("no push arrived", str(failure.value))
        self.assertIdle()

    def test_a_poll_ends_the_silence(self) -> None:
        """A silent client that polls again is scraped again and listed as not silent."""
        self.register()
        self.clock.advance(60.0)
        self.failureResultOf(self.scrape(), ClientSilent)
        poll = self.poll()
        self.assertEqual(self.coordinator.clients(), [ClientInfo(fqdn=NODE, last_seen=60.0)])
        self.assertEqual(self.coordinator.silent_client_count(), 0)
        self.assert_scrape_goes_to(poll)

    def test_a_client_holding_a_poll_is_never_silent(self) -> None:
        """However long a poll is held, its client is not silent."""
        poll = self.poll(timeout=None)
        self.clock.advance(1000.0)
        self.assertEqual(self.coordinator.silent_client_count(), 0)
        self.assert_scrape_goes_to(poll)


class ClockJumpTests(CoordinatorTestCase):
    """The wall clock the reactor uses jumps forward (an NTP step, a resumed VM)."""

    def test_a_jump_forward_expires_only_clients_without_a_poll(self) -> None:
        """
        Clients holding bounded polls through a one-hour jump stay registered and are
        not silent: their polls are answered at the jump and they poll again.  Only a
        client that held no poll at the jump is forgotten.
        """
        self.coordinator = Coordinator(self.clock, ProxyConfig(registration_timeout=300.0))
        fqdns = [f"node{i}.example" for i in range(3)]
        polls = [self.poll(fqdn, timeout=25.0) for fqdn in fqdns]
        self.register("gone.example")
        self.clock.advance(3600.0)
        for poll in polls:
            self.assertIsNone(self.successResultOf(poll))
        self.assertEqual([client.fqdn for client in self.coordinator.clients()], fqdns)
        self.assertEqual(self.coordinator.silent_client_count(), 0)
        scrapes = [self.scrape(fqdn, url=f"http://{fqdn}:9100/metrics".encode())
                   for fqdn in fqdns]
        self.assertEqual(self.counts(), (0, 3, 3))
        for fqdn, scraped in zip(fqdns, scrapes, strict=True):
            self.assertIsNotNone(self.successResultOf(self.poll(fqdn)))
            scraped.cancel()
            self.failureResultOf(scraped, CancelledError)
        self.failureResultOf(self.scrape("gone.example"), UnknownClient)
        self.assertIdle()


class ShutdownTests(CoordinatorTestCase):
    """shutdown ends every scrape and poll and refuses new ones."""

    def test_shutdown_fails_scrapes_and_polls_and_aborts_relays(self) -> None:
        """Queued and sent scrapes and polls fail with ShuttingDown; relays are aborted."""
        sent, _ = self.sent_scrape()
        relaying, relaying_scrape = self.sent_scrape()
        claimed = self.coordinator.claim(relaying_scrape.scrape_id, None)
        aborted: list[bool] = []
        answer = RecordingAnswer(aborted, True)
        self.coordinator.respond(claimed, answer)
        queued = self.scrape()
        waiting = self.poll(OTHER, timeout=30.0)
        self.assertEqual(self.counts(), (1, 1, 3))
        self.coordinator.shutdown()
        for deferred in (sent, queued, waiting):
            failure = self.failureResultOf(deferred, ShuttingDown)
            self.assertEqual(str(failure.value), "the proxy is shutting down")
        self.assertIs(self.successResultOf(relaying), answer)
        self.assertEqual(aborted, [True])
        self.assertIdle()
        self.coordinator.finish(claimed)
        self.assertIdle()

    def test_scrape_and_poll_after_shutdown_fail(self) -> None:
        """After shutdown, new scrapes and polls fail at once with ShuttingDown."""
        self.register()
        self.coordinator.shutdown()
        self.failureResultOf(self.scrape(), ShuttingDown)
        self.failureResultOf(self.poll(timeout=30.0), ShuttingDown)
        self.failureResultOf(self.poll(OTHER), ShuttingDown)
        self.assertIdle()
