"""The ``redis`` broker: a Redis stream shared by every node, the low-latency alternative.

Every broadcast message is one ``XADD`` to ``gateway:<topic>:stream`` (capped near
``max_len`` entries); a message for one node (routed delivery) goes to that node's own
stream, ``gateway:<topic>:node:<node id>``. Every node reads the shared stream and its own
in one ``XREAD BLOCK``, each with its own cursor, starting from the moment it started (by
the Redis server's clock).

Guarantee, weaker than RocketMQ's: a message is kept only in Redis memory (durable only
if the Redis server runs with AOF) and only for the last ``max_len`` messages. A node that
loses Redis resumes from its cursor when Redis is back, so it misses nothing that is still
in the stream; a Redis restart without persistence loses what was published and not yet
read. ``publish`` raises ``BrokerUnavailable`` when Redis does not take the message, and
the relay keeps the push until it does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway_core import metrics
from gateway_core.brokers.base import BaseBroker, BrokerUnavailable, Handler, task_cancelled
from gateway_core.messages import TAG_PUSH, Message, PushMessage, encode, encode_batch

logger = logging.getLogger("gateway.broker.redis")


class RedisBroker(BaseBroker):
    name = "redis"
    max_len = 100_000
    #: Pushes per stream entry (``publish_batch``).
    max_batch_pushes = 100
    block_ms = 5_000
    batch = 500
    timeout_s = 5.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        url = self.config.get("redis_url") or ""
        if not url:
            raise BrokerUnavailable("GATEWAY_BROKER=redis needs REDIS_URL")
        self.url = url
        topic = self.config.get("topic") or "gateway-push"
        self.key = f"gateway:{topic}:stream"
        self.node_prefix = f"gateway:{topic}:node:"
        self.own_key = self.node_key(self.node_id)
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout_s + self.block_ms / 1000,
                socket_connect_timeout=self.timeout_s,
            )
        return self._client

    def node_key(self, node: str) -> str:
        """The stream of messages for ``node`` alone."""
        return self.node_prefix + node

    async def publish(self, message: Message, *, node: str | None = None) -> None:
        await self._add(encode(message), message.tag, node)

    async def publish_batch(self, pushes: list[PushMessage], *, node: str | None = None) -> None:
        if len(pushes) == 1:
            await self.publish(pushes[0], node=node)
        else:
            await self._add(encode_batch(pushes), TAG_PUSH, node)

    async def _add(self, body: bytes, tag: str, node: str | None = None) -> None:
        key = self.key if node is None else self.node_key(node)
        try:
            await asyncio.wait_for(
                self._redis().xadd(
                    key, {"m": body, "tag": tag},
                    maxlen=self.max_len, approximate=True,
                ),
                timeout=self.timeout_s,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    async def _start_cursor(self) -> str:
        seconds, micros = await self._redis().time()
        return f"{int(seconds) * 1000 + int(micros) // 1000}-0"

    async def consume(self, handler: Handler) -> None:
        cursors: dict[str, str] | None = None
        delay = 0.5
        while True:
            try:
                if cursors is None:
                    start = await self._start_cursor()
                    cursors = {self.key: start, self.own_key: start}
                response: Any = await self._redis().xread(
                    cursors, count=self.batch, block=self.block_ms  # type: ignore[arg-type]
                )
                delay = 0.5
                self.consuming = True
                for stream, entries in response or []:
                    key = stream.decode() if isinstance(stream, bytes) else stream
                    for entry_id, fields in entries:
                        cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        cursors[key] = cursor
                        raw = fields.get(b"m") or fields.get("m") or b""
                        try:
                            await handler(raw)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            logger.exception("handler failed on stream entry %s of %s; skipped",
                                             cursor, key)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if task_cancelled():
                    # redis-py can turn a cancelled XREAD into a connection error (once the
                    # client is closed under it): this loop is over, not failing.
                    raise asyncio.CancelledError from exc
                self.consuming = False
                metrics.bound(self.node_id).consume_errors.inc()
                logger.warning("redis stream read failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def check(self) -> None:
        try:
            await asyncio.wait_for(self._redis().ping(), timeout=self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
