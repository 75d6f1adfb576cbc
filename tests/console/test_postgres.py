"""The console's queries on PostgreSQL: the user search (JSON containment there, ``instr``
on SQLite) and the dashboard's aggregates, in a fresh database of their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.gateway import base_env, manage
from tests.support.services import database_url

pytestmark = pytest.mark.postgres

SCRIPT = """
import json
from django.db import connection
from django.utils import timezone
from push_app.models import PushLog
from push_app.selectors import users_contain_q
from push_app.services import new_push_id
from console.admin_site import dashboard_data, dashboard_json
assert connection.vendor == "postgresql", connection.vendor
ids = {}
for name, users in (("both", ["u1", "u2"]), ("u10", ["u10"]), ("upper", ["U1"])):
    log = PushLog.objects.create(id=new_push_id(), users=users, target_count=len(users),
                                 data_json="{}", created_at=timezone.now(), status="failed")
    ids[log.id] = name
found = sorted(ids[i] for i in PushLog.objects.filter(users_contain_q("u1"))
               .values_list("id", flat=True))
print(json.dumps({"found": found, "dashboard": dashboard_json(dashboard_data())}))
"""


@pytest.fixture
def pg_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    import psycopg
    from psycopg import sql

    admin_url = database_url()
    name = f"console_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    try:
        env = base_env(tmp_path, "console-pg", {"DATABASE_URL": url})
        manage(env, "migrate", "--no-input", "-v", "0", timeout=120)
        yield env
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def test_user_search_and_dashboard_on_postgresql(pg_env: dict[str, str]) -> None:
    out = json.loads(manage(pg_env, "shell", "-c", SCRIPT).strip().splitlines()[-1])
    assert out["found"] == ["both"]  # not u10, not U1
    totals = out["dashboard"]["totals"]
    assert totals["last_hour"] == {"pushes": 3, "delivered": 0, "acked": 0, "failed": 3}
    series = out["dashboard"]["series"]
    assert len(series) == 60 and sum(b["failed"] for b in series) == 3
    assert len(out["dashboard"]["failures"]) == 3


LOCKOUT_SCRIPT = """
import json
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
assert connection.vendor == "postgresql", connection.vendor
User.objects.create_user("ops", password="right-password-123", is_staff=True)
def login(password, ip):
    client = Client(HTTP_HOST="127.0.0.1")
    response = client.post("/admin/login/", {"username": "ops", "password": password,
                                            "next": "/admin/"}, REMOTE_ADDR=ip)
    return response.status_code, "_auth_user_id" in client.session
for _ in range(8):
    login("wrong", "203.0.113.9")
print(json.dumps({"attacker": login("right-password-123", "203.0.113.9"),
                  "office": login("right-password-123", "198.51.100.7")}))
"""


def test_admin_login_lockout_on_postgresql(pg_env: dict[str, str]) -> None:
    """django-axes' attempts live in the database: the lockout holds on PostgreSQL too."""
    out = json.loads(manage(pg_env, "shell", "-c", LOCKOUT_SCRIPT).strip().splitlines()[-1])
    assert out == {"attacker": [429, False], "office": [302, True]}
