import type { ResourceChange, Row, Snapshot } from '@changecast/client';

/** The id of a snapshot row, as the stream's `resource_id` names it. */
export type RowId<R> = (row: R) => string;

const byIdColumn = (row: Row) => String(row.id);

/**
 * The rows of one resource type, kept current: a snapshot replaces them, each change
 * applies by resource id (`created` and `updated` put the row in place or append it,
 * `deleted` removes it). Every step returns a new array, so it can be React state.
 */
export class LiveList<R extends Row = Row> {
  readonly type: string;
  private readonly idOf: RowId<R>;
  private rows = new Map<string, R>();
  private current: R[] = [];

  constructor(type: string, idOf: RowId<R> = byIdColumn as RowId<R>) {
    this.type = type;
    this.idOf = idOf;
  }

  /** The list as it stands. */
  get list(): R[] {
    return this.current;
  }

  /** Starts over from a snapshot's rows of this type. */
  reset(snapshot: Snapshot): R[] {
    const rows = (snapshot.resources[this.type] ?? []) as R[];
    this.rows = new Map(rows.map((row) => [this.idOf(row), row]));
    return (this.current = Array.from(this.rows.values()));
  }

  /** Applies one change; changes of other types leave the list as it is. */
  apply(change: ResourceChange): R[] {
    if (change.resource_type !== this.type) return this.current;
    const id = change.resource_id ?? String(change.resource.id);
    if (change.event === 'deleted') {
      if (!this.rows.delete(id)) return this.current;
    } else {
      this.rows.set(id, change.resource as R);
    }
    return (this.current = Array.from(this.rows.values()));
  }
}
