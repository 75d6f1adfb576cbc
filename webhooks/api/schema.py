"""The webhooks API's part of the OpenAPI schema, as a drf-spectacular postprocessing hook
(after push_app's): its request body is required, which an inline schema cannot say."""

from __future__ import annotations

from typing import Any

WEBHOOKS_PATH = "/api/v1/webhooks"


def require_bodies(result: dict[str, Any], generator: Any, request: Any,
                   public: bool) -> dict[str, Any]:
    post = result.get("paths", {}).get(WEBHOOKS_PATH, {}).get("post", {})
    if "requestBody" in post:
        post["requestBody"]["required"] = True
    return result
