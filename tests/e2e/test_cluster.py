"""
Cluster mode end to end: three replicas sharing a real Redis behind a real nginx, real
clients (ours, and recorded upstream Go client traffic), a real Prometheus.

Every scrape and every poll goes through the balancer, so most scrapes land on a replica
that does not hold their client's poll and are forwarded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from pushprox.shared import wire
from tests.e2e import skip_or_fail
from tests.harness.cluster import (
    REDIS_CLI,
    Cluster,
    MovingClient,
    ScrapeLoad,
    missing,
    sentinel_missing,
    start_cluster,
)
from tests.harness.prometheus import proxied_job
from tests.harness.rawhttp import (
    RawConnection,
    http_request_bytes,
    prometheus_headers,
    scrape_request,
)
from tests.harness.recordings import GO_CLIENT_POLL, GO_CLIENT_PUSH, GO_FQDN, recording
from tests.harness.stack import Stack
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e

FQDNS = ["node1.example", "node2.example", "node3.example"]


@pytest.fixture(autouse=True)
def _cluster_binaries() -> None:
    """Skip without Redis or nginx's stream module; fail instead under PUSHPROX_REQUIRE_E2E."""
    gone = missing()
    if not gone:
        return
    reason = "cluster tests need " + "; ".join(gone)
    if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
        pytest.fail(reason + " and PUSHPROX_REQUIRE_E2E=1", pytrace=False)
    pytest.skip(reason)


def start_clients(stack: Stack, cluster: Cluster, port: int) -> None:
    """Our three clients, each polling through the balancer."""
    for fqdn in FQDNS:
        stack.client(cluster.replicas[0], fqdn, [port], proxy_url=cluster.url + "/",
                     wait=False)
    wait_for(lambda: set(FQDNS) <= cluster.replicas[1].clients(), timeout=30,
             what="every client listed by /clients of any replica")


def forwarded(cluster: Cluster) -> float:
    """Scrapes forwarded between replicas so far, whatever the answer."""
    total = 0.0
    for replica in cluster.replicas:
        text = replica.get("/metrics").text
        total += sum(float(value) for value in re.findall(
            r'^pushprox_cluster_forwarded_scrapes_total\{code="\d+"\} (\S+)$', text, re.M))
    return total


def test_every_target_is_up_through_three_replicas(stack: Stack) -> None:
    """Prometheus scrapes every client through the balancer; replicas forward to each other."""
    node = stack.node_exporter()
    cluster = start_cluster(stack)
    start_clients(stack, cluster, node.port)
    instances = [f"{fqdn}:{node.port}" for fqdn in FQDNS]
    prometheus = stack.prometheus([proxied_job("cluster", instances, cluster.balancer_port)])
    prometheus.wait_up("cluster", instances, timeout=30)
    build_info = prometheus.query('node_exporter_build_info{job="cluster"}')
    assert sorted(s["metric"]["instance"] for s in build_info) == instances
    # Nine scrapes of three clients over three replicas: some land where no poll is held.
    wait_for(lambda: forwarded(cluster) > 0, timeout=20, what="a forwarded scrape")
    for replica in cluster.replicas:
        assert replica.clients() == set(FQDNS)


def test_a_wrong_peer_token_is_refused(stack: Stack) -> None:
    """A request claiming to come from a peer with a wrong token gets 403."""
    cluster = start_cluster(stack, replicas=1)
    replica = cluster.replicas[0]
    headers = [*prometheus_headers(5), ("X-PushProx-Peer-Token", "not-the-token"),
               ("X-PushProx-Hop", "1")]
    with RawConnection(replica.port) as connection:
        connection.send(http_request_bytes("GET", "http://node1.example:9100/metrics", headers))
        response = connection.read_response(timeout=10)
    assert (response.status, response.body) == (403, b"wrong peer token\n")
    assert "not-the-token" not in replica.process.log_text()


