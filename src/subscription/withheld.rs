//! Bulk transactions (API.md §5, `max_txn_events`): a transaction that brings a
//! subscriber more events than its bound reaches it as one `resync` (`bulk_change`)
//! instead of them — none of them, so none may be sent before the transaction is known
//! to be whole.
//!
//! Live, a transaction is whole once the hub's boundary includes it and this subscriber
//! has received every item sent before that boundary (`Live::boundary`). Until then its
//! events wait here, in order, and so do those of every later transaction (sending those
//! first would reorder them). One transaction over the bound: its waiting events are
//! dropped and the rest of it skipped; its resync goes out once it is whole, with a
//! cursor at the boundary that includes it, so a reconnect with that cursor neither
//! receives it nor misses what follows. The resync replaces the events that boundary
//! releases too: no event of a later transaction may reach the client before it (its
//! cursor would pass the bulk transaction, which a disconnect then loses). The waiting room holds at most the bound's
//! worth of events (and of bytes): past that (many small transactions in one batch) the
//! subscriber catches up from the journal, as after a lag.
//!
//! On a replay every transaction met has committed, so the journal says at once how
//! large it is for this subscriber (`Journal::transaction_sizes`, then
//! `Journal::count_transaction` when the selection is narrower than the journal read):
//! events are sent as they come until the first transaction over the bound; there the
//! replay ends with a resync whose cursor is the replay's settled boundary (the rest of
//! the replay up to it is refetched by the client, not sent). A transaction over the
//! bound of the batch the tailer was still publishing gets its own resync once live
//! delivery has it whole.

use std::collections::{HashSet, VecDeque};

use crate::journal::{Entry, Position, Published};
use crate::selection::{Decision, Selection};

/// The waiting room holds at least this many events, whatever the bound: small
/// transactions of one batch wait together.
const ROOM_FLOOR: usize = 1_000;
/// ... and at most this many bytes of them (`Entry::size_hint`).
const ROOM_BYTES: usize = 8 * 1024 * 1024;
/// Most transactions over the bound whose resync is still due; past it, the journal.
const MAX_BULK: usize = 256;
/// Most transactions a replay remembers as within the bound (forgotten ones are asked
/// about again).
const MAX_KNOWN_SMALL: usize = 4_096;

/// One subscriber's events waiting for their transactions to be known whole, and the
/// transactions found over its bound.
pub(super) struct Withheld {
    max: usize,
    waiting: VecDeque<(Entry, Decision)>,
    bytes: usize,
    /// Events of each waiting transaction, as this subscriber receives them.
    counts: std::collections::HashMap<u64, usize>,
    /// Transactions over the bound: their events are skipped, their resync is due.
    bulk: Vec<u64>,
    /// The boundary last read, and how many items sent before it are still to come.
    reading: Option<(Position, usize)>,
    /// Read the boundary at the next turn (something began to wait).
    read_now: bool,
    /// Transactions a replay found within the bound.
    known_small: HashSet<u64>,
}

/// What offering an entry came to.
pub(super) enum Offer {
    /// Waiting, or skipped (of a transaction over the bound, or not of the selection).
    Taken,
    /// The waiting room is full: catch up from the journal.
    Overflow,
}

/// What a settled boundary releases.
pub(super) struct Settled {
    /// Events of transactions now known whole and within the bound, in order (not sent
    /// when a resync is due: it covers them).
    pub(super) events: Vec<(Entry, Decision)>,
    /// Where to resume after the transactions over the bound, if any became whole.
    pub(super) resync_at: Option<Position>,
}

impl Withheld {
    pub(super) fn new(max: usize) -> Self {
        Withheld {
            max,
            waiting: VecDeque::new(),
            bytes: 0,
            counts: Default::default(),
            bulk: Vec::new(),
            reading: None,
            read_now: false,
            known_small: HashSet::new(),
        }
    }

