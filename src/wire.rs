//! The wire format of journal entries (API.md §4, §8): the one place that turns a row
//! change or an application event into its JSON object and its SSE frame. Both
//! transports send what this renders; the journal knows nothing of either syntax.
//!
//! A change may reach subscribers in up to three forms — as itself, or, for a filtered
//! view, as the `created` of a row entering it or the `deleted` of one leaving it. Each
//! form is rendered at most once, on first use, and then shared by every subscriber:
//! a WebSocket frame is the JSON buffer itself, never a copy per subscriber.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use crate::journal::Frame;
use crate::journal::{AppEvent, Change, EventKind, SharedAppEvent, SharedChange};

/// A journal entry as one subscriber receives it.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A row change, as `as_event` (its own kind, or the view transition it makes).
    Change {
        change: SharedChange,
        as_event: EventKind,
    },
    AppEvent(SharedAppEvent),
}

impl Delivery {
    pub fn frame(&self) -> &Frame {
        match self {
            Delivery::Change { change, as_event } => change_frame(change, *as_event),
            Delivery::AppEvent(event) => app_event_frame(event),
        }
    }

    /// The event's `id`: where a client resumes after it.
    pub fn cursor_text(&self) -> &str {
        match self {
            Delivery::Change { change, .. } => &change.cursor_text,
            Delivery::AppEvent(event) => &event.cursor_text,
        }
    }

    /// Since when the service knows of the entry (the delivery-latency histogram).
    pub fn known_since(&self) -> Instant {
        match self {
            Delivery::Change { change, .. } => change.known_since,
            Delivery::AppEvent(event) => event.known_since,
        }
    }
}

/// `change` as a `resource_change` of kind `as_event`. Only an `updated` carries
/// `changed` and `old`: a row entering or leaving a view is `created` / `deleted` with
/// its new row.
pub fn change_frame(change: &Change, as_event: EventKind) -> &Frame {
    let slot = match as_event {
        EventKind::Created => 0,
        EventKind::Updated => 1,
        EventKind::Deleted => 2,
    };
    change.frames.slot(slot).get_or_init(|| {
        // Sorted by column name, so `changed` reads the same whatever jsonb's key order.
        let old: Option<BTreeMap<String, &RawValue>> = match (as_event, &change.old) {
            (EventKind::Updated, Some(old)) => {
                Some(serde_json::from_str(old.get()).expect("BUG: jsonb prints an object"))
            }
            _ => None,
        };
        let json = to_json(&ResourceChange {
            kind: "resource_change",
            id: &change.cursor_text,
            event: as_event,
            resource_type: &change.resource_type,
            tenant_id: change.tenant.as_str(),
            resource_id: &change.resource_id,
            resource: &change.resource,
            changed: old.as_ref().map(|old| old.keys().collect()),
            old: old.as_ref(),
            occurred_at: &change.occurred_at,
        });
        frame(&change.cursor_text, "resource_change", json)
    })
}

/// `event` as an `app_event`; its SSE event name is its topic, so an EventSource
/// listens with `addEventListener(topic, ...)`.
pub fn app_event_frame(event: &AppEvent) -> &Frame {
    event.frames.slot(0).get_or_init(|| {
        let json = to_json(&WireAppEvent {
            kind: "app_event",
            id: &event.cursor_text,
            topic: &event.topic,
            tenant_id: event.tenant.as_str(),
            payload: &event.payload,
            occurred_at: &event.occurred_at,
        });
        frame(&event.cursor_text, &event.topic, json)
    })
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("BUG: serialising an event cannot fail")
}

fn frame(id: &str, sse_event: &str, json: String) -> Frame {
    Frame {
        sse: Bytes::from(format!("id: {id}\nevent: {sse_event}\ndata: {json}\n\n")),
        json: Utf8Bytes::from(json),
    }
}

#[derive(Serialize)]
struct ResourceChange<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    event: EventKind,
    resource_type: &'a str,
    tenant_id: &'a str,
    resource_id: &'a str,
    resource: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Vec<&'a String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a BTreeMap<String, &'a RawValue>>,
    occurred_at: &'a str,
}

#[derive(Serialize)]
struct WireAppEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    topic: &'a str,
    tenant_id: &'a str,
    payload: &'a RawValue,
    occurred_at: &'a str,
}