def test_upstream_go_client_through_the_balancer(stack: Stack) -> None:
    """Recorded Go client traffic: its poll on one replica, the scrape and push on others."""
    cluster = start_cluster(stack)
    host = b"127.0.0.1:%d" % cluster.balancer_port
    poll = recording(GO_CLIENT_POLL).sent_to(host)

    def held_poll() -> RawConnection | None:
        """A poll held by some replica; as the Go client, poll again when refused."""
        connection = RawConnection(cluster.balancer_port)
        connection.send(poll)
        try:
            refused = connection.read_response(timeout=0.5)
        except AssertionError:  # no answer: the poll is held
            return connection
        connection.close()
        assert refused.status == 503, refused  # a replica that has just started
        return None

    poller = wait_for(held_poll, timeout=20, what="a replica holding the Go client's poll")
    assert "localhost" in cluster.replicas[0].clients()
    # Scrape through each replica in turn: at least two of them forward.
    responses = []
    for replica in cluster.replicas:
        with RawConnection(replica.port) as scraper:
            scraper.send(scrape_request("http://localhost:9100/metrics?foo=bar", 10.0))
            answer = poller.read_response(timeout=10)
            assert answer.status == 200, answer.text
            scrape_id = wire.decode_scrape_request(answer.body).scrape_id.encode()
            # The push on a new connection: the balancer may take it to any replica.
            with RawConnection(cluster.balancer_port) as pusher:
                pusher.send(recording(GO_CLIENT_PUSH).sent_to(host, scrape_id))
                pushed = pusher.read_response(timeout=10)
            assert (pushed.status, pushed.body) == (200, b"")
            responses.append(scraper.read_response(timeout=10))
            # The Go client polls again after each push.
            poller.send(poll)
    poller.close()
    inner = recording(GO_CLIENT_PUSH).inner_body
    assert [(r.status, r.body) for r in responses] == [(200, inner)] * 3
    assert forwarded(cluster) >= 2


def probe(cluster: Cluster, port: int, seconds: float) -> list[tuple[str, int, str]]:
    """Scrape every client through the balancer for ``seconds``; every failure seen."""
    failures = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fqdn in FQDNS:
            try:
                response = cluster.scrape(fqdn, port, timeout=4)
                if response.status != 200:
                    failures.append((fqdn, response.status, response.text[:200]))
            except OSError as error:
                failures.append((fqdn, 0, str(error)))
        time.sleep(0.05)
    return failures


def test_rolling_restart_fails_no_scrape(stack: Stack) -> None:
    """Each replica stopped with SIGTERM and started again, one at a time: no scrape fails."""
    node = stack.node_exporter()
    cluster = start_cluster(stack)
    start_clients(stack, cluster, node.port)
    assert probe(cluster, node.port, 1.0) == []
    failures = []
    for replica in cluster.replicas:
        replica.process.send_signal(signal.SIGTERM)
        failures += probe(cluster, node.port, 2.0)
        assert replica.process.wait_exit(20), replica.process.log_tail()
        cluster.restart(replica)
        failures += probe(cluster, node.port, 2.0)
    assert failures == []
    for replica in cluster.replicas:
        assert "Leaving the cluster" in replica.process.log_text()


def test_kill_9_of_a_replica_recovers_by_itself(stack: Stack) -> None:
    """After one replica is killed, no target misses more than two scrapes in a row."""
    node = stack.node_exporter()
    cluster = start_cluster(stack)
    start_clients(stack, cluster, node.port)
    instances = [f"{fqdn}:{node.port}" for fqdn in FQDNS]
    prometheus = stack.prometheus([proxied_job("cluster", instances, cluster.balancer_port)],
                                  scrape_interval="2s", scrape_timeout="1s")
    prometheus.wait_up("cluster", instances, timeout=30)
    cluster.replicas[0].process.send_signal(signal.SIGKILL)
    # The dead replica's clients poll another one within their retry (1 s here);
    # forwarding skips the dead replica meanwhile.  Six scrape intervals later:
    time.sleep(12)
    prometheus.wait_up("cluster", instances, timeout=30)
    missed = prometheus.by_instance('count_over_time((up{job="cluster"} == 0)[30s:2s])')
    assert all(count <= 2 for count in missed.values()), missed


