"""The broker consumer run on its own (``runconsumer``), for nodes whose web server is a
separate process: every broker message goes once to the node's channel layer group,
where each web process picks it up and delivers it to the sessions it holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from gateway_core import metrics
from gateway_core.brokers import BaseBroker, create_broker
from gateway_core.conf import gateway_settings
from sessions_app.delivery import ChannelLayerForwarder

logger = logging.getLogger("gateway.consumer")


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
    logger.info("consumer for node %s started (broker %s)", gateway_settings.node_id, broker.name)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({consuming, stopped}, return_when=asyncio.FIRST_COMPLETED)
    lag.cancel()
    metrics.PROCESSES.labels(node_id, "consumer").set(0)
    if consuming in done and consuming.exception() is not None:
        stopped.cancel()
        await broker.close()
        raise consuming.exception()  # type: ignore[misc]
    consuming.cancel()
    await asyncio.gather(consuming, return_exceptions=True)
    await broker.close()
    logger.info("consumer for node %s stopped", gateway_settings.node_id)
