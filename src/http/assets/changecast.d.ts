// Generated from clients/js/packages/client/src/changecast.d.ts by clients/js/scripts/build.mjs: edit there.
// TypeScript declarations of the changecast client: of @changecast/client, and of the
// service's GET /changecast.js (served at GET /changecast.d.ts: save it next to a copy of
// /changecast.js, or declare a module of that name with them).
// The event shapes are the wire format of API.md §4, §6, §8 and §10.

/** A row as JSON; watched tables decide the columns. */
export type Row = { id?: string | number; [column: string]: unknown };

/** `created` | `updated` | `deleted` (API.md §4). */
export type EventKind = 'created' | 'updated' | 'deleted';

/** One row change (API.md §4). `R` is the row type of the resource. */
export interface ResourceChange<R extends Row = Row, T extends string = string> {
  type: 'resource_change';
  /** Opaque cursor: resume from it with `lastEventId`. */
  id: string;
  event: EventKind;
  resource_type: T;
  tenant_id: string;
  /** The row's id column as a string, whatever its name and type. */
  resource_id: string;
  /** The new row; the old row for `deleted`. */
  resource: R;
  /** ISO 8601 commit time. */
  occurred_at: string;
  /** `updated` only: the columns whose values differ. */
  changed?: string[];
  /** `updated` only: the previous values of exactly the `changed` columns. */
  old?: Partial<R>;
}

/** An application event from `changecast.publish()` (API.md §8). */
export interface AppEvent<P = unknown, T extends string = string> {
  type: 'app_event';
  id: string;
  topic: T;
  tenant_id: string;
  payload: P;
  occurred_at: string;
}

/** Refetch your state: the stream could not continue exactly (API.md §4). */
export interface Resync {
  type: 'resync';
  reason: 'cursor_expired' | 'cursor_invalid' | 'truncated' | 'bulk_change' | 'unknown_change' | (string & {});
  /** Where the stream continues from. */
  id?: string;
}

/** Live statistics of the tenant (API.md §10). */
export interface Stats {
  type?: 'stats';
  tenant_id: string;
  subscribers: { sse: number; ws: number };
  events_per_minute: Record<string, number>;
  last_event_at: string | null;
  server_time: string;
}

/** `GET /v1/snapshot` (API.md §5b): current rows by resource type, and where to stream on. */
export interface Snapshot<Rows extends Record<string, Row> = Record<string, Row>> {
  cursor: string;
  resources: { [T in keyof Rows]?: Rows[T][] } & Record<string, Row[]>;
  truncated: boolean;
}

/** WebSocket frames the server sends (API.md §6). */
export type ServerMessage =
  | { type: 'connection_established'; tenant_id: string }
  | {
      type: 'subscription_confirmed';
      id?: string;
      resource_types: string[] | null;
      events: EventKind[] | null;
      topics?: string[] | null;
      filter?: string[] | null;
      ids?: string[] | null;
    }
  | { type: 'pong' }
  | { type: 'heartbeat' }
  | { type: 'auth_expired' }
  | { type: 'error'; code: string; message: string }
  | ({ type: 'stats' } & Stats)
  | ResourceChange
  | AppEvent
  | Resync;

/** WebSocket frames a client sends (API.md §6). */
export type ClientMessage =
  | {
      type: 'subscribe';
      resource_types?: string[];
      events?: EventKind[];
      topics?: string[];
      filter?: string[];
      ids?: string[];
      last_event_id?: string;
    }
  | { type: 'unsubscribe' }
  | { type: 'ping' }
  | { type: 'get_stats' };

export type Status = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'closed';
export type Transport = 'sse' | 'ws' | 'auto';

/**
 * Why the client is reconnecting or stopped, e.g. `token_expired`, `invalid_filter`, or
 * `forbidden` (the request lies outside the token's scope; the client stops, it does not
 * retry).
 */
export interface ClientError {
  code: string;
  message: string;
}

/**
 * A row filter (API.md §9): `'state=eq.open'`, a list of them (all must hold), or an
 * object `{ state: 'eq.open', priority: 'gt.2', id: ['in', [1, 2]] }`.
 */
export type RowFilter =
  | string
  | string[]
  | Record<string, string | ['in', Array<string | number>] | string[]>;

/** What a subscription selects; every field optional (default: everything). */
export interface Selection {
  /** Resource types; with neither `types` nor `topics`, every type and topic. */
  types?: string[] | string;
  events?: EventKind[] | string;
  /** Application event topics, exact or a prefix ending in `*`. */
  topics?: string[] | string;
  filter?: RowFilter;
  /** Only these resources, by `resource_id`. */
  ids?: Array<string | number> | string;
}

