// Bundled by suite.mjs with esbuild (React and TanStack Query from npm) with the packages
// of clients/js; their `@changecast/client` import is pointed at the service's own
// /changecast.js, which is made from the same source.
import { useState } from 'react';
import { createRoot } from 'react-dom/client';
import { QueryClient } from '@tanstack/query-core';
import { Changecast } from '@changecast/client';
import { useChangecast, useLiveSnapshot } from '@changecast/react';
import { syncQueries } from '@changecast/tanstack-query';

declare global {
  interface Window {
    mountReact: (token: string) => void;
    mountLiveList: (token: string) => void;
    startQueries: (token: string, ids: string[]) => Promise<void>;
    queries: QueryClient;
    appReady: boolean;
  }
}

function Tickets({ token }: { token: string }) {
  const [titles, setTitles] = useState<string[]>([]);
  const { status, isLive, lastEventAt } = useChangecast({
    token,
    types: ['ticket'],
    on: { ticket: (change) => setTitles((t) => [...t, String(change.resource.title)]) },
  });
  return (
    <div>
      <p id="status">{status}</p>
      <p id="live">{String(isLive)}</p>
      <p id="last">{lastEventAt ? 'seen' : 'none'}</p>
      <ul id="titles">{titles.map((t) => <li key={t}>{t}</li>)}</ul>
    </div>
  );
}

window.mountReact = (token) => {
  createRoot(document.getElementById('root')!).render(<Tickets token={token} />);
};

function LiveTickets({ token }: { token: string }) {
  const { rows, loaded, isLive } = useLiveSnapshot<{ id: string; title: string }>({ token, type: 'ticket' });
  return (
    <div>
      <p id="live-list-state">{loaded ? (isLive ? 'live' : 'loaded') : 'loading'}</p>
      <ul id="live-list">{rows.map((t) => <li key={t.id} data-id={t.id}>{t.title}</li>)}</ul>
    </div>
  );
}

window.mountLiveList = (token) => {
  createRoot(document.getElementById('root')!).render(<LiveTickets token={token} />);
};

window.startQueries = async (token, ids) => {
  const queries = new QueryClient();
  window.queries = queries;
  const fixed = (data: unknown) => () => Promise.resolve(data);
  await queries.prefetchQuery({ queryKey: ['tickets'], queryFn: fixed([]) });
  await queries.prefetchQuery({ queryKey: ['agents'], queryFn: fixed([]) });
  for (const id of ids) await queries.prefetchQuery({ queryKey: ['ticket', id], queryFn: fixed({ id }) });
  const cc = new Changecast({ token, types: ['ticket', 'agent'] });
  syncQueries(queries, cc, {
    ticket: { list: ['tickets'], detail: (id) => ['ticket', id] },
    agent: { list: ['agents'], mode: 'patch' },
  });
  await new Promise<void>((resolve) => {
    const off = cc.on('status', (s) => { if (s === 'live') { off(); resolve(); } });
    cc.start();
  });
};

window.appReady = true;
