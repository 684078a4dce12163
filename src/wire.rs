//! The wire format of journal entries (API.md §4, §8): the one place that turns a row
//! change or an application event into its JSON object and its SSE frame. Both
//! transports send what this renders; the journal knows nothing of either syntax.
//!
//! A change may reach subscribers in up to three forms — as itself, or, for a filtered
//! view, as the `created` of a row entering it or the `deleted` of one leaving it. Each
//! form is rendered at most once, on first use, and then shared by every subscriber:
//! a WebSocket frame is the JSON buffer itself, never a copy per subscriber.
//!
//! A subscriber whose token scope leaves columns out (API.md §3c `omit`) gets forms
//! without them, rendered once per change for each distinct set of columns left out and
//! shared by every subscriber with that set (for a change's first
//! [`MAX_CACHED_OMIT_SETS`] sets; past them each delivery renders its own); subscribers
//! without one share the full forms.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::journal::{AppEvent, Change, EventKind, SharedAppEvent, SharedChange};
pub use crate::journal::{Frame, MAX_CACHED_OMIT_SETS};
pub use crate::selection::OmitSet;

/// A journal entry as one subscriber receives it.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A row change, as `as_event` (its own kind, or the view transition it makes),
    /// without the columns of `omit`.
    Change {
        change: SharedChange,
        as_event: EventKind,
        omit: Option<Arc<OmitSet>>,
    },
    AppEvent(SharedAppEvent),
}

impl Delivery {
    /// Its frame: shared with every subscriber receiving the same form, or (past an
    /// entry's [`MAX_CACHED_OMIT_SETS`] sets of omitted columns) rendered for this one.
    pub fn frame(&self) -> Cow<'_, Frame> {
        match self {
            Delivery::Change {
                change,
                as_event,
                omit: None,
            } => Cow::Borrowed(change_frame(change, *as_event)),
            Delivery::Change {
                change,
                as_event,
                omit: Some(omit),
            } => change_frame_omitting(change, *as_event, omit),
            Delivery::AppEvent(event) => Cow::Borrowed(app_event_frame(event)),
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
    change
        .frames
        .slot(slot_of(as_event))
        .get_or_init(|| render_change(change, as_event, None))
}

/// As [`change_frame`], without the columns of `omit` in `resource`, `changed` and
/// `old`; shared by every subscriber with the same (interned) set, for an entry's first
/// [`MAX_CACHED_OMIT_SETS`] sets.
pub fn change_frame_omitting<'a>(
    change: &'a Change,
    as_event: EventKind,
    omit: &Arc<OmitSet>,
) -> Cow<'a, Frame> {
    change.frames.omitting(omit, slot_of(as_event), || {
        render_change(change, as_event, Some(omit))
    })
}

fn slot_of(as_event: EventKind) -> usize {
    match as_event {
        EventKind::Created => 0,
        EventKind::Updated => 1,
        EventKind::Deleted => 2,
    }
}

fn render_change(change: &Change, as_event: EventKind, omit: Option<&OmitSet>) -> Frame {
    // Sorted by column name, so `changed` reads the same whatever jsonb's key order.
    let old: Option<BTreeMap<String, &RawValue>> = match (as_event, &change.old) {
        (EventKind::Updated, Some(old)) => {
            let mut old: BTreeMap<String, &RawValue> =
                serde_json::from_str(old.get()).expect("BUG: jsonb prints an object");
            if let Some(omit) = omit {
                old.retain(|column, _| !omit.contains(column));
            }
            Some(old)
        }
        _ => None,
    };
    let without = omit.and_then(|omit| without_columns(change.resource.get(), omit));
    let resource = match &without {
        Some(json) => json.as_ref(),
        None => &change.resource,
    };
    let event = ResourceChange {
        kind: "resource_change",
        id: &change.cursor_text,
        event: as_event,
        resource_type: &change.resource_type,
        tenant_id: change.tenant.as_str(),
        resource_id: &change.resource_id,
        resource,
        changed: old.as_ref().map(|old| old.keys().collect()),
        old: old.as_ref(),
        occurred_at: &change.occurred_at,
    };
    let values = resource.get().len() + change.old.as_ref().map_or(0, |old| 2 * old.get().len());
    let fields =
        change.resource_type.len() + change.resource_id.len() + change.tenant.as_str().len();
    frame(
        &change.cursor_text,
        "resource_change",
        values + fields,
        &event,
    )
}