export interface ChangecastOptions extends Selection {
  /** Origin (and path prefix) of the service; default the page's own. */
  baseUrl?: string;
  /** A subscriber JWT. */
  token?: string;
  /** Called for the first token (when `token` is absent) and whenever one expires. */
  getToken?: () => string | Promise<string>;
  /** Default `'auto'`: WebSocket where it connects, SSE otherwise. */
  transport?: Transport;
  /** Cursor to resume from (e.g. one kept across page loads). */
  lastEventId?: string;
  /**
   * A connection silent this long (no event, no keepalive) is reopened; default 45000,
   * 0 never. Keep it above the service's CHANGECAST_KEEPALIVE (default 15 s).
   */
  silenceTimeoutMs?: number;
  /** Rows per type in snapshots (server default 1000, at most 10000). */
  limit?: number;
  /**
   * A transaction bringing more events than this (of the selection) arrives as one
   * `resync` with reason `'bulk_change'` instead (API.md §5, at most 10000). In snapshot
   * mode (`startFromSnapshot`) the default is 1000, and such a resync reloads the
   * snapshot rather than applying the events one by one; `false` asks for every event.
   * With `start()`, sent only when set.
   */
  maxTxnEvents?: number | false;

  /** @deprecated use `on('change', fn)`. */
  onChange?: (change: ResourceChange) => void;
  /** @deprecated use `on('event', fn)`. */
  onEvent?: (event: AppEvent) => void;
  /** @deprecated use `on('snapshot', fn)`; receives the rows by type. */
  onSnapshot?: (resources: Snapshot['resources'], snapshot: Snapshot) => void;
  /** @deprecated use `on('resync', fn)`. */
  onResync?: (info: Resync) => void;
  /** @deprecated use `on('status', fn)`. */
  onStatus?: (status: Status, detail: ClientError | null) => void;
  /** @deprecated use `on('error', fn)`. */
  onError?: (error: ClientError) => void;
}

/** Handler argument for each built-in name; any other name is a resource type or topic. */
export interface BuiltinEvents {
  change: ResourceChange;
  event: AppEvent;
  resync: Resync;
  snapshot: Snapshot;
  error: ClientError;
  stats: Stats;
}

/**
 * Maps resource type names to row types and topic names to payload types, so
 * `new Changecast<{ ticket: Ticket }, { config_update: ConfigUpdate }>(…)` types the
 * handlers of `on('ticket', …)` and `on('config_update', …)`.
 */
export class Changecast<
  Types extends Record<string, Row> = Record<string, Row>,
  Topics extends Record<string, unknown> = Record<string, unknown>,
> {
  constructor(options: ChangecastOptions);
  static readonly VERSION: string;

  readonly options: ChangecastOptions;
  /** 'connecting' | 'live' | 'reconnecting' | 'closed' ('idle' before start). */
  readonly status: Status;
  /** Why the client stopped (status 'closed') or last failed; null while fine. */
  readonly error: ClientError | null;
  /** Cursor of the last event received: where a reconnect resumes. */
  readonly lastEventId: string | null;
  /** When the last change or event arrived. */
  readonly lastEventAt: Date | null;
  /** 'ws' or 'sse': the transport of the current connection. */
  readonly connectedVia: 'ws' | 'sse' | null;
  /** The current selection, normalised. */
  readonly filter: {
    types: string[] | null;
    events: string[] | null;
    topics: string[] | null;
    filter: string[] | null;
    ids: string[] | null;
  };

  on(name: 'status', fn: (status: Status, detail: ClientError | null) => void): () => void;
  on<K extends keyof BuiltinEvents>(name: K, fn: (event: BuiltinEvents[K]) => void): () => void;
  on<K extends keyof Types & string>(name: K, fn: (change: ResourceChange<Types[K], K>) => void): () => void;
  on<K extends keyof Topics & string>(name: K, fn: (event: AppEvent<Topics[K], K>) => void): () => void;
  on(name: string, fn: (event: ResourceChange | AppEvent) => void): () => void;

  /** Streams changes, from `lastEventId` when set. */
  start(): this;
  /** Loads the snapshot (retrying while the service is away), then streams from its cursor. */
  startFromSnapshot(): Promise<void>;
  /** Changes the selection live, losing nothing committed meanwhile. */
  subscribe(selection: Selection): Promise<void>;
  /** One snapshot of the current selection's rows (API.md §5b). */
  snapshot(limit?: number): Promise<Snapshot<Types>>;
  /** The tenant's live statistics (API.md §10). */
  stats(): Promise<Stats>;
  close(): void;
}

export default Changecast;

declare global {
  interface Window {
    Changecast: typeof Changecast;
  }
}
