# -*- test-case-name: tests.test_cluster -*-
"""
The cluster's routing table in Redis.

Keys (every one expires by itself once nothing refreshes it):

- ``pushprox:clients``: sorted set, FQDN → time of its last poll seen by any replica;
- ``pushprox:routes``: hash, FQDN → id of the replica that saw that poll;
- ``pushprox:labels``: hash, FQDN → its labels as JSON;
- ``pushprox:replicas``: hash, replica id → ``{"url": peer URL, "seen": time}``;
- ``pushprox:moves``: a channel, "REPLICA FQDN" each time a client's poll lands on
  another replica than its last one (scrapes queued for its poll elsewhere follow it).

The three client keys expire after the registration timeout and are refreshed by every
write; entries of clients silent for longer are pruned by the heartbeat.  Every poll
runs one small script, which writes only when the client's route or labels changed or
its entry is older than a third of the registration timeout: a client's next poll may
come through another connection, to another replica, so a replica cannot tell on its
own that its route is still current.  Every Redis call has a timeout; when Redis cannot
be reached the table says so (``up``), and callers route locally, or along the route
Redis gave last for a client (``last_route``), until it is back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from pushprox.proxy.cluster.metrics import ClusterMetrics
from pushprox.proxy.cluster.owners import OwnerSeal
from pushprox.proxy.cluster.redis import RedisClient, SentinelEndpoint, redis_endpoint, with_tls
from pushprox.proxy.coordinator import ClientInfo

CLIENTS = "pushprox:clients"
ROUTES = "pushprox:routes"
LABELS = "pushprox:labels"
REPLICAS = "pushprox:replicas"
#: Channel announcing "REPLICA FQDN" when a client's poll lands on another replica.
MOVES = "pushprox:moves"

# Every time kept in Redis is Redis' own clock (TIME), never a replica's: replicas on
# different machines compare them.
_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""
# Record polls: KEYS clients, routes, labels, the moves channel; ARGV replica, ttl,
# refresh, then fqdn, labels for each poll.  Writes a client only when its route or
# labels changed or its entry is older than ``refresh`` seconds; returns how many it
# wrote.  A client that moved from another replica (or whose route its replica withdrew
# on leaving) is announced on the moves channel.
_NOTE_POLLS = _NOW + """
local written = 0
for i = 4, #ARGV, 2 do
  local fqdn, labels = ARGV[i], ARGV[i + 1]
  local seen = redis.call('ZSCORE', KEYS[1], fqdn)
  local owner = redis.call('HGET', KEYS[2], fqdn)
  if not (seen and tonumber(seen) > now - tonumber(ARGV[3])
          and owner == ARGV[1] and redis.call('HGET', KEYS[3], fqdn) == labels) then
    redis.call('ZADD', KEYS[1], now, fqdn)
    redis.call('HSET', KEYS[2], fqdn, ARGV[1])
    redis.call('HSET', KEYS[3], fqdn, labels)
    if (owner or seen) and owner ~= ARGV[1] then
      redis.call('PUBLISH', KEYS[4], ARGV[1] .. ' ' .. fqdn)
    end
    written = written + 1
  end
