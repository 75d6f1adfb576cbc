"""In-memory sessions for tests: a connection that records what the gateway wrote to it,
and a ``ChannelSession`` around one."""

from __future__ import annotations

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
