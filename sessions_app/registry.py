"""The node's session registry: the only in-process mutable state of the gateway.

SessionManager maps (app, user id) -> UserSession; a UserSession maps each live connection
to its ChannelSession. Users are per app (PROTOCOL.md section 9): ``u1`` of two apps are two
users, so every lookup names the app. Everything here is plain data touched from the node's
one event loop, so it needs no locks; writes to sockets happen through the ``Connection``
each session holds.

The registry never trusts ``disconnect()`` alone: ``expired()`` lists what stopped beating,
and the node's sweep closes those connections with 4008 and forgets them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway_core.tenancy import DEFAULT_APP
from sessions_app.close_codes import CloseCode

#: How many of its latest unacked pushes a connection may still ack. An ack normally
#: follows its push within a round trip; the bound keeps a client that never acks from
#: holding memory for every push it got.
ACK_WINDOW = 256


class Connection(Protocol):
    """What the registry needs from one live WebSocket (the consumer provides it)."""

    async def send_frame(self, frame: str, wire: bytes | None = None) -> bool:
        """Queue one text frame; False if it was not written: the client is too slow and is
        being closed, or its connection is gone. Never raises: the delivery loop writes
        to every session in turn, and one connection's failure must stay its own.

        ``wire`` is the same frame already encoded (``frames.wire``), when one frame goes
        to many connections.
        """

    async def close(self, code: CloseCode) -> None:
        """Close the WebSocket with an application close code."""

    async def abort(self) -> None:
        """End a connection that failed, without an application close code; never raises."""


@dataclass(eq=False, slots=True)
class ChannelSession:
    """One WebSocket connection of a user on this node."""

    session_id: str
    user_id: str
    connection: Connection
    connected_at: float
    last_seen: float
    remote_addr: str = ""
    user_agent: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # Frame-rate window (GATEWAY_MAX_FRAMES_PER_MINUTE): start and count of the window.
    window_started: float = 0.0
    frames_in_window: int = 0
    closing: bool = False
    # Pushes written to this connection and not yet acked, oldest first: only those may be
    # acked, once each. A bounded deque, not a dict: appending is what every delivery pays,
    # and a deque appends faster and holds the window in less memory than a dict evicting
    # its oldest key; an ack pays a linear scan of the window instead (docs/performance.md).
    # Created on the first push, since most idle connections never get one.
    unacked: deque[str] | None = None
    app_id: str = DEFAULT_APP
    #: The token's ``exp`` (epoch seconds): the sweep closes the connection with 4011 then.
    expires_at: float | None = None

    def received(self, push_id: str) -> None:
        """A push was written to this connection: it may ack it once (``take_ack``)."""
        unacked = self.unacked
        if unacked is None:
            # A client that never acks keeps only the newest ACK_WINDOW ids.
            unacked = self.unacked = deque(maxlen=ACK_WINDOW)
        unacked.append(push_id)

    def take_ack(self, push_id: str) -> bool:
        """True for the first ack of a push this connection received (PROTOCOL.md section 1);
        False for a repeat, a push it never got, or one older than ``ACK_WINDOW`` pushes."""
        unacked = self.unacked
        if not unacked:
            return False
        try:
            unacked.remove(push_id)
        except ValueError:
            return False
        return True

    def count_frame(self, now: float, *, max_per_minute: int, alive: bool = True) -> bool:
        """Record one client frame; False once the client passed its per-minute budget.

        Only text frames prove life (``alive``); protocol pings never reach the application.
        """
        if alive:
            self.last_seen = now
        if now - self.window_started >= 60.0:
            self.window_started = now
            self.frames_in_window = 0
        self.frames_in_window += 1
        return self.frames_in_window <= max_per_minute


@dataclass(eq=False, slots=True)
class UserSession:
    """All connections of one user on this node, oldest first."""

    user_id: str
    channels: dict[Connection, ChannelSession] = field(default_factory=dict)

    def oldest(self) -> ChannelSession:
        return next(iter(self.channels.values()))


class SessionManager:
    """Per app, user id -> UserSession and session id -> session (a broadcast reaches one
    app's sessions); plus an index of every session by id for operators' actions."""

    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        if clock is not None:
            self.clock = clock
        self.apps: dict[str, dict[str, UserSession]] = {}
        self.app_sessions: dict[str, dict[str, ChannelSession]] = {}
        self.by_id: dict[str, ChannelSession] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def user_count(self) -> int:
        return sum(len(users) for users in self.apps.values())

    def users_of(self, app: str = DEFAULT_APP) -> dict[str, UserSession]:
        """The app's users on this node (an empty dict for an app with none)."""
        return self.apps.get(app) or {}

    def connections_of(self, app: str) -> int:
        return len(self.app_sessions.get(app) or ())

    def counts_by_app(self) -> dict[str, tuple[int, int]]:
        """``app: (connections, users)`` for every app with a session here."""
        return {app: (len(sessions), len(self.apps.get(app) or ()))
                for app, sessions in self.app_sessions.items()}

    def register(self, session: ChannelSession, *, max_per_user: int) -> list[ChannelSession]:
        """Add a session; return the user's oldest sessions pushed past ``max_per_user``.

        The returned sessions are already forgotten here (they get no more pushes); the
        caller closes them with 4009.
        """
        app = session.app_id
        users = self.apps.get(app)
        if users is None:
            users = self.apps[app] = {}
            self.app_sessions[app] = {}
        user = users.get(session.user_id)
        if user is None:
            user = users[session.user_id] = UserSession(session.user_id)
        user.channels[session.connection] = session
        self.by_id[session.session_id] = session
        self.app_sessions[app][session.session_id] = session
        evicted: list[ChannelSession] = []
        while len(user.channels) > max_per_user:
            oldest = user.oldest()
            self.unregister(oldest)
            evicted.append(oldest)
        return evicted

    def unregister(self, session: ChannelSession) -> bool:
        """Forget a session; False if it was already gone (closing is idempotent)."""
        if self.by_id.get(session.session_id) is not session:
            return False
        del self.by_id[session.session_id]
        app = session.app_id
        sessions = self.app_sessions[app]
        del sessions[session.session_id]
        users = self.apps[app]
        user = users.get(session.user_id)
        if user is not None:
            user.channels.pop(session.connection, None)
            if not user.channels:
                del users[session.user_id]
        if not sessions:  # apps come and go; an app with no session here holds nothing
            del self.app_sessions[app]
            del self.apps[app]
        return True

    def get(self, session_id: str) -> ChannelSession | None:
        return self.by_id.get(session_id)

    def sessions_of(self, user_ids: Iterable[str],
                    app: str = DEFAULT_APP) -> Iterator[ChannelSession]:
        """Live sessions of these users of ``app``, in the order the users are given."""
        users = self.apps.get(app)
        if users is None:
            return
        for user_id in user_ids:
            user = users.get(user_id)
            if user is not None:
                # A copy: delivering may evict or close sessions of this user.
                yield from list(user.channels.values())

    def all_sessions(self) -> list[ChannelSession]:
        return list(self.by_id.values())

    def sessions_in(self, app: str) -> list[ChannelSession]:
        """Every live session of ``app`` (a broadcast's targets)."""
        sessions = self.app_sessions.get(app)
        return [] if sessions is None else list(sessions.values())

    def expired(self, *, timeout_s: float, now: float | None = None) -> list[ChannelSession]:
        """Sessions whose last frame is older than ``timeout_s``.

        One pass over the sessions; the node runs it every second or so, not per event.
        """
        deadline = (self.clock() if now is None else now) - timeout_s
        return [s for s in self.by_id.values() if s.last_seen < deadline]

    def token_expired(self, *, now: float | None = None) -> list[ChannelSession]:
        """Sessions whose token's ``exp`` has passed (PROTOCOL.md section 6: 4011)."""
        at = self.clock() if now is None else now
        return [s for s in self.by_id.values()
                if s.expires_at is not None and s.expires_at <= at]
