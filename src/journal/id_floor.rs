//! An id below which the tailer has nothing left to read, so that its read skips the
//! journal's older partitions: setting up a scan of each of a dozen partitions cost more
//! than the read of one new change.
//!
//! Why it holds. Every journal row is written by a transaction that had its id (xid)
//! before it took the row's id from the sequence: the capture triggers run after the row
//! they capture was written, truncation's after the truncation, and
//! `changecast.publish()` takes its transaction id first (migration V22). A [`Mark`] is
//! the sequence's next id, read, then a transaction id taken, in that order. So every row
//! with an id below the mark's was written by a transaction whose id is below the mark's
//! xid. Once a snapshot's xmin has reached the mark's xid, all those transactions have
//! ended: the snapshot sees them (or they aborted). The tailer reads the rows of
//! transactions its previous snapshot did not see, whose ids are all at or above that
//! snapshot's xmin: none of their rows is below the mark's id.
//!
//! A transaction that stays open holds every snapshot's xmin back, and with it the floor:
//! at the newest mark taken before it began. The sequence must hand out ids in order:
//! with a cache (`ALTER SEQUENCE ... CACHE n`) a session hands out ids below the next one
//! read, so no mark is taken then. A sequence that went backwards (set by hand) makes
//! the marks forget everything before; a restored or promoted database is followed
//! anew (the tailer's connection is new, or the publisher forgets the marks).
//!
//! A hot standby replays the primary's sequence and transaction ids, so the marks taken
//! on the primary bound a batch read on the standby too; a read server found promoted
//! is a database of its own, read without them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::position::Published;
use super::sql::{DbResult, ID_FLOOR_MARK_SQL};

/// How often a mark is taken while changes arrive (each costs a transaction id and a
/// commit record in the WAL). None is taken while the journal is quiet: an older mark
/// stays valid, and a database that writes nothing else should write no WAL for us.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// Marks kept while a long transaction holds the floor back: past this, the older ones
/// are thinned out (the oldest stays, so the floor stays valid, only lower).
const MAX_MARKS: usize = 64;

/// The sequence's next id, then a transaction id (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    next_id: i64,
    xid: u64,
}

impl Mark {
    /// Takes a mark on `client`, a connection to the primary; None when the sequence
    /// caches ids (no mark holds then).
    pub async fn take(client: &Client) -> DbResult<Option<Mark>> {
        let row = client.query_opt(ID_FLOOR_MARK_SQL.as_str(), &[]).await?;
        Ok(row.map(|row| Mark {
            next_id: row.get(0),
            xid: row
                .get::<_, &str>(1)
                .parse()
                .expect("BUG: xid8 is a number"),
        }))
    }
}

/// The marks of one connection to the database, oldest first.
#[derive(Debug, Default)]
pub struct IdFloor {
    marks: VecDeque<Mark>,
    taken_at: Option<Instant>,
    /// Changes were read since the last mark.
    active: bool,
}

impl IdFloor {
    /// Counts the changes a batch read.
    pub fn read(&mut self, changes: usize) {
        self.active |= changes > 0;
    }

    /// Whether a mark is due: the first one, then one per [`MARK_EVERY`] while changes
    /// are read.
    pub fn mark_due(&self, now: Instant) -> bool {
        self.taken_at
            .is_none_or(|taken| self.active && now.duration_since(taken) >= MARK_EVERY)
    }

    /// Keeps a mark taken at `now`; None (the sequence caches ids) forgets them all.
    pub fn record(&mut self, mark: Option<Mark>, now: Instant) {
        self.taken_at = Some(now);
        self.active = false;
        let Some(mark) = mark else {
            self.forget();
            return;
        };
        if self
            .marks
            .back()
            .is_some_and(|last| mark.next_id < last.next_id)
        {
            tracing::warn!(
                next_id = mark.next_id,
                "the journal's sequence went backwards: reading every partition until new marks hold"
            );
            self.marks.clear();
        }
        if self.marks.len() >= MAX_MARKS {
            self.marks.remove(1);
        }
        self.marks.push_back(mark);
    }