/// A row's JSON object without the columns of `omit`, the others in their order;
/// `None` when it has none of them (or is no object: only objects have columns).
pub fn without_columns(json: &str, omit: &OmitSet) -> Option<Box<RawValue>> {
    let Ok(Columns(columns)) = serde_json::from_str::<Columns<'_>>(json) else {
        return None;
    };
    if !columns.iter().any(|(name, _)| omit.contains(name)) {
        return None;
    }
    let mut out = String::with_capacity(json.len());
    out.push('{');
    for (name, value) in columns.iter().filter(|(name, _)| !omit.contains(name)) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&to_json(name));
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Some(RawValue::from_string(out).expect("BUG: an object of valid JSON values"))
}

/// A JSON object's members in their order, values unparsed.
struct Columns<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Columns<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = Columns<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns<'de>, A::Error> {
                let mut columns = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    columns.push(entry);
                }
                Ok(Columns(columns))
            }
        }
        deserializer.deserialize_map(ColumnsVisitor)
    }
}

/// `event` as an `app_event`; its SSE event name is its topic, so an EventSource
/// listens with `addEventListener(topic, ...)`.
pub fn app_event_frame(event: &AppEvent) -> &Frame {
    event.frames.slot(0).get_or_init(|| {
        let wire = WireAppEvent {
            kind: "app_event",
            id: &event.cursor_text,
            topic: &event.topic,
            tenant_id: event.tenant.as_str(),
            payload: &event.payload,
            occurred_at: &event.occurred_at,
        };
        let values =
            event.payload.get().len() + 2 * event.topic.len() + event.tenant.as_str().len();
        frame(&event.cursor_text, &event.topic, values, &wire)
    })
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("BUG: serialising an event cannot fail")
}

/// Bytes of a frame besides its values and the fields `frame` is told of: the keys,
/// `occurred_at`, the SSE lines' names, and the cursor twice (SSE `id:` and JSON `id`).
const FRAME_OVERHEAD_BYTES: usize = 256;

