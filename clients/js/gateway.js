// Push gateway client: an ES module for browsers and Node 18+, no dependencies.
//
// Implements the gateway contract (PROTOCOL.md v2, sections 1, 6 and 8): heartbeat at the
// welcome's interval, full-jitter reconnect backoff, the close codes, resume with `since`,
// dedupe by push id, ack after the handler, token refresh before `exp`.
//
//   import { GatewayClient } from "/static/gateway/gateway.js";
//   const client = new GatewayClient("wss://push.example.com/ws/", { getToken });
//   client.on("push", async (push) => { ... });   // acked once this resolves
//   client.connect();
//
// The same file is served by the gateway at /static/gateway/gateway.js and installs with
// npm from clients/js. docs/clients.md documents the API.

/** Close codes of the contract (PROTOCOL.md section 1). */
export const CloseCode = Object.freeze({
  UNAUTHORIZED: 4001,
  APP_CONNECTION_LIMIT: 4003,
  HEARTBEAT_TIMEOUT: 4008,
  REPLACED: 4009,
  DISCONNECTED: 4010,
  TOKEN_EXPIRED: 4011,
  DRAINING: 4012,
  FRAME_TOO_BIG: 4013,
  TOO_MANY_FRAMES: 4029,
  TOO_SLOW: 4030,
});

const OPEN = 1; // WebSocket.OPEN, the same in every implementation

/** An error the client reports through `on("error")`: `code` is a close code (number) or
 * an error frame's code (string), `reason` the server's words when it sent any. */
export class GatewayError extends Error {
  constructor(message, { code = null, reason = "", cause = undefined } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "GatewayError";
    this.code = code;
    this.reason = reason;
  }
}

/** Full-jitter exponential backoff: a random delay in [0, min(max, base * 2^attempt)),
 * the attempt count reset once a connection stayed open `resetAfterMs`. */
export class Backoff {
  constructor({ baseMs = 500, maxMs = 30000, resetAfterMs = 30000, random = Math.random } = {}) {
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.resetAfterMs = resetAfterMs;
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next connection attempt, in ms. */
  next() {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return this.random() * ceiling;
  }

  /** A connection that was open for `openMs` closed: reset when it lasted long enough. */
  closedAfter(openMs) {
    if (openMs >= this.resetAfterMs) this.attempt = 0;
  }
}

/** A bounded memory of recently handled push ids (oldest forgotten first). */
export class RecentIds {
  constructor(capacity = 10000) {
    this.capacity = capacity;
    this.ids = new Set();
  }

  has(id) {
    return this.ids.has(id);
  }

  add(id) {
    if (this.ids.has(id)) return;
    this.ids.add(id);
    while (this.ids.size > this.capacity) {
      this.ids.delete(this.ids.values().next().value);
    }
  }

