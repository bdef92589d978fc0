"""Faults seen from Prometheus: unknown clients, dead clients, a restarted proxy, slow targets."""

from __future__ import annotations

import re
import time

import pytest

from tests.harness.prometheus import proxied_job
from tests.harness.rawhttp import scrape_via_proxy
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_fqdn_without_client_fails_fast_with_404(stack: Stack) -> None:
    """A target whose FQDN has no client is down with a 404 at once, not after the timeout."""
    exporter = stack.exporter("alpha")
    proxy = stack.proxy()
    stack.client(proxy, "node1.example", [exporter.port])
    known = f"node1.example:{exporter.port}"
    unknown = f"nobody.example:{exporter.port}"
    prometheus = stack.prometheus(
        [
            proxied_job(
                "nat", [known, unknown], proxy.port, scrape_interval="2s", scrape_timeout="2s"
            )
        ]
    )

    prometheus.wait_up("nat", {known: 1, unknown: 0})
    target = prometheus.target("nat", unknown)
    assert "404" in target["lastError"], target
    # Timeout 2 s; an unknown client must not cost a scrape slot for it.
    assert target["lastScrapeDuration"] < 0.5, target
    durations = prometheus.by_instance(f'scrape_duration_seconds{{instance="{unknown}"}}')
    assert durations[unknown] < 0.5, durations

    # What a person sees asking the proxy directly: a 404 that says why, at once.
    started = time.monotonic()
    answer = scrape_via_proxy(proxy.port, f"http://{unknown}/metrics", timeout=5)
    elapsed = time.monotonic() - started
    assert answer.status == 404, answer
    assert elapsed < 1, elapsed
    assert (answer.header(b"content-type") or b"").startswith(b"text/plain"), answer.headers
    assert answer.text.strip(), answer


def test_killed_client_goes_down_and_comes_back_after_restart(stack: Stack) -> None:
    """SIGKILL the client: up 0 within a few scrapes; start it again: up 1; nothing restarts."""
    exporter = stack.exporter("alpha")
    proxy = stack.proxy()
    client = stack.client(proxy, "node1.example", [exporter.port])
    instance = f"node1.example:{exporter.port}"
    prometheus = stack.prometheus([proxied_job("nat", [instance], proxy.port)])
    prometheus.wait_up("nat", [instance])

    client.process.kill()
    # Interval 1 s, timeout 1 s: the first scrape after the kill fails; allow a few.
    prometheus.wait_up("nat", [instance], value=0, timeout=6)
    down = prometheus.target("nat", instance)
    assert down["lastError"], down

    client.process.start()
    prometheus.wait_up("nat", [instance], timeout=15)
    assert proxy.process.alive and proxy.process.starts == 1
    assert prometheus.process.alive and prometheus.process.starts == 1


def test_clients_reconnect_to_a_restarted_proxy_by_themselves(stack: Stack) -> None:
    """Stop the proxy and start it again on the same port: both clients come back alone."""
    alpha = stack.exporter("alpha")
    beta = stack.exporter("beta")
    proxy = stack.proxy()
    clients = [
        stack.client(proxy, "node1.example", [alpha.port]),
        stack.client(proxy, "node2.example", [beta.port]),
    ]
    instances = [f"node1.example:{alpha.port}", f"node2.example:{beta.port}"]
    prometheus = stack.prometheus([proxied_job("nat", instances, proxy.port)])
    prometheus.wait_up("nat", instances)

    proxy.process.stop()
    prometheus.wait_up("nat", instances, value=0, timeout=6)
    proxy.process.start()
    proxy.wait_ready()

    # Clients retry with a backoff of at most 2 s (--retry-max-wait 2).
    prometheus.wait_up("nat", instances, timeout=15)
    assert proxy.clients() >= {"node1.example", "node2.example"}
    for client in clients:
        assert client.process.alive and client.process.starts == 1, client


def test_target_slower_than_the_scrape_timeout(stack: Stack) -> None:
    """A slow target is down with a timeout error, its neighbour stays up, nothing is left over."""
    slow = stack.exporter("slow", delay=3)
    fast = stack.exporter("fast")
    proxy = stack.proxy()
    stack.client(proxy, "node1.example", [slow.port, fast.port])
    slow_instance = f"node1.example:{slow.port}"
    fast_instance = f"node1.example:{fast.port}"
    prometheus = stack.prometheus([proxied_job("nat", [slow_instance, fast_instance], proxy.port)])

    prometheus.wait_up("nat", {slow_instance: 0, fast_instance: 1})
    last_error = prometheus.target("nat", slow_instance)["lastError"]
    # The client scrapes concurrently: the slow target never holds up the fast one.
    fast_target = prometheus.wait_health("nat", fast_instance, "up")
    assert fast_target["lastScrapeDuration"] < 0.5, fast_target

    prometheus.process.stop()
    wait_for(
        lambda: proxy.metric("pushprox_scrapes_in_flight") == 0,
        timeout=10,
        what="pushprox_scrapes_in_flight 0 once Prometheus stopped scraping",
        watch=[proxy.process],
    )
    # Either the proxy's own 504 or Prometheus' deadline, whichever comes first; a 502
    # ("could not reach the target") would misreport a slow target as an unreachable one.
    assert re.search(r"504|time ?out|timed out|deadline exceeded", last_error, re.I), last_error
