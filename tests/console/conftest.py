"""Fixtures of the operator console tests: a superuser and a view-only staff client. The
installed ``node`` (whose relay keeps what the admin submits in ``node.relay.pending``)
comes from ``tests/conftest.py``; rows of nodes, sessions and pushes from
``tests/support/console.py``."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from gateway_node.node import GatewayNode
from tests.support.console import VIEW_PERMS


@pytest.fixture
def operator(admin_client: Client, node: GatewayNode) -> Client:
    """A superuser's browser."""
    return admin_client


@pytest.fixture
def viewer(db: Any, node: GatewayNode) -> Client:
    """A staff member with only the view permissions of the console's models."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=VIEW_PERMS))
    client = Client()
    client.force_login(user)
    return client
