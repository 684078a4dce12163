//! Decoding journal rows (their columns in `sql::COLUMNS` order) into entries.

use std::sync::{Arc, Once, OnceLock};
use std::time::Instant;

use serde_json::value::RawValue;

use super::cursor::{Cursor, CursorScope, ResyncReason};
use super::entry::{AppEvent, Change, Entry, EventKind, ResyncMarker};
use super::frames::Frames;
use super::snapshot::PgSnapshot;
use crate::tenant::TenantId;

/// The journal's `event` of a truncation marker.
const TRUNCATED: &str = "truncated";
/// The journal's `event` of an application event.
const PUBLISHED: &str = "published";

/// What a journal row's `event` makes of it.
enum RowKind {
    Change(EventKind),
    AppEvent,
    Resync(ResyncReason),
}

/// The entries of `rows`, their cursors minted in `scope`; `known_since`: see
/// [`Change::known_since`], the time of the read when `None`.
pub(super) fn entries(
    scope: &CursorScope,
    rows: &[tokio_postgres::Row],
    known_since: Option<Instant>,
) -> Vec<Entry> {
    let known_since = known_since.unwrap_or_else(Instant::now);
    rows.iter()
        .map(|row| entry_at(scope, row, 0, known_since))
        .collect()
}

/// The entry in `row`'s columns from `at` on (in `sql::COLUMNS` order).
pub(super) fn entry_at(
    scope: &CursorScope,
    row: &tokio_postgres::Row,
    at: usize,
    known_since: Instant,
) -> Entry {
    let id: i64 = row.get(at);
    let xid: u64 = row
        .get::<_, &str>(at + 1)
        .parse()
        .expect("BUG: xid8 is a number");
    let writer: PgSnapshot = row
        .get::<_, &str>(at + 2)
        .parse()
        .expect("BUG: invalid pg_snapshot");
    let tenant = TenantId::from_journal(row.get(at + 3));
    let resource_type: String = row.get(at + 4);
    let event: &str = row.get(at + 5);
    let resource: &str = row.get(at + 6);
    let occurred_at: &str = row.get(at + 7);

    // Rows of the writer's own transaction are not seen by its snapshot; neither may
    // they be by the cursor, or a resume after the first of them would skip the rest.
    let cursor = Cursor {
        id,
        seen: writer.not_seeing(xid),
    };
    let cursor_text = scope.encode(&tenant, &cursor);
    let kind = match event {
        TRUNCATED => RowKind::Resync(ResyncReason::Truncated),
        PUBLISHED => RowKind::AppEvent,
        event => match EventKind::parse(event) {
            Some(kind) => RowKind::Change(kind),
            None => {
                // Only changecast's own functions write the journal: an event this
                // build does not know comes from another version sharing the database
                // (an upgrade under way, or a rollback). What it means cannot be told,
                // so the subscribers of its type refetch. Logged once per process:
                // every reader decodes the row again, at the writers' rate, and
                // `changecast_resyncs_total` counts what subscribers get.
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        id,
                        event,
                        "a journal row of an unknown event: the subscribers of its type \
                         resync; further ones are not logged"
                    );
                });
                RowKind::Resync(ResyncReason::UnknownChange)
            }
        },
    };
    let event = match kind {
        RowKind::Resync(reason) => {
            return Entry::Resync(ResyncMarker {
                reason,
                id,
                xid,
                tenant,
                resource_type,
                cursor,
                cursor_text,
            });
        }
        RowKind::AppEvent => None,
        RowKind::Change(event) => Some(event),
    };
    let payload = RawValue::from_string(resource.to_owned()).expect("BUG: jsonb prints valid JSON");
    let occurred_at = occurred_at.to_owned();
    let Some(event) = event else {
        return Entry::AppEvent(Arc::new(AppEvent {
            id,
            xid,
            tenant,
            topic: resource_type,
            payload,
            occurred_at,
            cursor,
            cursor_text,
            known_since,
            frames: Frames::default(),
        }));
    };
    let old = row
        .get::<_, Option<&str>>(at + 9)
        .map(|old| RawValue::from_string(old.to_owned()).expect("BUG: jsonb prints valid JSON"));
    Entry::Change(Arc::new(Change {
        id,
        xid,
        tenant,
        resource_type,
        event,
        resource_id: row.get(at + 8),
        resource: payload,
        old,
        occurred_at,
        cursor,
        cursor_text,
        known_since,
        values: OnceLock::new(),
        frames: Frames::default(),
    }))
}

/// The transactions `snapshot` saw running, as SQL parameters.
pub(super) fn running(snapshot: &PgSnapshot) -> Vec<String> {
    snapshot.xip.iter().map(u64::to_string).collect()
}
