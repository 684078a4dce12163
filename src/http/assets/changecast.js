// Generated from clients/js/packages/client/src/changecast.js by clients/js/scripts/build.mjs: edit there.
/*
 * changecast — the client for changecast's streams (API.md §4–§6, §8–§11). No dependencies.
 *
 * One source, clients/js/packages/client/src/changecast.js, makes the npm package
 * @changecast/client (ESM and CommonJS) and the service's GET /changecast.js (a UMD
 * script); `npm run build` in clients/js writes both.
 *
 *   const cc = new Changecast({
 *     baseUrl: '',                          // default: this page's origin
 *     token: 'eyJ…',                        // and/or getToken: async () => fetchFreshToken()
 *     transport: 'auto',                    // 'sse' | 'ws' | 'auto' (WebSocket where it connects)
 *     types: ['ticket', 'agent'],           // resource types (default: all)
 *     events: ['created', 'updated'],       // default: all
 *     topics: ['config_update', 'agent:*'], // application events (§8)
 *     filter: ['state=eq.open'],            // row filters (§9); or { state: 'eq.open' }
 *     ids: ['42'],                          // only these resources
 *     maxTxnEvents: 1000,                   // snapshot mode's default: a bigger transaction
 *                                           // reloads the snapshot (false: every event)
 *   });
 *   const off = cc.on('ticket', change => …);  // a resource type, a topic (or 'prefix:*'), or
 *                                              // 'change', 'event', 'resync', 'status',
 *                                              // 'snapshot', 'error'; returns the unsubscribe
 *   await cc.startFromSnapshot();              // or cc.start() for changes only
 *   cc.subscribe({ types: ['agent'] });        // change the filter live, losing nothing
 *   cc.status;                                 // 'connecting' | 'live' | 'reconnecting' | 'closed'
 *   cc.close();
 *
 * SSE is read with fetch() rather than EventSource, with the same wire protocol: it sends
 * the token in the Authorization header instead of the URL, sees HTTP status codes (an
 * expired token is told apart from a network error) and sees the stream's first `id:`,
 * so a filter change before the first event still resumes from the right place.
 *
 * After every disconnect it resumes from the last id it saw, drops events it has already
 * delivered (a resume may repeat a few, always with the same id), asks `getToken` for a
 * fresh token when the old one expires (without `getToken` it stops with status 'closed'
 * and `error.code === 'token_expired'`), retries with backoff (the first snapshot too),
 * and after a `resync` in snapshot mode reloads the snapshot before streaming on — as it
 * does when one transaction brings more than `maxTxnEvents` changes (`bulk_change`).
 *
 * A request the token's scope does not allow (API.md §3c: a type or topic outside it,
 * stats refused) is not retried: the client stops with status 'closed' and
 * `error.code === 'forbidden'` (HTTP 403 on SSE and snapshots, an `error` frame on
 * WebSocket), since asking again would be refused again. `stats()` rejects with it.
 *
 * Outside a browser (Node 18+, Deno, Bun) give `baseUrl`; WebSocket is used where the
 * runtime has a global `WebSocket`, SSE otherwise.
 *
 * Served by the service at GET /changecast.js. Both ways of loading work:
 * `import { Changecast } from '/changecast.js'` and a plain `<script src="/changecast.js">`
 * (then `window.Changecast`). A classic script cannot hold `export`, so the service serves
 * this file as it is to classic scripts and with an `export` trailer to module loaders
 * (told apart by `Sec-Fetch-Mode`; force either with `?format=module` or
 * `?format=script`). Either way `globalThis.Changecast` is set.
 */
