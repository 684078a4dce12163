//! Replay pages read once for every subscriber replaying the same range: a reconnect
//! storm's subscribers arrive within moments of each other, and all of them need the
//! same first pages.

use std::sync::Arc;
use std::time::Duration;

use super::shared_reads::{SharedReads, Weighed};
use crate::journal::{Entry, ReplayPage};

/// How long a replay page read for one subscriber is kept for others replaying the same
/// range.
const KEEP_REPLAY_PAGES: Duration = Duration::from_secs(2);
/// Most bytes kept in shared replay pages, as [`entry_weight`] counts them.
const MAX_KEPT_REPLAY_BYTES: usize = 16 * 1024 * 1024;

/// What a replayed entry holds once delivered: its JSON (`Entry::size_hint`) and about
/// twice that again in the wire frames rendered from it and its cursor text, all kept as
/// long as the page is, plus the forms without some columns kept for scoped subscribers
/// so far.
fn entry_weight(entry: &Entry) -> usize {
    let omitting = match entry {
        Entry::Change(change) => change.frames.omitting_bytes(),
        Entry::AppEvent(_) | Entry::Resync(_) => 0,
    };
    3 * entry.size_hint() + omitting
}

/// Replay pages read once for every subscriber replaying the same range.
pub(super) type SharedPages = SharedReads<SharedPage>;

pub(super) fn shared_pages() -> SharedPages {
    SharedReads::new(KEEP_REPLAY_PAGES, MAX_KEPT_REPLAY_BYTES)
}

/// One replay page as read from the journal, shareable.
#[derive(Clone)]
pub(super) struct SharedPage {
    pub(super) page: Arc<ReplayPage>,
}

impl SharedPage {
    pub(super) fn new(page: ReplayPage) -> Self {
        SharedPage {
            page: Arc::new(page),
        }
    }
}

impl Weighed for SharedPage {
    /// Weighed anew at each sweep: the forms kept for scoped subscribers grow as the
    /// page is delivered.
    fn bytes(&self) -> usize {
        self.page.entries.iter().map(entry_weight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Change, EventKind};
    use crate::wire::{change_frame_omitting, OmitSet};

    #[test]
    fn kept_forms_without_columns_add_to_an_entrys_weight() {
        let change = Arc::new(Change::for_test(
            EventKind::Created,
            "r1",
            r#"{"id": "r1", "secret": "s", "note": "n"}"#,
            None,
        ));
        let entry = Entry::Change(change.clone());
        let before = entry_weight(&entry);
        let omit = OmitSet::interned(["secret".to_owned()]).unwrap();
        let frame = change_frame_omitting(&change, EventKind::Created, &omit);
        assert_eq!(entry_weight(&entry), before + frame.held_bytes());
    }
}
