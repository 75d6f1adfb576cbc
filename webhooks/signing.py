"""The signature of a webhook call (PROTOCOL.md section 7):

    Gateway-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The key is the secret string's UTF-8 bytes, exactly as shown at creation. The timestamp is
signed with the body so that a receiver can refuse replays older than it accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "Gateway-Signature"
EVENT_ID_HEADER = "Gateway-Event-Id"


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe, prefixed so that it is recognisable."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The ``Gateway-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, now: int, tolerance_s: int = 300) -> bool:
    """A receiver's check (the one docs/webhooks.md shows): the header parses, ``t`` is
    within ``tolerance_s`` of ``now``, and one ``v1`` matches in constant time."""
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key.strip() == "t"]
    sent = [value for key, _, value in parts if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not sent:
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp=timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, value) for value in sent)
