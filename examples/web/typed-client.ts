// The client typed end to end: row types per resource type, payloads per topic.
// Type-checked with `tsc --strict` against GET /changecast.d.ts by the browser tests.
import { Changecast, type ResourceChange, type Stats } from './changecast.js';

interface Ticket {
  id: string;
  tenant_id: string;
  title: string;
  state: 'open' | 'in_progress' | 'review' | 'blocked' | 'closed';
  assignee: string | null;
  [column: string]: unknown;
}
interface ConfigUpdate {
  action: 'profile_set_default';
  profile_ids: string[];
}

export function watchTickets(token: string, onMove: (title: string, from: string, to: string) => void) {
  const cc = new Changecast<{ ticket: Ticket }, { config_update: ConfigUpdate }>({
    token,
    transport: 'auto',
    types: ['ticket'],
    topics: ['config_update'],
    filter: { project_id: 'eq.web' },
  });
  const off = cc.on('ticket', (change) => {
    // `change.resource` is a Ticket; `old` holds the previous values of `changed` columns.
    if (change.event === 'updated' && change.changed?.includes('state')) {
      onMove(change.resource.title, String(change.old?.state), change.resource.state);
    }
  });
  cc.on('config_update', (event) => console.log(event.payload.profile_ids.join(', ')));
  cc.on('status', (status, detail) => console.log(status, detail?.code));
  cc.on('resync', (info) => console.log('refetch:', info.reason));
  cc.on('change', (change: ResourceChange) => console.log(change.resource_id));
  void cc.startFromSnapshot().then(() => cc.subscribe({ filter: ['state=neq.closed'] }));
  const stats: Promise<Stats> = cc.stats();
  return { stop: () => { off(); cc.close(); }, stats, status: cc.status };
}