  get size() {
    return this.ids.size;
  }
}

/** When to refresh a token that expires at `expS` (epoch s), seen at `nowS`: 10 s before
 * `exp`, or at 80% of a lifetime shorter than 50 s. Returns the delay in ms (>= 0). */
export function refreshDelayMs(expS, nowS, { marginS = 10 } = {}) {
  const left = expS - nowS;
  if (left <= 0) return 0;
  const delayS = left >= marginS * 5 ? left - marginS : left * 0.8;
  return Math.max(0, delayS * 1000);
}

/** The `exp` claim of a JWT (epoch s), or null when it cannot be read. */
export function tokenExp(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const json = decodeURIComponent(
      Array.from(atob(padded), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/**
 * One logical connection to the gateway, kept up across reconnects.
 *
 * Options: `token` (a fixed token) or `getToken` (async, called for the first connection,
 * after 4001/4011 and before `exp` to refresh); `WebSocket` (an implementation, default the
 * global one); `since` (the last push id handled in an earlier life of the app);
 * `dedupeSize` (ids remembered, default 10000); seams for tests: `setTimeout`,
 * `clearTimeout`, `now` (epoch ms), `random`, and `backoff` (`{baseMs, maxMs, resetAfterMs}`).
 */
export class GatewayClient {
  constructor(url, options = {}) {
    if (!options.token && typeof options.getToken !== "function") {
      throw new TypeError("GatewayClient needs options.token or options.getToken");
    }
    this.url = url;
    this.options = options;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (e.g. the ws package)");
    }
    this._setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this._now = options.now || (() => Date.now());
    this.backoff = new Backoff({ ...(options.backoff || {}), random: options.random || Math.random });
    this.recent = new RecentIds(options.dedupeSize || 10000);
    this.refreshMarginS = options.refreshMarginS ?? 10;

    this.state = "closed";
    /** The last push id whose handler returned: sent as `since` on every connection. */
    this.lastId = options.since || null;
    /** The close code that stopped the client (4009, 4010, or 4001/4011 with a bare token). */
    this.closeCode = null;
    /** The last `welcome` frame (its `recovery`, once the server resumes). */
    this.welcome = null;

    this._handlers = { push: [], state: [], error: [], welcome: [] };
    this._token = options.token || null;
    this._ws = null;
    this._stopped = true;
    this._openedAt = null;
    this._lastFrameAt = 0;
    this._timers = { heartbeat: null, refresh: null, reconnect: null };
    this._queue = Promise.resolve();
  }

  /** Add a handler: "push" (async, acked after it resolves), "state", "error", "welcome".
   * Returns a function that removes it. */
  on(event, handler) {
    if (!(event in this._handlers)) throw new TypeError(`unknown event ${event}`);
    this._handlers[event].push(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    const list = this._handlers[event] || [];
    const i = list.indexOf(handler);
    if (i >= 0) list.splice(i, 1);
  }

  /** Start connecting (and reconnecting) until close() or a code that says stop. */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this.closeCode = null;
    this.backoff.attempt = 0;
    this._open();
  }

  /** Close for good: no reconnect; state becomes "closed". */
  close() {
    this._stopped = true;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= OPEN) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this._setState("closed");
  }

  // --- connection --------------------------------------------------------------------

  async _open() {
    if (this._stopped) return;
    this._setState("connecting");
    let token;
    try {
      token = await this._tokenForConnect();
    } catch (err) {
      this._emit("error", new GatewayError(`getToken failed: ${err && err.message}`, { cause: err }));
      this._scheduleReconnect(this.backoff.next());
      return;
    }
    if (this._stopped) return;
    const url = new URL(this.url, globalThis.location ? globalThis.location.href : undefined);
    if (url.protocol === "http:") url.protocol = "ws:"; // a relative url in a page
    else if (url.protocol === "https:") url.protocol = "wss:";
    url.searchParams.set("token", token);
    if (this.lastId) url.searchParams.set("since", this.lastId);
    else url.searchParams.delete("since");
    let ws;
    try {
      ws = new this.WebSocketImpl(url.toString());
    } catch (err) {
      this._emit("error", new GatewayError(`cannot open ${this.url}: ${err && err.message}`, { cause: err }));
      this._scheduleReconnect(this.backoff.next());
      return;
    }
    this._ws = ws;
    this._openedAt = null;
    ws.onmessage = (event) => {
      if (ws === this._ws) this._onMessage(ws, event.data);
    };
    ws.onclose = (event) => {
      if (ws === this._ws) this._onClose(event.code, event.reason || "");
    };
    ws.onerror = () => {}; // a close event follows; its code says what happened
  }

  async _tokenForConnect() {
    const getToken = this.options.getToken;
    const exp = this._token ? tokenExp(this._token) : null;
    const fresh = this._token && (exp === null || exp - this._now() / 1000 > 1);
    if (fresh || typeof getToken !== "function") {
      if (!this._token) throw new GatewayError("no token");
      return this._token;
    }
    this._token = await getToken();
    return this._token;
  }

  _onClose(code, reason) {
    const openMs = this._openedAt === null ? 0 : this._now() - this._openedAt;
    const wasOpen = this._openedAt !== null;
    this._ws = null;
    this._openedAt = null;
    this._clearTimers();
    if (this._stopped) {
      this._setState("closed");
      return;
    }
    this.backoff.closedAfter(openMs);
    const bare = typeof this.options.getToken !== "function";
    if (code === CloseCode.REPLACED || code === CloseCode.DISCONNECTED ||
        (bare && (code === CloseCode.UNAUTHORIZED || code === CloseCode.TOKEN_EXPIRED))) {
      this.closeCode = code;
      this._stopped = true;
      this._emit("error", new GatewayError(`closed ${code}${reason ? ": " + reason : ""}`, { code, reason }));
      this._setState("closed");
      return;
    }
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.TOKEN_EXPIRED) {
      this._token = null; // ask the application for a new one
    }
    this._setState("connecting");
    if (code === CloseCode.DRAINING && wasOpen) {
      this._scheduleReconnect(0);
    } else {
      this._scheduleReconnect(this.backoff.next());
    }
  }

  _scheduleReconnect(delayMs) {
    if (this._stopped) return;
    this._timers.reconnect = this._setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delayMs);
  }

