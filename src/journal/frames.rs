//! Slots for an entry's wire forms. `crate::wire` renders them; the entry only keeps
//! them, so each form is rendered once and shared by every subscriber — and, for
//! subscribers whose scope leaves columns out ([`OmitSet`]), once per distinct set of
//! columns left out, shared by every subscriber with that set.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::sync::lock;

/// An entry as both transports write it (rendered by `crate::wire`).
#[derive(Debug)]
pub struct Frame {
    /// The JSON object: a WebSocket text frame as is.
    pub json: Utf8Bytes,
    /// The whole SSE event, `id:`, `event:` and `data:` lines.
    pub sse: Bytes,
}

/// The wire forms of one entry (up to three: see `crate::wire`), each rendered on
/// first use and then shared by every subscriber.
#[derive(Debug, Default)]
pub struct Frames {
    full: [OnceLock<Frame>; 3],
    /// The forms without some columns: one node per distinct set met so far.
    omitting: OnceLock<Box<OmittedFrames>>,
}

/// The forms of an entry without the columns of `omit`; `next` holds another set's.
/// An append-only list: readers never wait for a lock, and a form, once rendered, stays
/// where it is for the entry's life (so it can be lent out by reference).
#[derive(Debug)]
struct OmittedFrames {
    omit: Arc<OmitSet>,
    frames: [OnceLock<Frame>; 3],
    next: OnceLock<Box<OmittedFrames>>,
}

impl Frames {
    pub fn slot(&self, index: usize) -> &OnceLock<Frame> {
        &self.full[index]
    }

    /// The slot of form `index` without `omit`'s columns. Walks one node per distinct
    /// set already rendered for this entry: few in practice, since sets come from
    /// token scopes, and equal sets are one interned value.
    pub fn slot_omitting(&self, omit: &Arc<OmitSet>, index: usize) -> &OnceLock<Frame> {
        let mut link = &self.omitting;
        loop {
            // Whoever sets a link first puts its set there; another set moves on.
            let node = link.get_or_init(|| {
                Box::new(OmittedFrames {
                    omit: omit.clone(),
                    frames: Default::default(),
                    next: OnceLock::new(),
                })
            });
            if Arc::ptr_eq(&node.omit, omit) {
                return &node.frames[index];
            }
            link = &node.next;
        }
    }
}

/// Columns of one resource type a subscriber never receives (a token scope's `omit`,
/// API.md §3c). Interned: equal sets are one `Arc`, so renderings are keyed by pointer
/// and shared by every subscriber with the same set.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OmitSet(BTreeSet<String>);

/// Interned sets, by their columns; entries of sets nobody holds any more are swept as
/// the table grows.
static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();

#[derive(Default)]
struct Interned {
    sets: HashMap<BTreeSet<String>, Weak<OmitSet>>,
    /// Size at which dead entries are swept next.
    sweep_at: usize,
}

/// Smallest table size at which dead entries are swept.
const SWEEP_FROM: usize = 64;

impl OmitSet {
    /// The one shared set of `columns`; `None` when there are none.
    pub fn interned(columns: impl IntoIterator<Item = String>) -> Option<Arc<OmitSet>> {
        let columns: BTreeSet<String> = columns.into_iter().collect();
        if columns.is_empty() {
            return None;
        }
        let mut interned = lock(INTERNED.get_or_init(Default::default));
        if let Some(set) = interned.sets.get(&columns).and_then(Weak::upgrade) {
            return Some(set);
        }
        let set = Arc::new(OmitSet(columns.clone()));
        interned.sets.insert(columns, Arc::downgrade(&set));
        if interned.sets.len() >= interned.sweep_at.max(SWEEP_FROM) {
            interned.sets.retain(|_, set| set.strong_count() > 0);
            interned.sweep_at = interned.sets.len() * 2;
        }
        Some(set)
    }

    pub fn contains(&self, column: &str) -> bool {
        self.0.contains(column)
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[&str]) -> Option<Arc<OmitSet>> {
        OmitSet::interned(columns.iter().map(|c| c.to_string()))
    }

    #[test]
    fn equal_sets_are_one_value_and_empty_is_none() {
        let a = set(&["b", "a"]).unwrap();
        let b = set(&["a", "b", "a"]).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &set(&["a"]).unwrap()));
        assert!(set(&[]).is_none());
        assert!(a.contains("a") && !a.contains("c"));
    }

    #[test]
    fn each_set_has_its_own_slots_and_finds_them_again() {
        let frames = Frames::default();
        let sets: Vec<_> = (0..5)
            .map(|i| set(&[&format!("slot-test-{i}")]).unwrap())
            .collect();
        for (i, omit) in sets.iter().enumerate() {
            let _ = frames.slot_omitting(omit, 1).set(Frame {
                json: Utf8Bytes::from(format!("{i}")),
                sse: Bytes::new(),
            });
        }
        for (i, omit) in sets.iter().enumerate() {
            let frame = frames.slot_omitting(omit, 1).get().unwrap();
            assert_eq!(frame.json.as_str(), i.to_string());
            assert!(frames.slot_omitting(omit, 0).get().is_none());
        }
        assert!(frames.slot(1).get().is_none());
    }
}
