// Loaded as an ES module by harness.html: imports the client the way §11 shows and
// records everything each client emits, for suite.mjs to wait on.
import { Changecast } from '/changecast.js';

window.Module = Changecast;
window.clients = {};

/** Opens a client named `name`; `mode` 'start' | 'snapshot'. */
window.openClient = (name, options, mode = 'start') => {
  const cc = new Changecast(options);
  const rec = { changes: [], byType: [], events: [], statuses: [], resyncs: [], snapshots: [], errors: [] };
  cc.on('status', (status, detail) => rec.statuses.push(detail ? `${status}:${detail.code}` : status));
  cc.on('change', (change) => rec.changes.push(change));
  cc.on('event', (event) => rec.events.push(event));
  cc.on('resync', (info) => rec.resyncs.push(info));
  cc.on('snapshot', (snapshot) => rec.snapshots.push(snapshot));
  cc.on('error', (error) => rec.errors.push(error));
  for (const type of options.types || []) cc.on(type, (change) => rec.byType.push(change));
  window.clients[name] = { cc, rec };
  if (mode === 'snapshot') return cc.startFromSnapshot().then(() => true, (e) => String(e));
  cc.start();
  return true;
};

/** Ids (resource ids) of the changes client `name` got, in order. */
window.got = (name) => window.clients[name].rec.changes.map((c) => String(c.resource.id));
window.harnessReady = true;