  _send(ws, frame) {
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false; // closing under us: its close event follows
    }
  }

  // --- frames ------------------------------------------------------------------------

  _onMessage(ws, raw) {
    this._lastFrameAt = this._now();
    let frame;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        this._onWelcome(ws, frame);
        break;
      case "push":
        this._enqueue(ws, frame);
        break;
      case "refreshed":
        if (typeof frame.exp === "number") this._scheduleRefresh(frame.exp);
        break;
      case "error":
        if (frame.code === "bad_token") {
          this._emit("error", new GatewayError(`refresh refused: ${frame.detail || ""}`, { code: "bad_token" }));
        } else if (frame.code !== "bad_ack") {
          this._emit("error", new GatewayError(frame.detail || frame.code, { code: frame.code }));
        }
        break;
      default:
        break; // pong and anything newer
    }
  }

  _onWelcome(ws, frame) {
    this.welcome = frame;
    this._openedAt = this._now();
    this._setState("open");
    const hb = frame.heartbeat || {};
    const intervalMs = Math.max(1, Number(hb.interval) || 25) * 1000;
    const timeoutMs = Math.max(1, Number(hb.timeout) || 60) * 1000;
    const beat = () => {
      if (ws !== this._ws) return;
      if (this._now() - this._lastFrameAt > timeoutMs) {
        // Nothing from the server for the whole timeout: the connection is dead.
        try { ws.close(); } catch { /* closing */ }
        this._onClose(1006, "no frame from the server within the heartbeat timeout");
        return;
      }
      this._send(ws, { type: "ping" });
      this._timers.heartbeat = this._setTimeout(beat, intervalMs);
    };
    this._timers.heartbeat = this._setTimeout(beat, intervalMs);
    const exp = this._token ? tokenExp(this._token) : null;
    if (exp !== null && typeof this.options.getToken === "function") this._scheduleRefresh(exp);
    this._emit("welcome", frame);
  }

  _scheduleRefresh(expS) {
    if (this._timers.refresh !== null) this._clearTimeout(this._timers.refresh);
    const ws = this._ws;
    const delay = refreshDelayMs(expS, this._now() / 1000, { marginS: this.refreshMarginS });
    this._timers.refresh = this._setTimeout(async () => {
      this._timers.refresh = null;
      if (ws !== this._ws) return;
      let token;
      try {
        token = await this.options.getToken();
      } catch (err) {
        this._emit("error", new GatewayError(`getToken failed: ${err && err.message}`, { cause: err }));
        return;
      }
      if (ws !== this._ws) return;
      this._token = token;
      this._send(ws, { type: "refresh", token });
    }, delay);
  }

  // --- pushes: one at a time, in order, acked after the handlers ----------------------

  _enqueue(ws, frame) {
    this._queue = this._queue.then(() => this._handle(ws, frame));
  }

  async _handle(ws, frame) {
    const id = frame.id;
    if (typeof id !== "string") return;
    if (this.recent.has(id)) {
      this._send(ws, { type: "ack", id }); // a repeat: settle it again, never hand it out twice
      return;
    }
    const push = { id, topic: frame.topic ?? null, data: frame.data, ts: frame.ts };
    if (frame.redelivered) push.redelivered = true;
    try {
      for (const handler of this._handlers.push.slice()) await handler(push);
    } catch (err) {
      this._emit("error", new GatewayError(`push handler failed for ${id}: ${err && err.message}`, { cause: err }));
      return; // not acked: the gateway sends it again (kept pushes)
    }
    this.recent.add(id);
    this.lastId = id;
    this._send(ws, { type: "ack", id });
  }

  // --- events ------------------------------------------------------------------------

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  _emit(event, value) {
    for (const handler of this._handlers[event].slice()) {
      try {
        handler(value);
      } catch (err) {
        if (event !== "error") this._emit("error", new GatewayError(`${event} handler failed`, { cause: err }));
      }
    }
  }

  _clearTimers() {
    for (const key of Object.keys(this._timers)) {
      if (this._timers[key] !== null) this._clearTimeout(this._timers[key]);
      this._timers[key] = null;
    }
  }
}

export default GatewayClient;
