// Unit tests of gateway.js with a fake WebSocket and an injected clock: no server, no sleep.
// Run: node --test clients/js/test/unit.test.js  (tests/clients/test_js_node.py runs them from pytest)
import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, GatewayClient, RecentIds, refreshDelayMs, tokenExp } from "../gateway.js";

/** Timers on a manual clock: `advance(ms)` runs what falls due, in order. */
class Clock {
  constructor(startMs = 1_700_000_000_000) {
    this.nowMs = startMs;
    this.timers = new Map();
    this.nextId = 1;
  }
  now = () => this.nowMs;
  setTimeout = (fn, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.nowMs + Math.max(0, ms), fn });
    return id;
  };
  clearTimeout = (id) => this.timers.delete(id);
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.nowMs).sort((a, b) => a - b);
  }
  async advance(ms) {
    const until = this.nowMs + ms;
    for (let i = 0; i < 10000; i++) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at);
      if (due.length === 0) break;
      const [id, t] = due[0];
      this.timers.delete(id);
      this.nowMs = t.at;
      t.fn();
      await flush();
    }
    this.nowMs = until;
    await flush();
  }
}

async function flush() {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((resolve) => setImmediate(resolve));
}

/** A WebSocket the test drives: every instance is recorded in `FakeWS.all`. */
class FakeWS {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 1;
    this.sent = [];
    FakeWS.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000) {
    this.readyState = 3;
    this.closedWith = code;
  }
  serverSends(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }
  serverCloses(code, reason = "") {
    this.readyState = 3;
    this.onclose({ code, reason });
  }
  welcome(interval = 25, timeout = 60) {
    this.serverSends({ type: "welcome", session: "s", node: "n", user: "u1", heartbeat: { interval, timeout } });
  }
  acks() {
    return this.sent.filter((f) => f.type === "ack").map((f) => f.id);
  }
}

