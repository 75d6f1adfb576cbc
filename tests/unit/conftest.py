"""In-process fixtures for the unit tests: fake connections, an installed node, API clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async

from gateway_core.brokers.local import LocalBroker
from gateway_node.node import Node, set_node
from sessions_app.close_codes import CloseCode
from sessions_app.registry import ChannelSession


class FakeConnection:
    """A Connection that records what the gateway wrote to it."""

    def __init__(self, name: str = "", *, accept: bool = True,
                 raises: Exception | None = None) -> None:
        self.name = name
        self.accept = accept
        #: Raised by ``send_frame``: a connection that breaks its contract.
        self.raises = raises
        self.frames: list[str] = []
        self.closes: list[int] = []
        self.aborted = False

    async def send_frame(self, frame: str, wire: bytes | None = None) -> bool:
        if self.raises is not None:
            raise self.raises
        self.frames.append(frame)
        return self.accept

    async def close(self, code: CloseCode) -> None:
        self.closes.append(int(code))

    async def abort(self) -> None:
        self.aborted = True

    def __repr__(self) -> str:
        return f"FakeConnection({self.name!r})"


def make_session(user_id: str, session_id: str, *, at: float = 1000.0,
                 connection: FakeConnection | None = None) -> ChannelSession:
    return ChannelSession(
        session_id=session_id,
        user_id=user_id,
        connection=connection or FakeConnection(session_id),
        connected_at=at,
        last_seen=at,
    )


async def run_db(fn, *args):
    """The relay's ``db`` seam: run ``fn`` in a thread, as the node does."""
    return await sync_to_async(fn, thread_sensitive=False)(*args)


@pytest.fixture
def node() -> Iterator[Node]:
    """A fresh node installed as this process's node; no background loops start."""
    installed = Node(role="all", broker=LocalBroker(node_id="test-node"))
    installed.autostart = False
    set_node(installed)
    try:
        yield installed
    finally:
        set_node(None)
        installed._db_executor.shutdown(wait=False)
