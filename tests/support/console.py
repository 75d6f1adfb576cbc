"""The operator console's test data: rows of nodes, sessions and pushes as the recorder
and the API would write them, and the view permissions of a view-only staff member."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from push_app.models import PushDelivery, PushLog, PushStatus
from push_app.services import new_push_id
from sessions_app.models import Node as NodeRow
from sessions_app.models import SessionRecord

VIEW_PERMS = ["view_node", "view_sessionrecord", "view_pushlog", "view_apiclient",
              "view_auditevent"]


def make_node(node_id: str, *, alive: bool = True, now: datetime | None = None,
              connections: int = 0, users: int = 0, stopped: bool = False) -> NodeRow:
    now = now or timezone.now()
    seen = now if alive else now - timedelta(minutes=10)
    return NodeRow.objects.create(
        id=node_id, address=f"{node_id}:8000", broker="local", started_at=now - timedelta(hours=1),
        last_seen=seen, stopped_at=seen if stopped else None, connections=connections,
        users=users,
    )


def make_session(session_id: str, user_id: str, node: NodeRow, *, age: timedelta = timedelta(0),
                 closed: bool = False, close_code: int | None = None,
                 meta: dict[str, Any] | None = None, app: str = "default") -> SessionRecord:
    now = timezone.now()
    return SessionRecord.objects.create(
        id=session_id, app=app, user_id=user_id, node=node, connected_at=now - age,
        last_seen=now - age, closed_at=now if closed else None,
        close_code=close_code if closed else None, remote_addr="10.0.0.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0", meta=meta or {},
    )


def make_push(users: list[str] | None, *, status: str = PushStatus.DELIVERED,
              age: timedelta = timedelta(0), delivered: dict[str, tuple[int, int]] | None = None,
              **fields: Any) -> PushLog:
    created = timezone.now() - age
    per_node = delivered or {}
    log = PushLog.objects.create(
        id=new_push_id(created.timestamp()), status=status, broadcast=users is None,
        users=users or [], target_count=len(users or []), data_json=fields.pop("data_json",
                                                                            '{"n":1}'),
        payload_bytes=7, created_at=created,
        published_at=created if status != PushStatus.ACCEPTED else None,
        delivered=sum(d for d, _ in per_node.values()),
        acked=sum(a for _, a in per_node.values()), accepted_node="n1", **fields,
    )
    for node_id, (d, a) in per_node.items():
        PushDelivery.objects.create(push=log, node_id=node_id, delivered=d, acked=a)
    return log
