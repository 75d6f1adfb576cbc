"""Apps (PROTOCOL.md section 9): each business system's own space of users, keys and
limits, as a node holds them in memory.

The database (``push_app.models.App``) is the truth; each node keeps an ``AppDirectory``
copy that its housekeeping reloads every few seconds, so a connection's handshake costs no
query: it looks the token's ``kid`` up here. An app created a moment ago is found by
reloading at once on a miss (at most once a second, so forged ``kid`` values cannot turn
every handshake into a query).

A user is keyed by app and id everywhere. The app ``default`` is every v1 install's: its
client tokens carry no ``kid`` and are signed with ``GATEWAY_JWT_SECRET``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT_APP = "default"
#: App ids: lower-case letters, digits, ``_`` and ``-``; they name the app in token
#: headers, metric labels and URLs.
APP_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SCOPES = ("push", "presence", "manage")
ALL_SCOPES = ",".join(SCOPES)


def valid_app_id(value: object) -> bool:
    return isinstance(value, str) and APP_ID_RE.fullmatch(value) is not None


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"push,presence"`` as a tuple in the canonical order; ``ValueError`` naming an
    unknown scope."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {sorted(unknown)[0]!r}; scopes are {ALL_SCOPES}")
    if not wanted:
        raise ValueError(f"at least one scope of {ALL_SCOPES}")
    return tuple(scope for scope in SCOPES if scope in wanted)


@dataclass(frozen=True, slots=True)
class AppInfo:
    """What a node needs of an app on its hot paths."""

    id: str
    #: Secrets that verify its client tokens, current first (then the previous one, while
    #: a rotation is under way).
    secrets: tuple[str, ...]
    max_connections: int | None = None
    pushes_per_second: int | None = None


class AppDirectory:
    """The apps a node knows, by id; replaced whole by each reload."""

    clock: Callable[[], float] = staticmethod(time.monotonic)
    #: A miss may trigger a reload at most this often.
    miss_reload_every_s = 1.0

    def __init__(self, apps: Iterable[AppInfo] = ()) -> None:
        self._apps: dict[str, AppInfo] = {}
        self._last_miss_reload = -1e9
        self.replace(apps)

    def replace(self, apps: Iterable[AppInfo]) -> None:
        self._apps = {app.id: app for app in apps}

    def get(self, app_id: str) -> AppInfo | None:
        return self._apps.get(app_id)

    def ids(self) -> list[str]:
        return sorted(self._apps)

    def may_reload_on_miss(self) -> bool:
        """True at most once per ``miss_reload_every_s``: whether an unknown id is worth a
        reload (and the reload is now counted as done)."""
        now = self.clock()
        if now - self._last_miss_reload < self.miss_reload_every_s:
            return False
        self._last_miss_reload = now
        return True

    def __len__(self) -> int:
        return len(self._apps)


@dataclass(frozen=True, slots=True)
class AppLoad:
    """What the other live nodes of the cluster reported of one app at their last beat."""

    connections: int = 0
    pushes_per_s: float = 0.0


class AppLimits:
    """Each app's ``max_connections`` and ``pushes_per_second`` held across the cluster.

    Each node knows its own connections and pushes exactly and the other nodes' as of their
    last beat (``others``, refreshed at this node's beat). So a limit holds to within what
    the other nodes took in one beat interval (``GATEWAY_RECORD_INTERVAL``): a node admits
    a connection while its own plus the others' last reported count is under the limit,
    and spends pushes from a budget of the limit less the others' last reported rate
    (at least 1 a second, so that a node never refuses everything on stale figures).
    docs/apps.md shows how close that is.
    """

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, directory: AppDirectory) -> None:
        self.directory = directory
        self.others: dict[str, AppLoad] = {}
        #: Budget per app: (tokens, when last refilled). Tokens may go below zero: a batch
        #: larger than one second's budget passes once the bucket is full, then waits.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._taken: dict[str, int] = {}
        self._since = self.clock()

    def connection_allowed(self, app: str, local_connections: int) -> bool:
        info = self.directory.get(app)
        if info is None or info.max_connections is None:
            return True
        others = self.others.get(app)
        return local_connections + (others.connections if others else 0) < info.max_connections

    def take_pushes(self, app: str, count: int = 1) -> float | None:
        """Spend ``count`` pushes of ``app``'s budget: None if allowed, else the seconds
        until they would be (nothing spent)."""
        self._taken[app] = self._taken.get(app, 0) + count
        info = self.directory.get(app)
        if info is None or info.pushes_per_second is None:
            return None
        others = self.others.get(app)
        rate = max(1.0, info.pushes_per_second - (others.pushes_per_s if others else 0.0))
        now = self.clock()
        tokens, then = self._buckets.get(app, (rate, now))
        tokens = min(rate, tokens + (now - then) * rate)
        if tokens < min(float(count), rate):
            self._buckets[app] = (tokens, now)
            self._taken[app] -= count
            return (min(float(count), rate) - tokens) / rate
        self._buckets[app] = (tokens - count, now)
        return None

    def beat(self) -> dict[str, float]:
        """Pushes per second taken per app since the last beat (what this node reports)."""
        now = self.clock()
        elapsed = max(now - self._since, 1e-3)
        rates = {app: taken / elapsed for app, taken in self._taken.items() if taken}
        self._taken.clear()
        self._since = now
        return rates
