"""
Once started, both programs give back to the system the memory that start-up freed
(``pushprox.shared.allocator``): in this process, and in real ``pushprox-proxy`` and
``pushprox-client`` processes, as commands and under ``twistd``, that serve a scrape after it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from pushprox.shared import allocator, program
from pushprox.shared.allocator import GivenBack, give_back_freed_memory, glibc_malloc_trim
from pushprox.shared.program import ProgramService
from tests.harness.exporter import Page, start_exporter
from tests.harness.processes import Process, twistd_argv
from tests.harness.rawhttp import http_request_bytes, raw_http, scrape_via_proxy
from tests.harness.waiting import free_port, wait_for
from tests.test_commands import CommandTestCase, command

METRICS = b"allocator_test_up 1\n"
#: The debug line each program logs once it has given the memory back.
GAVE_BACK = re.compile(r"Gave back (-?\d+) kB that start-up freed "
                       r"\(RSS (\d+) kB, now (\d+) kB\)")
ON_GLIBC = glibc_malloc_trim() is not None and allocator.rss_kb() is not None


def recording(calls: list[int]) -> Callable[[int], int]:
    """A ``malloc_trim`` that notes the padding it is asked for in ``calls``."""

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    return trim


class GiveBackTests(SynchronousTestCase):
    """``give_back_freed_memory`` in this process."""

    def test_freed_heap_is_given_back(self) -> None:
        """
        On glibc, 48 MB freed in 63 kB holes between blocks still in use (so that free()
        alone cannot shrink the heap) leave the RSS once given back.
        """
        if not ON_GLIBC:
            raise pytest.skip.Exception("glibc's malloc_trim and /proc are needed")
        # 1 kB bytes objects: above pymalloc's 512 bytes, so each is one glibc malloc
        # (below its 128 kB mmap threshold, so in the heap); every 64th stays in use.
        blocks = [bytes(1024) for _ in range(48 * 1024)]
        kept = blocks[::64]
        del blocks
        given = give_back_freed_memory()
        assert given is not None
        self.assertGreater(given.kb, 24 * 1024, given)
        self.assertEqual(given.kb, given.rss_before_kb - given.rss_after_kb)
        self.assertEqual(len(kept), 768)

    def test_rss_is_read_from_the_rollup(self) -> None:
        """Where the kernel has ``smaps_rollup``, the RSS is read from it (``VmRSS`` lags)."""
        if not allocator.SMAPS_ROLLUP.exists():
            raise pytest.skip.Exception("the kernel has no /proc/self/smaps_rollup")
        self.patch(allocator, "STATUS", Path(tempfile.gettempdir()) / "no-such-status-file")
        rss = allocator.rss_kb()
        assert rss is not None
        rollup = [int(line.split()[1]) for line in allocator.SMAPS_ROLLUP.read_text().splitlines()
                  if line.startswith("Rss:")]
        self.assertLess(abs(rss - rollup[0]), 1024)

    def test_status_when_no_rollup(self) -> None:
        """Without ``smaps_rollup`` (kernels before 4.14), ``VmRSS`` of ``status``."""
        if not allocator.STATUS.exists():
            raise pytest.skip.Exception("/proc is needed")
        self.patch(allocator, "SMAPS_ROLLUP", Path(tempfile.gettempdir()) / "no-such-rollup")
        status = [int(line.split()[1]) for line in allocator.STATUS.read_text().splitlines()
                  if line.startswith("VmRSS:")]
        rss = allocator.rss_kb()
        assert rss is not None
        self.assertLess(abs(rss - status[0]), 1024)

    def test_trim_is_asked_to_keep_no_padding(self) -> None:
        """``malloc_trim`` is called once, with 0: every free page may go, not just the top's."""
        if allocator.rss_kb() is None:
            raise pytest.skip.Exception("/proc is needed")
        calls: list[int] = []
        self.assertIsInstance(give_back_freed_memory(lambda: recording(calls)), GivenBack)
        self.assertEqual(calls, [0])

    def test_without_glibc_nothing_is_done(self) -> None:
        """Another C library has no ``malloc_trim``: no collection, no trim, None."""
        collections: list[int] = []

        def collect() -> int:
            collections.append(1)
            return 0

        self.patch(gc, "collect", collect)
        self.assertIsNone(give_back_freed_memory(lambda: None))
        self.assertEqual(collections, [])

    def test_glibc_is_told_by_confstr(self) -> None:
        """musl and macOS know no ``CS_GNU_LIBC_VERSION``: no trim is looked for."""

        def unknown(name: str) -> str:
            raise ValueError(f"unrecognized configuration name {name}")

        self.patch(os, "confstr", unknown)
        self.assertIsNone(glibc_malloc_trim())
        self.patch(os, "confstr", lambda name: None)
        self.assertIsNone(glibc_malloc_trim())

    def test_without_proc_nothing_is_said(self) -> None:
        """Where ``/proc`` does not say the RSS, the trim is made and None returned."""
        self.patch(allocator, "STATUS", Path(tempfile.gettempdir()) / "no-such-status-file")
        self.patch(allocator, "SMAPS_ROLLUP", Path(tempfile.gettempdir()) / "no-such-rollup")
        calls: list[int] = []
        self.assertIsNone(give_back_freed_memory(lambda: recording(calls)))
        self.assertEqual(calls, [0])


