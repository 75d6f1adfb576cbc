"""Client tokens: HS256 JWTs with ``sub`` (user id), ``exp`` and optional ``meta``, signed
with their app's secret and naming the app in the header ``kid`` (PROTOCOL.md section 9;
no ``kid``: the app ``default``)."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from gateway_core.jsonsafe import unfit
from gateway_core.tenancy import DEFAULT_APP, valid_app_id

# Matched with fullmatch: "$" would also accept a trailing newline.
USER_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


class InvalidToken(ValueError):
    """Why a token was refused, in words short enough for a close reason."""


class UnknownApp(InvalidToken):
    """The token names an app this node does not know (yet: it may have just been made)."""

    def __init__(self, app_id: str) -> None:
        super().__init__("unknown app")
        self.app_id = app_id


#: The secrets that verify an app's tokens (current first), or None for an unknown app.
SecretsFor = Callable[[str], tuple[str, ...] | None]


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: int
    meta: dict[str, Any]
    app_id: str = DEFAULT_APP


def valid_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None


def token_app(token: str) -> str:
    """The app a token names in its header (``kid``), unverified; ``InvalidToken`` if the
    header is malformed or names no possible app."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, RecursionError) as exc:
        raise InvalidToken("malformed token") from exc
    kid = header.get("kid")
    if kid is None:
        return DEFAULT_APP
    if not valid_app_id(kid):
        raise InvalidToken("unknown app")
    return str(kid)


def decode_token(token: str, *, secrets_for: SecretsFor | None = None, secret: str = "",
                 leeway_s: int = 0) -> Claims:
    """The claims of a token signed with one of its app's secrets; ``UnknownApp`` when
    ``secrets_for`` does not know the app, ``InvalidToken`` for anything else wrong.
    ``secret`` alone: the app ``default``'s only (a v1 node's view)."""
    if secrets_for is None:
        secrets_for = functools.partial(_default_only, secret)
    if not token:
        raise InvalidToken("token missing")
    app_id = token_app(token)
    secrets = secrets_for(app_id)
    if not secrets:
        raise UnknownApp(app_id)
    claims = _verified(token, secrets, leeway_s)
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
    return Claims(user_id=str(sub), expires_at=int(claims["exp"]), meta=meta, app_id=app_id)


def _default_only(secret: str, app_id: str) -> tuple[str, ...] | None:
    return (secret,) if app_id == DEFAULT_APP else None


def _verified(token: str, secrets: tuple[str, ...], leeway_s: int) -> dict[str, Any]:
    """The claims, checked against each secret in turn (two during a rotation)."""
    for index, secret in enumerate(secrets):
        # ``iat`` is informational: a business system whose clock runs a little ahead must
        # not see its fresh tokens refused. ``nbf`` and ``exp`` are enforced.
        try:
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=["HS256"], leeway=leeway_s,
                options={"require": ["sub", "exp"], "verify_iat": False},
            )
        except jwt.InvalidSignatureError as exc:
            if index + 1 < len(secrets):
                continue
            raise InvalidToken("bad signature") from exc
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token not yet valid") from exc
        except (jwt.InvalidTokenError, RecursionError) as exc:
            # RecursionError: claims nested deeper than the JSON parser's stack.
            raise InvalidToken("malformed token") from exc
        return claims
    raise InvalidToken("bad signature")


def encode_token(*, user_id: str, ttl_s: int, secret: str, meta: dict[str, Any] | None = None,
                 now: float | None = None, app_id: str = DEFAULT_APP) -> tuple[str, int]:
    """A signed token and its expiry (epoch seconds); ``kid`` names any app but ``default``,
    so a v1 client's tokens stay byte for byte what they were."""
    issued = int(time.time() if now is None else now)
    expires = issued + ttl_s
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": expires}
    if meta:
        claims["meta"] = meta
    headers = None if app_id == DEFAULT_APP else {"kid": app_id}
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers), expires
