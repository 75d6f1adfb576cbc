"""The push side's domain errors: what went wrong, not how HTTP says it.

Services and the writer raise these; ``push_app.api.errors.error_parts`` is the one place
that maps them to the contract's answer (503 ``{"error": "unavailable", ...}``), for the
hot path and the DRF views alike.
"""

from __future__ import annotations


class PushUnavailable(Exception):
    """A push could not be kept: the database is unavailable or this node is stopping.
    Nothing of the request was stored; it may be retried."""

    #: The contract's error code (PROTOCOL.md section 2).
    code = "unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BrokerUnavailable(PushUnavailable):
    """The broker is unreachable and the relay already holds as many pushes as it keeps."""

    code = "broker_unavailable"
