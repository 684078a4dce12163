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
/// long as the page is.
fn entry_weight(entry: &Entry) -> usize {
    3 * entry.size_hint()
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
    bytes: usize,
}

impl SharedPage {
    pub(super) fn new(page: ReplayPage) -> Self {
        let bytes = page.entries.iter().map(entry_weight).sum();
        SharedPage {
            page: Arc::new(page),
            bytes,
        }
    }
}

impl Weighed for SharedPage {
    fn bytes(&self) -> usize {
        self.bytes
    }
}
