"""WebSocket close codes of the contract, in one place (PROTOCOL.md section 1).

Application closes stay within 4000-4999: codes below 3000 belong to the WebSocket
protocol, and autobahn (under Daphne) refuses to send them from the application.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    UNAUTHORIZED = 4001
    APP_CONNECTION_LIMIT = 4003
    HEARTBEAT_TIMEOUT = 4008
    REPLACED = 4009
    DISCONNECTED = 4010
    TOKEN_EXPIRED = 4011
    DRAINING = 4012
    FRAME_TOO_BIG = 4013
    TOO_MANY_FRAMES = 4029
    TOO_SLOW = 4030

    @property
    def reason(self) -> str:
        return REASONS[self]


REASONS: dict[CloseCode, str] = {
    CloseCode.UNAUTHORIZED: "unauthorized",
    CloseCode.APP_CONNECTION_LIMIT: "the app's connection limit is reached",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat timeout",
    CloseCode.REPLACED: "replaced by a newer connection",
    CloseCode.DISCONNECTED: "disconnected",
    CloseCode.TOKEN_EXPIRED: "token expired",
    CloseCode.DRAINING: "node is draining",
    CloseCode.FRAME_TOO_BIG: "frame too big",
    CloseCode.TOO_MANY_FRAMES: "too many frames",
    CloseCode.TOO_SLOW: "too slow",
}
