import { useEffect, useRef, useState } from 'react';
import {
  Changecast,
  type AppEvent,
  type ChangecastOptions,
  type ResourceChange,
  type Resync,
  type RowFilter,
  type Snapshot,
  type Status,
} from '@changecast/client';

/** Handlers by name: a resource type, a topic, or change / event / resync / snapshot. */
export type Handlers = {
  change?: (change: ResourceChange) => void;
  event?: (event: AppEvent) => void;
  resync?: (info: Resync) => void;
  snapshot?: (snapshot: Snapshot) => void;
  [typeOrTopic: string]: ((event: any) => void) | undefined;
};

export interface UseChangecastOptions
  extends Omit<ChangecastOptions, 'types' | 'filter' | 'topics' | 'ids'> {
  types?: string[];
  topics?: string[];
  filter?: RowFilter;
  ids?: string[];
  on?: Handlers;
  /** Load `/v1/snapshot` first (handlers get 'snapshot'), then stream from it. */
  snapshot?: boolean;
}

export interface UseChangecastResult {
  status: Status;
  isLive: boolean;
  lastEventAt: Date | null;
  client: Changecast | null;
}

/**
 * One client per mounted component. Changing `types`, `topics`, `filter` or `ids`
 * re-subscribes live (nothing lost); changing `baseUrl`, `token`, `transport` or
 * `snapshot` reconnects. Handlers in `on` and `getToken` may change on every render
 * without reconnecting.
 */
export function useChangecast(options: UseChangecastOptions): UseChangecastResult {
  const { types, topics, filter, ids, on, snapshot, getToken, ...connection } = options;
  const [status, setStatus] = useState<Status>('idle');
  const [lastEventAt, setLastEventAt] = useState<Date | null>(null);
  const [client, setClient] = useState<Changecast | null>(null);
  // The latest handlers and selection, read when events arrive (no reconnect per render).
  const handlers = useRef(on);
  handlers.current = on;
  const tokenSource = useRef(getToken);
  tokenSource.current = getToken;
  const selection = { types, topics, filter, ids };
  const selectionKey = JSON.stringify(selection);
  const latestSelection = useRef(selection);
  latestSelection.current = selection;

  useEffect(() => {
    const cc = new Changecast({
      ...connection,
      ...latestSelection.current,
      getToken: tokenSource.current ? () => tokenSource.current!() : undefined,
    });
    const call = (name: string, value: unknown) => handlers.current?.[name]?.(value);
    const offs = [
      cc.on('status', (next) => setStatus(next)),
      cc.on('change', (change) => {
        setLastEventAt(new Date());
        call('change', change);
        call(change.resource_type, change);
      }),
      cc.on('event', (event) => {
        setLastEventAt(new Date());
        call('event', event);
        call(event.topic, event);
      }),
      cc.on('resync', (info) => call('resync', info)),
      cc.on('snapshot', (snap) => call('snapshot', snap)),
    ];
    setClient(cc);
    if (snapshot) cc.startFromSnapshot().catch(() => {/* status says 'closed', cc.error why */});
    else cc.start();
    return () => {
      offs.forEach((off) => off());
      cc.close();
    };
    // Reconnect only when where or how to connect changes.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [connection.baseUrl, connection.token, connection.transport, snapshot]);

  useEffect(() => {
    // A new selection on the running client: re-subscribed live, losing nothing.
    if (client && client.status !== 'idle') void client.subscribe(latestSelection.current);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [selectionKey]);

  return { status, isLive: status === 'live', lastEventAt, client };
}
