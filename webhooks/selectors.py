"""Reads of webhooks."""

from __future__ import annotations

from django.db.models import QuerySet

from push_app.models import ApiClient
from webhooks.models import Endpoint


def endpoint_list(*, client: ApiClient) -> QuerySet[Endpoint]:
    """The client's own endpoints, newest first."""
    return Endpoint.objects.filter(client=client).order_by("-created_at")
