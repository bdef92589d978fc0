"""
A short soak (``tests/soak.py``; the benchmark runs it for 30 minutes): rounds of mixed
scrapes, client churn, bad inputs and faults against real processes, after which the
proxy's and a long-lived client's memory and open file descriptors are where they were
after the warm-up.  The bounds are generous on purpose: a leak per round shows as far
more over the rounds played, while allocator noise stays well inside them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.harness.stack import Stack
from tests.soak import Soak

pytestmark = pytest.mark.processes

#: Rounds before the baseline is taken (caches, pools and first-time imports fill).
WARM_UP = 3
#: Rounds measured after it.
ROUNDS = 12
#: Descriptors a process may hold beyond its baseline once the soak settles.
FD_SLACK = 8
#: Memory growth allowed over the measured rounds, in kB.
RSS_SLACK_KB = 32 * 1024


class SoakTests(SynchronousTestCase):
    """Many rounds of everything leave the proxy and the client as they were."""

    def test_memory_and_descriptors_stay_flat_through_scrapes_churn_bad_input_and_faults(
            self) -> None:
        """
        After the rounds, each process holds no more descriptors than after the warm-up
        (plus a few for connections still closing) and has not grown by more than the
        slack; every bad input got a 4xx and every round ended with scrapes working.
        """
        tmp = Path(tempfile.mkdtemp(prefix="pushprox-soak-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        stack = Stack(tmp)
        self.addCleanup(stack.stop_all)
        soak = Soak(stack)
        for _ in range(WARM_UP):
            soak.round()
        baseline = soak.settled_fds(soak.sample(), 0)
        for _ in range(ROUNDS):
            soak.round()
        end = soak.settled_fds(baseline, FD_SLACK)
        print(f"soak: {ROUNDS} rounds, baseline {baseline}, end {end}, "
              f"statuses {dict(soak.statuses)}")
        self.assertLessEqual(end.proxy_fds, baseline.proxy_fds + FD_SLACK, end)
        self.assertLessEqual(end.client_fds, baseline.client_fds + FD_SLACK, end)
        self.assertLess(end.proxy_rss_kb - baseline.proxy_rss_kb, RSS_SLACK_KB, end)
        self.assertLess(end.client_rss_kb - baseline.client_rss_kb, RSS_SLACK_KB, end)
        # The rounds really did what they say: faults hit, bad input was refused.
        self.assertEqual(soak.statuses["nobody /metrics 404"], WARM_UP + ROUNDS)
        self.assertEqual(sum(count for key, count in soak.statuses.items()
                             if key.startswith("bad input 4")), 5 * (WARM_UP + ROUNDS))
        self.assertGreater(soak.statuses["steady /metrics 200"], 5 * (WARM_UP + ROUNDS))
        self.assertEqual(soak.proxy.metric("pushprox_pushes_broken_total"), soak.cuts)
