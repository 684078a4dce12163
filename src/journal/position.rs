//! Positions in commit order, and the hub's boundary between what was published and
//! what is still to come. Opaque outside the journal: callers ask whether a position
//! includes an entry, never how it decides.

use std::fmt;

use super::cursor::Cursor;
use super::entry::Entry;
use super::snapshot::PgSnapshot;

/// A point in commit order: the changes of every transaction it sees come before it,
/// all others after. Taken by the database (a snapshot), so a transaction that commits
/// late is after it however old its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position(pub(super) PgSnapshot);

impl Position {
    /// The position a snapshot marks.
    pub fn of_snapshot(snapshot: PgSnapshot) -> Self {
        Position(snapshot)
    }

    /// Whether `entry` comes before this position (was committed when it was taken).
    pub fn includes(&self, entry: &Entry) -> bool {
        self.0.sees(entry.xid())
    }

    /// Whether the changes of transaction `xid` come before this position.
    pub fn includes_transaction(&self, xid: u64) -> bool {
        self.0.sees(xid)
    }

    /// Whether the journal still holds every change after this position, pruned as far
    /// as `pruned`.
    pub fn kept_after(&self, pruned: PrunedBelow) -> bool {
        self.0.sees_all_below(pruned.0)
    }

    /// Whether this position, the database's present, lies behind `earlier`: its
    /// transaction ids went backwards (a restore, or a lagging standby promoted). A
    /// healthy database's next id never decreases.
    pub fn is_behind(&self, earlier: &Position) -> bool {
        self.0.xmax < earlier.0.xmax
    }

    /// The cursor of a subscriber that has received everything before this position.
    pub fn cursor(&self) -> Cursor {
        Cursor::of_snapshot(self.0.clone())
    }
}

#[cfg(test)]
impl Position {
    /// The snapshot behind it, for tests that model commit order themselves.
    pub(crate) fn snapshot(&self) -> &PgSnapshot {
        &self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How far the journal has been pruned: changes of transactions below it may be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrunedBelow(pub(super) u64);

impl fmt::Display for PrunedBelow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How far changes have been handed to the hub: every change before `prev`, plus those
/// before `next` with a journal id up to `through_id` (the pages of the batch in
/// progress). When no batch is in progress, `prev == next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub(super) prev: Position,
    pub(super) next: Position,
    pub(super) through_id: i64,
}

impl Published {
    /// Everything before `at`, and nothing after it.
    pub fn complete(at: Position) -> Self {
        Published {
            prev: at.clone(),
            next: at,
            through_id: 0,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.prev == self.next
    }

    /// Where live delivery starts: everything before it was published in full, and a
    /// cursor at it resumes there (repeating at most the page of a batch in progress).
    pub fn settled(&self) -> &Position {
        &self.prev
    }

    /// The boundary after publishing `page`, the first page of a batch reaching up to
    /// `next`: the batch stays in progress while `more` pages follow.
    pub fn begin_batch(&self, next: Position, page: &[Entry], more: bool) -> Published {
        match page.last() {
            Some(last) if more => Published {
                prev: self.prev.clone(),
                next,
                through_id: last.id(),
            },
            _ => Published::complete(next),
        }
    }

    /// The boundary after publishing `page`, the next page of the batch in progress.
    pub fn continue_batch(&self, page: &[Entry], more: bool) -> Published {
        match page.last() {
            Some(last) if more => Published {
                through_id: last.id(),
                ..self.clone()
            },
            _ => Published::complete(self.next.clone()),
        }
    }

    /// The whole batch in progress, as the bound of its remaining pages' reads.
    pub(super) fn whole_batch(&self) -> Published {
        Published {
            through_id: i64::MAX,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_going_backwards_is_told_from_progress() {
        let position = |text: &str| Position::of_snapshot(text.parse().unwrap());
        let published = position("100:110:102,105");
        // Progress, or nothing new: not a rewind.
        for now in ["100:110:102,105", "104:110:105", "110:110:", "120:135:130"] {
            assert!(!position(now).is_behind(&published), "{now}");
        }
        // A restore or a lagging standby's promotion: ids the tailer has counted as
        // published will be assigned again.
        for now in ["100:109:", "90:95:91", "3:3:"] {
            assert!(position(now).is_behind(&published), "{now}");
        }
    }
}