    /// The bound: a transaction with more events than this is a bulk change.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Forgets everything: what was not sent is read again from the journal.
    pub(super) fn reset(&mut self) {
        *self = Withheld::new(self.max);
    }

    pub(super) fn is_bulk(&self, xid: u64) -> bool {
        self.bulk.contains(&xid)
    }

    fn is_waiting(&self) -> bool {
        !self.waiting.is_empty() || !self.bulk.is_empty()
    }

    /// Takes one live entry and what the selection decided of it.
    pub(super) fn offer(&mut self, entry: Entry, decision: Decision) -> Offer {
        let xid = entry.xid();
        if self.is_bulk(xid) || matches!(decision, Decision::Skip) {
            return Offer::Taken;
        }
        if !self.is_waiting() {
            self.read_now = true;
        }
        if matches!(decision, Decision::Send(_)) {
            let count = self.counts.entry(xid).or_default();
            *count += 1;
            if *count > self.max {
                self.counts.remove(&xid);
                self.waiting.retain(|(waiting, _)| waiting.xid() != xid);
                self.bytes = self.waiting.iter().map(|(e, _)| e.size_hint()).sum();
                self.bulk.push(xid);
                return if self.bulk.len() > MAX_BULK {
                    Offer::Overflow
                } else {
                    Offer::Taken
                };
            }
        }
        self.bytes += entry.size_hint();
        self.waiting.push_back((entry, decision));
        if self.waiting.len() > self.max.max(ROOM_FLOOR) || self.bytes > ROOM_BYTES {
            Offer::Overflow
        } else {
            Offer::Taken
        }
    }

    /// One more item received from the fan-out.
    pub(super) fn received(&mut self) {
        if let Some((_, pending)) = &mut self.reading {
            *pending = pending.saturating_sub(1);
        }
    }

    /// Whether to read the hub's boundary now: something waits, no reading is in
    /// progress, and something began to wait or a batch was published in full.
    pub(super) fn needs_reading(&mut self, batch_done: bool) -> bool {
        self.is_waiting()
            && self.reading.is_none()
            && (std::mem::take(&mut self.read_now) || batch_done)
    }

    /// The hub's boundary, with `pending` items sent before it still to be received.
    pub(super) fn read(&mut self, published: &Published, pending: usize) {
        self.reading = Some((published.settled().clone(), pending));
    }

    /// Whether what waits needs a batch to be published in full first.
    pub(super) fn awaits_batch(&self) -> bool {
        self.is_waiting() && self.reading.is_none()
    }

    /// Once every item sent before the boundary read has been received: what it makes
    /// whole.
    pub(super) fn settle(&mut self) -> Option<Settled> {
        if !matches!(self.reading, Some((_, 0))) {
            return None;
        }
        let (at, _) = self.reading.take().expect("BUG: checked above");
        let mut events = Vec::new();
        // In order: the events of transactions the boundary includes come first.
        while self
            .waiting
            .front()
            .is_some_and(|(entry, _)| at.includes(entry))
        {
            let (entry, decision) = self.waiting.pop_front().expect("BUG: checked above");
            self.bytes -= entry.size_hint();
            self.counts.remove(&entry.xid());
            events.push((entry, decision));
        }
        let resync = self.take_bulk_within(&at);
        Some(Settled {
            events,
            resync_at: resync.then_some(at),
        })
    }

    /// Removes the transactions over the bound that `at` includes; whether there were any.
    pub(super) fn take_bulk_within(&mut self, at: &Position) -> bool {
        let before = self.bulk.len();
        self.bulk.retain(|&xid| !at.includes_transaction(xid));
        self.bulk.len() < before
    }

    /// A replay found transaction `xid` over the bound.
    pub(super) fn found_bulk(&mut self, xid: u64) {
        if !self.is_bulk(xid) {
            self.bulk.push(xid);
        }
        // Should it be left for live delivery, its resync waits for a boundary reading.
        self.read_now = true;
    }

