"""Client tokens: HS256 JWTs with ``sub`` (user id), ``exp`` and optional ``meta``."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

from gateway_core.jsonsafe import unfit

# Matched with fullmatch: "$" would also accept a trailing newline.
USER_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


class InvalidToken(ValueError):
    """Why a token was refused, in words short enough for a close reason."""


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: int
    meta: dict[str, Any]


def valid_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None


def decode_token(token: str, *, secret: str, leeway_s: int = 0) -> Claims:
    if not token:
        raise InvalidToken("token missing")
    # ``iat`` is informational: a business system whose clock runs a little ahead must not
    # see its fresh tokens refused. ``nbf`` and ``exp`` are enforced.
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], leeway=leeway_s,
            options={"require": ["sub", "exp"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("bad signature") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidToken("token not yet valid") from exc
    except (jwt.InvalidTokenError, RecursionError) as exc:
        # RecursionError: claims nested deeper than the JSON parser's stack.
        raise InvalidToken("malformed token") from exc
    sub = claims.get("sub")
    if not valid_user_id(sub):
        raise InvalidToken("bad sub")
    meta = claims.get("meta", {})
    if not isinstance(meta, dict):
        raise InvalidToken("meta must be an object")
    # A business system signs its own tokens: its ``meta`` is stored with the session and
    # shown in admin, so it must be what the database and every reader take.
    why = unfit(meta, level=1, allow_nul=False)
    if why is not None:
        raise InvalidToken(f"meta {why}")
    return Claims(user_id=str(sub), expires_at=int(claims["exp"]), meta=meta)


def encode_token(*, user_id: str, ttl_s: int, secret: str, meta: dict[str, Any] | None = None,
                 now: float | None = None) -> tuple[str, int]:
    """A signed token and its expiry (epoch seconds)."""
    issued = int(time.time() if now is None else now)
    expires = issued + ttl_s
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": expires}
    if meta:
        claims["meta"] = meta
    return jwt.encode(claims, secret, algorithm="HS256"), expires
