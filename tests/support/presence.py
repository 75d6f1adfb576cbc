"""An in-memory presence map with ``gateway_core.presence_map.PresenceMap``'s reads and
writes, for unit tests of the router, the relay and the node's routing (the real one is
tested against Redis in tests/cluster/test_routing.py)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway_core.presence_map import Connection, PresenceUnavailable


class FakePresence:
    def __init__(self, node_id: str = "n1") -> None:
        self.node_id = node_id
        #: (app, user) -> [Connection]
        self.users: dict[tuple[str, str], list[Connection]] = {}
        #: node -> incarnation, for nodes with a live marker
        self.marked: dict[str, str] = {node_id: "1"}
        self.available = True
        #: Adds fail while the rest of the map answers (a partial failure).
        self.adds_fail = False
        self.lookups = 0
        self.removed: list[tuple[str, str, str]] = []

    def _check(self) -> None:
        if not self.available:
            raise PresenceUnavailable("fake switched off")

    def put(self, node: str, app: str, user: str, session_id: str, at: float) -> None:
        self.marked.setdefault(node, "1")
        entries = self.users.setdefault((app, user), [])
        entries.append(Connection(node, session_id, at))
        entries.sort(key=lambda c: c.connected_at)

    async def add(self, *, app: str, user: str, session_id: str, connected_at: float) -> None:
        self._check()
        if self.adds_fail:
            raise PresenceUnavailable("fake adds switched off")
        self.put(self.node_id, app, user, session_id, connected_at)

    async def mark_incomplete(self) -> None:
        self._check()
        self.marked.pop(self.node_id, None)  # read as a node without a marker

    def remove(self, *, app: str, user: str, session_id: str) -> None:
        self.removed.append((app, user, session_id))
        entries = self.users.get((app, user), [])
        entries[:] = [c for c in entries
                      if not (c.node == self.node_id and c.session_id == session_id)]

    async def forget(self, connection: Connection, *, app: str, user: str) -> None:
        self._check()
        entries = self.users.get((app, user), [])
        entries[:] = [c for c in entries if c != connection]

    async def lookup(self, users: Iterable[tuple[str, str]], *, also_nodes: Iterable[str] = ()
                     ) -> tuple[dict[tuple[str, str], list[Connection]], dict[str, set[str]]]:
        self._check()
        self.lookups += 1
        found = {key: [c for c in self.users.get(key, []) if c.node in self.marked]
                 for key in users}
        return found, {node: {inc} for node, inc in self.marked.items()}

    async def holders(self, users: Iterable[tuple[str, str]], *, also_nodes: Iterable[str] = ()
                      ) -> tuple[dict[tuple[str, str], set[str]], dict[str, set[str]]]:
        found, marked = await self.lookup(users, also_nodes=also_nodes)
        return {key: {c.node for c in conns} for key, conns in found.items()}, marked

    async def connections(self, app: str, user: str) -> list[Connection]:
        found, _ = await self.lookup([(app, user)])
        return found[(app, user)]