(function (root, factory) {
  'use strict';
  var Changecast = factory();
  if (typeof module === 'object' && module && module.exports) {
    module.exports = Changecast;
    module.exports.Changecast = Changecast;
    module.exports.default = Changecast;
  }
  if (root) root.Changecast = Changecast;
})(typeof globalThis !== 'undefined' ? globalThis : typeof window !== 'undefined' ? window : this, function () {
  'use strict';

  var VERSION = '2';
  var SEEN_IDS_KEPT = 4096;
  var FIRST_BACKOFF_MS = 500;
  var MAX_BACKOFF_MS = 30000;
  /** A stream silent (not even a keepalive, sent every 15 s by default) for this long is
   *  taken as dead and reopened; option `silenceTimeoutMs` (0: never). */
  var SILENCE_MS = 45000;
  /** Event names that are not resource types or topics. */
  /** Snapshot mode's `max_txn_events` unless `maxTxnEvents` says otherwise. */
  var DEFAULT_MAX_TXN_EVENTS = 1000;
  var BUILTIN = ['change', 'event', 'resync', 'status', 'snapshot', 'error', 'stats'];
  /** Old constructor options and the event each now stands for. */
  var LEGACY = { onChange: 'change', onEvent: 'event', onResync: 'resync', onStatus: 'status', onError: 'error' };

  function list(value) {
    if (value == null) return null;
    if (typeof value === 'string') value = value.split(',');
    var items = [];
    for (var i = 0; i < value.length; i++) {
      var item = String(value[i]).trim();
      if (item && items.indexOf(item) < 0) items.push(item);
    }
    return items.length ? items : null;
  }

  /** `['state=eq.open']`, `'state=eq.open'` or `{ state: 'eq.open', id: ['in', [1, 2]] }`. */
  function filterList(value) {
    if (value == null) return null;
    if (typeof value === 'string') value = [value];
    if (!Array.isArray(value)) {
      value = Object.keys(value).map(function (column) {
        var condition = value[column];
        if (Array.isArray(condition)) {
          condition = condition[0] === 'in' ? 'in.(' + [].concat(condition[1]).join(',') + ')' : condition.join('.');
        }
        return column + '=' + condition;
      });
    }
    return value.length ? value.map(String) : null;
  }

  function normalize(options) {
    return {
      types: list(options.types),
      events: list(options.events),
      topics: list(options.topics),
      filter: filterList(options.filter),
      ids: list(options.ids),
    };
  }

  function jwtExpiry(token) {
    try {
      var part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      var exp = JSON.parse(atob(part + '==='.slice((part.length + 3) % 4))).exp;
      return typeof exp === 'number' ? exp * 1000 : null;
    } catch (e) {
      return null;
    }
  }

  function failure(code, message, status) {
    var error = new Error(message);
    error.code = code;
    if (status) error.status = status;
    return error;
  }

  /** Waits `ms`, or less when `cc` closes meanwhile (then resolves false). */
  function pause(cc, ms) {
    return new Promise(function (resolve) {
      var timer = setTimeout(function () { cc._wakers.delete(wake); resolve(!cc.closed); }, ms);
      function wake() { clearTimeout(timer); resolve(false); }
      cc._wakers.add(wake);
    });
  }

  function Changecast(options) {
    if (!(this instanceof Changecast)) return new Changecast(options);
    options = options || {};
    this.options = options;
    this.baseUrl = (options.baseUrl || '').replace(/\/$/, '');
    this.token = options.token || null;
    this.transport = options.transport || 'auto';
    if (['sse', 'ws', 'auto'].indexOf(this.transport) < 0) throw new Error("changecast: transport must be 'sse', 'ws' or 'auto'");
    /** The transport of the current (or last) connection: 'sse' or 'ws'. */
    this.connectedVia = null;
    this.filter = normalize(options);
    this.lastEventId = options.lastEventId || null;
    this.lastEventAt = null;
    this.status = 'idle';
    this.error = null;
    this.closed = true;
    this._handlers = new Map();
    this._wakers = new Set();
    this._seen = new Set();
    this._seenOrder = [];
    this._backoffMs = FIRST_BACKOFF_MS;
    this._generation = 0;
    this._conn = null;
    this._fromSnapshot = false;
    this._wsBlocked = false;
    this._silenceMs = options.silenceTimeoutMs == null ? SILENCE_MS : options.silenceTimeoutMs;
    var self = this;
    Object.keys(LEGACY).forEach(function (option) {
      if (typeof options[option] === 'function') self.on(LEGACY[option], options[option]);
    });
    if (typeof options.onSnapshot === 'function') {
      // Earlier versions passed the rows by type only.
      this.on('snapshot', function (snapshot) { options.onSnapshot(snapshot.resources, snapshot); });
    }
  }

  Changecast.VERSION = VERSION;

  /** Calls `fn` for every event of that name; returns the function that stops it. */
  Changecast.prototype.on = function (name, fn) {
    if (typeof fn !== 'function') throw new TypeError('changecast: on(name, fn) needs a function');
    var handlers = this._handlers.get(name);
    if (!handlers) this._handlers.set(name, (handlers = new Set()));
    var entry = { fn: fn };
    handlers.add(entry);
    var self = this;
    return function off() {
      handlers.delete(entry);
      if (!handlers.size) self._handlers.delete(name);
    };
  };

  Changecast.prototype._emit = function (name) {
    var handlers = this._handlers.get(name);
    if (!handlers) return;
    var args = Array.prototype.slice.call(arguments, 1);
    Array.from(handlers).forEach(function (entry) {
      try { entry.fn.apply(null, args); } catch (error) { console.error('changecast: a ' + name + ' handler failed', error); }
    });
  };

  Changecast.prototype._setStatus = function (status, detail) {
    if (status === this.status && !detail) return;
    this.status = status;
    this._emit('status', status, detail || null);
  };

  /** The message of one event, whatever the transport: dedupe, track, dispatch. */
  Changecast.prototype._deliver = function (message) {
    if (message.id) {
      if (this._seen.has(message.id)) return;
      this._seen.add(message.id);
      this._seenOrder.push(message.id);
      if (this._seenOrder.length > SEEN_IDS_KEPT) this._seen.delete(this._seenOrder.shift());
      this.lastEventId = message.id;
    }
    this.lastEventAt = new Date();
    if (message.type === 'resource_change') {
      this._emit('change', message);
      if (BUILTIN.indexOf(message.resource_type) < 0) this._emit(message.resource_type, message);
    } else if (message.type === 'app_event') {
      this._emit('event', message);
      if (BUILTIN.indexOf(message.topic) < 0) this._emit(message.topic, message);
      var self = this;
      this._handlers.forEach(function (_, name) {
        if (name.length > 1 && name.charAt(name.length - 1) === '*' && message.topic.indexOf(name.slice(0, -1)) === 0) {
          self._emit(name, message);
        }
      });
    }
  };

  Changecast.prototype._token = async function (refresh) {
    if (typeof this.options.getToken === 'function' && (refresh || !this.token)) {
      this.token = await this.options.getToken();
    }
    if (!this.token) throw failure('missing_token', 'changecast: no token (give `token` or `getToken`)');
    return this.token;
  };

  Changecast.prototype._canRefresh = function () {
    return typeof this.options.getToken === 'function';
  };

  /** Stops for good with a reason the page can show. */
  Changecast.prototype._fail = function (error) {
    this.error = { code: error.code || 'error', message: error.message };
    this._emit('error', this.error);
    this._stop();
    this._setStatus('closed', this.error);
  };

  Changecast.prototype._stop = function () {
    this.closed = true;
    this._generation++;
    if (this._conn) { this._conn.close(); this._conn = null; }
    this._wakers.forEach(function (wake) { wake(); });
    this._wakers.clear();
  };

  Changecast.prototype._params = function (forSnapshot) {
    var f = this.filter;
    var params = new URLSearchParams();
    // Only what the user set: a server that does not know a parameter refuses it.
    if (f.types) params.set('types', f.types.join(','));
    if (!forSnapshot && f.events) params.set('events', f.events.join(','));
    if (!forSnapshot && f.topics) params.set('topics', f.topics.join(','));
    if (f.filter) f.filter.forEach(function (item) { params.append('filter', item); });
    if (f.ids) params.set('ids', f.ids.join(','));
    var bound = this._maxTxnEvents();
    if (!forSnapshot && bound) params.set('max_txn_events', String(bound));
    return params;
  };

  /**
   * The `max_txn_events` to ask for: in snapshot mode `maxTxnEvents` (default
   * DEFAULT_MAX_TXN_EVENTS; `false` for none), so that one transaction of a million rows
   * arrives as a `bulk_change` resync, and the snapshot is reloaded, instead of a million
   * changes; otherwise only when set.
   */
  Changecast.prototype._maxTxnEvents = function () {
    var bound = this.options.maxTxnEvents;
    if (bound === false || bound === 0) return null;
    if (typeof bound === 'number') return bound;
    return this._fromSnapshot ? DEFAULT_MAX_TXN_EVENTS : null;
  };

  Changecast.prototype._url = function (path, params) {
    var query = params.toString();
    return this.baseUrl + path + (query ? '?' + query : '');
  };

  /** A GET with the token; refreshes it once on 401 when getToken exists. */
  Changecast.prototype._get = async function (path, params) {
    var url = this._url(path, params);
    var refreshed = false;
    for (;;) {
      var token = await this._token(false);
      var response = await fetch(url, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
      if (response.status === 401 && this._canRefresh() && !refreshed) {
        refreshed = true;
        await this._token(true);
        continue;
      }
      var body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      if (!response.ok) {
        throw failure((body && body.error) || 'http_' + response.status,
          'changecast: ' + path + ': ' + ((body && body.message) || 'HTTP ' + response.status), response.status);
      }
      return body;
    }
  };

  /** Current rows of the tenant plus the cursor to stream on from (API.md §5b). */
  Changecast.prototype.snapshot = function (limit) {
    var params = this._params(true);
    if (limit) params.set('limit', String(limit));
    return this._get('/v1/snapshot', params);
  };

  /** The tenant's live statistics (API.md §10). */
  Changecast.prototype.stats = function () {
    return this._get('/v1/stats', new URLSearchParams());
  };

  /** Worth retrying: the network, a restarting or busy service (not a bad request). */
  function retryable(error) {
    return !error.status || error.status >= 500 || error.status === 429 || error.status === 408;
  }

  /**
   * Loads the snapshot (retrying with backoff while the service is unreachable), hands it
   * to 'snapshot' handlers, then streams from its cursor. Resolves once the rows are shown;
   * rejects only when retrying cannot help (bad filter, token refused and no getToken).
   */
  Changecast.prototype.startFromSnapshot = async function () {
    this._stop();
    this.closed = false;
    this.error = null;
    this._fromSnapshot = true;
    this._setStatus('connecting');
    await this._loadSnapshot(this._generation);
    if (this.closed) return;
    this._connect(this._generation);
  };

  Changecast.prototype._loadSnapshot = async function (generation) {
    for (;;) {
      try {
        var snapshot = await this.snapshot(this.options.limit);
        if (generation !== this._generation) return;
        this.lastEventId = snapshot.cursor;
        this._backoffMs = FIRST_BACKOFF_MS;
        this._emit('snapshot', snapshot);
        return;
      } catch (error) {
        if (generation !== this._generation) return;
        if (!retryable(error)) {
          this._fail(error.status === 401 && !this._canRefresh() ? expiredOr(error, this.token) : error);
          throw error;
        }
        this._setStatus('reconnecting', { code: error.code || 'network', message: error.message });
        if (!(await pause(this, this._nextBackoff())) || generation !== this._generation) return;
      }
    }
  };

  function expiredOr(error, token) {
    var exp = token && jwtExpiry(token);
    if (error.code === 'token_expired' || (exp && exp <= Date.now())) {
      return failure('token_expired', 'changecast: the token expired and no getToken was given to refresh it', 401);
    }
    return error;
  }

  /** Streams changes from `lastEventId` when set, else from now. */
  Changecast.prototype.start = function () {
    this._stop();
    this.closed = false;
    this.error = null;
    this._fromSnapshot = false;
    this._setStatus('connecting');
    this._connect(this._generation);
    return this;
  };

  /**
   * Changes what this client receives, live. Nothing committed while switching is lost:
   * over SSE the stream reopens from the last cursor with the new filter; over WebSocket
   * a new `subscribe` continues from where the connection stands. In snapshot mode, with
   * new types or row filters, the snapshot is reloaded for the new view first.
   */
  Changecast.prototype.subscribe = function (changes) {
    changes = changes || {};
    var next = {};
    var current = this.filter;
    ['types', 'events', 'topics', 'filter', 'ids'].forEach(function (key) {
      next[key] = key in changes ? (key === 'filter' ? filterList(changes[key]) : list(changes[key])) : current[key];
    });
    var viewChanged = JSON.stringify([next.types, next.filter, next.ids]) !== JSON.stringify([current.types, current.filter, current.ids]);
    this.filter = next;
    if (this.closed) return Promise.resolve();
    if (this._fromSnapshot && viewChanged) return this.startFromSnapshot();
    if (this._conn && this._conn.resubscribe && this._conn.resubscribe()) return Promise.resolve();
    var generation = ++this._generation;
    if (this._conn) { this._conn.close(); this._conn = null; }
    this._connect(generation);
    return Promise.resolve();
  };

  Changecast.prototype.close = function () {
    this._stop();
    this._setStatus('closed');
  };

  Changecast.prototype._nextBackoff = function () {
    var wait = this._backoffMs * (0.75 + Math.random() * 0.5);
    this._backoffMs = Math.min(this._backoffMs * 2, MAX_BACKOFF_MS);
    return wait;
  };

  /** Opens one connection on the chosen transport; `_ended` decides what follows it. */
  Changecast.prototype._connect = function (generation) {
    if (this.closed || generation !== this._generation) return;
    var useWs = this.transport === 'ws' || (this.transport === 'auto' && !this._wsBlocked && typeof WebSocket !== 'undefined');
    this.connectedVia = useWs ? 'ws' : 'sse';
    this._conn = useWs ? new WsConnection(this, generation) : new SseConnection(this, generation);
  };

  /**
   * What follows the end of a connection. `how`: 'retry' (backoff), 'soon' (the service
   * restarts: come back shortly), 'refresh' (token expired), 'resync' (state is stale).
   */
  Changecast.prototype._ended = async function (generation, how, error, wasLive) {
    if (this.closed || generation !== this._generation) return;
    this._conn = null;
    var self = this;
    if (how === 'refresh' || (error && error.status === 401)) {
      if (!this._canRefresh()) return this._fail(expiredOr(error || failure('token_expired', 'token expired'), this.token));
      this._setStatus('reconnecting', { code: 'token_refresh', message: 'refreshing the token' });
      try {
        await this._token(true);
      } catch (e) {
        this._setStatus('reconnecting', { code: 'token_refresh_failed', message: String(e && e.message || e) });
        if (!(await pause(this, this._nextBackoff()))) return;
        return this._ended(generation, 'refresh', error);
      }
      if (wasLive === false && how !== 'refresh') {
        // Refused right after a refresh: do not spin.
        if (!(await pause(this, this._nextBackoff()))) return;
      }
      return this._connect(generation);
    }
    // Asking again cannot help: a refused filter, or a request outside the token's scope.
    if (error && (error.status === 400 || error.status === 403)) return this._fail(error);
    this._setStatus('reconnecting', error ? { code: error.code || 'network', message: error.message } : null);
    if (how === 'resync' && this._fromSnapshot) {
      // The stream's state is stale: reload the snapshot (retrying) before streaming on.
      try {
        await this._loadSnapshot(generation);
      } catch (e) {
        return;
      }
      return this._connect(generation);
    }
    var wait = how === 'soon' ? 250 + Math.random() * 750 : this._nextBackoff();
    if (await pause(this, wait)) self._connect(generation);
  };

  Changecast.prototype._live = function (generation) {
    if (generation !== this._generation) return;
    this._backoffMs = FIRST_BACKOFF_MS;
    this.error = null;
    this._setStatus('live');
  };

  /** A resync: 'resync' handlers refetch; snapshot mode reloads before streaming on. */
  Changecast.prototype._resync = function (info) {
    if (info.id) this.lastEventId = info.id;
    this._emit('resync', info);
    return this._fromSnapshot;
  };

  // ---------------------------------------------------------------------------------
  // SSE over fetch: the EventSource wire protocol, parsed here.

  function SseConnection(cc, generation) {
    this.cc = cc;
    this.generation = generation;
    this.abort = new AbortController();
    this.live = false;
    this.done = false;
    this.run();
  }

  SseConnection.prototype.close = function () {
    this.done = true;
    this.abort.abort();
  };

  SseConnection.prototype.finish = function (how, error) {
    if (this.done) return;
    this.close();
    // 'auto': SSE failing too means the service is away, not WebSocket blocked.
    if (!this.live && this.cc.transport === 'auto') this.cc._wsBlocked = false;
    this.cc._ended(this.generation, how, error, this.live);
  };

  SseConnection.prototype.run = async function () {
    var cc = this.cc;
    var self = this;
    var silence = null;
    try {
      var token = await cc._token(false);
      if (this.done) return;
      var headers = { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' };
      if (cc.lastEventId) headers['Last-Event-ID'] = cc.lastEventId;
      var response = await fetch(cc._url('/v1/events', cc._params(false)), {
        headers: headers, cache: 'no-store', signal: this.abort.signal,
      });
      if (!response.ok) {
        var body = null;
        try { body = await response.json(); } catch (e) { body = null; }
        return this.finish('retry', failure((body && body.error) || 'http_' + response.status,
          'changecast: ' + ((body && body.message) || 'HTTP ' + response.status), response.status));
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = '';
      var event = { data: [], name: '', id: null };
      var armSilence = function () {
        clearTimeout(silence);
        if (!cc._silenceMs) return;
        silence = setTimeout(function () { self.finish('retry', failure('silent', 'changecast: the stream went silent')); }, cc._silenceMs);
      };
      armSilence();
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done || this.done) break;
        armSilence();
        buffer += decoder.decode(chunk.value, { stream: true });
        // A final '\r' may be half of a '\r\n': keep it until the next chunk.
        var held = buffer.charAt(buffer.length - 1) === '\r' ? '\r' : '';
        var lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
        buffer = lines.pop() + held;
        for (var i = 0; i < lines.length; i++) {
          var line = lines[i];
          if (line === '') {
            // An `id:` alone (the stream's first bytes) moves the cursor without an event.
            if (event.id !== null && event.id !== '') cc.lastEventId = event.id;
            if (event.data.length) {
              var outcome = this.dispatch(event.name || 'message', event.data.join('\n'), event.id);
              if (outcome) return this.finish(outcome);
            }
            event = { data: [], name: '', id: null };
            continue;
          }
          if (line.charAt(0) === ':') continue;
          var colon = line.indexOf(':');
          var field = colon < 0 ? line : line.slice(0, colon);
          var value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') event.data.push(value);
          else if (field === 'event') event.name = value;
          else if (field === 'id' && value.indexOf('\0') < 0) event.id = value;
        }
        if (!this.live) {
          // The first bytes arrived (with the stream's starting cursor): from now on every
          // matching change committed arrives.
          this.live = true;
          if (cc.transport === 'auto') cc._wsBlocked = cc._wsFailed;
          cc._live(this.generation);
        }
      }
      this.finish('retry', failure('disconnected', 'changecast: the stream ended'));
    } catch (error) {
      if (!this.done) this.finish('retry', error && error.code ? error : failure('network', 'changecast: ' + (error && error.message || error)));
    } finally {
      clearTimeout(silence);
    }
  };

  /** Returns how the stream ends, if this event ends it. */
  SseConnection.prototype.dispatch = function (name, data, id) {
    var cc = this.cc;
    var message;
    try { message = JSON.parse(data); } catch (e) { return null; }
    if (name === 'auth_expired') return 'refresh';
    if (name === 'reconnect') return 'soon';
    if (name === 'resync') return cc._resync(message) ? 'resync' : null;
    if (name === 'stats') { cc._emit('stats', message); return null; }
    if (message && typeof message === 'object') {
      if (id && !message.id) message.id = id;
      cc._deliver(message);
    }
    return null;
  };

  // ---------------------------------------------------------------------------------
  // WebSocket (API.md §6).

  function WsConnection(cc, generation) {
    this.cc = cc;
    this.generation = generation;
    this.done = false;
    this.opened = false;
    this.live = false;
    this.expired = false;
    this.socket = null;
    this.silence = null;
    this.run();
  }

  WsConnection.prototype.close = function () {
    this.done = true;
    clearTimeout(this.silence);
    if (this.socket) {
      try { this.socket.close(1000); } catch (e) { /* already closed */ }
    }
  };

  WsConnection.prototype.finish = function (how, error) {
    if (this.done) return;
    this.close();
    var cc = this.cc;
    if (cc.transport === 'auto' && !this.opened && how === 'retry') {
      // WebSocket did not even open (a proxy blocking upgrades, or the service down):
      // try SSE now; if SSE works, WebSocket stays skipped.
      cc._wsFailed = true;
      cc._wsBlocked = true;
      cc._conn = null;
      return cc._connect(this.generation);
    }
    cc._ended(this.generation, how, error, this.live);
  };

  WsConnection.prototype.send = function (message) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  };

  WsConnection.prototype.subscribeMessage = function (resume) {
    var f = this.cc.filter;
    var message = { type: 'subscribe' };
    // Only what the user set: a server that does not know a field may refuse it.
    if (f.types) message.resource_types = f.types;
    if (f.events) message.events = f.events;
    if (f.topics) message.topics = f.topics;
    if (f.filter) message.filter = f.filter;
    if (f.ids) message.ids = f.ids;
    var bound = this.cc._maxTxnEvents();
    if (bound) message.max_txn_events = bound;
    if (resume && this.cc.lastEventId) message.last_event_id = this.cc.lastEventId;
    return message;
  };

  /** A live filter change: the server continues from the connection's position. */
  WsConnection.prototype.resubscribe = function () {
    if (!this.live) return false;
    this.send(this.subscribeMessage(false));
    return true;
  };

  WsConnection.prototype.armSilence = function () {
    var self = this;
    clearTimeout(this.silence);
    if (!this.cc._silenceMs) return;
    this.silence = setTimeout(function () { self.finish('retry', failure('silent', 'changecast: the WebSocket went silent')); }, this.cc._silenceMs);
  };

  WsConnection.prototype.run = async function () {
    var cc = this.cc;
    var self = this;
    var token;
    try {
      token = await cc._token(false);
    } catch (error) {
      return this.finish('retry', error);
    }
    if (this.done) return;
    // A page resolves a relative baseUrl against itself; elsewhere baseUrl is absolute.
    var page = typeof location !== 'undefined' ? location : null;
    var url = new URL((cc.baseUrl || (page ? page.origin : '')) + '/v1/ws', page ? page.href : undefined);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set headers on a WebSocket: the token goes in the query (API.md §3).
    url.searchParams.set('access_token', token);
    var socket;
    try {
      socket = new WebSocket(url.toString());
    } catch (error) {
      return this.finish('retry', failure('network', 'changecast: ' + error.message));
    }
    this.socket = socket;
    socket.onopen = function () {
      self.opened = true;
      cc._wsFailed = false;
      cc._wsBlocked = false;
      self.armSilence();
      self.send(self.subscribeMessage(true));
    };
    socket.onmessage = function (frame) {
      if (self.done) return;
      self.armSilence();
      var message;
      try { message = JSON.parse(frame.data); } catch (e) { return; }
      switch (message.type) {
        case 'subscription_confirmed':
          if (message.id) cc.lastEventId = message.id;
          if (!self.live) {
            self.live = true;
            cc._live(self.generation);
          }
          break;
        case 'resource_change':
        case 'app_event':
          cc._deliver(message);
          break;
        case 'resync':
          if (cc._resync(message)) self.finish('resync');
          break;
        case 'auth_expired':
          self.expired = true;
          break;
        case 'stats':
          cc._emit('stats', message);
          break;
        case 'error':
          if (message.code === 'forbidden') {
            // Outside the token's scope (even a live re-subscribe): the connection's
            // selection is not what the page asked for, and asking again is refused again.
            self.finish('retry', failure('forbidden', 'changecast: ' + message.message, 403));
            break;
          }
          cc._emit('error', { code: message.code, message: message.message });
          if (!self.live) self.finish('retry', failure(message.code, 'changecast: ' + message.message, 400));
          break;
        default:
          break;
      }
    };
    socket.onclose = function (event) {
      if (self.done) return;
      if (self.expired || event.code === 4001) return self.finish('refresh');
      if (event.code === 1012 || event.code === 1001) return self.finish('soon');
      var exp = jwtExpiry(cc.token);
      if (!self.opened && exp && exp <= Date.now()) {
        // The upgrade was refused, most likely for the expired token (no status visible).
        return self.finish('retry', failure('token_expired', 'changecast: token expired', 401));
      }
      self.finish('retry', failure('disconnected', 'changecast: WebSocket closed (' + event.code + ')'));
    };
  };

  return Changecast;
});
