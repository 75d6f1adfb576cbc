"""Reads of the push side: a push's status, a user's presence across nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from push_app.models import ApiClient, PushLog
from sessions_app.models import SessionRecord
from sessions_app.registry import SessionManager


def push_get(*, client: ApiClient, push_id: str) -> PushLog | None:
    """A push of this client's; other clients' pushes do not exist for it."""
    return PushLog.objects.filter(id=push_id, client=client).first()


def push_describe(log: PushLog) -> dict[str, Any]:
    return {
        "id": log.id,
        "status": log.status,
        "created_at": log.created_at.isoformat(),
        "published_at": log.published_at.isoformat() if log.published_at else None,
        "targets": "all" if log.broadcast else log.target_count,
        "delivered": log.delivered,
        "acked": log.acked,
        "error": log.error or None,
    }


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat()


def user_presence(*, user_id: str, node_id: str, registry: SessionManager,
                  node_timeout_s: int) -> dict[str, Any]:
    """This node's live sessions from memory, other live nodes' from the database."""
    connections: list[dict[str, Any]] = [
        {
            "session": s.session_id,
            "node": node_id,
            "connected_at": _iso(s.connected_at),
            "last_seen": _iso(s.last_seen),
        }
        for s in registry.sessions_of([user_id])
    ]
    alive_since = timezone.now() - timedelta(seconds=node_timeout_s)
    remote = (
        SessionRecord.objects.filter(
            user_id=user_id,
            closed_at__isnull=True,
            node__last_seen__gte=alive_since,
            node__stopped_at__isnull=True,
        )
        .exclude(node_id=node_id)
        .order_by("connected_at")
    )
    connections.extend(
        {
            "session": r.id,
            "node": r.node_id,
            "connected_at": r.connected_at.isoformat(),
            "last_seen": r.last_seen.isoformat(),
        }
        for r in remote
    )
    return {"user": user_id, "online": bool(connections), "connections": connections}
