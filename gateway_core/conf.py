"""Typed, read-at-use-time access to the gateway's settings, and their table.

Each attribute of :class:`GatewaySettings` is one row of the settings table
(``gateway_core.settings_table``): the environment variable, the Django setting, the
attribute's name and type, the default and the doc, declared once. ``gatewaysite/settings.py``
builds the Django settings from these rows; the README's configuration rows are generated
from them. Reading ``settings`` on every access (as django-cors-headers does) keeps
``override_settings`` working in tests; nothing here is captured at import time.

Adding a setting: one ``Setting(...)`` line below (``docs=CONTRACT`` or ``EXTRA`` lists it in
the README's first or second table, ``ALERTS`` in docs/monitoring.md's), then
``python -m gatewaysite.settings_table --write``.
"""

from __future__ import annotations

from gateway_core.settings_table import (
    Cidrs,
    Derived,
    Flag,
    Integer,
    Setting,
    SettingsGroup,
    Text,
)

CONTRACT = "contract"  # README's first table: the variables PROTOCOL.md section 4 names
EXTRA = "extra"  # README's "beyond the contract" table
ALERTS = "alerts"  # docs/monitoring.md's settings table


class GatewaySettings(SettingsGroup):
    # Computed by hand in settings.py (host name default, generated secret, channel layer).
    node_id = Derived(Text(), "GATEWAY_NODE_ID")
    jwt_secret = Derived(Text(), "GATEWAY_JWT_SECRET")
    redis_url = Derived(Text(), "REDIS_URL")

    broker = Setting(
        Text(), env="GATEWAY_BROKER", django="GATEWAY_BROKER", default="local", docs=CONTRACT,
        doc="`local` (one process, no service), `rocketmq`, `redis`",
    )
    rocketmq_endpoint = Setting(
        Text(), env="GATEWAY_ROCKETMQ_ENDPOINT", django="GATEWAY_ROCKETMQ_ENDPOINT",
        default="127.0.0.1:8081", docs=CONTRACT, doc="RocketMQ 5 proxy (gRPC)",
    )
    rocketmq_topic = Setting(
        Text(), env="GATEWAY_ROCKETMQ_TOPIC", django="GATEWAY_ROCKETMQ_TOPIC",
        default="gateway-push", docs=CONTRACT, doc="topic for pushes and control messages",
    )
    heartbeat_interval_s = Setting(
        Integer(minimum=1), env="GATEWAY_HEARTBEAT_INTERVAL",
        django="GATEWAY_HEARTBEAT_INTERVAL_S", default=25, unit="s", docs=CONTRACT,
        doc="how often a client should send a ping",
    )
    heartbeat_timeout_s = Setting(
        Integer(minimum=1), env="GATEWAY_HEARTBEAT_TIMEOUT",
        django="GATEWAY_HEARTBEAT_TIMEOUT_S", default=60, unit="s", docs=CONTRACT,
        doc="a connection silent this long is closed with 4008",
    )
    max_connections_per_user = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_CONNECTIONS_PER_USER",
        django="GATEWAY_MAX_CONNECTIONS_PER_USER", default=5, docs=CONTRACT,
        doc="per node; the oldest is closed with 4009",
    )
    max_payload_bytes = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_PAYLOAD_BYTES", django="GATEWAY_MAX_PAYLOAD_BYTES",
        default=65536, unit="bytes", docs=CONTRACT, doc="a push's `data`, serialised",
    )
    max_users_per_push = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_USERS_PER_PUSH",
        django="GATEWAY_MAX_USERS_PER_PUSH", default=1000, docs=CONTRACT,
        doc="users one push may name (400 past it)",
    )
    max_ttl_s = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_TTL", django="GATEWAY_MAX_TTL_S",
        default=7 * 24 * 3600, unit="s", docs=CONTRACT,
        doc="the longest `ttl` a push may have: how long a kept push waits for its users "
        "(PROTOCOL.md section 6)",
    )
    max_pending_per_user = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_PENDING_PER_USER",
        django="GATEWAY_MAX_PENDING_PER_USER", default=1000, docs=CONTRACT,
        doc="kept pushes waiting for one user (not yet acked); past it the oldest is "
        "dropped for that user",
    )
    max_batch = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_BATCH", django="GATEWAY_MAX_BATCH", default=500,
        docs=CONTRACT, doc="pushes per batch request",
    )
    max_request_bytes = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_REQUEST_BYTES", django="GATEWAY_MAX_REQUEST_BYTES",
        default=4 * 1024 * 1024, unit="bytes", docs=CONTRACT,
        doc="any API request body (413 past it)",
    )
    max_frame_bytes = Setting(
        Integer(minimum=16), env="GATEWAY_MAX_FRAME_BYTES", django="GATEWAY_MAX_FRAME_BYTES",
        default=4096, unit="bytes", docs=CONTRACT, doc="a client frame (4013 past it)",
    )
    max_frames_per_minute = Setting(
        Integer(minimum=1), env="GATEWAY_MAX_FRAMES_PER_MINUTE",
        django="GATEWAY_MAX_FRAMES_PER_MINUTE", default=120, docs=CONTRACT,
        doc="client frames (4029 past it)",
    )
    max_send_buffer_bytes = Setting(
        Integer(minimum=1024), env="GATEWAY_MAX_SEND_BUFFER_BYTES",
        django="GATEWAY_MAX_SEND_BUFFER_BYTES", default=1024 * 1024, unit="bytes",
        docs=CONTRACT, doc="what may wait for one slow client (4030 past it)",
    )
    metrics_allow = Setting(
        Cidrs(), env="GATEWAY_METRICS_ALLOW", django="GATEWAY_METRICS_ALLOW",
        default="127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16", docs=CONTRACT,
        doc="peer networks (CIDRs) that may read `/metrics`; others get a JSON 403",
    )
    metrics_token = Setting(
        Text(), env="GATEWAY_METRICS_TOKEN", django="GATEWAY_METRICS_TOKEN", default="",
        docs=CONTRACT,
        doc="`Authorization: Bearer <token>` also opens `/metrics`, from anywhere",
    )
    allowed_origins = Setting(
        # The raw comma-separated list: gateway_node.origins parses it (settings.py checks
        # it once at start, so that a typo stops the node instead of refusing every browser).
        Text(), env="GATEWAY_ALLOWED_ORIGINS", django="GATEWAY_ALLOWED_ORIGINS", default="",
        docs=CONTRACT, shown="unset (any)",
        doc="browser origins allowed to open `/ws/`, e.g. `https://app.example.com`; others "
        "get 403 at the handshake; no `Origin` (not a browser): allowed",
    )
    routing = Setting(
        # Checked by gateway_core.presence_map.routing_mode (the empty default: by REDIS_URL).
        Text(), env="GATEWAY_ROUTING", django="GATEWAY_ROUTING", default="", docs=CONTRACT,
        shown="`routed` when `REDIS_URL` is set, else `broadcast`",
        doc="`broadcast`: every node reads every push; `routed`: a targeted push goes only "
        "to the nodes holding its users, found in the cluster's presence map in that Redis "
        "(docs/cluster.md, \"Routing\")",
    )
    max_connections_per_user_cluster = Setting(
        Integer(minimum=0), env="GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER",
        django="GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER", default=0, docs=CONTRACT,
        shown="unset (off)",
        doc="across the cluster (needs `REDIS_URL`); the user's oldest connection, on "
        "whichever node, is closed with 4009",
    )

    settle_after_s = Setting(
        Integer(minimum=0), env="GATEWAY_SETTLE_AFTER", django="GATEWAY_SETTLE_AFTER_S",
        default=10, unit="s", docs=CONTRACT,
        doc="a `ttl: 0` push's `push.settled` webhook is sent this long after it was published",
    )
    presence_debounce_s = Setting(
        Integer(minimum=0), env="GATEWAY_PRESENCE_DEBOUNCE",
        django="GATEWAY_PRESENCE_DEBOUNCE_S", default=5, unit="s", docs=CONTRACT,
        doc="`user.offline` waits this long for a reconnect; a reconnect within it sends "
        "neither `user.offline` nor `user.online`",
    )
    webhook_retry_hours = Setting(
        Integer(minimum=0), env="GATEWAY_WEBHOOK_RETRY_HOURS",
        django="GATEWAY_WEBHOOK_RETRY_HOURS", default=24, unit="h", docs=CONTRACT,
        doc="a webhook call is retried (backoff from 1 s doubling to 10 min) this long, then "
        "marked `failed`",
    )
    webhook_allow_private = Setting(
        Flag(), env="GATEWAY_WEBHOOK_ALLOW_PRIVATE", django="GATEWAY_WEBHOOK_ALLOW_PRIVATE",
        default=False, docs=CONTRACT,
        doc="allow webhook URLs resolving to loopback, private, link-local or multicast "
        "addresses (tests, a receiver on the same host); off in production",
    )

    webhook_lease_s = Setting(
        Integer(minimum=15), env="GATEWAY_WEBHOOK_LEASE", django="GATEWAY_WEBHOOK_LEASE_S",
        default=90, unit="s", docs=EXTRA,
        doc="how long a node holds the webhook deliveries it claimed; a node that died has "
        "its deliveries sent by another node after this",
    )
    api_rate_per_second = Setting(
        Integer(minimum=0), env="GATEWAY_API_RATE_PER_SECOND",
        django="GATEWAY_API_RATE_PER_SECOND", default=2000, docs=EXTRA,
        doc="requests per second per API client and process; 429 with `Retry-After` past "
        "it; 0 disables",
    )
    api_auth_failures_per_minute = Setting(
        Integer(minimum=0), env="GATEWAY_API_AUTH_FAILURES_PER_MINUTE",
        django="GATEWAY_API_AUTH_FAILURES_PER_MINUTE", default=60, docs=EXTRA,
        doc="failed API authentications (unknown or malformed keys) per client address, "
        "minute and process; past it that address gets 429 with `Retry-After` before its "
        "keys are looked up (on the push routes, a key the process already knows good "
        "still passes); the address is the peer's, so behind a proxy all its clients share "
        "one budget; 0 disables",
    )
    node_timeout_s = Setting(
        Integer(minimum=3), env="GATEWAY_NODE_TIMEOUT", django="GATEWAY_NODE_TIMEOUT_S",
        default=30, unit="s", docs=EXTRA,
        doc="without a beat, other nodes treat a node as dead and expire its sessions",
    )
    record_interval_s = Setting(
        Integer(minimum=1), env="GATEWAY_RECORD_INTERVAL", django="GATEWAY_RECORD_INTERVAL_S",
        default=5, unit="s", docs=EXTRA,
        doc="between a node's batched writes of itself and its sessions",
    )
    max_token_ttl_s = Setting(
        Integer(minimum=60), env="GATEWAY_MAX_TOKEN_TTL", django="GATEWAY_MAX_TOKEN_TTL_S",
        default=30 * 24 * 3600, unit="s", docs=EXTRA,
        doc="the longest `ttl` `POST /api/v1/tokens` grants",
    )
    retention_push_days = Setting(
        Integer(minimum=0), env="GATEWAY_RETENTION_PUSH_DAYS",
        django="GATEWAY_RETENTION_PUSH_DAYS", default=7, unit="days", docs=EXTRA,
        doc="`prunegateway` deletes push logs older than this (0: keep)",
    )
    retention_session_days = Setting(
        Integer(minimum=0), env="GATEWAY_RETENTION_SESSION_DAYS",
        django="GATEWAY_RETENTION_SESSION_DAYS", default=7, unit="days", docs=EXTRA,
        doc="... and sessions closed longer ago, and nodes silent as long (0: keep)",
    )
    connections_ceiling = Setting(
        Integer(minimum=0), env="GATEWAY_CONNECTIONS_CEILING",
        django="GATEWAY_CONNECTIONS_CEILING", default=10_000, docs=(EXTRA, ALERTS),
        doc="connections a node is sized for (metric and alert; 0: no ceiling alert)",
    )
    grafana_url = Setting(
        # Only linked, never fetched: the console shows a link to it when it is set.
        Text(), env="GATEWAY_GRAFANA_URL", django="GATEWAY_GRAFANA_URL", default="",
        docs=EXTRA,
        doc="the gateway's Grafana dashboard, e.g. `https://grafana.example.com/d/gateway`; "
        "the console's header and dashboard link to it when set",
    )


gateway_settings = GatewaySettings()
