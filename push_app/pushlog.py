"""The push log's row of an accepted push: the one place its columns are derived.

Both write paths build their rows here: the per-request path (``services.push_create_many``,
through ``build_log``) and the group commit (``writer.store_group``, which inserts the
values with one ``INSERT`` run over every row).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from push_app.models import ApiClient, PushLog, PushRecipient, PushStatus, RecipientState
from push_app.validation import PushRequest

#: The push log's columns, by attribute name, in the order ``log_row`` gives them.
COLUMNS = (
    "id", "client_id", "status", "broadcast", "users", "target_count", "topic", "data_json",
    "payload_bytes", "idempotency_key", "ttl_s", "expires_at", "accepted_node", "created_at",
    "published_at", "delivered", "acked", "error", "app",
)
#: Places in a row of the values a database may need prepared (JSON, datetimes).
USERS = COLUMNS.index("users")
EXPIRES_AT = COLUMNS.index("expires_at")
CREATED_AT = COLUMNS.index("created_at")


def log_row(req: PushRequest, *, push_id: str, client_id: int | None, now: datetime,
            node_id: str, app: str) -> list[Any]:
    """The row of a push accepted at ``now``, as Python values in ``COLUMNS`` order."""
    users = req.users
    return [
        push_id, client_id, PushStatus.ACCEPTED.value, users is None,
        [] if users is None else list(users), 0 if users is None else len(users),
        req.topic, req.data_json, len(req.data_json.encode()), req.idempotency_key, req.ttl_s,
        now + timedelta(seconds=req.ttl_s) if req.ttl_s else None, node_id, now,
        None, 0, 0, "", app,
    ]


#: The recipients' columns, by attribute name, in the order ``recipient_rows`` gives them.
RECIPIENT_COLUMNS = ("push_id", "app", "user_id", "state", "kept", "expires_at",
                     "delivered_at", "acked_at", "attempts")


def recipient_rows(push_id: str, users: tuple[str, ...] | None, *, app: str,
                   expires_at: Any) -> list[list[Any]]:
    """A targeted push's recipients as they start (PROTOCOL.md section 6): ``pending`` in
    their inboxes when the push is kept (``expires_at`` set: ttl > 0), ``offline`` until a
    node writes it to a socket when it is live only. A broadcast has none."""
    if not users:
        return []
    kept = expires_at is not None
    state = (RecipientState.PENDING if kept else RecipientState.OFFLINE).value
    return [[push_id, app, user, state, kept, expires_at, None, None, 0] for user in users]


def build_recipients(log: PushLog) -> list[PushRecipient]:
    """Unsaved recipients of a saved ``PushLog`` (the per-request path)."""
    return [PushRecipient(**dict(zip(RECIPIENT_COLUMNS, row, strict=True)))
            for row in recipient_rows(log.id, None if log.broadcast else tuple(log.users),
                                      app=log.app, expires_at=log.expires_at)]


def build_log(client: ApiClient | None, req: PushRequest, *, push_id: str, now: datetime,
              node_id: str, app: str) -> PushLog:
    """An unsaved ``PushLog`` of a push accepted at ``now``, in ``app`` (the client's)."""
    log = PushLog(**dict(zip(COLUMNS, log_row(
        req, push_id=push_id, client_id=None if client is None else client.pk, now=now,
        node_id=node_id, app=app), strict=True)))
    log.client = client
    return log