class ProgramServiceTests(SynchronousTestCase):
    """``ProgramService`` gives back once its reactor runs, not before, and says how much."""

    def test_given_back_once_the_reactor_runs(self) -> None:
        """Started, nothing yet; once the reactor runs, one call and one debug event."""
        calls: list[int] = []

        def give_back() -> GivenBack:
            calls.append(1)
            return GivenBack(41836, 40912)

        self.patch(program, "give_back_freed_memory", give_back)
        reactor = MemoryReactor()
        ProgramService(reactor=reactor).startService()
        self.assertEqual(calls, [])
        with capturedLogs() as events:
            reactor.run()
        self.assertEqual(calls, [1])
        [event] = [e for e in events if e.get("log_namespace", "").endswith("ProgramService")]
        self.assertEqual((event["log_level"], formatEvent(event)),
                         (LogLevel.debug, "Gave back 924 kB that start-up freed "
                                          "(RSS 41836 kB, now 40912 kB)"))

    def test_without_a_reactor_nothing_is_given_back(self) -> None:
        """A ``ProgramService`` made without a reactor (as tests make them) leaves it."""
        calls: list[int] = []
        self.patch(program, "give_back_freed_memory", lambda: calls.append(1))
        ProgramService().startService()
        self.assertEqual(calls, [])


@pytest.mark.processes
class ProgramsGiveBackTests(CommandTestCase):
    """Real programs log what they gave back once started, and serve scrapes after it."""

    def setUp(self) -> None:
        if not ON_GLIBC:
            raise pytest.skip.Exception("glibc's malloc_trim and /proc are needed")
        super().setUp()

    def given_back(self, process: Process) -> list[tuple[int, int, int]]:
        """(kB given back, RSS before, RSS after) of each such line the program logged."""
        return [(int(m[1]), int(m[2]), int(m[3]))
                for m in GAVE_BACK.finditer(process.log_text())]

    def serve_a_scrape(self, proxy_argv: list[str], client_argv: list[str],
                       log: list[str]) -> tuple[Process, Process]:
        """Start the proxy and its client, scrape the exporter through them, stop them
        (twistd ends by the signal that stopped it, the commands with 0)."""
        _, exporter_port = start_exporter(self.processes, "pages",
                                          pages={"/metrics": Page(METRICS)})
        proxy_port, metrics_port = free_port(), free_port()
        proxy = self.start("proxy", [*proxy_argv, "--listen", f"tcp:{proxy_port}"
                                     ":interface=127.0.0.1", *log], proxy_port)
        client = self.start("client", [
            *client_argv, "--fqdn=127.0.0.1", f"--proxy-url=http://127.0.0.1:{proxy_port}",
            f"--metrics-addr=127.0.0.1:{metrics_port}", "--proxy.retry.initial-wait=100ms",
            "--allow-port", str(exporter_port), *log], metrics_port)
        wait_for(lambda: b"127.0.0.1" in raw_http(
            proxy_port, http_request_bytes("GET", "/clients", [])).body,
            timeout=20, what="the client registered", watch=[proxy, client])
        answer = scrape_via_proxy(proxy_port, f"http://127.0.0.1:{exporter_port}/metrics")
        self.assertEqual((answer.status, answer.body), (200, METRICS))
        self.assertIn(client.stop(), (0, -15))
        self.assertIn(proxy.stop(), (0, -15))
        return proxy, client

    def assert_given_back_once(self, process: Process) -> None:
        """One line, whose figures agree. (How much a program gives back is measured by
        ``bench/allocator.py``: a program's RSS also moves with what it does meanwhile.)"""
        [(kb, before, after)] = self.given_back(process)
        self.assertEqual(kb, before - after)
        self.assertGreater(after, 0)

    def test_commands(self) -> None:
        """``pushprox-proxy`` and ``pushprox-client`` each give back once, then serve."""
        proxy, client = self.serve_a_scrape(
            [command("pushprox-proxy")], [command("pushprox-client")],
            ["--log.level=debug", "--log.format=json"])
        for process in (proxy, client):
            self.assert_given_back_once(process)
            lines: list[dict[str, Any]] = [json.loads(line) for line in
                                           process.log_text().splitlines()
                                           if not line.startswith("=== ")]
            [line] = [line for line in lines if line["message"].startswith("Gave back")]
            self.assertEqual((line["level"], line["logger"]),
                             ("debug", "pushprox.shared.program.ProgramService"))

    def test_under_twistd(self) -> None:
        """Under ``twistd -n`` too: each program gives back once, then serves."""
        proxy, client = self.serve_a_scrape(
            twistd_argv("pushprox-proxy", []), twistd_argv("pushprox-client", []),
            ["--log-level", "debug"])
        for process in (proxy, client):
            self.assert_given_back_once(process)

    def test_not_said_above_debug(self) -> None:
        """At the default level the programs say nothing of it."""
        proxy, client = self.serve_a_scrape(
            [command("pushprox-proxy")], [command("pushprox-client")], [])
        self.assertEqual((self.given_back(proxy), self.given_back(client)), ([], []))
