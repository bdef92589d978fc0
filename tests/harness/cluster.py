"""
A cluster of proxy replicas for the tests: a real redis-server, replicas as real
``twistd pushprox-proxy`` processes sharing it, and a real nginx balancing TCP in front.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pushprox.shared import wire
from tests.faultrelay import FaultRelay
from tests.harness.processes import Process, ProcessGroup, twistd_argv
from tests.harness.rawhttp import (
    ClosedBeforeResponse,
    HTTPResponse,
    RawConnection,
    raw_http,
    scrape_request,
)
from tests.harness.recordings import GO_CLIENT_POLL, GO_CLIENT_PUSH, recording
from tests.harness.stack import STARTUP_TIMEOUT, Proxy, Stack
from tests.harness.waiting import free_port, port_open, wait_for

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_CLI = Path("/usr/bin/redis-cli")
REDIS_SENTINEL = Path("/usr/bin/redis-sentinel")
#: The name the sentinels of the tests know the primary by.
SENTINEL_SERVICE = "pushprox"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
PEER_TOKEN = "peer-token-for-the-tests-0123456789"


def missing() -> list[str]:
    """What cluster tests need and this machine lacks, with the Debian package."""
    needed = [(REDIS_SERVER, "redis-server"), (REDIS_CLI, "redis-tools"),
              (NGINX_STREAM_MODULE, "libnginx-mod-stream")]
    gone = [f"{path} (Debian package {package})" for path, package in needed
            if not path.exists()]
    if shutil.which("nginx") is None:
        gone.append("nginx (Debian package nginx-light)")
    return gone


def nginx_stream_config(directory: Path, listen: int, upstreams: Sequence[int]) -> str:
    """nginx balancing TCP round robin over ``upstreams``, as the README shows."""
    servers = "\n".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=1s;"
                        for port in upstreams)
    return f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ worker_connections 1024; }}
stream {{
  upstream replicas {{
{servers}
  }}
  server {{ listen 127.0.0.1:{listen}; proxy_pass replicas; }}
}}
"""


@dataclass
class Cluster:
    """Redis, the replicas and the balancer of one test."""

    stack: Stack
    redis: Process
    redis_port: int
    token_file: Path
    replicas: list[Proxy] = field(default_factory=list)
    balancer: Process | None = None
    balancer_port: int = 0
    #: A fault-injecting relay between the replicas and Redis, when asked for.
    relay: FaultRelay | None = None
    #: Redis Sentinel in front of Redis, when asked for.
    sentinel: Sentinel | None = None

    @property
    def redis_url(self) -> str:
        """Where the replicas find Redis (through the relay or the sentinels, if any)."""
        if self.sentinel is not None:
            return self.sentinel.url
        port = self.relay.port if self.relay is not None else self.redis_port
        return f"redis://127.0.0.1:{port}/0"

    @property
    def url(self) -> str:
        """The balancer, where Prometheus and the clients go."""
        return f"http://127.0.0.1:{self.balancer_port}"

    def redis_cli(self, *args: str) -> str:
        """Run one redis-cli command against the test's Redis; its output."""
        done = subprocess.run([str(REDIS_CLI), "-p", str(self.redis_port), *args],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout

    def redis_connections(self) -> int:
        """Connections Redis has from others than redis-cli (the replicas')."""
        listed = self.redis_cli("CLIENT", "LIST").splitlines()
        return sum(1 for line in listed if "cmd=client" not in line)

    def keys(self) -> list[str]:
        """The keys in Redis."""
        return sorted(filter(None, self.redis_cli("--raw", "KEYS", "*").splitlines()))

    def replica(self, index: int, extra: Sequence[str] = ()) -> Proxy:
        """Start replica ``index`` (on a new port) and wait until it serves."""
        port = free_port()
        args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", self.redis_url,
                "--peer-token-file", str(self.token_file),
                "--peer-url", f"http://127.0.0.1:{port}", *extra]
        process = self.stack.start(f"replica{index}", twistd_argv("pushprox-proxy", args))
        proxy = Proxy(port, process)
        proxy.wait_ready()
        return proxy

    def restart(self, replica: Proxy) -> None:
        """Start a stopped replica again, on its port, and wait until it serves."""
        process = replica.process
        assert isinstance(process, Process)
        process.start()
        replica.wait_ready()

    def start_balancer(self) -> None:
        """nginx in front of every replica."""
        self.balancer_port = free_port()
        directory = self.stack.directory("nginx")
        config = directory / "nginx.conf"
        config.write_text(nginx_stream_config(directory, self.balancer_port,
                                              [replica.port for replica in self.replicas]))
        self.balancer = self.stack.start("nginx", ["nginx", "-c", str(config),
                                                   "-p", str(directory)])
        wait_for(lambda: port_open(self.balancer_port), timeout=STARTUP_TIMEOUT,
                 what="nginx", watch=[self.balancer])

    def scrape(self, fqdn: str, port: int, *, via: int | None = None,
               timeout: float = 5.0) -> HTTPResponse:
        """Prometheus' proxied scrape of ``fqdn:port``, through ``via`` or the balancer."""
        request = scrape_request(f"http://{fqdn}:{port}/metrics", timeout)
        return raw_http(via or self.balancer_port, request, timeout=timeout + 5)