def test_redis_down_keeps_direct_clients_and_routing_comes_back(stack: Stack) -> None:
    """Without Redis each replica serves its own clients; with it back, all of them again."""
    node = stack.node_exporter()
    cluster = start_cluster(stack)
    start_clients(stack, cluster, node.port)
    assert probe(cluster, node.port, 1.0) == []
    # Every replica has read the others at a heartbeat (Redis down in the first seconds
    # of a cluster is another story): a push landing anywhere reaches its scrape's owner.
    wait_for(lambda: all(replica.metric("pushprox_cluster_replicas") == len(cluster.replicas)
                         for replica in cluster.replicas),
             timeout=30, what="every replica seeing the others")
    cluster.redis.stop()
    served = {fqdn: 0 for fqdn in FQDNS}
    for replica in cluster.replicas:
        for fqdn in FQDNS:
            response = cluster.scrape(fqdn, node.port, via=replica.port)
            if response.status == 200:
                served[fqdn] += 1
            else:
                assert response.status in (503, 504), response
                if response.status == 503:
                    assert "Redis" in response.text, response.text
        assert replica.get("/-/ready").status == 200
        assert replica.metric("pushprox_cluster_redis_up") == 0
        # Never this replica's clients alone: Prometheus would drop the others.
        listed = replica.get("/clients")
        assert listed.status == 503, listed
        assert listed.text.startswith("the cluster's clients cannot be listed: Redis "
                                      "cannot be reached"), listed.text
    # Every client is still scraped through the replica that holds its poll.
    assert all(count >= 1 for count in served.values()), served
    cluster.redis.start()
    wait_for(lambda: probe(cluster, node.port, 0.5) == [], timeout=30,
             what="every scrape through the balancer succeeding again")
    wait_for(lambda: all(replica.metric("pushprox_cluster_redis_up") == 1
                         for replica in cluster.replicas),
             timeout=20, what="every replica's next heartbeat finding Redis again")


def test_nothing_is_left_in_redis(stack: Stack) -> None:
    """Clients gone and replicas stopped: every key expires or is removed."""
    node = stack.node_exporter()
    cluster = start_cluster(stack, replicas=2, extra=["--registration-timeout", "3"])
    start_clients(stack, cluster, node.port)
    assert {"pushprox:clients", "pushprox:routes", "pushprox:labels",
            "pushprox:replicas"} <= set(cluster.keys())
    for process in list(stack.processes):
        if process.name.startswith("client-"):
            process.stop()
    wait_for(lambda: cluster.keys() == ["pushprox:replicas"], timeout=30,
             what="only the replicas' own record left once the clients are gone")
    for replica in cluster.replicas:
        replica.process.stop()
    wait_for(lambda: cluster.keys() == [], timeout=30, what="no key left in Redis")


def test_redis_paused_or_slow_costs_no_scrape_under_load(stack: Stack) -> None:
    """
    Eight kept-alive scrapers over every client through the balancer while Redis is
    paused for 2 s (SIGSTOP, SIGCONT), then while its every reply is 300 ms late for
    10 s: no scrape fails, and every replica keeps its connections to Redis.
    """
    node = stack.node_exporter()
    cluster = start_cluster(stack, relay=True)
    start_clients(stack, cluster, node.port)
    wait_for(lambda: all(replica.metric("pushprox_cluster_replicas") == len(cluster.replicas)
                         for replica in cluster.replicas),
             timeout=30, what="every replica seeing the others")
    # Each replica: one connection for its calls, one subscribed to clients' moves.
    assert cluster.redis_connections() == 2 * len(cluster.replicas)
    assert cluster.relay is not None
    with ScrapeLoad(cluster.balancer_port, FQDNS, node.port) as load:
        time.sleep(2)
        cluster.redis.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2)
        finally:
            cluster.redis.send_signal(signal.SIGCONT)
        time.sleep(3)
        cluster.relay.command("delay down 0.3")
        time.sleep(10)
        cluster.relay.command("pass down")
        time.sleep(2)
    assert load.failed() == []
    assert len(load.scrapes) > 100, len(load.scrapes)
    assert cluster.redis_connections() == 2 * len(cluster.replicas)
    for replica in cluster.replicas:
        assert replica.metric("pushprox_cluster_redis_up") == 1
        assert replica.metric("pushprox_cluster_redis_connections") == 2
        # Paused and slowed, Redis cost no connection: the first two are still in use.
        assert replica.metric("pushprox_cluster_redis_connects") == 2


def test_a_client_moving_at_every_poll_stalls_no_scrape(stack: Stack) -> None:
    """
    A client whose every poll lands on another replica (the upstream Go client's traffic,
    a new connection for each poll and push), and our own three, scraped by eight
    kept-alive scrapers through the balancer: no scrape fails, none stalls.
    """
    node = stack.node_exporter()
    cluster = start_cluster(stack)
    start_clients(stack, cluster, node.port)
    wait_for(lambda: all(replica.metric("pushprox_cluster_replicas") == len(cluster.replicas)
                         for replica in cluster.replicas),
             timeout=30, what="every replica seeing the others")
    with MovingClient(cluster.balancer_port) as mover:
        wait_for(lambda: GO_FQDN in cluster.replicas[0].clients(), timeout=20,
                 what="the moving client listed")
        with ScrapeLoad(cluster.balancer_port, [*FQDNS, GO_FQDN], node.port) as load:
            time.sleep(15)
    scrapes = load.scrapes
    moving = [scrape for scrape in scrapes if scrape.fqdn == GO_FQDN]
    print(f"{len(scrapes)} scrapes, {len(moving)} of the moving client; slowest "
          f"{max(s.seconds for s in scrapes):.3f}s, of the moving client "
          f"{max(s.seconds for s in moving):.3f}s; {mover.pushed} pushes")
    assert load.failed() == []
    assert mover.failures == []
    assert len(moving) > 50, len(moving)
    # The aim is no scrape over 1 s; a stall waited for the scrape timeout (4 s).
    assert load.slowest() < 2.5, sorted(s.seconds for s in scrapes)[-10:]


