"""Request middleware of the gateway."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class ChunkedBodyLengthMiddleware:
    """Gives a body sent without ``Content-Length`` (``Transfer-Encoding: chunked``) its length.

    The ASGI handler has the whole body by now, but Django REST framework reads no body at all
    when ``CONTENT_LENGTH`` is missing: a chunked JSON request would be parsed as empty.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.META.get("CONTENT_LENGTH") and "chunked" in request.META.get(
            "HTTP_TRANSFER_ENCODING", ""
        ).lower():
            request.META["CONTENT_LENGTH"] = str(len(request.body))
        return self.get_response(request)
