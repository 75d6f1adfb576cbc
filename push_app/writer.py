"""Group commit of the push log: the pushes of many API requests stored in one transaction.

The hot push path (``push_app.api.hotpath``) hands each request's validated pushes to the
node's writer and awaits them. The writer takes what is queued (whole requests, up to
``max_rows`` pushes), stores it in one transaction on the node's database thread (a single
``INSERT`` run over every row), and only after the commit hands the pushes to the relay
and answers the requests: a push answered 202 is in the database, as on the per-request
path (``services.push_create_many``), and nothing goes to the broker uncommitted.

While one transaction runs, the next group gathers; under load a group also waits
``linger_s`` (2 ms) for company. An idle node commits a lone push at once and a busy one
commits larger groups: one commit per group instead of one per push.

One push never fails another (PROTOCOL.md section 2). If the group's insert fails for
anything but the database itself, the group is stored again with each failing slice of
rows halved until the rows the database refuses stand alone (savepoints in one
transaction, about two per level of halving): the others commit, and each refused push
gets its own 400 (``unstorable``). Validation should leave no such row; this is the design's
guarantee that a check it misses harms only the push that slipped through. A failure of the
database as a whole (``OperationalError``, ``InterfaceError``: locked, unreachable, gone)
stores nothing of the group and answers each of its requests 503 (``unavailable``), as a
failed per-request write does.

The same transaction re-reads the API clients of the group (one query): a client
deactivated, deleted or given a new key since its key was looked up (the API caches
lookups: ``push_app.api.authentication.ApiKeyCache``) has its pushes refused, not stored.

Pushes with an ``idempotency_key`` are not written here: they need the key's lookup and
unique constraint, which ``store_keyed`` leaves to ``services.push_create_many``, on the
same database thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction

from gateway_core.messages import Message, PushMessage
from gateway_core.tenancy import DEFAULT_APP, SCOPES
from push_app import services
from push_app.errors import PushUnavailable
from push_app.models import ApiClient, PushLog, PushRecipient
from push_app.pushlog import (
    COLUMNS,
    CREATED_AT,
    EXPIRES_AT,
    RECIPIENT_COLUMNS,
    USERS,
    log_row,
    recipient_rows,
)
from push_app.validation import PushRequest, RequestInvalid

logger = logging.getLogger("gateway.writer")
DbRunner = Callable[..., Awaitable[Any]]
#: Per push of a request, in order: its message once committed, or why it alone was refused.
Stored = list[PushMessage | RequestInvalid]
#: Failures of the database as a whole, not of a row: no retry, 503 for the whole group.
DATABASE_DOWN = (OperationalError, InterfaceError)


@dataclass(frozen=True, slots=True)
class ClientRef:
    """An API client as the API found it by its key: checked again at every commit."""

    pk: int
    name: str
    key_hash: str
    app: str = DEFAULT_APP
    scopes: tuple[str, ...] = SCOPES


class ClientRevoked(Exception):
    """The client's key stopped being valid since it was looked up: deactivated (403), or
    deleted or rotated (401). Nothing of the request was stored."""

    def __init__(self, *, deactivated: bool) -> None:
        super().__init__("deactivated" if deactivated else "unknown key")
        self.deactivated = deactivated


def _revoked(client: ClientRef, row: tuple[bool, str] | None) -> ClientRevoked | None:
    if row is None or row[1] != client.key_hash:
        return ClientRevoked(deactivated=False)
    if not row[0]:
        return ClientRevoked(deactivated=True)
    return None


@dataclass(slots=True)
class _Entry:
    client: ClientRef | None
    reqs: Sequence[PushRequest]
    future: asyncio.Future[Stored]


class PushWriter:
    #: At most this many pushes per transaction (a request is never split: one larger
    #: than this is a group of its own).
    max_rows = 2000
    #: Under load (the last commit ended less than ``busy_s`` ago) a group waits this long
    #: for more requests before it commits: a commit costs about as much as a hundred
    #: pushes in it, and at a steady rate without the wait each group holds one or two.
    #: An idle writer commits at once.
    linger_s = 0.002
    busy_s = 0.02
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, *, db: DbRunner, submit: Callable[[Message], None], node_id: str) -> None:
        self.db = db
        self.submit = submit
        self.node_id = node_id
        self._queue: deque[_Entry] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_commit = float("-inf")
        #: Transactions committed and pushes stored, for tests and profiles.
        self.commits = 0
        self.stored = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def write(self, *, client: ClientRef | None,
                    reqs: Sequence[PushRequest]) -> Stored:
        """Store ``reqs`` (none with an idempotency key) in the next group commit; per
        push, in order, its message once committed and handed to the relay, or the
        ``RequestInvalid`` (400 ``unstorable``) of a push the database refused. Raises
        ``PushUnavailable`` if the database failed, ``ClientRevoked`` if the client
        may no longer push."""
        if self._closing:
            raise PushUnavailable("this node is stopping")
        assert all(req.idempotency_key is None for req in reqs), "keyed pushes: store_keyed"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
        self._queue.append(_Entry(client, reqs, future))
        if self._task is None:
            # Starts on the next turn of the loop: every request that reaches this point
            # in the current turn joins the first group.
            self._task = loop.create_task(self._run(), name="gateway-push-writer")
        return await future

    async def close(self) -> None:
        """Refuse new writes; wait for the queued ones to be committed (or refused)."""
        self._closing = True
        if self._task is not None:
            await asyncio.shield(self._task)

    def reopen(self) -> None:
        """Take writes again after ``close`` (a node started again)."""
        self._closing = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if (self.linger_s and loop.time() - self._last_commit < self.busy_s
                        and sum(len(e.reqs) for e in self._queue) < self.max_rows):
                    await asyncio.sleep(self.linger_s)
                group = self._take()
                if group:
                    await self._commit(group)
                    self._last_commit = loop.time()
        finally:
            self._task = None

    def _take(self) -> list[_Entry]:
        group: list[_Entry] = []
        rows = 0
        while self._queue:
            entry = self._queue[0]
            if group and rows + len(entry.reqs) > self.max_rows:
                break
            self._queue.popleft()
            if entry.future.done():  # the request was cancelled: nothing answered, nothing kept
                continue
            group.append(entry)
            rows += len(entry.reqs)
        return group

    async def _commit(self, group: list[_Entry]) -> None:
        try:
            outcomes = await self.db(
                store_group, [(e.client, e.reqs) for e in group], self.clock(), self.node_id
            )
        except BaseException as exc:
            if isinstance(exc, DatabaseError | asyncio.CancelledError):
                logger.warning("push log group of %d request(s) not stored: %r",
                               len(group), exc)
            else:
                logger.exception("push log group of %d request(s) not stored", len(group))
            for entry in group:
                _fail(entry.future, PushUnavailable(
                    f"the push could not be stored: {exc.__class__.__name__}"))
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for entry, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, ClientRevoked):
                _fail(entry.future, outcome)
                continue
            for message in outcome:
                if isinstance(message, PushMessage):
                    self.stored += 1
                    self.submit(message)
            if not entry.future.done():
                entry.future.set_result(outcome)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# --- On the database thread ----------------------------------------------------------------

_insert_sql: dict[str, str] = {}


def insert_sql(model: Any = PushLog, columns: Sequence[str] = COLUMNS) -> str:
    """``INSERT INTO push_app_pushlog (…) VALUES (%s, …)`` for this connection's database
    (or ``model``'s table with ``columns``: the recipients)."""
    key = f"{connection.vendor}:{model._meta.db_table}"
    sql = _insert_sql.get(key)
    if sql is None:
        by_attname = {f.attname: str(f.column) for f in model._meta.concrete_fields
                      if not f.primary_key or model is PushLog}
        if set(by_attname) != set(columns):
            raise RuntimeError(f"{model.__name__}'s fields changed: {sorted(by_attname)}; "
                               "update push_app.pushlog")
        quote = connection.ops.quote_name
        sql = (f"INSERT INTO {quote(model._meta.db_table)} "
               f"({', '.join(quote(by_attname[a]) for a in columns)}) "
               f"VALUES ({', '.join(['%s'] * len(columns))})")
        _insert_sql[key] = sql
    return sql


def store_group(items: Sequence[tuple[ClientRef | None, Sequence[PushRequest]]], now_s: float,
                node_id: str) -> list[Stored | ClientRevoked]:
    """Store the pushes of several requests in one transaction; per request, its pushes'
    messages (or each refused push's error) or why its client was refused. Runs on the
    database thread. Raises what the database raised if it failed as a whole."""
    try:
        return _store_group(items, now_s, node_id, isolate=False)
    except DATABASE_DOWN:
        raise
    except Exception as exc:  # a row the database refused: find it, store the others
        logger.warning("push log group of %d push(es) refused (%r); storing the pushes "
                       "apart from the one(s) refused",
                       sum(len(reqs) for _, reqs in items), exc)
        return _store_group(items, now_s, node_id, isolate=True)


def _store_group(items: Sequence[tuple[ClientRef | None, Sequence[PushRequest]]],
                 now_s: float, node_id: str, *, isolate: bool) -> list[Stored | ClientRevoked]:
    now = datetime.fromtimestamp(now_s, tz=UTC)
    accepted_ms = int(now_s * 1000)
    fields = PushLog._meta
    users_field = fields.get_field("users")
    time_field = fields.get_field("created_at")
    created_at = time_field.get_db_prep_save(now, connection)
    users_text = connection.vendor == "sqlite"  # JSON stored as json.dumps' text
    # Ids as services.new_push_id makes them, increasing in the group's order (the time in
    # ms, a sequence, randomness), drawn for the whole group at once.
    ids = iter(services.new_push_ids(accepted_ms, sum(len(reqs) for _, reqs in items)))
    pks = {client.pk for client, _ in items if client is not None}
    outcomes: list[Stored | ClientRevoked] = []
    rows: list[list[Any]] = []
    #: Per row: the request's outcome list and the row's place in it.
    places: list[tuple[Stored, int]] = []
    #: Per row: its push's recipients (PROTOCOL.md section 6), stored with it.
    recipients: list[list[list[Any]]] = []
    with transaction.atomic():
        clients = _client_states(pks) if pks else {}
        for client, reqs in items:
            revoked = None if client is None else _revoked(client, clients.get(client.pk))
            if revoked is not None:
                outcomes.append(revoked)
                continue
            messages: Stored = []
            for req in reqs:
                push_id = next(ids)
                app = DEFAULT_APP if client is None else client.app
                row = log_row(req, push_id=push_id,
                              client_id=None if client is None else client.pk, now=now,
                              node_id=node_id, app=app)
                expires = row[EXPIRES_AT]
                users = req.users
                try:
                    row[USERS] = (_users_json(users) if users_text
                                  else users_field.get_db_prep_save(row[USERS], connection))
                    if expires is not None:
                        row[EXPIRES_AT] = time_field.get_db_prep_save(expires, connection)
                    row[CREATED_AT] = created_at
                except Exception as exc:  # a value no row can hold: this push alone fails
                    messages.append(_unstorable(push_id, exc))
                    continue
                places.append((messages, len(messages)))
                rows.append(row)
                recipients.append(recipient_rows(push_id, users, app=app,
                                                 expires_at=row[EXPIRES_AT]))
                messages.append(PushMessage(
                    id=push_id, users=users, data_json=req.data_json, topic=req.topic,
                    accepted_ms=accepted_ms,
                    expires_ms=None if expires is None else int(expires.timestamp() * 1000),
                    app=app,
                ))
            outcomes.append(messages)
        if rows:
            with connection.cursor() as cursor:
                refused = {} if not isolate else _insert_apart(cursor, rows)
                if not isolate:
                    _insert_rows(cursor, rows)
                for index, error in refused.items():
                    messages, place = places[index]
                    messages[place] = _unstorable(rows[index][0], error)
                stored = [row for index, rows_ in enumerate(recipients)
                          if index not in refused for row in rows_]
                if stored:
                    cursor.executemany(insert_sql(PushRecipient, RECIPIENT_COLUMNS), stored)
    return outcomes


def _unstorable(push_id: str, exc: Exception) -> RequestInvalid:
    logger.warning("push %s refused by the database: %r", push_id, exc)
    return RequestInvalid(
        "this push could not be stored (the database refused it: "
        f"{exc.__class__.__name__}); the others were",
        code="unstorable", status=400,
    )


def _insert_rows(cursor: Any, rows: Sequence[Sequence[Any]]) -> None:
    cursor.executemany(insert_sql(), rows)


def _insert_apart(cursor: Any, rows: list[list[Any]]) -> dict[int, Exception]:
    """Insert ``rows``, each failing slice halved in its own savepoint until the rows the
    database refuses stand alone; their indexes and errors. A failure of the database
    itself still raises."""
    refused: dict[int, Exception] = {}
    todo = [(0, len(rows))]
    while todo:
        start, end = todo.pop()
        try:
            with transaction.atomic():  # a savepoint: a failure undoes this slice only
                _insert_rows(cursor, rows[start:end])
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            if end - start == 1:
                refused[start] = exc
            else:
                middle = (start + end) // 2
                todo += [(middle, end), (start, middle)]
    return refused


def _users_json(users: tuple[str, ...] | None) -> str:
    """``json.dumps(list(users))``: user ids (``[A-Za-z0-9_.:@-]``, validated) need no
    escaping."""
    return '["' + '", "'.join(users) + '"]' if users else "[]"


def _client_states(pks: set[int]) -> dict[int, tuple[bool, str]]:
    """``pk: (is_active, key_hash)`` of these API clients: one query, in SQL written once
    per database (the ORM's compiling of the same filter cost more than the query)."""
    select = _select_sql.get(connection.vendor)
    if select is None:
        meta = ApiClient._meta
        quote = connection.ops.quote_name
        columns = {f.attname: str(f.column) for f in meta.concrete_fields}
        pk, active, key_hash = (quote(columns[name]) for name in ("id", "is_active", "key_hash"))
        select = _select_sql[connection.vendor] = (
            f"SELECT {pk}, {active}, {key_hash} FROM {quote(meta.db_table)} WHERE {pk} IN ")
    with connection.cursor() as cursor:
        cursor.execute(select + f"({', '.join(['%s'] * len(pks))})", list(pks))
        return {int(pk): (bool(active), str(key_hash))
                for pk, active, key_hash in cursor.fetchall()}


_select_sql: dict[str, str] = {}


def store_keyed(client: ClientRef, reqs: Sequence[PushRequest],
                submit: Callable[[Message], None],
                backlog: int) -> list[tuple[PushLog, bool]] | ClientRevoked:
    """Pushes of which some carry an idempotency key, through the per-request path, after
    the same check of the client as ``store_group``. Runs on the database thread; ``submit``
    is called on commit, on this thread."""
    with transaction.atomic():
        row = ApiClient.objects.filter(pk=client.pk).first()
        refused = _revoked(client, None if row is None else (row.is_active, row.key_hash))
        if refused is not None or row is None:
            return refused or ClientRevoked(deactivated=False)
        return services.push_create_many(client=row, reqs=list(reqs), submit=submit,
                                         backlog=backlog)
