// A gateway.js client in Node, driven by the Python end-to-end tests (tests/clients/):
// prints what the application sees as JSON lines on stdout; "close" on stdin closes it.
//
// Environment: GW_URL (ws://…/ws/), GW_USER, GW_SECRET (HS256 secret for getToken),
// GW_TOKEN_TTL (s), GW_MODE ("getToken" or "token": a bare token, minted at start).
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";

import WebSocket from "ws";

import { GatewayClient } from "../gateway.js";

const env = process.env;
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

function sign(sub, ttlS) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + ttlS })}`;
  return `${body}.${createHmac("sha256", env.GW_SECRET).update(body).digest("base64url")}`;
}

const ttl = Number(env.GW_TOKEN_TTL || 600);
const options = { WebSocket };
if (env.GW_MODE === "token") {
  options.token = sign(env.GW_USER, ttl);
} else {
  options.getToken = async () => {
    emit({ kind: "token" });
    return sign(env.GW_USER, ttl);
  };
}

const client = new GatewayClient(env.GW_URL, options);
client.on("state", (state) => emit({ kind: "state", state }));
client.on("welcome", (w) => emit({ kind: "welcome", session: w.session, node: w.node, recovery: w.recovery ?? null }));
client.on("error", (err) => emit({ kind: "error", code: err.code, message: err.message }));
client.on("push", async (push) => {
  emit({ kind: "push", id: push.id, data: push.data, redelivered: Boolean(push.redelivered) });
});
client.on("state", (state) => {
  if (state === "closed") emit({ kind: "stopped", closeCode: client.closeCode });
});
client.connect();

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "close") {
    client.close();
    setTimeout(() => process.exit(0), 100);
  }
});
