// TanStack Query glue: every change of a resource type invalidates (or patches) the
// queries that show it, the way apps wire their realtime feeds by hand today.
//
//   const queryClient = new QueryClient();
//   const cc = new Changecast({ token, types: ['ticket', 'agent'] });
//   const stop = syncQueries(queryClient, cc, {
//     ticket: { list: ['tickets'], detail: (id) => ['ticket', id] },
//     agent: { list: ['agents'], mode: 'patch' },   // write the row into the cached list
//   });
//   cc.start();
//
// Works with @tanstack/query-core's QueryClient and so with react-query, vue-query, ….
// A `resync` (the stream could not continue exactly) invalidates every mapped key.
import type { QueryClient, QueryKey } from '@tanstack/query-core';
import type { Changecast, ResourceChange, Row } from './changecast.js';

export interface ResourceQueries {
  /** The query holding the list of rows of this type (an array of rows). */
  list?: QueryKey;
  /** The query of one row, by its id; the key ends with the id (e.g. `['ticket', id]`). */
  detail?: (id: string) => QueryKey;
  /** 'invalidate' (default): refetch what changed; 'patch': write the row into the cache. */
  mode?: 'invalidate' | 'patch';
}

export type QueryMap = Record<string, ResourceQueries>;

/** Keeps `queryClient` current with the changes `client` receives; returns the stop. */
export function syncQueries(queryClient: QueryClient, client: Changecast, map: QueryMap): () => void {
  const offChange = client.on('change', (change: ResourceChange) => {
    const queries = map[change.resource_type];
    if (!queries) return;
    const id = change.resource_id ?? String(change.resource.id);
    if (queries.mode === 'patch') patch(queryClient, queries, change, id);
    else {
      if (queries.list) void queryClient.invalidateQueries({ queryKey: queries.list, exact: true });
      if (queries.detail) void queryClient.invalidateQueries({ queryKey: queries.detail(id), exact: true });
    }
  });
  const offResync = client.on('resync', () => {
    for (const queries of Object.values(map)) {
      if (queries.list) void queryClient.invalidateQueries({ queryKey: queries.list });
      // Every row's query: the detail key without its trailing id is their common prefix.
      if (queries.detail) void queryClient.invalidateQueries({ queryKey: queries.detail('').slice(0, -1) });
    }
  });
  return () => {
    offChange();
    offResync();
  };
}

function patch(queryClient: QueryClient, queries: ResourceQueries, change: ResourceChange, id: string) {
  const gone = change.event === 'deleted';
  if (queries.list) {
    queryClient.setQueryData<Row[]>(queries.list, (rows) => {
      if (!rows) return rows; // not loaded: nothing to patch, the first fetch will have it
      const rest = rows.filter((row) => String(row.id) !== id);
      if (gone) return rest;
      const at = rows.findIndex((row) => String(row.id) === id);
      if (at < 0) return [...rows, change.resource];
      const next = rows.slice();
      next[at] = change.resource;
      return next;
    });
  }
  if (queries.detail) {
    if (gone) queryClient.removeQueries({ queryKey: queries.detail(id), exact: true });
    else queryClient.setQueryData(queries.detail(id), change.resource);
  }
}
