/*
 * changecast.js — the browser client for changecast (see API.md §4, §5, §5b).
 *
 *   const feed = new Changecast({
 *     token: 'eyJ…',                       // or getToken: async () => fetchFreshToken()
 *     types: ['ticket', 'agent'],          // optional; default all
 *     onSnapshot(resources) { … },         // with startFromSnapshot(): current rows
 *     onChange(change) { … },              // every resource_change, once
 *     onResync(info) { … },                // refetch your state (startFromSnapshot does it)
 *     onStatus(status) { … },              // 'connecting' | 'live' | 'reconnecting' | 'closed'
 *   });
 *   feed.startFromSnapshot();              // or feed.start() for changes only
 *
 * It resumes from the last event id after every disconnect (the browser sends
 * Last-Event-ID itself; after a token refresh we pass it as last_event_id), drops
 * events it has already delivered (a resume may repeat a few, always with the same id),
 * and reconnects with a fresh token when the old one expires.
 */
(function (global) {
  'use strict';

  var SEEN_IDS_KEPT = 4096;
  var MAX_BACKOFF_MS = 30000;

  function Changecast(options) {
    if (!(this instanceof Changecast)) return new Changecast(options);
    this.options = options || {};
    this.baseUrl = (this.options.baseUrl || '').replace(/\/$/, '');
    this.token = this.options.token || null;
    this.lastEventId = this.options.lastEventId || null;
    this.source = null;
    this.closed = false;
    this.backoffMs = 500;
    this.seen = new Set();
    this.seenOrder = [];
  }

  Changecast.prototype._emit = function (name, value) {
    var handler = this.options[name];
    if (typeof handler === 'function') {
      try { handler(value); } catch (error) { console.error('changecast: ' + name + ' handler failed', error); }
    }
  };

  Changecast.prototype._query = function (extra) {
    var params = new URLSearchParams();
    if (this.options.types && this.options.types.length) params.set('types', this.options.types.join(','));
    if (this.options.events && this.options.events.length) params.set('events', this.options.events.join(','));
    Object.keys(extra || {}).forEach(function (key) { if (extra[key]) params.set(key, extra[key]); });
    return params.toString();
  };

  Changecast.prototype._freshToken = async function () {
    if (typeof this.options.getToken === 'function') this.token = await this.options.getToken();
    return this.token;
  };

  /** Current rows of the tenant plus the cursor to stream on from (API.md §5b). */
  Changecast.prototype.snapshot = async function () {
    var token = this.token || (await this._freshToken());
    var url = this.baseUrl + '/v1/snapshot?' + this._query({});
    var response = await fetch(url, { headers: { Authorization: 'Bearer ' + token } });
    if (response.status === 401 && typeof this.options.getToken === 'function') {
      token = await this._freshToken();
      response = await fetch(url, { headers: { Authorization: 'Bearer ' + token } });
    }
    var body = await response.json();
    if (!response.ok) throw new Error('changecast snapshot: ' + (body.message || response.status));
    return body;
  };

  /** Loads the snapshot, hands it to onSnapshot, then streams from its cursor. */
  Changecast.prototype.startFromSnapshot = async function () {
    this._fromSnapshot = true;
    var snapshot = await this.snapshot();
    this._snapshotAt = Date.now();
    this.lastEventId = snapshot.cursor;
    this._emit('onSnapshot', snapshot.resources);
    if (snapshot.truncated) this._emit('onStatus', 'truncated');
    this.start();
  };

  /** Streams changes (from lastEventId when set). */
  Changecast.prototype.start = function () {
    var self = this;
    self.closed = false;
    Promise.resolve(self.token || self._freshToken()).then(function () { self._open(); });
  };

  Changecast.prototype._open = function () {
    var self = this;
    if (self.closed) return;
    self._emit('onStatus', 'connecting');
    var url = self.baseUrl + '/v1/events?' + self._query({ access_token: self.token, last_event_id: self.lastEventId });
    var source = new EventSource(url);
    self.source = source;

    source.onopen = function () {
      self.backoffMs = 500;
      self._emit('onStatus', 'live');
    };
    source.addEventListener('resource_change', function (event) {
      if (self._alreadySeen(event.lastEventId)) return;
      self.lastEventId = event.lastEventId;
      self._emit('onChange', JSON.parse(event.data));
    });
    source.addEventListener('resync', function (event) {
      var info = JSON.parse(event.data);
      if (info.id) self.lastEventId = info.id;
      self._emit('onResync', info);
      if (self._fromSnapshot) {
        // Refetch the state, then continue from the snapshot's own cursor; should that
        // resync at once again, back off rather than hammer the server.
        source.close();
        var wait = Date.now() - (self._snapshotAt || 0) < 5000 ? self.backoffMs : 0;
        self.backoffMs = Math.min(self.backoffMs * 2, MAX_BACKOFF_MS);
        setTimeout(function () {
          self.startFromSnapshot().catch(function (error) { self._retry(error); });
        }, wait);
      }
    });
    source.addEventListener('auth_expired', function (event) {
      // Carries the stream's last id: also the one its first bytes set before any change.
      if (event.lastEventId) self.lastEventId = event.lastEventId;
      source.close();
      self._freshToken().then(function () { self._open(); }, function (error) { self._retry(error); });
    });
    source.addEventListener('reconnect', function (event) {
      // The instance is shutting down: come back (through the load balancer) shortly,
      // from the stream's last id (set by its first bytes even if no change came).
      if (event.lastEventId) self.lastEventId = event.lastEventId;
      source.close();
      self._emit('onStatus', 'reconnecting');
      setTimeout(function () { self._open(); }, 250 + Math.random() * 750);
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused (e.g. 401 after expiry): the browser will not retry by itself.
        self._retry(new Error('changecast: stream refused'));
      } else {
        self._emit('onStatus', 'reconnecting');
      }
    };
  };

  Changecast.prototype._retry = function (error) {
    var self = this;
    if (self.closed) return;
    self._emit('onStatus', 'reconnecting');
    if (error) console.warn(error);
    var wait = self.backoffMs;
    self.backoffMs = Math.min(self.backoffMs * 2, MAX_BACKOFF_MS);
    setTimeout(function () {
      self._freshToken().then(function () { self._open(); }, function (e) { self._retry(e); });
    }, wait);
  };

  Changecast.prototype._alreadySeen = function (id) {
    if (!id) return false;
    if (this.seen.has(id)) return true;
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > SEEN_IDS_KEPT) this.seen.delete(this.seenOrder.shift());
    return false;
  };

  Changecast.prototype.close = function () {
    this.closed = true;
    if (this.source) this.source.close();
    this._emit('onStatus', 'closed');
  };

  global.Changecast = Changecast;
})(typeof window !== 'undefined' ? window : this);