function jwt(exp) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64({ sub: "u1", exp })}.sig`;
}

function client(clock, options = {}) {
  FakeWS.all = [];
  return new GatewayClient("ws://gw.test/ws/", {
    token: "t0",
    WebSocket: FakeWS,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 1,
    ...options,
  });
}

const push = (id, extra = {}) => ({ type: "push", id, topic: null, data: { n: id }, ts: 1, ...extra });

test("backoff: full jitter under a ceiling doubling from 0.5 s to 30 s, reset after 30 s open", () => {
  let r = 1;
  const b = new Backoff({ random: () => r });
  const ceilings = Array.from({ length: 9 }, () => b.next());
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  r = 0.25;
  assert.equal(b.next(), 7500);
  b.closedAfter(29_999);
  assert.equal(b.next(), 7500);
  b.closedAfter(30_000);
  assert.equal(b.next(), 125);
});

test("dedupe memory is bounded and forgets the oldest first", () => {
  const ids = new RecentIds(3);
  for (const id of ["a", "b", "c", "d"]) ids.add(id);
  assert.equal(ids.size, 3);
  assert.equal(ids.has("a"), false);
  assert.equal(ids.has("d"), true);
});

test("refresh timing: 10 s before exp, or at 80% of a shorter lifetime", () => {
  assert.equal(refreshDelayMs(1000 + 3600, 1000), 3590_000);
  assert.equal(refreshDelayMs(1000 + 20, 1000), 16_000);
  assert.equal(refreshDelayMs(999, 1000), 0);
  assert.equal(tokenExp(jwt(1234)), 1234);
  assert.equal(tokenExp("garbage"), null);
});

test("pushes are handled in order, acked after the handler resolves, repeats acked without the handler", async () => {
  const clock = new Clock();
  const c = client(clock);
  const seen = [];
  let release;
  c.on("push", async (p) => {
    seen.push(p.id);
    if (p.id === "p1") await new Promise((resolve) => { release = resolve; });
  });
  c.connect();
  await flush();
  const ws = FakeWS.all[0];
  ws.welcome();
  ws.serverSends(push("p1"));
  ws.serverSends(push("p2"));
  await flush();
  assert.deepEqual(seen, ["p1"]);
  assert.deepEqual(ws.acks(), [], "no ack before the handler returns");
  release();
  await flush();
  assert.deepEqual(seen, ["p1", "p2"]);
  assert.deepEqual(ws.acks(), ["p1", "p2"]);
  ws.serverSends(push("p1", { redelivered: true }));
  await flush();
  assert.deepEqual(seen, ["p1", "p2"], "a repeat never reaches the application");
  assert.deepEqual(ws.acks(), ["p1", "p2", "p1"], "but is acked again");
  assert.equal(c.lastId, "p2");
});

test("heartbeat: ping at the welcome's interval", async () => {
  const clock = new Clock();
  const c = client(clock);
  c.connect();
  await flush();
  const ws = FakeWS.all[0];
  ws.welcome(5, 60);
  await clock.advance(4999);
  assert.equal(ws.sent.filter((f) => f.type === "ping").length, 0);
  await clock.advance(1);
  assert.equal(ws.sent.filter((f) => f.type === "ping").length, 1);
  ws.serverSends({ type: "pong", ts: 1 });
  await clock.advance(5000);
  assert.equal(ws.sent.filter((f) => f.type === "ping").length, 2);
  c.close();
});

test("reconnect with backoff and since = the last handled push; 4012 at once", async () => {
  const clock = new Clock();
  const c = client(clock);
  const states = [];
  c.on("state", (s) => states.push(s));
  c.on("push", () => {});
  c.connect();
  await flush();
  FakeWS.all[0].welcome();
  FakeWS.all[0].serverSends(push("p7"));
  await flush();
  FakeWS.all[0].serverCloses(1006);
  assert.deepEqual(clock.pending(), [500], "first retry within 0.5 s (random()=1: the ceiling)");
  await clock.advance(500);
  assert.equal(FakeWS.all.length, 2);
  assert.equal(FakeWS.all[1].url.searchParams.get("since"), "p7");
  FakeWS.all[1].serverCloses(1006); // never opened: the next ceiling doubles
  assert.deepEqual(clock.pending(), [1000]);
  await clock.advance(1000);
  FakeWS.all[2].welcome();
  FakeWS.all[2].serverCloses(4012);
  assert.deepEqual(clock.pending(), [0], "4012: no backoff");
  await clock.advance(0);
  assert.equal(FakeWS.all.length, 4);
  assert.deepEqual(states, ["connecting", "open", "connecting", "open", "connecting"]);
  c.close();
  assert.equal(c.state, "closed");
});

for (const code of [4009, 4010]) {
  test(`${code} stops the client: error with the code, then state closed, no reconnect`, async () => {
    const clock = new Clock();
    const c = client(clock, { getToken: async () => "t1" });
    const events = [];
    c.on("error", (e) => events.push(["error", e.code]));
    c.on("state", (s) => events.push(["state", s]));
    c.connect();
    await flush();
    FakeWS.all[0].welcome();
    FakeWS.all[0].serverCloses(code, "bye");
    await clock.advance(120_000);
    assert.deepEqual(events.slice(-2), [["error", code], ["state", "closed"]]);
    assert.equal(FakeWS.all.length, 1);
    assert.equal(c.closeCode, code);
  });
}

test("4011 with getToken: a new token, then reconnect; with a bare token: stop like 4010", async () => {
  const clock = new Clock();
  let n = 0;
  const c = client(clock, { token: undefined, getToken: async () => `t${++n}` });
  c.connect();
  await flush();
  assert.equal(FakeWS.all[0].url.searchParams.get("token"), "t1");
  FakeWS.all[0].welcome();
  FakeWS.all[0].serverCloses(4011);
  await clock.advance(500);
  assert.equal(FakeWS.all[1].url.searchParams.get("token"), "t2");
  c.close();

  const bare = client(clock);
  const errors = [];
  bare.on("error", (e) => errors.push(e.code));
  bare.connect();
  await flush();
  FakeWS.all[0].welcome();
  FakeWS.all[0].serverCloses(4011);
  await clock.advance(60_000);
  assert.deepEqual(errors, [4011]);
  assert.equal(FakeWS.all.length, 1);
  assert.equal(bare.state, "closed");
});

test("refresh: a new token 10 s before exp, on the same connection", async () => {
  const clock = new Clock();
  const nowS = clock.nowMs / 1000;
  const tokens = [jwt(nowS + 120), jwt(nowS + 240)];
  const c = client(clock, { token: undefined, getToken: async () => tokens.shift() });
  c.connect();
  await flush();
  const ws = FakeWS.all[0];
  ws.welcome(1000, 2000);
  await clock.advance(109_999);
  assert.equal(ws.sent.filter((f) => f.type === "refresh").length, 0);
  await clock.advance(1);
  const refresh = ws.sent.filter((f) => f.type === "refresh");
  assert.equal(refresh.length, 1);
  assert.equal(tokenExp(refresh[0].token), nowS + 240);
  ws.serverSends({ type: "refreshed", exp: nowS + 240 });
  assert.deepEqual(clock.pending().filter((d) => d < 500_000), [120_000]);
  assert.equal(FakeWS.all.length, 1, "no reconnect");
  c.close();
});

test("a page-relative url becomes ws:// or wss:// on the page's host", async () => {
  const clock = new Clock();
  globalThis.location = { href: "https://app.example.com/orders/" };
  try {
    FakeWS.all = [];
    const c = new GatewayClient("/ws/", { token: "t0", WebSocket: FakeWS, setTimeout: clock.setTimeout,
                                          clearTimeout: clock.clearTimeout, now: clock.now });
    c.connect();
    await flush();
    assert.equal(FakeWS.all[0].url.origin + FakeWS.all[0].url.pathname, "wss://app.example.com/ws/");
    c.close();
  } finally {
    delete globalThis.location;
  }
});
