"""Typed, read-at-use-time access to the gateway's settings.

Reading ``settings`` on every access (as django-cors-headers does) keeps
``override_settings`` working in tests; nothing here is captured at import time.
"""

from __future__ import annotations

from django.conf import settings


class GatewaySettings:
    @property
    def node_id(self) -> str:
        return str(settings.GATEWAY_NODE_ID)

    @property
    def jwt_secret(self) -> str:
        return str(settings.GATEWAY_JWT_SECRET)

    @property
    def broker(self) -> str:
        return str(settings.GATEWAY_BROKER)

    @property
    def rocketmq_endpoint(self) -> str:
        return str(settings.GATEWAY_ROCKETMQ_ENDPOINT)

    @property
    def rocketmq_topic(self) -> str:
        return str(settings.GATEWAY_ROCKETMQ_TOPIC)

    @property
    def redis_url(self) -> str:
        return str(settings.REDIS_URL)

    @property
    def heartbeat_interval_s(self) -> int:
        return int(settings.GATEWAY_HEARTBEAT_INTERVAL_S)

    @property
    def heartbeat_timeout_s(self) -> int:
        return int(settings.GATEWAY_HEARTBEAT_TIMEOUT_S)

    @property
    def max_connections_per_user(self) -> int:
        return int(settings.GATEWAY_MAX_CONNECTIONS_PER_USER)

    @property
    def max_payload_bytes(self) -> int:
        return int(settings.GATEWAY_MAX_PAYLOAD_BYTES)

    @property
    def max_users_per_push(self) -> int:
        return int(settings.GATEWAY_MAX_USERS_PER_PUSH)

    @property
    def max_batch(self) -> int:
        return int(settings.GATEWAY_MAX_BATCH)

    @property
    def max_request_bytes(self) -> int:
        return int(settings.GATEWAY_MAX_REQUEST_BYTES)

    @property
    def max_frame_bytes(self) -> int:
        return int(settings.GATEWAY_MAX_FRAME_BYTES)

    @property
    def max_frames_per_minute(self) -> int:
        return int(settings.GATEWAY_MAX_FRAMES_PER_MINUTE)

    @property
    def max_send_buffer_bytes(self) -> int:
        return int(settings.GATEWAY_MAX_SEND_BUFFER_BYTES)

    @property
    def api_rate_per_second(self) -> int:
        return int(settings.GATEWAY_API_RATE_PER_SECOND)

    @property
    def api_auth_failures_per_minute(self) -> int:
        return int(settings.GATEWAY_API_AUTH_FAILURES_PER_MINUTE)

    @property
    def node_timeout_s(self) -> int:
        return int(settings.GATEWAY_NODE_TIMEOUT_S)

    @property
    def record_interval_s(self) -> int:
        return int(settings.GATEWAY_RECORD_INTERVAL_S)

    @property
    def max_token_ttl_s(self) -> int:
        return int(settings.GATEWAY_MAX_TOKEN_TTL_S)

    @property
    def retention_push_days(self) -> int:
        return int(settings.GATEWAY_RETENTION_PUSH_DAYS)

    @property
    def retention_session_days(self) -> int:
        return int(settings.GATEWAY_RETENTION_SESSION_DAYS)

    @property
    def connections_ceiling(self) -> int:
        return int(settings.GATEWAY_CONNECTIONS_CEILING)

    @property
    def metrics_allow(self) -> tuple[str, ...]:
        return tuple(settings.GATEWAY_METRICS_ALLOW)

    @property
    def metrics_token(self) -> str:
        return str(settings.GATEWAY_METRICS_TOKEN)

    @property
    def allowed_origins(self) -> str:
        """The raw comma-separated list (``gateway_node.origins`` parses it once per value)."""
        return str(settings.GATEWAY_ALLOWED_ORIGINS)


gateway_settings = GatewaySettings()
