//! Slots for an entry's wire forms. `crate::wire` renders them; the entry only keeps
//! them, so each form is rendered once and shared by every subscriber — and, for
//! subscribers whose scope leaves columns out ([`OmitSet`]), once per distinct set of
//! columns left out, shared by every subscriber with that set (for the first
//! [`MAX_CACHED_OMIT_SETS`] sets; others render their own).

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::selection::OmitSet;

/// Most distinct sets of omitted columns whose forms one entry keeps. Each kept set
/// costs memory for the entry's life and a step of every omitting delivery's walk;
/// sets come from token scopes, so a few cover nearly every subscriber, and past these
/// a delivery renders its own form.
pub const MAX_CACHED_OMIT_SETS: usize = 8;

/// An entry as both transports write it (rendered by `crate::wire`).
#[derive(Clone, Debug)]
pub struct Frame {
    /// The JSON object: a WebSocket text frame as is.
    pub json: Utf8Bytes,
    /// The whole SSE event, `id:`, `event:` and `data:` lines.
    pub sse: Bytes,
}

impl Frame {
    /// Bytes it holds: the JSON is usually a slice of the SSE event (see `crate::wire`),
    /// and counts only when it is not.
    pub fn held_bytes(&self) -> usize {
        let sse = self.sse.as_ptr_range();
        let json = self.json.as_bytes().as_ptr_range();
        let shared = sse.start <= json.start && json.end <= sse.end;
        self.sse.len() + if shared { 0 } else { self.json.len() }
    }
}

/// The wire forms of one entry (up to three: see `crate::wire`), each rendered on
/// first use and then shared by every subscriber.
#[derive(Debug, Default)]
pub struct Frames {
    full: [OnceLock<Frame>; 3],
    /// The forms without some columns: one node per distinct set met so far, at most
    /// [`MAX_CACHED_OMIT_SETS`].
    omitting: OnceLock<Box<OmittedFrames>>,
    /// Bytes of the omitting forms kept (JSON and SSE), for memory budgets.
    omitting_bytes: AtomicUsize,
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

    /// Form `index` without `omit`'s columns, rendered by `render` on first use and
    /// then shared for the entry's life — unless the entry already keeps the forms of
    /// [`MAX_CACHED_OMIT_SETS`] other sets: then rendered anew for this caller alone.
    pub fn omitting(
        &self,
        omit: &Arc<OmitSet>,
        index: usize,
        render: impl FnOnce() -> Frame,
    ) -> Cow<'_, Frame> {
        match self.slot_omitting(omit, index) {
            Some(slot) => Cow::Borrowed(slot.get_or_init(|| {
                let frame = render();
                self.omitting_bytes
                    .fetch_add(frame.held_bytes(), Ordering::Relaxed);
                frame
            })),
            None => Cow::Owned(render()),
        }
    }

    /// Bytes of the omitting forms this entry keeps.
    pub fn omitting_bytes(&self) -> usize {
        self.omitting_bytes.load(Ordering::Relaxed)
    }

    /// The slot of form `index` without `omit`'s columns; `None` when the entry keeps
    /// [`MAX_CACHED_OMIT_SETS`] other sets already. Walks at most that many nodes
    /// (equal sets are one interned value, compared by pointer).
    fn slot_omitting(&self, omit: &Arc<OmitSet>, index: usize) -> Option<&OnceLock<Frame>> {
        let mut link = &self.omitting;
        for _ in 0..MAX_CACHED_OMIT_SETS {
            // Whoever sets a link first puts its set there; another set moves on.
            let node = link.get_or_init(|| {
                Box::new(OmittedFrames {
                    omit: omit.clone(),
                    frames: Default::default(),
                    next: OnceLock::new(),
                })
            });
            if Arc::ptr_eq(&node.omit, omit) {
                return Some(&node.frames[index]);
            }
            link = &node.next;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[&str]) -> Option<Arc<OmitSet>> {
        OmitSet::interned(columns.iter().map(|c| c.to_string()))
    }

    fn frame(text: String) -> Frame {
        Frame {
            json: Utf8Bytes::from(text),
            sse: Bytes::from_static(b"sse"),
        }
    }

    #[test]
    fn each_set_has_its_own_slots_and_finds_them_again() {
        let frames = Frames::default();
        let sets: Vec<_> = (0..5)
            .map(|i| set(&[&format!("slot-test-{i}")]).unwrap())
            .collect();
        for (i, omit) in sets.iter().enumerate() {
            let _ = frames
                .slot_omitting(omit, 1)
                .unwrap()
                .set(frame(i.to_string()));
        }
        for (i, omit) in sets.iter().enumerate() {
            let frame = frames.slot_omitting(omit, 1).unwrap().get().unwrap();
            assert_eq!(frame.json.as_str(), i.to_string());
            assert!(frames.slot_omitting(omit, 0).unwrap().get().is_none());
        }
        assert!(frames.slot(1).get().is_none());
    }

    #[test]
    fn only_the_first_sets_are_kept_and_weighed_the_others_render_their_own() {
        let frames = Frames::default();
        let sets: Vec<_> = (0..MAX_CACHED_OMIT_SETS + 4)
            .map(|i| set(&[&format!("cap-test-{i}")]).unwrap())
            .collect();
        let mut renders = 0;
        for _ in 0..2 {
            for (i, omit) in sets.iter().enumerate() {
                let form = frames.omitting(omit, 1, || {
                    renders += 1;
                    frame(format!("form-{i}"))
                });
                assert_eq!(form.json.as_str(), format!("form-{i}"));
                assert_eq!(matches!(form, Cow::Borrowed(_)), i < MAX_CACHED_OMIT_SETS);
            }
        }
        // The kept sets rendered once, the others on every call.
        assert_eq!(renders, MAX_CACHED_OMIT_SETS + 2 * 4);
        let kept: usize = (0..MAX_CACHED_OMIT_SETS)
            .map(|i| format!("form-{i}").len() + 3)
            .sum();
        assert_eq!(frames.omitting_bytes(), kept);
        // A kept set's other forms still have room.
        let other = frames.omitting(&sets[0], 2, || frame("deleted".into()));
        assert!(matches!(other, Cow::Borrowed(_)));
    }
}
