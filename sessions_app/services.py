"""Writes of the session side that operators start: disconnect orders, retention.

The order itself is ``gateway_core.orders.sessions_disconnect`` / ``user_disconnect``: a
control message through the broker to whichever node holds the sessions, which closes them
with 4010. Here it gains what an operator's action needs besides: only open sessions are
named, and each order leaves an entry in the admin's history (who, when, why).
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet

from gateway_core.bridge import Submit
from gateway_core.messages import ControlMessage
from gateway_core.orders import sessions_disconnect, user_disconnect
from gateway_core.tenancy import DEFAULT_APP
from sessions_app.models import Node, SessionRecord

#: The longest reason kept with an order (the same limit as the REST API's).
MAX_REASON_CHARS = 200


def _audit(*, actor_id: int, records: QuerySet[SessionRecord], message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=actor_id, queryset=records, action_flag=CHANGE, change_message=message
    )


def console_sessions_disconnect(*, session_ids: list[str], reason: str, actor_id: int,
                                submit: Submit) -> ControlMessage | None:
    """Close these sessions with 4010 wherever they are; None if none of them is open.

    One order per app among them (an order closes one app's sessions only); the last one
    is returned."""
    reason = reason.strip()[:MAX_REASON_CHARS]
    open_records = SessionRecord.objects.filter(id__in=session_ids, closed_at__isnull=True)
    by_app: dict[str, list[str]] = {}
    for session_id, app in open_records.values_list("id", "app"):
        by_app.setdefault(app, []).append(session_id)
    message: ControlMessage | None = None
    for app, ids in sorted(by_app.items()):
        message = sessions_disconnect(session_ids=ids, reason=reason, submit=submit, app=app)
        _audit(actor_id=actor_id, records=open_records.filter(id__in=ids),
               message=f"Disconnect ordered (4010, order {message.id}): "
                       f"{reason or 'no reason'}")
    return message


def console_user_disconnect(*, user_id: str, reason: str, actor_id: int,
                            submit: Submit, app: str = DEFAULT_APP) -> ControlMessage:
    """Close every connection of the user with 4010, on every node.

    The order goes out even when the database knows no open session: a connection opened
    within the last few seconds may not be recorded yet.
    """
    reason = reason.strip()[:MAX_REASON_CHARS]
    message = user_disconnect(user_id=user_id, reason=reason, submit=submit, app=app)
    _audit(actor_id=actor_id,
           records=SessionRecord.objects.filter(app=app, user_id=user_id,
                                                closed_at__isnull=True),
           message=f"Disconnect of user {user_id} ordered (4010, order {message.id}): "
                   f"{reason or 'no reason'}")
    return message


# --- Retention ------------------------------------------------------------------------------

def sessions_prune(*, closed_before: datetime, batch_size: int = 5000,
                   dry_run: bool = False) -> int:
    """Delete sessions closed before ``closed_before``; open ones are never touched."""
    old = SessionRecord.objects.filter(closed_at__lt=closed_before)
    if dry_run:
        return old.count()
    deleted = 0
    while True:
        ids = list(old.values_list("id", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += SessionRecord.objects.filter(id__in=ids).delete()[0]


def nodes_prune(*, dead_before: datetime, dry_run: bool = False) -> int:
    """Delete nodes whose last beat is older than ``dead_before`` (with any session rows
    they still have: their sessions were expired long ago)."""
    dead = Node.objects.filter(last_seen__lt=dead_before)
    if dry_run:
        return dead.count()
    # One cascading delete (in a transaction): the node and any session rows it kept.
    _, per_model = dead.delete()
    return per_model.get(Node._meta.label, 0)
