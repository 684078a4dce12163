import { useRef, useState } from 'react';
import type { Changecast, ClientError, ResourceChange, Row, Snapshot, Status } from '@changecast/client';
import { LiveList, type RowId } from './liveList.js';
import { useChangecast, type UseChangecastOptions } from './useChangecast.js';

export interface UseLiveSnapshotOptions<R extends Row = Row>
  extends Omit<UseChangecastOptions, 'types' | 'topics' | 'events' | 'on' | 'snapshot'> {
  /** The resource type to keep, e.g. `'ticket'`. */
  type: string;
  /** A row's id as `resource_id` has it; default `String(row.id)`. */
  getId?: RowId<R>;
}

export interface UseLiveSnapshotResult<R extends Row = Row> {
  /** The rows, in snapshot order, new rows appended; a new array on every change. */
  rows: R[];
  /** A snapshot has arrived (`rows` is no longer just empty for want of one). */
  loaded: boolean;
  /** The snapshot was cut at `limit` rows. */
  truncated: boolean;
  status: Status;
  isLive: boolean;
  error: ClientError | null;
  client: Changecast | null;
}

/**
 * A live list of one resource type: reads `/v1/snapshot`, streams on from its cursor,
 * and applies created / updated / deleted by resource id. After a `resync` the client
 * reloads the snapshot before streaming on, and the list starts over from it. Changing
 * `type`, `filter` or `ids` reloads the snapshot for the new view (live, nothing lost).
 */
export function useLiveSnapshot<R extends Row = Row>(options: UseLiveSnapshotOptions<R>): UseLiveSnapshotResult<R> {
  const { type, getId, ...rest } = options;
  const idOf = useRef(getId);
  idOf.current = getId;
  const list = useRef<LiveList<R> | null>(null);
  if (!list.current || list.current.type !== type) {
    list.current = new LiveList<R>(type, (row) => (idOf.current ? idOf.current(row) : String(row.id)));
  }
  const [view, setView] = useState<{ type: string; rows: R[]; loaded: boolean; truncated: boolean }>(
    { type, rows: [], loaded: false, truncated: false });
  const live = list.current;
  const { status, isLive, client } = useChangecast({
    ...rest,
    types: [type],
    snapshot: true,
    on: {
      snapshot: (snapshot: Snapshot) =>
        setView({ type, rows: live.reset(snapshot), loaded: true, truncated: snapshot.truncated }),
      change: (change: ResourceChange) => {
        // Applied here, not in the updater: React may call updaters twice.
        const rows = live.apply(change);
        setView((view) => ({ ...view, rows }));
      },
    },
  });
  const current = view.type === type ? view : { rows: [], loaded: false, truncated: false };
  return {
    rows: current.rows,
    loaded: current.loaded,
    truncated: current.truncated,
    status,
    isLive,
    error: client?.error ?? null,
    client,
  };
}
