"""The cluster's presence map: which nodes hold user u of app a (routed delivery).

Kept in the cluster's Redis (``REDIS_URL``), the one shared service that answers a lookup of
a thousand users in one round trip; the database is too slow for a lookup per publish and
RocketMQ stores no keyed state. Layout (prefix ``gateway:presence:<topic>:``, ``Keys``):

- ``u:<app>:<user>``: a sorted set of the user's connections across the cluster, member
  ``<node>\\x1f<incarnation>\\x1f<session id>``, score = connected at (epoch s). Oldest first
  is what the cluster-wide per-user cap closes.
- ``n:<node>``: the node's markers, a hash of ``incarnation: "<beat ms>:<sessions>"``, one
  field per process of the node (a split node may run several web processes under one node
  id), renewed every second. A connection counts only while its incarnation's beat is
  younger than ``GATEWAY_NODE_TIMEOUT``: a dead process's users vanish from lookups within
  the node timeout, at once when it stopped cleanly (``leave``). Beats are compared with the
  reader's wall clock, as the database's node beats are.
  Stale members are removed lazily by the lookups that meet them.
- ``nodes``: the set of node ids that wrote a marker (for the map's size).

Guarantees:

- ``add`` returns once Redis holds the connection (a connecting session is added before its
  inbox is read: docs/cluster.md, "the race"). The adds of sessions connecting at the same
  moment share one pipeline (a reconnect storm's thousands of concurrent adds each took a
  connection of redis-py's pool, which refuses past 100). It raises ``PresenceUnavailable``
  otherwise; the node then re-adds every session it holds at its next beat, and meanwhile
  marks its marker incomplete (``mark_incomplete``: sessions ``-1``), so that publishers
  treat the node as having no marker, and broadcast, until that beat.
- A node writes its marker only after every session it holds is in the map (``beat``): a
  marker lost with Redis (a restart) comes back only with the node's whole state, so a
  publisher that finds a live node without a marker cannot trust the map, and broadcasts.
- ``remove`` is queued and written within a beat: a publisher may still route a push to a
  node whose user just left (the push is read and not held there), never the reverse.
- Lookups read Redis every time (nothing cached): a connection added before a lookup is
  found by it. A lookup is one pipelined round trip for any number of users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError

from gateway_core import routing_metrics
from gateway_core.batching import Batcher
from gateway_core.conf import gateway_settings

logger = logging.getLogger("gateway.presence")

SEP = "\x1f"
#: A marker's session count while the process's sessions may be missing from the map.
INCOMPLETE = -1
BROADCAST_MODE = "broadcast"
ROUTED_MODE = "routed"


def routing_mode() -> str:
    """``GATEWAY_ROUTING``, resolved: ``routed`` by default when ``REDIS_URL`` is set."""
    mode = gateway_settings.routing or (ROUTED_MODE if gateway_settings.redis_url
                                        else BROADCAST_MODE)
    if mode not in (BROADCAST_MODE, ROUTED_MODE):
        raise ImproperlyConfigured(
            f"GATEWAY_ROUTING={mode!r}: use {BROADCAST_MODE} or {ROUTED_MODE}")
    if mode == ROUTED_MODE and not gateway_settings.redis_url:
        raise ImproperlyConfigured(
            "GATEWAY_ROUTING=routed needs REDIS_URL: the presence map lives in Redis")
    return mode


def _beat(value: Any) -> tuple[int, int]:
    """``(beat ms, sessions)`` of one marker field."""
    beat, _, sessions = _text(value).partition(":")
    return int(beat), int(sessions or 0)


#: ``holders``: per user key, the distinct ``node SEP incarnation`` of its members, joined by
#: ``\x1e``: one short string per user instead of every member and score, which redis-py
#: parses in Python at tens of microseconds per reply element.
HOLDERS_SCRIPT = r"""
local out = {}
for i, key in ipairs(KEYS) do
  local seen, nodes = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local ni = string.match(m, '^(.-\31.-)\31')
    if ni and not seen[ni] then seen[ni] = true; nodes[#nodes + 1] = ni end
  end
  out[i] = table.concat(nodes, '\30')
end
return out
"""


class PresenceUnavailable(Exception):
    """Redis did not answer (down, unreachable, timed out)."""


@dataclass(frozen=True, slots=True)
class Connection:
    """One live connection of a user, somewhere in the cluster."""

    node: str
    session_id: str
    connected_at: float


@dataclass(frozen=True, slots=True)
class LocalSession:
    """What the map needs of one of this node's sessions (``resync``)."""

    app: str
    user: str
    session_id: str
    connected_at: float


class Keys:
    """The map's keys, under ``gateway:presence:<topic>:``: clusters sharing one Redis
    share the map only if they share the broker's topic (and so their pushes)."""

    def __init__(self, topic: str) -> None:
        self.prefix = f"gateway:presence:{topic}:"
        self.nodes = self.prefix + "nodes"

    def user(self, app: str, user: str) -> str:
        return f"{self.prefix}u:{app}:{user}"

    def node(self, node: str) -> str:
        return f"{self.prefix}n:{node}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PresenceMap:
    """This node's view of, and writes to, the cluster's presence map."""

    clock: Callable[[], float] = staticmethod(time.time)
    timeout_s = 1.0
    beat_s = 1.0
    #: Members per pipeline when the node re-adds every session it holds.
    resync_chunk = 1000

    def __init__(self, *, url: str, node_id: str, incarnation: str, node_timeout_s: int,
                 topic: str = "gateway-push", client: Any = None) -> None:
        self.url = url
        self.keys = Keys(topic)
        self.node_id = node_id
        self.incarnation = incarnation
        self.node_timeout_s = node_timeout_s
        self._client = client
        self._removals: list[tuple[str, str]] = []
        self._adds: Batcher[tuple[str, str, float], None] = Batcher(
            self._write_adds, max_items=self.resync_chunk, name="presence-adds")
        #: True until every session this node holds is known to be in the map.
        self.dirty = True
        self.size = 0
        self.metrics = routing_metrics.bound(node_id)

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout_s + 1,
                socket_connect_timeout=self.timeout_s,
            )
        return self._client

    def member(self, session_id: str) -> str:
        return f"{self.node_id}{SEP}{self.incarnation}{SEP}{session_id}"

    async def _run(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout=self.timeout_s * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            raise PresenceUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    # --- writes ---------------------------------------------------------------------
    async def add(self, *, app: str, user: str, session_id: str, connected_at: float) -> None:
        """Add one connection of this node; returns once Redis holds it. Adds made while a
        pipeline is out go together in the next one."""
        try:
            await self._adds.call((self.keys.user(app, user), self.member(session_id),
                                   connected_at))
        except PresenceUnavailable:
            self.dirty = True
            raise

    async def _write_adds(self, adds: Sequence[tuple[str, str, float]]) -> list[None]:
        pipe = self._redis().pipeline(transaction=False)
        for key, member, score in adds:
            pipe.zadd(key, {member: score})
        await self._run(pipe.execute())
        return [None] * len(adds)

    async def mark_incomplete(self) -> None:
        """Say in this process's marker that the map may lack some of its sessions (an add
        failed): publishers then broadcast, as for a node without a marker, until the next
        beat has re-added them all and rewritten the marker."""
        self.dirty = True
        pipe = self._redis().pipeline(transaction=False)
        self._write_marker(pipe, INCOMPLETE)
        await self._run(pipe.execute())

    def _write_marker(self, pipe: Any, sessions: int) -> None:
        """Queue on ``pipe`` this process's marker: beat now, ``sessions`` held."""
        pipe.hset(self.keys.node(self.node_id), self.incarnation,
                  f"{int(self.clock() * 1000)}:{sessions}")
        pipe.expire(self.keys.node(self.node_id), self.node_timeout_s)

    def remove(self, *, app: str, user: str, session_id: str) -> None:
        """Queue the removal of one connection of this node (written by ``flush``)."""
        self._removals.append((self.keys.user(app, user), self.member(session_id)))

    async def forget(self, connection: Connection, *, app: str, user: str) -> None:
        """Remove a connection of any node (one the cap closes, so that the next
        connection of the user does not count it again)."""
        # The member's incarnation is not in ``Connection``: remove any member of that
        # session on that node.
        key = self.keys.user(app, user)
        members = await self._run(self._redis().zrange(key, 0, -1))
        gone = [m for m in members
                if _text(m).startswith(connection.node + SEP)
                and _text(m).endswith(SEP + connection.session_id)]
        if gone:
            await self._run(self._redis().zrem(key, *gone))

    async def flush(self) -> None:
        removals, self._removals = self._removals, []
        if not removals:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for key, member in removals:
                pipe.zrem(key, member)
            await self._run(pipe.execute())
        except PresenceUnavailable:
            # Kept for the next flush, bounded: a resync after the outage re-adds only the
            # sessions that are still here, and stale members age out with lookups.
            self._removals[:0] = removals[-100_000:]
            raise

    async def beat(self, sessions: Callable[[], Iterable[LocalSession]]) -> None:
        """Renew this process's marker; first re-add every session it holds if the map may
        lack some (the process's start, an outage, a Redis restart that lost the marker)."""
        redis = self._redis()
        await self.flush()
        marker = await self._run(redis.hget(self.keys.node(self.node_id), self.incarnation))
        now_ms = int(self.clock() * 1000)
        fresh = marker is not None and now_ms - _beat(marker)[0] <= self.node_timeout_s * 1000
        if self.dirty or not fresh:
            held = list(sessions())
            for start in range(0, len(held), self.resync_chunk):
                pipe = redis.pipeline(transaction=False)
                for s in held[start:start + self.resync_chunk]:
                    pipe.zadd(self.keys.user(s.app, s.user),
                              {self.member(s.session_id): s.connected_at})
                await self._run(pipe.execute())
            self.dirty = False
            if held or marker is not None:
                logger.info("presence map: %d session(s) of this node re-added", len(held))
            count = len(held)
        else:
            count = sum(1 for _ in sessions())
        pipe = redis.pipeline(transaction=False)
        self._write_marker(pipe, count)
        pipe.sadd(self.keys.nodes, self.node_id)
        await self._run(pipe.execute())
        self.size = await self.cluster_size()
        self.metrics.size.set(self.size)

    async def _fields(self, nodes: list[str]) -> list[dict[Any, Any]]:
        pipe = self._redis().pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(self.keys.node(node))
        return list(await self._run(pipe.execute()))

    def _live(self, fields: dict[Any, Any]) -> dict[str, int]:
        """``incarnation: sessions`` of the fields that beat within the node timeout."""
        oldest = int(self.clock() * 1000) - self.node_timeout_s * 1000
        live = {}
        for incarnation, value in fields.items():
            beat, count = _beat(value)
            if beat >= oldest:
                live[_text(incarnation)] = count
        return live

    async def cluster_size(self) -> int:
        """Connections in the map, summed over the live markers."""
        redis = self._redis()
        nodes = [_text(n) for n in await self._run(redis.smembers(self.keys.nodes))]
        if not nodes:
            return 0
        total = 0
        gone = []
        for node, fields in zip(nodes, await self._fields(nodes), strict=True):
            live = self._live(fields)
            total += sum(max(0, count) for count in live.values())
            if not fields:
                gone.append(node)
            elif len(live) < len(fields):
                stale = [f for f in fields if _text(f) not in live]
                await self._run(redis.hdel(self.keys.node(node), *stale))
        if gone:
            await self._run(redis.srem(self.keys.nodes, *gone))
        return total

    async def leave(self) -> None:
        """This process stops: its marker goes at once (its sessions are already removed)."""
        await self.flush()
        await self._run(self._redis().hdel(self.keys.node(self.node_id), self.incarnation))

    async def run(self, sessions: Callable[[], Iterable[LocalSession]]) -> None:
        """Beat every ``beat_s`` until cancelled; survive Redis outages."""
        failing = False
        while True:
            try:
                await self.beat(sessions)
                if failing:
                    logger.info("presence map reachable again")
                failing = False
            except asyncio.CancelledError:
                raise
            except PresenceUnavailable as exc:
                self.dirty = True
                if not failing:
                    logger.warning("presence map unreachable (%s); retrying", exc)
                failing = True
            except Exception:
                self.dirty = True
                logger.exception("presence beat failed; retrying")
            await asyncio.sleep(self.beat_s)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # --- reads ----------------------------------------------------------------------
    async def markers(self, nodes: Iterable[str]) -> dict[str, set[str]]:
        """``node: its live incarnations`` for those of ``nodes`` with a live marker."""
        nodes = list(nodes)
        if not nodes:
            return {}
        return self._markers(nodes, await self._fields(nodes))

    def _markers(self, nodes: list[str], fields: list[dict[Any, Any]]) -> dict[str, set[str]]:
        return self._markers_and_incomplete(nodes, fields)[0]

    def _markers_and_incomplete(self, nodes: list[str], fields: list[dict[Any, Any]]
                                ) -> tuple[dict[str, set[str]], set[str]]:
        """Each node's live incarnations, and the nodes a live process of which marked its
        marker incomplete: their entries are live (a lookup keeps them) but not all there
        (a router must not trust them)."""
        found: dict[str, set[str]] = {}
        incomplete: set[str] = set()
        for node, values in zip(nodes, fields, strict=True):
            live = self._live(values)
            if live:
                found[node] = set(live)
            if INCOMPLETE in live.values():
                incomplete.add(node)
        return found, incomplete

    async def lookup(self, users: Iterable[tuple[str, str]],
                     *, also_nodes: Iterable[str] = ()) -> tuple[dict[tuple[str, str],
                                                                      list[Connection]],
                                                                 dict[str, set[str]]]:
        """The live connections of each ``(app, user)``, oldest first, and the live
        markers of the nodes met (plus ``also_nodes``). One pipelined round trip when
        every node met is in ``also_nodes`` (the router passes the live nodes), a second
        one for the markers of nodes it did not name."""
        started = time.perf_counter()
        keys = list(dict.fromkeys(users))
        asked = sorted(set(also_nodes))
        redis = self._redis()
        raw: list[Any] = []
        live: dict[str, set[str]] = {}
        if keys or asked:
            pipe = redis.pipeline(transaction=False)
            for app, user in keys:
                pipe.zrange(self.keys.user(app, user), 0, -1, withscores=True)
            for node in asked:
                pipe.hgetall(self.keys.node(node))
            answers = await self._run(pipe.execute())
            raw = answers[:len(keys)]
            live = self._markers(asked, answers[len(keys):])
        parsed: list[list[tuple[str, str, str, float, Any]]] = []
        unasked: set[str] = set()
        for members in raw:
            entries = []
            for member, score in members:
                node, _, rest = _text(member).partition(SEP)
                incarnation, _, session_id = rest.partition(SEP)
                entries.append((node, incarnation, session_id, float(score), member))
                if node not in asked:
                    unasked.add(node)
            parsed.append(entries)
        if unasked:
            live.update(await self.markers(sorted(unasked)))
        found: dict[tuple[str, str], list[Connection]] = {}
        stale: list[tuple[str, Any]] = []
        for key, entries in zip(keys, parsed, strict=True):
            connections = []
            for node, incarnation, session_id, score, member in entries:
                if incarnation in live.get(node, ()):
                    connections.append(Connection(node, session_id, score))
                else:
                    stale.append((self.keys.user(*key), member))
            found[key] = connections
        if stale:
            pipe = redis.pipeline(transaction=False)
            for key_name, member in stale:
                pipe.zrem(key_name, member)
            with contextlib.suppress(PresenceUnavailable):  # else a later lookup does it
                await self._run(pipe.execute())
        self.metrics.lookup_seconds.observe(time.perf_counter() - started)
        return found, live

    async def holders(self, users: Iterable[tuple[str, str]],
                      *, also_nodes: Iterable[str] = ()) -> tuple[dict[tuple[str, str],
                                                                       set[str]],
                                                                  dict[str, set[str]]]:
        """The live nodes holding each ``(app, user)``, and the live markers of the nodes
        met (plus ``also_nodes``): what routing needs, in one round trip (a server-side
        script over every user's set, and the markers in the same pipeline). A node of
        ``also_nodes`` whose marker is incomplete (``mark_incomplete``) is left out of the
        markers, as a node without one."""
        started = time.perf_counter()
        keys = list(dict.fromkeys(users))
        asked = sorted(set(also_nodes))
        redis = self._redis()
        pipe = redis.pipeline(transaction=False)
        if keys:
            # EVAL, not EVALSHA: a Redis restarted since would answer NOSCRIPT; Redis caches
            # the compiled script, and its text is a few hundred bytes.
            pipe.eval(HOLDERS_SCRIPT, len(keys), *[self.keys.user(a, u) for a, u in keys])
        for node in asked:
            pipe.hgetall(self.keys.node(node))
        answers = await self._run(pipe.execute()) if keys or asked else []
        per_user = answers[0] if keys else []
        fields = answers[1:] if keys else answers
        live, incomplete = self._markers_and_incomplete(asked, fields)
        pairs: list[list[tuple[str, str]]] = []
        unasked: set[str] = set()
        for joined in per_user:
            text = _text(joined)
            items = [tuple(item.split(SEP, 1)) for item in text.split("\x1e")] if text else []
            pairs.append([(n, i) for n, i in items])
            unasked.update(n for n, _ in items if n not in live and n not in asked)
        if unasked:
            live.update(await self.markers(sorted(unasked)))
        found: dict[tuple[str, str], set[str]] = {}
        stale: list[tuple[str, str]] = []
        for key, held in zip(keys, pairs, strict=True):
            nodes = set()
            for node, incarnation in held:
                if incarnation in live.get(node, ()):
                    nodes.add(node)
                else:
                    stale.append(key)
            found[key] = nodes
        if stale:
            # Rare (a node died or restarted): the full lookup removes the stale members.
            with contextlib.suppress(PresenceUnavailable):
                await self.lookup(stale[:1000])
        self.metrics.lookup_seconds.observe(time.perf_counter() - started)
        return found, {node: found_in for node, found_in in live.items()
                       if node not in incomplete}

    async def connections(self, app: str, user: str) -> list[Connection]:
        """The user's live connections across the cluster, oldest first."""
        found, _ = await self.lookup([(app, user)])
        return found[(app, user)]
