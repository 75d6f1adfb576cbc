"""Broker backends, chosen by ``GATEWAY_BROKER`` and loaded like Channels' layers."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from gateway_core.brokers.base import BaseBroker, BrokerUnavailable, Handler
from gateway_core.conf import gateway_settings

BACKENDS = {
    "local": "gateway_core.brokers.local.LocalBroker",
    "rocketmq": "gateway_core.brokers.rocketmq.RocketMQBroker",
    "redis": "gateway_core.brokers.redis.RedisBroker",
}

__all__ = ["BACKENDS", "BaseBroker", "BrokerUnavailable", "Handler", "create_broker"]


def create_broker(name: str | None = None, *, node_id: str | None = None) -> BaseBroker:
    name = name or gateway_settings.broker
    try:
        path = BACKENDS[name]
    except KeyError:
        raise ImproperlyConfigured(
            f"GATEWAY_BROKER={name!r} is not a broker; use one of {', '.join(BACKENDS)}"
        ) from None
    cls = import_string(path)
    config: dict[str, Any] = {
        "endpoint": gateway_settings.rocketmq_endpoint,
        "topic": gateway_settings.rocketmq_topic,
        "redis_url": gateway_settings.redis_url,
    }
    broker: BaseBroker = cls(node_id=node_id or gateway_settings.node_id, config=config)
    return broker