    /// Forgets every mark: the database is not the one they were taken on.
    pub fn forget(&mut self) {
        self.marks.clear();
    }

    /// The floor for the read that follows `published` (nothing in progress): the id of
    /// the newest mark whose xid the boundary's xmin has reached, else `i64::MIN`. Older
    /// marks are dropped; they would only give a lower floor from now on.
    pub fn below(&mut self, published: &Published) -> i64 {
        let xmin = published.prev.0.xmin;
        let Some(newest) = self.marks.iter().rposition(|mark| mark.xid <= xmin) else {
            return i64::MIN;
        };
        self.marks.drain(..newest);
        self.marks[0].next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{PgSnapshot, Position};

    fn mark(next_id: i64, xid: u64) -> Option<Mark> {
        Some(Mark { next_id, xid })
    }

    fn after(xmin: u64, xip: Vec<u64>, xmax: u64) -> Published {
        Published::complete(Position::of_snapshot(PgSnapshot { xmin, xmax, xip }))
    }

    fn floor_of(marks: &[(i64, u64)]) -> IdFloor {
        let mut floor = IdFloor::default();
        let now = Instant::now();
        for &(next_id, xid) in marks {
            floor.record(mark(next_id, xid), now);
        }
        floor
    }

    #[test]
    fn no_floor_until_a_snapshot_has_seen_every_transaction_older_than_a_mark() {
        let mut floor = floor_of(&[(100, 50)]);
        assert_eq!(floor.below(&after(49, vec![49], 60)), i64::MIN);
        assert_eq!(floor.below(&after(50, vec![50], 60)), 100);
        assert_eq!(floor.below(&after(55, vec![], 55)), 100);
    }

    #[test]
    fn the_newest_mark_the_xmin_has_reached_sets_the_floor() {
        let mut floor = floor_of(&[(100, 50), (200, 60), (300, 70)]);
        assert_eq!(floor.below(&after(65, vec![65], 80)), 200);
        // The older mark is gone: a later read never goes back below it.
        assert_eq!(floor.marks.len(), 2);
        assert_eq!(floor.below(&after(90, vec![], 90)), 300);
        assert_eq!(floor.marks.len(), 1);
    }

    #[test]
    fn a_long_transaction_holds_the_floor_at_the_last_mark_before_it() {
        // Transaction 55 began after the first mark and stays open.
        let mut floor = floor_of(&[(100, 50)]);
        let now = Instant::now();
        for n in 1..=200 {
            floor.record(mark(100 + n * 10, 60 + n as u64), now);
        }
        assert_eq!(floor.marks.len(), MAX_MARKS);
        assert_eq!(floor.below(&after(55, vec![55], 300)), 100);
        // Once it ends, the newest mark its end let through.
        assert_eq!(floor.below(&after(300, vec![], 300)), 100 + 200 * 10);
    }

    #[test]
    fn a_sequence_that_went_backwards_or_caches_ids_forgets_the_marks() {
        let mut floor = floor_of(&[(100, 50), (40, 60)]);
        assert_eq!(floor.below(&after(55, vec![], 55)), i64::MIN);
        assert_eq!(floor.below(&after(65, vec![], 65)), 40);
        floor.record(None, Instant::now());
        assert_eq!(floor.below(&after(65, vec![], 65)), i64::MIN);
    }

    #[test]
    fn marks_are_due_once_per_interval_while_changes_are_read() {
        let mut floor = IdFloor::default();
        let now = Instant::now();
        assert!(floor.mark_due(now));
        floor.record(mark(1, 1), now);
        floor.read(0);
        assert!(!floor.mark_due(now + MARK_EVERY * 10), "a quiet journal");
        floor.read(3);
        assert!(!floor.mark_due(now + MARK_EVERY / 2));
        assert!(floor.mark_due(now + MARK_EVERY));
    }
}
