"""A v1 database migrates in place to apps (PROTOCOL.md section 9), on SQLite and
PostgreSQL: its keys, tokens, pushes and sessions belong to ``default`` afterwards, and a
node of the release before apps can still write to the migrated database during a rolling
upgrade (the new columns have database defaults).

The v1 rows are written with the v1 column lists, as a v1 node wrote them, through raw SQL
(the models of this release no longer match that schema).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Api, make_token, recv_json, recv_push, ws_connect
from tests.support.gateway import base_env, manage, start_gateway

pytestmark = pytest.mark.e2e

#: The last migrations before apps.
V1_STATE = (("push_app", "0004_api_rejections"), ("sessions_app", "0002_console_permissions"))

#: What a v1 node inserts, column for column (no ``app``, no ``scopes``, no ``apps``).
V1_WRITES = """
import json
from datetime import datetime, timezone
from django.db import connection
args = {args}
now = datetime.now(timezone.utc)
with connection.cursor() as c:
    c.execute("INSERT INTO push_app_apiclient (name, key_prefix, key_hash, is_active, "
              "created_at) VALUES (%s, %s, %s, %s, %s)",
              [args["client"], args["prefix"], args["hash"], True, now])
    c.execute("SELECT id FROM push_app_apiclient WHERE name = %s", [args["client"]])
    client_id = c.fetchone()[0]
    c.execute("INSERT INTO sessions_app_node (id, address, broker, started_at, last_seen, "
              "connections, users) VALUES (%s, %s, %s, %s, %s, %s, %s)",
              [args["node"], "10.0.0.9:8000", "local", now, now, 1, 1])
    c.execute("INSERT INTO sessions_app_sessionrecord (id, user_id, node_id, connected_at, "
              "last_seen, remote_addr, user_agent, meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
              [args["session"], "v1-user", args["node"], now, now, "", "", "{{}}"])
    c.execute("INSERT INTO push_app_pushlog (id, client_id, status, broadcast, users, "
              "target_count, data_json, payload_bytes, accepted_node, created_at, delivered, "
              "acked, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
              [args["push"], client_id, "delivered", False, '["v1-user"]', 1, "1", 1,
               args["node"], now, 1, 1, ""])
print("written")
"""

READ_BACK = """
import json
from push_app.models import ApiClient, App, PushLog
from sessions_app.models import SessionRecord
args = {args}
client = ApiClient.objects.get(name=args["client"])
print(json.dumps({{
    "apps": list(App.objects.values_list("id", flat=True)),
    "client": [client.app_id, client.scopes],
    "push": PushLog.objects.get(pk=args["push"]).app,
    "session": SessionRecord.objects.get(pk=args["session"]).app,
}}))
"""


def v1_rows(tag: str) -> dict[str, str]:
    prefix = secrets.token_hex(4)
    key = f"gw_{prefix}_{secrets.token_urlsafe(32)}"
    return {"client": f"v1-{tag}", "prefix": prefix, "key": key,
            "hash": hashlib.sha256(key.encode()).hexdigest(), "node": f"v1-node-{tag}",
            "session": f"{tag}{secrets.token_hex(8)}", "push": f"{secrets.token_hex(16)}"}


@contextlib.contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    if kind == "sqlite":
        yield {}
        return
    from tests.support.cluster import fresh_database
    with fresh_database("migr") as url:
        yield {"DATABASE_URL": url}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_v1_database_migrates_in_place(tmp_path: Path, kind: str) -> None:
    with database(kind) as extra:
        data_dir = tmp_path / "migr"
        data_dir.mkdir()
        env = base_env(data_dir, "migr", extra)
        for app, migration in V1_STATE:
            manage(env, "migrate", app, migration, "--no-input", "-v", "0", timeout=120)
        old = v1_rows("old")
        assert "written" in manage(env, "shell", "-c", V1_WRITES.format(args=json.dumps(old)))

        manage(env, "migrate", "--no-input", "-v", "0", timeout=120)
        state = json.loads(manage(env, "shell", "-c",
                                  READ_BACK.format(args=json.dumps(old))).splitlines()[-1])
        assert state == {"apps": ["default"], "client": ["default", "push,presence,manage"],
                         "push": "default", "session": "default"}

        # A node of the release before apps writes its v1 rows into the migrated database
        # (a rolling upgrade): they land in ``default``.
        during = v1_rows("during")
        assert "written" in manage(env, "shell", "-c",
                                   V1_WRITES.format(args=json.dumps(during)))
        state = json.loads(manage(env, "shell", "-c",
                                  READ_BACK.format(args=json.dumps(during))).splitlines()[-1])
        assert state["client"] == ["default", "push,presence,manage"]
        assert (state["push"], state["session"]) == ("default", "default")

        # The v1 key and a v1 token (no kid) work on a node of this release.
        gw = start_gateway(tmp_path, node_id="migr", env=extra)
        try:
            async with Api(gw, old["key"]) as api:
                assert (await api.get_push(old["push"]))["status"] == "delivered"
                ws = await ws_connect(gw, make_token("v1-user"))
                try:
                    assert (await recv_json(ws))["type"] == "welcome"
                    push_id = await api.push_to(["v1-user"], {"after": "migration"})
                    assert (await recv_push(ws))["id"] == push_id
                finally:
                    await ws.close()
            async with Api(gw, during["key"]) as api:
                response = await api.http.post("/api/v1/tokens", json={"user": "v1-user"})
                assert response.status_code == 201, response.text
        finally:
            gw.stop()
