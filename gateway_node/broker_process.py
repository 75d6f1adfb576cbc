"""The broker consumer run on its own (``runconsumer``), for nodes whose web server is a
separate process: every broker message goes once to the node's channel layer group,
where each web process picks it up and delivers it to the sessions it holds.

While its broker consumer receives, the process keeps a liveness beat in the node's Redis
(``REDIS_URL``, key ``gateway:<node id>:consumer-beat``, expiring after ``BEAT_TTL_S``); the
web processes' ``/readyz`` fails with ``consumer`` named when it is missing, so a node whose
``runconsumer`` stopped is taken out of the load balancer instead of missing pushes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from gateway_core import metrics
from gateway_core.brokers import BaseBroker, create_broker
from gateway_core.conf import gateway_settings
from sessions_app.delivery import ChannelLayerForwarder

logger = logging.getLogger("gateway.consumer")

#: The beat is renewed this often and expires after ``BEAT_TTL_S`` without renewal.
BEAT_INTERVAL_S = 1.0
BEAT_TTL_S = 5


def beat_key(node_id: str) -> str:
    return f"gateway:{node_id}:consumer-beat"


def _redis(url: str) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, socket_timeout=2)


async def keep_beat(broker: BaseBroker, *, node_id: str, redis_url: str) -> None:
    """Renew the beat while ``broker`` consumes; delete it when cancelled."""
    client = _redis(redis_url)
    failing = False
    try:
        while True:
            try:
                if broker.consuming:
                    await client.set(beat_key(node_id), "1", ex=BEAT_TTL_S)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("consumer beat not written to Redis: %s", exc)
                failing = True
            await asyncio.sleep(BEAT_INTERVAL_S)
    finally:
        try:
            await asyncio.shield(client.delete(beat_key(node_id)))
        except Exception:
            logger.debug("consumer beat not deleted", exc_info=True)
        await client.aclose()


async def consumer_beating(*, node_id: str, redis_url: str) -> bool:
    """Whether ``node_id``'s ``runconsumer`` beat within the last ``BEAT_TTL_S`` s."""
    client = _redis(redis_url)
    try:
        return bool(await client.exists(beat_key(node_id)))
    finally:
        await client.aclose()


def check_configuration() -> None:
    if gateway_settings.broker == "local":
        raise ImproperlyConfigured(
            "GATEWAY_BROKER=local lives inside one process: use `rungateway`, or set "
            "GATEWAY_BROKER=rocketmq (or redis) to run the consumer on its own"
        )
    if not gateway_settings.redis_url:
        raise ImproperlyConfigured(
            "runconsumer hands messages to the web processes through the node's channel "
            "layer: set REDIS_URL (the in-memory layer does not cross processes)"
        )


async def run(*, broker: BaseBroker | None = None, stop: asyncio.Event | None = None) -> None:
    """Consume until SIGTERM/SIGINT (or ``stop``), then finish in-flight work and return."""
    broker = broker or create_broker()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    node_id = gateway_settings.node_id
    forwarder = ChannelLayerForwarder(get_channel_layer(), node_id=node_id)
    metrics.set_process(node_id, role="consumer")
    lag = asyncio.create_task(metrics.watch_event_loop(node_id, "consumer"), name="loop-lag")
    await broker.start()
    consuming = asyncio.create_task(broker.consume(forwarder), name="gateway-consume")
    beat = asyncio.create_task(
        keep_beat(broker, node_id=node_id, redis_url=gateway_settings.redis_url),
        name="consumer-beat")
    logger.info("consumer for node %s started (broker %s)", gateway_settings.node_id, broker.name)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({consuming, stopped}, return_when=asyncio.FIRST_COMPLETED)
    lag.cancel()
    beat.cancel()
    await asyncio.gather(beat, return_exceptions=True)
    metrics.PROCESSES.labels(node_id, "consumer").set(0)
    if consuming in done and consuming.exception() is not None:
        stopped.cancel()
        await broker.close()
        raise consuming.exception()  # type: ignore[misc]
    consuming.cancel()
    await asyncio.gather(consuming, return_exceptions=True)
    await broker.close()
    logger.info("consumer for node %s stopped", gateway_settings.node_id)
