import type { QueryClient, QueryKey } from '@tanstack/query-core';
import type { Changecast, ResourceChange, Row } from '@changecast/client';

export interface ResourceQueries {
  /** The query holding the list of rows of this type (an array of rows). */
  list?: QueryKey;
  /** The query of one row, by its id; the key ends with the id (e.g. `['ticket', id]`). */
  detail?: (id: string) => QueryKey;
  /** 'invalidate' (default): refetch what changed; 'patch': write the row into the cache. */
  mode?: 'invalidate' | 'patch';
}

/** Resource type → the queries that show rows of it. */
export type QueryMap = Record<string, ResourceQueries>;

/**
 * Keeps `queryClient` current with the changes `client` receives; returns the stop.
 * Works with @tanstack/query-core's QueryClient and so with react-query, vue-query, ….
 * A `resync` (the stream could not continue exactly) invalidates every mapped key.
 */
export function syncQueries(queryClient: QueryClient, client: Changecast, map: QueryMap): () => void {
  const offChange = client.on('change', (change: ResourceChange) => {
    const queries = map[change.resource_type];
    if (!queries) return;
    const id = change.resource_id ?? String(change.resource.id);
    if (queries.mode === 'patch') patchQueries(queryClient, queries, change);
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

/** The rows of a cached list with one change applied (by id); `undefined` stays so. */
export function patchList<R extends Row>(rows: R[] | undefined, change: ResourceChange, idOf: (row: R) => string = (row) => String(row.id)): R[] | undefined {
  if (!rows) return rows; // not loaded: nothing to patch, the first fetch will have it
  const id = change.resource_id ?? String(change.resource.id);
  const at = rows.findIndex((row) => idOf(row) === id);
  if (change.event === 'deleted') return at < 0 ? rows : rows.filter((_, i) => i !== at);
  if (at < 0) return [...rows, change.resource as R];
  const next = rows.slice();
  next[at] = change.resource as R;
  return next;
}

/** Writes one change into the list and detail queries of its type (no refetch). */
export function patchQueries(queryClient: QueryClient, queries: ResourceQueries, change: ResourceChange): void {
  const id = change.resource_id ?? String(change.resource.id);
  if (queries.list) queryClient.setQueryData<Row[]>(queries.list, (rows) => patchList(rows, change));
  if (queries.detail) {
    if (change.event === 'deleted') queryClient.removeQueries({ queryKey: queries.detail(id), exact: true });
    else queryClient.setQueryData(queries.detail(id), change.resource);
  }
}
