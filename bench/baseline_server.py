"""The baseline: a bare ``websockets`` server doing the same job with nothing else.

Clients connect to ``/ws/`` and get a welcome; a control connection to ``/control`` sends
``{"broadcast": <data>}`` or ``{"users": [...], "data": ...}`` and the server writes the
push frame to the matching clients. Its figures are what the gateway's are divided by.

Run: ``python -m bench.baseline_server PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from websockets.asyncio.server import ServerConnection, broadcast, serve

SECRET = sys.argv[2] if len(sys.argv) > 2 else "baseline"
clients: dict[str, set[ServerConnection]] = {}
ids = itertools.count()


async def handler(ws: ServerConnection) -> None:
    path = urlsplit(ws.request.path if ws.request else "/")
    if path.path == "/control":
        async for raw in ws:
            order: dict[str, Any] = json.loads(raw)
            frame = json.dumps({"type": "push", "id": str(next(ids)), "topic": None,
                                "data": order["data"], "ts": 0}, separators=(",", ":"))
            if order.get("users") is None:
                broadcast([c for group in clients.values() for c in group], frame)
            else:
                broadcast([c for u in order["users"] for c in clients.get(u, ())], frame)
        return
    token = parse_qs(path.query).get("token", [""])[0]
    user = str(jwt.decode(token, SECRET, algorithms=["HS256"])["sub"])
    clients.setdefault(user, set()).add(ws)
    try:
        await ws.send(json.dumps({"type": "welcome", "user": user}))
        async for raw in ws:
            if raw == '{"type":"ping"}':
                await ws.send('{"type":"pong","ts":0}')
    finally:
        clients[user].discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None,
                     ping_interval=None, backlog=2048):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
