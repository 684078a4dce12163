//! The entry model: one journal row as the service hands it on — a row change, an
//! application event, or a resync marker — with the caches its readers fill once
//! and share (the row's values for filters, its wire forms).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;

use super::cursor::{Cursor, ResyncReason};
use super::frames::Frames;
use crate::row::Row;
use crate::tenant::TenantId;

/// `created | updated | deleted`, as the journal and the wire spell them. (The journal's
/// fourth kind, `truncated`, is not a resource change: it is read as [`Entry::Resync`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Created, EventKind::Updated, EventKind::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One journal row as the hub fans it out: a row change, an application event, or a
/// marker that makes subscribers resync.
#[derive(Clone, Debug)]
pub enum Entry {
    Change(SharedChange),
    AppEvent(SharedAppEvent),
    /// The subscribers of `resource_type` in the tenant resync: its table was
    /// truncated, or the row is of an event this build does not know. It has no
    /// `resource_change` form.
    Resync(ResyncMarker),
}

impl Entry {
    /// Journal row id.
    pub fn id(&self) -> i64 {
        match self {
            Entry::Change(change) => change.id,
            Entry::AppEvent(event) => event.id,
            Entry::Resync(marker) => marker.id,
        }
    }

    /// The writer's transaction id.
    pub fn xid(&self) -> u64 {
        match self {
            Entry::Change(change) => change.xid,
            Entry::AppEvent(event) => event.xid,
            Entry::Resync(marker) => marker.xid,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        match self {
            Entry::Change(change) => &change.tenant,
            Entry::AppEvent(event) => &event.tenant,
            Entry::Resync(marker) => &marker.tenant,
        }
    }

    /// Roughly the bytes it holds (its JSON), for memory budgets.
    pub fn size_hint(&self) -> usize {
        const OVERHEAD: usize = 256;
        OVERHEAD
            + match self {
                Entry::Change(change) => {
                    change.resource.get().len() + change.old.as_ref().map_or(0, |o| o.get().len())
                }
                Entry::AppEvent(event) => event.payload.get().len(),
                Entry::Resync(_) => 0,
            }
    }

    pub fn cursor(&self) -> &Cursor {
        match self {
            Entry::Change(change) => &change.cursor,
            Entry::AppEvent(event) => &event.cursor,
            Entry::Resync(marker) => &marker.cursor,
        }
    }
}

/// A journal row that sends the subscribers of one tenant's resource type a `resync`:
/// a journalled TRUNCATE of its rows, or a row whose event this build cannot read.
#[derive(Clone, Debug)]
pub struct ResyncMarker {
    pub reason: ResyncReason,
    pub id: i64,
    pub xid: u64,
    pub tenant: TenantId,
    pub resource_type: String,
    pub cursor: Cursor,
    /// `cursor` as the client sees it: the `id` of the `resync` it becomes.
    pub cursor_text: String,
}

/// One committed row change. Its wire forms (`crate::wire`) are rendered at most once
/// each, on first use, and shared by every subscriber.
#[derive(Debug)]
pub struct Change {
    /// Journal row id.
    pub id: i64,
    /// The writer's transaction id.
    pub xid: u64,
    pub tenant: TenantId,
    pub resource_type: String,
    pub event: EventKind,
    /// The row's id column, as text.
    pub resource_id: String,
    /// The new row; the old row for `deleted`.
    pub resource: Box<RawValue>,
    /// For `updated`: the previous values of exactly the columns that changed.
    pub old: Option<Box<RawValue>>,
    /// RFC 3339, UTC, microseconds.
    pub occurred_at: String,
    pub cursor: Cursor,
    /// `cursor` as the client sees it: the event's `id`.
    pub cursor_text: String,
    /// Since when the service knows of it (the wake-up that led to reading it, else the
    /// read itself): the start of the delivery-latency histogram.
    pub known_since: Instant,
    /// `resource` and `old` parsed, for row filters (only if some subscriber has one).
    pub(super) values: OnceLock<RowValues>,
    pub(crate) frames: Frames,
}

#[cfg(test)]
impl Change {
    /// A change as the journal would read it, for tests of what subscribers receive.
    pub(crate) fn for_test(
        event: EventKind,
        resource_id: &str,
        resource: &str,
        old: Option<&str>,
    ) -> Change {
        let raw = |json: &str| RawValue::from_string(json.to_owned()).expect("test JSON");
        Change {
            id: 1,
            xid: 1,
            tenant: TenantId::new("t").expect("a tenant"),
            resource_type: "ticket".into(),
            event,
            resource_id: resource_id.into(),
            resource: raw(resource),
            old: old.map(raw),
            occurred_at: "2026-11-29T00:00:00.000000Z".into(),
            cursor: Cursor::of_snapshot("1:1:".parse().expect("a snapshot")),
            cursor_text: String::new(),
            known_since: Instant::now(),
            values: OnceLock::new(),
            frames: Frames::default(),
        }
    }
}

/// A row's column values, before and after a change, for row filters.
#[derive(Debug, Default)]
pub struct RowValues {
    pub new: Row,
    /// Previous values of the columns that changed (empty unless `updated`).
    pub old: Row,
}

impl Change {
    pub fn values(&self) -> &RowValues {
        // jsonb always prints an object; anything else would match no filter but
        // `is.null`, as a row without the columns would.
        let row = |json: &RawValue| {
            Row::parse(json.get()).unwrap_or_else(|| {
                tracing::warn!(id = self.id, "a journalled row is not a JSON object");
                Row::default()
            })
        };
        self.values.get_or_init(|| RowValues {
            new: row(&self.resource),
            old: self.old.as_deref().map(row).unwrap_or_default(),
        })
    }
}

/// One committed `changecast.publish()` (API.md §8).
#[derive(Debug)]
pub struct AppEvent {
    pub id: i64,
    pub xid: u64,
    pub tenant: TenantId,
    pub topic: String,
    pub payload: Box<RawValue>,
    pub occurred_at: String,
    pub cursor: Cursor,
    pub cursor_text: String,
    pub known_since: Instant,
    pub(crate) frames: Frames,
}

pub type SharedAppEvent = Arc<AppEvent>;

pub type SharedChange = Arc<Change>;
