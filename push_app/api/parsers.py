"""JSON bodies, limited to GATEWAY_MAX_REQUEST_BYTES with a 413 (batches included)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

from gateway_core.conf import gateway_settings
from gateway_core.jsonsafe import MAX_DEPTH, printable


class PayloadTooLarge(APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "Request body too large."


class LimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        limit = gateway_settings.max_request_bytes
        request = (parser_context or {}).get("request")
        check_declared_length(request.META.get("CONTENT_LENGTH") if request is not None
                              else None, limit)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise body_too_large(limit)
        return parse_json(raw)


def check_declared_length(declared: str | None, limit: int) -> None:
    """413 for a ``Content-Length`` over ``limit``, before reading any of the body."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")


def parse_json(raw: bytes) -> Any:
    """A request body's JSON, or ``ParseError`` (400 ``bad_json``).

    What parses may still be refused by ``push_app.validation`` (nesting, lone surrogates,
    numbers that overflow): checked there, field by field, so that a batch item fails alone.
    """
    try:
        # NaN and Infinity are not JSON: clients could not parse the frames they make.
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        # The C parser counts its nesting against the recursion limit and stops cleanly:
        # such a body is far past the contract's 64 levels whatever it holds.
        raise ParseError(
            f"Body is nested deeper than {MAX_DEPTH} levels of arrays and objects."
        ) from None
    except ValueError as exc:
        raise ParseError(f"Body is not valid JSON: {printable(str(exc))}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
