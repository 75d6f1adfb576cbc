"""Disconnect orders: a control message to whichever node holds the sessions, which closes
them with 4010 (PROTOCOL.md). Built here, beneath both apps, because both give them: the
REST API (``push_app``) and the operator console (``sessions_app.services``).

An order is not stored: it is handed to ``submit`` (``gateway_core.bridge.submit`` from
sync code) and published once, at most once.
"""

from __future__ import annotations

import time
import uuid

from gateway_core.bridge import Submit
from gateway_core.messages import ControlMessage
from gateway_core.tenancy import DEFAULT_APP


def user_disconnect(*, user_id: str, reason: str, submit: Submit,
                    app: str = DEFAULT_APP) -> ControlMessage:
    """Order every node to close the connections of the user of ``app`` with 4010."""
    return _control(users=(user_id,), session_ids=(), reason=reason, submit=submit, app=app)


def sessions_disconnect(*, session_ids: list[str], reason: str, submit: Submit,
                        app: str = DEFAULT_APP) -> ControlMessage:
    """Order whichever nodes hold these sessions of ``app`` to close them with 4010."""
    return _control(users=(), session_ids=tuple(session_ids), reason=reason, submit=submit,
                    app=app)


def _control(*, users: tuple[str, ...], session_ids: tuple[str, ...], reason: str,
             submit: Submit, app: str) -> ControlMessage:
    message = ControlMessage(
        id=f"c{uuid.uuid4().hex[:31]}", action="disconnect", users=users,
        session_ids=session_ids, reason=reason, issued_ms=int(time.time() * 1000), app=app,
    )
    submit(message)
    return message
