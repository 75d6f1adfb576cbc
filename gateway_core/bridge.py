"""The one way sync code reaches this process's node: hand a message to its relay, ask
its relay's backlog, ask who is online.

Who may call it: sync code running in a process that serves a node, in a thread other
than the node's event loop: DRF views, admin actions, and the services they call (as
Zulip's ``send_event`` is the one way Django code reaches Tornado). Code on the event loop
(the hot path, the consumer, the node's loops) holds the node itself and calls
``relay.submit`` directly. Nothing else looks the node up.

What it guarantees:

- ``submit(message)`` returns at once and never blocks on the broker: the message is
  queued on the relay through its event loop (``call_soon_threadsafe``), published in the
  order submitted, and retried while the broker is down. It is not durable by itself: a
  push is stored (``accepted``) before it is submitted, and submitted only once that
  transaction commits (``transaction.on_commit``), so one the relay never saw (no loop yet,
  or the process died) is found in the database and published by the relay's ``recover``.
  A disconnect order (a ``ControlMessage``) is not stored: at most once.
- ``backlog()`` is the number of messages the relay holds unpublished; callers refuse new
  pushes past ``push_app.services.MAX_RELAY_BACKLOG``.
- ``user_presence(user_id, app)`` is the live connections of the user of ``app`` across
  the cluster: this node's from memory, other live nodes' from the database.
- ``app_limits()`` is the node's per-app limits (``gateway_core.tenancy.AppLimits``), which
  the DRF push views spend from as the hot path does.
- ``rate_limits()`` is the node's request budgets (``gateway_core.ratelimit.RateLimits``),
  which the DRF throttle and authentication spend from.
- ``rejected(client_id=…, status=…, code=…, detail=…)`` counts a request the API refused
  in the node's memory (``push_app.rejections``); it never touches the database.

The node installs its handles when it becomes this process's node
(``gateway_node.node.set_node``/``get_node``: ``rungateway``, the ASGI application, a test's
``node`` fixture). Calling any of these with nothing installed raises ``BridgeNotInstalled``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway_core.messages import Message
from gateway_core.ratelimit import RateLimits
from gateway_core.tenancy import DEFAULT_APP, AppLimits

Submit = Callable[[Message], None]


class Rejected(Protocol):
    def __call__(self, *, client_id: int | None, status: int, code: str,
                 detail: str) -> None: ...


class BridgeNotInstalled(RuntimeError):
    """No node is installed in this process, so nothing would receive the message."""


@dataclass(frozen=True, slots=True)
class _Handles:
    submit: Submit
    backlog: Callable[[], int]
    user_presence: Callable[[str, str], dict[str, Any]]
    rate_limits: RateLimits
    rejected: Rejected
    app_limits: AppLimits


_handles: _Handles | None = None


def install(*, submit: Submit, backlog: Callable[[], int],
            user_presence: Callable[[str, str], dict[str, Any]], rate_limits: RateLimits,
            rejected: Rejected, app_limits: AppLimits) -> None:
    """Called by the node that becomes this process's node; replaces any earlier one."""
    global _handles
    _handles = _Handles(submit=submit, backlog=backlog, user_presence=user_presence,
                        rate_limits=rate_limits, rejected=rejected, app_limits=app_limits)


def uninstall() -> None:
    """Forget the installed node (it stopped being this process's node)."""
    global _handles
    _handles = None


def installed() -> bool:
    return _handles is not None


def _installed() -> _Handles:
    if _handles is None:
        raise BridgeNotInstalled(
            "no gateway node is installed in this process: gateway_core.bridge is wired by "
            "gateway_node (rungateway, the ASGI application, or set_node in a test)"
        )
    return _handles


def submit(message: Message) -> None:
    """Hand ``message`` to this process's relay, from a thread outside its event loop."""
    _installed().submit(message)


def backlog() -> int:
    """How many messages this process's relay holds unpublished."""
    return _installed().backlog()


def user_presence(user_id: str, app: str = DEFAULT_APP) -> dict[str, Any]:
    """The live connections of the user of ``app`` on every node (the REST API's presence
    answer)."""
    return _installed().user_presence(user_id, app)


def app_limits() -> AppLimits:
    """The installed node's per-app limits (the DRF push views)."""
    return _installed().app_limits


def rate_limits() -> RateLimits:
    """The installed node's request budgets (the DRF throttle and authentication)."""
    return _installed().rate_limits


def rejected(*, client_id: int | None, status: int, code: str, detail: str) -> None:
    """Count a request the API refused, for the console (in memory; no database write)."""
    _installed().rejected(client_id=client_id, status=status, code=code, detail=detail)