def start_redis(stack: ProcessGroup) -> tuple[Process, int]:
    """redis-server on a free port, nothing saved to disk."""
    port = free_port()
    directory = stack.directory("redis")
    process = stack.start("redis", [str(REDIS_SERVER), "--port", str(port),
                                    "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(directory)])
    wait_for(lambda: port_open(port), timeout=STARTUP_TIMEOUT, what="redis-server",
             watch=[process])
    return process, port


def start_cluster(stack: Stack, replicas: int = 3, extra: Sequence[str] = (), *,
                  relay: bool = False, sentinel: bool = False) -> Cluster:
    """
    Redis, ``replicas`` replicas and nginx in front of them; a relay to Redis, or Redis
    Sentinel (a Redis replica and three sentinels), if asked.
    """
    redis, redis_port = start_redis(stack)
    token_file = stack.directory("secrets") / "peer-token"
    token_file.write_text(PEER_TOKEN + "\n")
    os.chmod(token_file, 0o600)
    cluster = Cluster(stack, redis, redis_port, token_file,
                      relay=FaultRelay(redis_port, stack) if relay else None,
                      sentinel=start_sentinel(stack, redis_port) if sentinel else None)
    for index in range(replicas):
        cluster.replicas.append(cluster.replica(index + 1, extra))
    cluster.start_balancer()
    return cluster


@dataclass(frozen=True)
class Scraped:
    """One scrape of a load run: when it started, how long it took, how it ended."""

    started: float
    seconds: float
    fqdn: str
    status: int
    text: str


class ScrapeLoad:
    """
    Scrapers as Prometheus runs them, through the balancer: each on its own kept-alive
    connection (a new one when the proxy closes it), each scraping every client in turn.
    Use it as a context manager; every scrape is recorded.
    """

    def __init__(self, port: int, fqdns: Sequence[str], target_port: int, *,
                 connections: int = 8, timeout: float = 4.0) -> None:
        self._port, self._fqdns, self._target_port = port, list(fqdns), target_port
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Every scrape so far, in the order they ended.
        self.scrapes: list[Scraped] = []
        self._threads = [threading.Thread(target=self._run, args=(index,), daemon=True)
                         for index in range(connections)]

    def __enter__(self) -> ScrapeLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 10)

    def _run(self, index: int) -> None:
        connection: RawConnection | None = None
        turn = index
        while not self._stop.is_set():
            fqdn = self._fqdns[turn % len(self._fqdns)]
            turn += 1
            request = scrape_request(f"http://{fqdn}:{self._target_port}/metrics", self._timeout)
            started = time.monotonic()
            try:
                if connection is None:
                    connection = RawConnection(self._port, timeout=self._timeout + 5)
                try:
                    connection.send(request)
                    response = connection.read_response(timeout=self._timeout + 5)
                except (ClosedBeforeResponse, BrokenPipeError):
                    if not connection.responses_read:
                        raise
                    # As Prometheus' HTTP client (Go's net/http) does: a GET on a kept-alive
                    # connection that the server closed before answering (it was idle to
                    # the server when the request left) is sent again on a new connection.
                    connection.close()
                    connection = RawConnection(self._port, timeout=self._timeout + 5)
                    connection.send(request)
                    response = connection.read_response(timeout=self._timeout + 5)
                status, text = response.status, response.text[:200]
                if (response.header(b"connection") or b"").lower() == b"close":
                    connection.close()
                    connection = None
            except (OSError, AssertionError) as error:
                status, text = 0, str(error)[:200]
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.scrapes.append(Scraped(started, time.monotonic() - started, fqdn,
                                            status, text))
        if connection is not None:
            connection.close()

    def since(self, moment: float) -> list[Scraped]:
        """The scrapes started at or after ``moment`` (``time.monotonic()``)."""
        with self._lock:
            return [scrape for scrape in self.scrapes if scrape.started >= moment]

    def failed(self) -> list[Scraped]:
        """The scrapes that did not end with a 200."""
        with self._lock:
            return [scrape for scrape in self.scrapes if scrape.status != 200]

    def slowest(self) -> float:
        """The longest scrape so far, in seconds."""
        with self._lock:
            return max((scrape.seconds for scrape in self.scrapes), default=0.0)


def _scrape_id(answer: HTTPResponse) -> bytes | None:
    """The Id of the scrape a poll answer carries, or None for a refusal."""
    if answer.status != 200:
        return None
    try:
        return wire.decode_scrape_request(answer.body).scrape_id.encode()
    except wire.WireError:
        return None


class MovingClient:
    """
    The upstream Go client's recorded traffic (FQDN ``localhost``), each poll and each
    push on a new connection through the balancer: its poll lands on another replica
    after almost every scrape.  As the Go client, it polls again as soon as a poll is
    answered, and pushes aside (after ``push_delay``, a slow target).  Runs in threads
    while used as a context manager; every push that is not answered 200 is recorded.
    """

    def __init__(self, port: int, *, push_delay: float = 0.0) -> None:
        self._port = port
        self._host = b"127.0.0.1:%d" % port
        #: Seconds between a poll's answer and its push (a slow target).
        self._push_delay = push_delay
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        #: Pushes answered, and the answers that were not 200 (or errors).
        self.pushed = 0
        self.failures: list[str] = []

    def __enter__(self) -> MovingClient:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(40)

    def _run(self) -> None:
        poll = recording(GO_CLIENT_POLL).sent_to(self._host)
        while not self._stop.is_set():
            try:
                with RawConnection(self._port, timeout=35) as connection:
                    connection.send(poll)
                    answer = connection.read_response(timeout=30)
            except (OSError, AssertionError):
                continue
            scrape_id = _scrape_id(answer)
            if scrape_id is None:
                # A replica that has just started or is leaving: poll again, as Go does.
                time.sleep(0.1)
                continue
            # As the Go client: the scrape is made and pushed aside, the next poll at once.
            threading.Thread(target=self._push, args=(scrape_id,), daemon=True).start()

    def _push(self, scrape_id: bytes) -> None:
        if self._push_delay:
            time.sleep(self._push_delay)
        push = recording(GO_CLIENT_PUSH).sent_to(self._host, scrape_id)
        try:
            with RawConnection(self._port, timeout=15) as connection:
                connection.send(push)
                pushed = connection.read_response(timeout=10)
        except (OSError, AssertionError) as error:
            with self._lock:
                self.failures.append(f"push: {error}")
            return
        with self._lock:
            self.pushed += 1
            if pushed.status != 200:
                self.failures.append(f"push: {pushed.status} {pushed.text[:200]}")


@dataclass
class Sentinel:
    """A Redis replica of the primary and three sentinels watching them."""

    replica: Process
    replica_port: int
    sentinels: list[tuple[Process, int]]

    @property
    def url(self) -> str:
        """``--redis`` for the replicas: every sentinel, the primary's name."""
        hosts = ",".join(f"127.0.0.1:{port}" for _, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def ask(self, *args: str) -> str:
        """One redis-cli command to the first sentinel still running; its output."""
        for process, port in self.sentinels:
            if process.alive:
                done = subprocess.run([str(REDIS_CLI), "-p", str(port), *args],
                                      capture_output=True, text=True, timeout=10, check=True)
                return done.stdout
        raise AssertionError("no sentinel runs")

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        lines = self.ask("--raw", "SENTINEL", "get-master-addr-by-name",
                         SENTINEL_SERVICE).split()
        return int(lines[1])


def sentinel_missing() -> list[str]:
    """What the Redis Sentinel tests need beyond the cluster's, with the Debian package."""
    return [] if REDIS_SENTINEL.exists() else [
        f"{REDIS_SENTINEL} (Debian package redis-sentinel)"]


def start_sentinel(stack: ProcessGroup, primary_port: int) -> Sentinel:
    """A replica of the Redis on ``primary_port`` and three sentinels that know both."""
    replica_port = free_port()
    directory = stack.directory("redis-replica")
    replica = stack.start("redis-replica", [
        str(REDIS_SERVER), "--port", str(replica_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(directory),
        "--replicaof", "127.0.0.1", str(primary_port)])
    sentinels = []
    for index in range(3):
        port = free_port()
        directory = stack.directory(f"sentinel{index + 1}")
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n")
        process = stack.start(f"sentinel{index + 1}", [str(REDIS_SENTINEL), str(config)])
        sentinels.append((process, port))
    setup = Sentinel(replica, replica_port, sentinels)
    watched = [replica] + [process for process, _ in sentinels]

    def ready() -> bool:
        for _, port in sentinels:
            if not port_open(port):
                return False
            replicas = subprocess.run(
                [str(REDIS_CLI), "-p", str(port), "SENTINEL", "replicas", SENTINEL_SERVICE],
                capture_output=True, text=True, timeout=10, check=False).stdout
            others = subprocess.run(
                [str(REDIS_CLI), "-p", str(port), "SENTINEL", "sentinels", SENTINEL_SERVICE],
                capture_output=True, text=True, timeout=10, check=False).stdout
            if str(replica_port) not in replicas or others.count("runid") < 2:
                return False
        return True

    wait_for(ready, timeout=60, what="three sentinels that know the replica and each other",
             watch=watched)
    return setup