def test_drain_with_slow_scrapes_in_flight_loses_no_push(stack: Stack) -> None:
    """
    A replica stopped with SIGTERM while 2 s scrapes are in flight, forwarded ones among
    them, and pushes of the moving client land on other replicas than their scrape's:
    every scrape is answered 200, every push finds its scrape.
    """
    slow = stack.exporter("slow", delay=2.0)
    cluster = start_cluster(stack)
    start_clients(stack, cluster, slow.port)
    wait_for(lambda: all(replica.metric("pushprox_cluster_replicas") == len(cluster.replicas)
                         for replica in cluster.replicas),
             timeout=30, what="every replica seeing the others")
    leaving = cluster.replicas[0]
    with MovingClient(cluster.balancer_port, push_delay=2.0) as mover:
        wait_for(lambda: GO_FQDN in cluster.replicas[1].clients(), timeout=20,
                 what="the moving client listed")
        with ScrapeLoad(cluster.balancer_port, [*FQDNS, GO_FQDN], slow.port,
                        timeout=8) as load:
            time.sleep(4)
            leaving.process.send_signal(signal.SIGTERM)
            assert leaving.process.wait_exit(30), leaving.process.log_tail()
            time.sleep(4)
    print(f"{len(load.scrapes)} scrapes, slowest {load.slowest():.3f}s; "
          f"{mover.pushed} pushes of the moving client")
    for failed in load.failed():
        print(failed)
    assert load.failed() == []
    assert mover.failures == []
    assert mover.pushed >= 3
    assert "Leaving the cluster" in leaving.process.log_text()


def test_redis_sentinel_failover_under_load(stack: Stack) -> None:
    """
    The replicas find the primary through three sentinels; the primary killed (-9) under
    load, the sentinels promote its replica, the replicas follow by themselves, write
    their routes there, and every client is scraped again.
    """
    gone = sentinel_missing()
    if gone:
        skip_or_fail("the Redis Sentinel test needs " + "; ".join(gone))
    node = stack.node_exporter()
    cluster = start_cluster(stack, sentinel=True)
    assert cluster.sentinel is not None
    start_clients(stack, cluster, node.port)
    wait_for(lambda: all(replica.metric("pushprox_cluster_replicas") == len(cluster.replicas)
                         for replica in cluster.replicas),
             timeout=30, what="every replica seeing the others")
    with ScrapeLoad(cluster.balancer_port, FQDNS, node.port) as load:
        time.sleep(2)
        killed = time.monotonic()
        cluster.redis.kill()
        wait_for(lambda: cluster.sentinel is not None
                 and cluster.sentinel.primary_port() == cluster.sentinel.replica_port,
                 timeout=30, what="the sentinels promoting the replica")
        promoted = time.monotonic() - killed
        time.sleep(12)
    # When each client was last seen failing, from the kill on.
    last_failure = {fqdn: max((s.started + s.seconds - killed for s in load.since(killed)
                               if s.fqdn == fqdn and s.status != 200), default=0.0)
                    for fqdn in FQDNS}
    print(f"promoted after {promoted:.1f}s; last failed scrape per client after the kill: "
          f"{last_failure}; {len(load.failed())} failed of {len(load.scrapes)}")
    for fqdn in FQDNS:
        assert [s.status for s in load.since(killed + 10) if s.fqdn == fqdn].count(200) > 0
    # The aim is 10 s; the limit here is generous (the machine may be busy).
    assert max(last_failure.values()) < 25, last_failure
    new_primary = ["-p", str(cluster.sentinel.replica_port)]
    wait_for(lambda: int(subprocess.run(
        [str(REDIS_CLI), *new_primary, "HLEN", "pushprox:routes"], capture_output=True,
        text=True, timeout=10, check=True).stdout) == len(FQDNS),
        timeout=30, what="every route written to the new primary")
    for replica in cluster.replicas:
        assert replica.metric("pushprox_cluster_redis_up") == 1
