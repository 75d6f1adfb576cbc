"""Bad input against real servers (issue #10): JSON answers everywhere under /api/, a quiet
log, and one client's poison push harming no one else's, under Daphne and uvicorn."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.gateway import SERVERS

pytestmark = pytest.mark.e2e

BIG = b'{"user": "' + b"x" * (5 * 1024 * 1024 + 10) + b'"}'


@pytest.mark.parametrize("server", SERVERS)
async def test_errors_under_api_are_json_and_bad_hosts_are_logged_quietly(start_node, server):
    gw = start_node(f"input-{server}", server=server)
    key = gw.api_key("input")
    auth = {"Authorization": f"Token {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        answers = {
            "unknown path": await http.post("/api/v1/nope", content=b"{}", headers=auth),
            "unknown method": await http.put("/api/v1/tokens", content=b"{}", headers=auth),
            "5 MiB tokens": await http.post("/api/v1/tokens", content=BIG, headers=auth),
            "5 MiB disconnect": await http.post("/api/v1/users/u1/disconnect", content=BIG,
                                                headers=auth),
            "5 MiB push": await http.post("/api/v1/push", content=BIG, headers=auth),
            "deep tokens": await http.post("/api/v1/tokens", headers=auth,
                                           content=b"[" * 100_000 + b"]" * 100_000),
            "bad host": await http.post("/api/v1/tokens", content=b"{}",
                                        headers={**auth, "Host": "evil.example"}),
            "bad host again": await http.get("/api/v1/push/x", headers={"Host": "evil.example"}),
            "bad host push": await http.post("/api/v1/push", content=b"{}",
                                             headers={**auth, "Host": "evil.example"}),
        }
    expected = {"unknown path": 404, "unknown method": 405, "5 MiB tokens": 413,
                "5 MiB disconnect": 413, "5 MiB push": 413, "deep tokens": 400,
                "bad host": 400, "bad host again": 400, "bad host push": 400}
    for name, response in answers.items():
        assert response.status_code == expected[name], (name, response.text[:200])
        assert response.headers["content-type"] == "application/json", name
        assert set(response.json()) >= {"error", "detail"}, name
    log = gw.log()
    # Once a minute per host, not per request, and no other line about these requests.
    assert [line for line in log.splitlines() if "evil.example" in line] == [
        line for line in log.splitlines() if "WARNING django.security.DisallowedHost" in line]
    assert len([line for line in log.splitlines() if "evil.example" in line]) == 1, log[-3000:]
    assert "Bad Request: /api/v1/push/x" not in log
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


async def test_a_poison_push_fails_alone_among_concurrent_pushes(start_node):
    gw = start_node("poison")
    keys = [gw.api_key("victim"), gw.api_key("attacker")]
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        def push(key: str, body: bytes):
            return http.post("/api/v1/push", content=body, headers={
                "Authorization": f"Token {key}", "Content-Type": "application/json"})

        answers = await asyncio.gather(
            *(push(keys[0], b'{"users": ["u%d"], "data": %d}' % (n, n)) for n in range(40)),
            *(push(keys[1], b'{"users": ["u1"], "data": 1, "topic": "\\ud800"}')
              for _ in range(10)),
        )
    assert [a.status_code for a in answers] == [202] * 40 + [400] * 10