end
if written > 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
end
return written
"""
# Heartbeat: KEYS replicas, clients, routes, labels; ARGV id, peer URL, started, replica
# ttl, client ttl.  Returns whether this replica was known, and the replicas hash after
# dropping replicas and clients gone.  A record that is not what a replica writes (not
# JSON, no time) is dropped, not an error that would stop every replica's heartbeat.
_HEARTBEAT = _NOW + """
local known = redis.call('HEXISTS', KEYS[1], ARGV[1])
local record = cjson.encode({url = ARGV[2], seen = now, started = tonumber(ARGV[3])})
redis.call('HSET', KEYS[1], ARGV[1], record)
redis.call('EXPIRE', KEYS[1], ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, decoded = pcall(cjson.decode, all[i + 1])
  local seen = ok and type(decoded) == 'table' and tonumber(decoded['seen'])
  if not seen or seen < now - tonumber(ARGV[4]) then redis.call('HDEL', KEYS[1], all[i]) end
end
local cutoff = '(' .. (now - tonumber(ARGV[5]))
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
for _, fqdn in ipairs(gone) do
  redis.call('HDEL', KEYS[3], fqdn)
  redis.call('HDEL', KEYS[4], fqdn)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
return {known, redis.call('HGETALL', KEYS[1])}
"""
# Where a client polls: KEYS routes, clients; ARGV fqdn, ttl.  Returns {replica, whether
# it polled within the ttl}.
_ROUTE = _NOW + """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
local known = seen and tonumber(seen) >= now - tonumber(ARGV[2]) and 1 or 0
return {redis.call('HGET', KEYS[1], ARGV[1]), known}
"""
# List the clients: KEYS clients, labels; ARGV ttl.  Returns fqdn, seen, labels, ...
_CLIENTS = _NOW + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf',
                        'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = live[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or '{}'
end
return out
"""
# Withdraw a replica: KEYS routes, replicas; ARGV id.  Drops the routes that name it.
_WITHDRAW = """
local all = redis.call('HGETALL', KEYS[1])
local dropped = 0
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]); dropped = dropped + 1 end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return dropped
"""


#: How long listing every client may take (10,000 clients: about 0.1 s).
CLIENTS_TIMEOUT = 2.0
#: Polls are gathered this long before they are checked in Redis together.
NOTE_DELAY = 0.005


class RedisUnavailable(Exception):
    """Redis did not answer in time or refused the call."""


@dataclass(frozen=True)
class Route:
    """Where the cluster says a client polls."""

    #: The peer URL of the live replica that saw its last poll, if there is one.
    peer: str | None
    #: Whether any replica saw the client poll within the registration timeout.
    known: bool


SENTINEL_PORT = 26379


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6][:PORT]``."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"{url}: a sentinel without a host")
    if port and not port.isdigit():
        raise ValueError(f"{url}: malformed port")
    return host, int(port) if port else default_port


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is: ``redis://`` or ``rediss://`` (one server), or
    ``redis+sentinel://`` / ``rediss+sentinel://`` (the primary Redis Sentinel names).
    """

    host: str
    port: int
    db: int
    password: str | None
    tls: bool
    #: CA certificates (PEM) that the server's certificate must chain to, with TLS.
    ca_file: str | None = None
    #: The sentinels to ask (host, port), and the name of the primary they watch.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None

    @classmethod
    def from_url(cls, url: str, password: str | None = None,
                 ca_file: str | None = None) -> RedisAddress:
        """
        Parse ``redis://[:PASSWORD@]HOST[:PORT][/DB]`` or
        ``redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]``;
        ``password`` wins over the URL's.
        """
        parts = urlsplit(url)
        schemes = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
        if parts.scheme not in schemes or not parts.netloc.rpartition("@")[2]:
            raise ValueError(f"{url} is not a redis://, rediss:// or redis+sentinel:// URL")
        tls = parts.scheme.startswith("rediss")
        if ca_file is not None and not tls:
            raise ValueError(f"{url}: a CA file is for rediss:// (TLS) only")
        url_password = unquote(parts.password) if parts.password else None
        if parts.scheme.endswith("+sentinel"):
            hosts = parts.netloc.rpartition("@")[2]
            sentinels = tuple(_host_port(host, SENTINEL_PORT, url)
                              for host in hosts.split(","))
            service, _, db = parts.path.strip("/").partition("/")
            if not service:
                raise ValueError(f"{url}: the primary's name (/SERVICE) is missing")
            if db and not db.isdigit():
                raise ValueError(f"{url}: the database must be a number")
            return cls(host="", port=0, db=int(db or 0), password=password or url_password,
                       tls=tls, ca_file=ca_file, sentinels=sentinels, service=service)
        if not parts.hostname:
            raise ValueError(f"{url} is not a redis://, rediss:// or redis+sentinel:// URL")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url}: the database must be a number")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{url}: malformed port") from None
        return cls(host=parts.hostname, port=port, db=int(path or 0),
                   password=password or url_password, tls=tls, ca_file=ca_file)


def connect(reactor: Any, address: RedisAddress, timeout: float) -> RedisClient:
    """A connection to Redis that is made at once, and again whenever it is lost."""
    connect_timeout = max(timeout, 1.0)
    endpoint: IStreamClientEndpoint
    if address.service is not None:
        ca_file = address.ca_file

        def wrap(host: str, plain: IStreamClientEndpoint) -> IStreamClientEndpoint:
            return with_tls(host, plain, ca_file) if address.tls else plain

        endpoint = SentinelEndpoint(reactor, address.sentinels, address.service,
                                    timeout=connect_timeout, wrap=wrap)
    else:
        endpoint = redis_endpoint(reactor, address.host, address.port, tls=address.tls,
                                  ca_file=address.ca_file, timeout=connect_timeout)
    client = RedisClient(reactor, endpoint, db=address.db, password=address.password,
                         primary_only=address.service is not None)
    client.start()
    return client


def _newest_per_url(records: dict[str, tuple[str, float]]) -> dict[str, str]:
    """
    Replica id → peer URL, keeping only the newest replica of each URL.

    A replica restarted at the same URL is a new replica: routes naming the old one
    lead nowhere, and must not lead to the new one, which does not hold their polls.
    """
    newest: dict[str, tuple[float, str]] = {}
    for replica, (url, started) in records.items():
        if url not in newest or started > newest[url][0]:
            newest[url] = (started, replica)
    return {replica: url for url, (_, replica) in newest.items()}


class RouteTable:
    """The cluster's shared routing table, as this replica reads and writes it."""

    log = Logger()

    def __init__(
        self,
        redis: Any,
        *,
        replica_id: str,
        peer_url: str,
        clock: IReactorTime,
        registration_timeout: float,
        metrics: ClusterMetrics,
        heartbeat_interval: float = 2.0,
        timeout: float = 0.5,
        wall_clock: Callable[[], float] | None = None,
        subscriber: RedisClient | None = None,
        seal: OwnerSeal | None = None,
    ) -> None:
        import time

        self._redis, self._clock, self._metrics = redis, clock, metrics
        #: This replica: its id (in every scrape id it hands out) and URL for its peers.
        self.replica_id, self.peer_url = replica_id, peer_url
        self._ttl = registration_timeout
        self.heartbeat_interval = heartbeat_interval
        #: How long a Redis call may take before it counts as failed.
        self.timeout = timeout
        # This replica's own bookkeeping (times in Redis are Redis' clock, see _NOW), and
        # its start time, compared only with replicas at the same URL (the same machine).
        self._now = wall_clock or time.time
        #: The labels (as JSON) of each client seen polling here, and when it last did.
        self._written: dict[str, str] = {}
        #: Polls not yet checked in Redis (fqdn → labels), sent together shortly.
        self._unnoted: dict[str, str] = {}
        self._flush: IDelayedCall | None = None
        self._polled: dict[str, float] = {}
        #: Live replicas: id → peer URL, as of the last heartbeat.
        self.replicas: dict[str, str] = {}
        #: The last route Redis gave for each client looked up: fqdn → (replica id, when).
        self._looked_up: dict[str, tuple[str, float]] = {}
        self.up = True
        self._beaten = False
        self._started = self._now()
        #: Called when what this replica wrote may be gone (Redis back, or restarted
        #: empty): the clients polling here now should be written again at once.
        self.on_lost: Callable[[], None] | None = None
        #: Called with (FQDN, peer URL) when a client's poll lands on another replica.
        self.on_moved: Callable[[str, str], None] | None = None
        self._subscriber = subscriber
        self._seal = seal
        #: What this replica's scrape ids begin with (see ``pushprox.proxy.cluster.owners``).
        self.scrape_id_prefix = (seal.prefix(replica_id, peer_url) if seal is not None
                                 else replica_id + ".")
        if subscriber is not None:
            subscriber.subscribe(MOVES, self._moved)
        metrics.watch_routes(lambda: len(self._written))
        metrics.watch_replicas(lambda: len(self.replicas))

    # -- calls, with a timeout, counted --

    async def _call(self, what: str, call: Callable[[], Deferred[Any]],
                    timeout: float | None = None) -> Any:
        started = self._clock.seconds()
        try:
            deferred = call()
            deferred.addTimeout(timeout or self.timeout, self._clock)
            result = await deferred
        except Exception as error:
            self._metrics.redis_errors.inc()
            self._set_up(False, f"{what}: {type(error).__name__}: {error}")
            raise RedisUnavailable(str(error)) from error
        self._metrics.redis_latency.observe(self._clock.seconds() - started)
        self._set_up(True, what)
        return result

    def _set_up(self, up: bool, what: str) -> None:
        if up == self.up:
            return
        self.up = up
        self._metrics.redis_up.set(1 if up else 0)
        if up:
            self.log.info("Redis answers again: cluster routing resumes")
            # What was written before may be gone with Redis: write it again.
            self._lost()
        else:
            self.log.warn("Redis cannot be reached ({what}): serving the clients that poll "
                          "this replica only, until it is back", what=what)

    def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    # -- polls and scrapes --

    def note_poll(self, fqdn: str, labels: dict[str, str] | None) -> None:
        """Record in Redis that ``fqdn`` polls this replica (a write only if it moved)."""
        now = self._now()
        previous = self._written.get(fqdn)
        encoded = json.dumps(labels or {}, sort_keys=True) if labels is not None else (
            previous if previous is not None else "{}")
        self._written[fqdn] = encoded
        self._polled[fqdn] = now
        # Polls arriving together are checked in one call: a burst of thousands of
        # polls (clients coming back after a restart) is a few calls, not a queue.
        self._unnoted[fqdn] = encoded
        if self._flush is None:
            self._flush = self._clock.callLater(NOTE_DELAY, self._note_polls)

    def _note_polls(self) -> None:
        self._flush = None
        polls, self._unnoted = self._unnoted, {}
        arguments: list[object] = [self.replica_id, int(self._ttl) + 1, self._ttl / 3]
        for fqdn, labels in polls.items():
            arguments += [fqdn, labels]
        done = Deferred.fromCoroutine(self._call("note polls", lambda: self._redis.eval(
            _NOTE_POLLS, [CLIENTS, ROUTES, LABELS, MOVES], arguments)))
        # The next poll of each tries again; the failure is counted and logged already.
        done.addErrback(lambda failure: None)

    def poll_ended(self, fqdn: str) -> None:
        """A poll of ``fqdn`` held here has ended."""
        if fqdn in self._polled:
            self._polled[fqdn] = self._now()

    async def route(self, fqdn: str) -> Route:
        """Where ``fqdn`` polls, as the cluster knows it."""
        replica, polled = await self._call("route", lambda: self._redis.eval(
            _ROUTE, [ROUTES, CLIENTS], [fqdn, self._ttl]))
        known = polled == 1
        if replica and known:
            self._looked_up[fqdn] = (str(replica), self._now())
        peer = self.replicas.get(str(replica)) if replica else None
        return Route(peer=peer, known=known)

    def _moved(self, message: str) -> None:
        """A client's poll landed on another replica: remember it, and say so."""
        replica, _, fqdn = message.partition(" ")
        if not fqdn:
            return
        self._looked_up[fqdn] = (replica, self._now())
        peer = self.replicas.get(replica)
        if peer is not None and replica != self.replica_id and self.on_moved is not None:
            self.on_moved(fqdn, peer)

    def last_route(self, fqdn: str) -> Route | None:
        """
        The route Redis gave last for ``fqdn`` (within the registration timeout), to use
        while Redis does not answer; ``None`` if there is none or its replica is gone.
        """
        found = self._looked_up.get(fqdn)
        if found is None or found[1] < self._now() - self._ttl:
            return None
        peer = self.replicas.get(found[0])
        return None if peer is None else Route(peer=peer, known=True)

    async def clients(self) -> list[ClientInfo]:
        """Every client of the cluster, sorted by FQDN."""
        raw = await self._call("clients", lambda: self._redis.eval(
            _CLIENTS, [CLIENTS, LABELS], [self._ttl]), timeout=CLIENTS_TIMEOUT)
        clients = []
        for index in range(0, len(raw), 3):
            try:
                labels = json.loads(raw[index + 2])
            except ValueError:
                labels = {}
            clients.append(ClientInfo(fqdn=str(raw[index]), last_seen=float(raw[index + 1]),
                                      labels=labels if isinstance(labels, dict) else {}))
        return sorted(clients, key=lambda client: client.fqdn)

    # -- replicas --

    async def heartbeat(self) -> None:
        """Say this replica is alive; learn the others; prune clients gone silent."""
        now = self._now()
        ttl = int(self.heartbeat_interval * 3) + 1
        known, raw = await self._call("heartbeat", lambda: self._redis.eval(
            _HEARTBEAT, [REPLICAS, CLIENTS, ROUTES, LABELS],
            [self.replica_id, self.peer_url, self._started, ttl, self._ttl]))
        if not known and self._beaten:
            # Redis lost what it knew (restarted empty, or failed over): write every route
            # again at its client's next poll.
            self.log.warn("Redis no longer knew this replica: its routes are written again")
            self._lost()
        self._beaten = True
        if self._subscriber is not None:
            # Lets the subscription's connection tell when it stalls; a failure is its own.
            ping = self._subscriber.call("PING")
            ping.addTimeout(self.timeout, self._clock)
            ping.addErrback(lambda _: None)
        records: dict[str, tuple[str, float]] = {}
        for index in range(0, len(raw), 2):
            try:
                record_of = json.loads(raw[index + 1])
                records[str(raw[index])] = (str(record_of["url"]),
                                            float(record_of.get("started", 0)))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        self.replicas = _newest_per_url(records)
        cutoff = now - self._ttl
        for fqdn in [name for name, when in self._polled.items() if when < cutoff]:
            del self._written[fqdn], self._polled[fqdn]
        for fqdn in [name for name, (_, when) in self._looked_up.items() if when < cutoff]:
            del self._looked_up[fqdn]

    async def withdraw(self) -> int:
        """Drop this replica and the routes that name it; returns how many routes went."""
        # Polls not yet noted must not name this replica again once it has left.
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush, self._unnoted = None, {}
        dropped = await self._call("withdraw", lambda: self._redis.eval(
            _WITHDRAW, [ROUTES, REPLICAS], [self.replica_id]))
        return int(dropped)

    def replica_of(self, scrape_id: str) -> Deferred[str | None] | str | None:
        """
        The peer URL of the replica a scrape id names, when it is another one: read from
        the id when it carries a sealed URL, else from the last heartbeat, else (a replica
        started since) a Deferred while Redis is asked.  Never this replica's own URL: an
        id of an earlier run at this address is claimed (and refused) here.
        """
        owner = self._seal.owner(scrape_id) if self._seal is not None else None
        if owner is None:
            replica, dot, _ = scrape_id.partition(".")
            if not dot:
                return None
        else:
            replica = owner.replica
        if replica == self.replica_id:
            return None
        url = owner.url if owner is not None and owner.url is not None else (
            self.replicas.get(replica))
        if url is not None:
            return None if url == self.peer_url else url
        return Deferred.fromCoroutine(self._lookup_replica(replica))

    async def _lookup_replica(self, replica: str) -> str | None:
        raw = await self._call("replica", lambda: self._redis.hget(REPLICAS, replica))
        if not raw:
            return None
        try:
            url = str(json.loads(raw)["url"])
        except (ValueError, KeyError, TypeError):
            return None
        return None if url == self.peer_url else url