/// `event`'s JSON written once, inside its SSE event: the WebSocket form is a slice of
/// the same buffer, so a change costs one allocation and one serialisation for both.
/// `size_hint`: roughly the bytes of its variable-length fields, so the buffer is
/// allocated once at its final size.
fn frame(id: &str, sse_event: &str, size_hint: usize, event: &impl Serialize) -> Frame {
    let capacity = size_hint + sse_event.len() + 2 * id.len() + FRAME_OVERHEAD_BYTES;
    let mut sse = Vec::with_capacity(capacity);
    for part in ["id: ", id, "\nevent: ", sse_event, "\ndata: "] {
        sse.extend_from_slice(part.as_bytes());
    }
    let json_start = sse.len();
    serde_json::to_writer(&mut sse, event).expect("BUG: serialising an event cannot fail");
    let json_end = sse.len();
    sse.extend_from_slice(b"\n\n");
    let sse = Bytes::from(sse);
    let json =
        Utf8Bytes::try_from(sse.slice(json_start..json_end)).expect("BUG: serde_json writes UTF-8");
    Frame { json, sse }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Change;
    use serde_json::{json, Value};

    fn omit(columns: &[&str]) -> Arc<OmitSet> {
        OmitSet::interned(columns.iter().map(|c| c.to_string())).unwrap()
    }

    #[test]
    fn omitted_columns_leave_resource_changed_and_old_and_the_rest_keeps_its_order() {
        let change = Change::for_test(
            EventKind::Updated,
            "r1",
            r#"{"id": "r1", "note": "secret \"x\"", "state": "done", "a": [1, {"b": 2}]}"#,
            Some(r#"{"note": "old secret", "state": "open"}"#),
        );
        let secret = omit(&["note", "absent"]);
        let frame = change_frame_omitting(&change, EventKind::Updated, &secret);
        let text = frame.json.as_str();
        assert!(!text.contains("secret") && !text.contains("note"), "{text}");
        let event: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            event["resource"],
            json!({"id": "r1", "state": "done", "a": [1, {"b": 2}]})
        );
        assert_eq!(event["changed"], json!(["state"]));
        assert_eq!(event["old"], json!({"state": "open"}));
        // The other columns as the journal wrote them, in its order.
        assert!(
            text.contains(r#""resource":{"id":"r1","state":"done","a":[1, {"b": 2}]}"#),
            "{text}"
        );
        assert!(frame.sse.starts_with(b"id: "));
        // Shared: the same set finds the same rendering, the full form stays full.
        let again = change_frame_omitting(&change, EventKind::Updated, &omit(&["absent", "note"]));
        assert!(std::ptr::eq(&*frame, &*again));
        assert!(change_frame(&change, EventKind::Updated)
            .json
            .as_str()
            .contains("secret"));
    }

    #[test]
    fn the_sse_event_carries_the_websocket_json_and_holds_it_once() {
        let change = Change::for_test(
            EventKind::Updated,
            "r1",
            r#"{"id": "r1", "title": "ünïcode \"quoted\""}"#,
            Some(r#"{"title": "before"}"#),
        );
        let frame = change_frame(&change, EventKind::Updated);
        let json = frame.json.as_str();
        let event: Value = serde_json::from_str(json).unwrap();
        assert_eq!(event["type"], "resource_change");
        assert_eq!(event["changed"], json!(["title"]));
        let sse = std::str::from_utf8(&frame.sse).unwrap();
        let id = &change.cursor_text;
        assert_eq!(
            sse,
            format!("id: {id}\nevent: resource_change\ndata: {json}\n\n")
        );
        assert_eq!(frame.held_bytes(), frame.sse.len());
    }

    #[test]
    fn past_the_kept_sets_each_delivery_still_gets_its_columns_left_out() {
        let change = Change::for_test(
            EventKind::Created,
            "r1",
            r#"{"id": "r1", "c0": 0, "c1": 1, "c2": 2, "c3": 3, "c4": 4, "c5": 5, "c6": 6,
                "c7": 7, "c8": 8, "c9": 9, "c10": 10, "c11": 11}"#,
            None,
        );
        for _ in 0..2 {
            for i in 0..MAX_CACHED_OMIT_SETS + 4 {
                let column = format!("c{i}");
                let frame = change_frame_omitting(&change, EventKind::Created, &omit(&[&column]));
                let event: Value = serde_json::from_str(frame.json.as_str()).unwrap();
                let resource = event["resource"].as_object().unwrap();
                assert!(!resource.contains_key(&column), "{event}");
                assert_eq!(resource.len(), 12, "{event}");
                assert_eq!(
                    matches!(frame, Cow::Borrowed(_)),
                    i < MAX_CACHED_OMIT_SETS,
                    "set {i}"
                );
            }
        }
    }

    #[test]
    fn rows_without_the_columns_are_left_as_they_are() {
        let set = omit(&["x"]);
        assert!(without_columns(r#"{"a": 1}"#, &set).is_none());
        assert!(without_columns("[1]", &set).is_none());
        assert_eq!(
            without_columns(r#"{"x": 1, "a\"b": 2}"#, &set)
                .unwrap()
                .get(),
            r#"{"a\"b":2}"#
        );
        assert_eq!(without_columns(r#"{"x": 1}"#, &set).unwrap().get(), "{}");
    }
}
