// Types of gateway.js (the push gateway's client module). docs/clients.md has the details.

export declare const CloseCode: Readonly<{
  UNAUTHORIZED: 4001;
  APP_CONNECTION_LIMIT: 4003;
  HEARTBEAT_TIMEOUT: 4008;
  REPLACED: 4009;
  DISCONNECTED: 4010;
  TOKEN_EXPIRED: 4011;
  DRAINING: 4012;
  FRAME_TOO_BIG: 4013;
  TOO_MANY_FRAMES: 4029;
  TOO_SLOW: 4030;
}>;

/** A push as the application sees it. */
export interface Push {
  id: string;
  topic: string | null;
  data: unknown;
  /** Epoch ms when the gateway accepted the push. */
  ts: number;
  /** Present (true) when the gateway sends a kept push again to a new connection. */
  redelivered?: boolean;
}

export type ConnectionState = "connecting" | "open" | "closed";

export interface Welcome {
  type: "welcome";
  session: string;
  node: string;
  user: string;
  heartbeat: { interval: number; timeout: number };
  recovery?: { since: string; complete: boolean; replayed: number };
}

export declare class GatewayError extends Error {
  /** A close code (4009, 4010, ...) or an error frame's code ("bad_token", ...). */
  code: number | string | null;
  reason: string;
}

/** Anything shaped like the browser's WebSocket (the `ws` package on Node 18-20). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface GatewayClientOptions {
  /** A fixed token: no refresh, and 4001/4011 stop the client like 4010. */
  token?: string;
  /** Called for the first connection, after 4001/4011, and before `exp` to refresh. */
  getToken?: () => Promise<string>;
  WebSocket?: new (url: string) => WebSocketLike;
  /** The last push id handled in an earlier life of the application. */
  since?: string;
  /** How many handled push ids are remembered for dedupe (default 10000). */
  dedupeSize?: number;
  /** Seconds before `exp` to refresh (default 10; 80% of a lifetime under 5x that). */
  refreshMarginS?: number;
  backoff?: { baseMs?: number; maxMs?: number; resetAfterMs?: number };
  // Test seams.
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  now?: () => number;
  random?: () => number;
}

export declare class GatewayClient {
  constructor(url: string, options: GatewayClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The last push id whose handler returned (sent as `since` on reconnect). */
  readonly lastId: string | null;
  /** The close code that stopped the client, if one did. */
  readonly closeCode: number | null;
  readonly welcome: Welcome | null;
  on(event: "push", handler: (push: Push) => void | Promise<void>): () => void;
  on(event: "state", handler: (state: ConnectionState) => void): () => void;
  on(event: "error", handler: (error: GatewayError) => void): () => void;
  on(event: "welcome", handler: (welcome: Welcome) => void): () => void;
  off(event: "push" | "state" | "error" | "welcome", handler: (...args: never[]) => unknown): void;
  connect(): void;
  close(): void;
}

export declare class Backoff {
  constructor(options?: { baseMs?: number; maxMs?: number; resetAfterMs?: number; random?: () => number });
  attempt: number;
  next(): number;
  closedAfter(openMs: number): void;
}

export declare class RecentIds {
  constructor(capacity?: number);
  readonly size: number;
  has(id: string): boolean;
  add(id: string): void;
}

export declare function refreshDelayMs(expS: number, nowS: number, options?: { marginS?: number }): number;
export declare function tokenExp(token: string): number | null;

export default GatewayClient;