    /// A replay found transaction `xid` within the bound.
    pub(super) fn found_small(&mut self, xid: u64) {
        if self.known_small.len() >= MAX_KNOWN_SMALL {
            self.known_small.clear();
        }
        self.known_small.insert(xid);
    }

    /// Whether a replay still has to ask the journal about transaction `xid`.
    pub(super) fn is_unknown(&self, xid: u64) -> bool {
        !self.is_bulk(xid) && !self.known_small.contains(&xid)
    }
}

/// Whether `selection` takes every event a journal read with its coarse filter returns
/// (so a transaction's size in the journal is its size for the subscriber). A token's
/// scope (`per_type`) may filter rows out, or leave out columns so that an update
/// touching only those brings nothing.
pub(super) fn takes_all_it_reads(selection: &Selection) -> bool {
    selection.events.is_none()
        && selection.rows.is_empty()
        && selection.ids.is_none()
        && selection.topics.is_none()
        && selection.per_type.is_empty()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::{Change, EventKind, PgSnapshot};

    fn entry(xid: u64, id: i64) -> Entry {
        let mut change = Change::for_test(EventKind::Created, "r", r#"{"id":"r"}"#, None);
        change.xid = xid;
        change.id = id;
        Entry::Change(Arc::new(change))
    }

    fn offer(withheld: &mut Withheld, xid: u64, id: i64) -> Offer {
        let entry = entry(xid, id);
        let decision = Selection::default().decide(&entry);
        withheld.offer(entry, decision)
    }

    /// Everything below `xmax` was published in full.
    fn boundary(xmax: u64) -> Published {
        Published::complete(Position::of_snapshot(PgSnapshot {
            xmin: xmax,
            xmax,
            xip: Vec::new(),
        }))
    }

    #[test]
    fn whole_transactions_are_released_in_order_and_one_over_the_bound_becomes_a_resync() {
        let mut withheld = Withheld::new(2);
        assert!(!withheld.needs_reading(true), "nothing waits");
        for (xid, id) in [(10, 1), (11, 2), (11, 3), (12, 4), (11, 5)] {
            assert!(matches!(offer(&mut withheld, xid, id), Offer::Taken));
        }
        assert!(withheld.is_bulk(11), "three events of 11 over a bound of 2");
        assert!(withheld.needs_reading(false), "something began to wait");
        // The boundary includes 10 and 11, not 12; two items sent before it are still to come.
        withheld.read(&boundary(12), 2);
        assert!(withheld.settle().is_none());
        withheld.received();
        assert!(matches!(offer(&mut withheld, 11, 6), Offer::Taken));
        withheld.received();
        let settled = withheld
            .settle()
            .expect("every item before the boundary arrived");
        let ids: Vec<i64> = settled.events.iter().map(|(e, _)| e.id()).collect();
        assert_eq!(ids, [1], "11 is over the bound, 12 not whole yet");
        assert_eq!(settled.resync_at, Some(boundary(12).settled().clone()));
        assert!(!withheld.is_bulk(11), "its resync is sent");
        // 12 waits for the next batch.
        assert!(withheld.awaits_batch());
        assert!(!withheld.needs_reading(false));
        assert!(withheld.needs_reading(true));
        withheld.read(&boundary(13), 0);
        let settled = withheld.settle().unwrap();
        assert_eq!(settled.events.len(), 1);
        assert!(settled.resync_at.is_none());
        assert!(!withheld.awaits_batch());
    }

    #[test]
    fn many_small_transactions_overflow_the_room() {
        let mut withheld = Withheld::new(1);
        let mut overflowed = false;
        for xid in 0..=(ROOM_FLOOR as u64) {
            overflowed = matches!(offer(&mut withheld, 100 + xid, xid as i64), Offer::Overflow);
        }
        assert!(overflowed, "each within the bound, together over the room");
    }
}
