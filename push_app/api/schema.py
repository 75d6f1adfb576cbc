"""The API's OpenAPI schema, written to say exactly what the server accepts and answers.

drf-spectacular derives a schema from serializers, but these views validate by hand
(``push_app.validation``) and serializer fields cannot say everything the server checks:
the user-id pattern, that unknown fields are refused, that a field is never null, that a
push names its users or is a broadcast. So the bodies are JSON Schema here, one function
each, built when the schema is generated (so the limits are this node's settings), and
``fill_components`` (a drf-spectacular postprocessing hook) puts them in
``components.schemas``, where the views' ``extend_schema`` refer to them by name.

What JSON Schema cannot state is in the descriptions, and refused with a 400 all the same:
lone surrogates, NaN/Infinity or numbers that overflow a double, nesting past 64 levels.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from gateway_core.conf import gateway_settings
from gateway_core.jsonsafe import MAX_DEPTH
from push_app.models import PushStatus
from push_app.validation import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_TOPIC_CHARS,
)

Schema = dict[str, Any]

#: ``gateway_core.tokens.USER_ID_RE`` (matched whole).
USER_ID: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$",
                   "minLength": 1, "maxLength": 128}
#: Ids as ``services.new_push_id`` makes them; any other id is simply not found (404).
PUSH_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_NO_NUL = "^[^\\u0000]*$"
_JSON_RULES = (
    f"Any JSON that every client can parse back: at most {MAX_DEPTH} levels of arrays and "
    "objects counting the request body as level 1, no lone surrogates, no NaN or Infinity "
    "and no number that overflows a double (such as 1e999); otherwise 400."
)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def push_body() -> Schema:
    max_users = gateway_settings.max_users_per_push
    return {
        "type": "object",
        "description": 'A push to `users`, or to everyone with `"broadcast": true`. '
                       "Unknown fields are refused (400).",
        "properties": {
            "users": {"type": "array", "items": USER_ID, "minItems": 1, "maxItems": max_users,
                      "nullable": True,
                      "description": "user ids; repeats are delivered once (null or left "
                                     "out only with broadcast)"},
            "broadcast": {"type": "boolean"},
            "data": {"description": f"{_JSON_RULES} At most "
                                    f"{gateway_settings.max_payload_bytes} bytes once "
                                    "serialised (else 413).",
                     "nullable": True},
            "topic": {"type": "string", "minLength": 1, "maxLength": MAX_TOPIC_CHARS,
                      "pattern": _NO_NUL, "nullable": True},
            "ttl": {"type": "integer", "minimum": 0,
                    "maximum": gateway_settings.max_ttl_s, "nullable": True,
                    "description": "seconds the push is kept for its users (PROTOCOL.md "
                                   "section 6): ttl > 0 reaches users who connect later and "
                                   "is sent again until acked; 0 or none: live only, and "
                                   "the push waits for the broker as long as it takes"},
            "idempotency_key": {"type": "string", "minLength": 1,
                                "maxLength": MAX_IDEMPOTENCY_KEY_CHARS, "pattern": _NO_NUL,
                                "nullable": True,
                                "description": "the same key from the same client within "
                                               "24 h answers 200 with the first push"},
        },
        "required": ["data"],
        "additionalProperties": False,
        # Targeted or broadcast, never both.
        "oneOf": [
            {"required": ["users"],
             "properties": {"users": {"type": "array"}, "broadcast": {"enum": [False]}}},
            {"required": ["broadcast"],
             "properties": {"broadcast": {"enum": [True]},
                            "users": {"nullable": True, "enum": [None]}}},
        ],
    }


def push_batch() -> Schema:
    return {
        "type": "object",
        "properties": {"pushes": {
            "type": "array", "minItems": 1, "maxItems": gateway_settings.max_batch,
            # Exact: an item that is not a valid push does not fail the request, it gets
            # its own error in `results` (PROTOCOL.md section 2).
            "items": {"anyOf": [ref("PushBody"), {
                "description": "anything else: refused alone, with its error in `results`"}]},
        }},
        "required": ["pushes"],
        "additionalProperties": False,
    }


def push_accepted() -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": PUSH_ID,
            "status": {"type": "string", "enum": [s.value for s in PushStatus]},
            "targets": {"oneOf": [{"type": "integer", "minimum": 0},
                                  {"type": "string", "enum": ["all"]}],
                        "description": 'number of users, or "all"'},
        },
        "required": ["id", "status", "targets"],
        "additionalProperties": False,
    }


def batch_results() -> Schema:
    return {
        "type": "object",
        "properties": {"results": {"type": "array", "items": {"oneOf": [
            {"type": "object", "properties": {"id": PUSH_ID, "status": {"type": "string"}},
             "required": ["id", "status"], "additionalProperties": False},
            {"type": "object", "properties": {"error": {"type": "string"},
                                              "detail": {"type": "string"}},
             "required": ["error", "detail"], "additionalProperties": False},
        ]}, "description": "one per push, in order"}},
        "required": ["results"],
        "additionalProperties": False,
    }


def push_details() -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": PUSH_ID,
            "status": {"type": "string", "enum": [s.value for s in PushStatus]},
            "created_at": {"type": "string", "format": "date-time"},
            "published_at": {"type": "string", "format": "date-time", "nullable": True},
            "targets": push_accepted()["properties"]["targets"],
            "delivered": {"type": "integer", "minimum": 0},
            "acked": {"type": "integer", "minimum": 0},
            "error": {"type": "string", "nullable": True},
        },
        "required": ["id", "status", "created_at", "published_at", "targets", "delivered",
                     "acked", "error"],
        "additionalProperties": False,
    }


def recipients() -> Schema:
    when = {"type": "string", "format": "date-time", "nullable": True}
    recipient = {
        "type": "object",
        "properties": {"user": USER_ID,
                       "state": {"type": "string", "enum": [
                           "offline", "pending", "delivered", "acked", "expired", "dropped"]},
                       "delivered_at": when, "acked_at": when,
                       "attempts": {"type": "integer", "minimum": 0}},
        "required": ["user", "state", "delivered_at", "acked_at", "attempts"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"results": {"type": "array", "items": recipient},
                       "next": {"type": "string", "nullable": True,
                                "description": "pass back as ?cursor= for the next page"}},
        "required": ["results", "next"],
        "additionalProperties": False,
    }


def presence() -> Schema:
    connection = {
        "type": "object",
        "properties": {"session": {"type": "string"}, "node": {"type": "string"},
                       "connected_at": {"type": "string", "format": "date-time"},
                       "last_seen": {"type": "string", "format": "date-time"}},
        "required": ["session", "node", "connected_at", "last_seen"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"user": USER_ID, "online": {"type": "boolean"},
                       "connections": {"type": "array", "items": connection}},
        "required": ["user", "online", "connections"],
        "additionalProperties": False,
    }


def disconnect_body() -> Schema:
    return {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": 200}},
        "additionalProperties": False,
        "description": "Unknown fields are refused (400). The body may be left out.",
    }


def disconnect_accepted() -> Schema:
    return {
        "type": "object",
        "properties": {"id": {"type": "string"}, "status": {"type": "string",
                                                            "enum": ["accepted"]},
                       "user": USER_ID},
        "required": ["id", "status", "user"],
        "additionalProperties": False,
    }


def token_request() -> Schema:
    return {
        "type": "object",
        "properties": {
            "user": USER_ID,
            "ttl": {"type": "integer", "minimum": 1,
                    "maximum": gateway_settings.max_token_ttl_s, "default": 3600},
            "meta": {"type": "object", "description": "kept on the session and shown in "
                     "admin: at most 2048 bytes once serialised, no NUL in its strings. "
                     + _JSON_RULES},
        },
        "required": ["user"],
        "additionalProperties": False,
        "description": "Unknown fields are refused (400).",
    }


def token() -> Schema:
    return {
        "type": "object",
        "properties": {"token": {"type": "string"},
                       "expires_at": {"type": "string", "format": "date-time"}},
        "required": ["token", "expires_at"],
        "additionalProperties": False,
    }


def error() -> Schema:
    return {
        "type": "object",
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                       "fields": {"type": "object",
                                  "additionalProperties": {"type": "string"}}},
        "required": ["error", "detail"],
        "additionalProperties": False,
    }


COMPONENTS = {
    "PushBody": push_body, "PushBatch": push_batch, "PushAccepted": push_accepted,
    "BatchResults": batch_results, "PushDetails": push_details, "Presence": presence,
    "Recipients": recipients,
    "Disconnect": disconnect_body, "DisconnectAccepted": disconnect_accepted,
    "TokenRequest": token_request, "Token": token, "Error": error,
}


def body(name: str) -> dict[str, Schema]:
    """``extend_schema(request=...)`` for a JSON body described in ``COMPONENTS``."""
    return {"application/json": ref(name)}


def errors(*statuses: int) -> dict[int, Schema]:
    """``extend_schema(responses=...)`` entries: these statuses answer ``Error``."""
    return {status: ref("Error") for status in statuses}


#: What any authenticated route may answer besides its own outcomes.
COMMON_ERRORS = (401, 403, 429, 503)
#: ... and a route that takes a body.
BODY_ERRORS = (400, 413, 415, *COMMON_ERRORS)


#: Bodies that may not be left out (an empty body is read as ``{}``, which they refuse).
REQUIRED_BODIES = {"PushBody", "PushBatch", "TokenRequest"}


def fill_components(result: Schema, generator: Any, request: Any, public: bool) -> Schema:
    """drf-spectacular postprocessing hook: the bodies above, with this node's limits, and
    which request bodies are required (it cannot tell for a schema given as a dict)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, build in COMPONENTS.items():
        schemas[name] = build()
    for item in result.get("paths", {}).values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            body_ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            if body_ref.rsplit("/", 1)[-1] in REQUIRED_BODIES:
                operation["requestBody"]["required"] = True
    return result


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Token <key>`` (``ApiKeyAuthentication``) as a security scheme."""

    target_class = "push_app.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> Schema:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>`, a key from `manage.py createapikey`"}
