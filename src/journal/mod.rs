//! The journal `changecast.change_log`: the only code that knows commit order.
//!
//! Row ids come from a sequence and are not commit order; transaction ids and
//! snapshots are. Every read here selects "rows whose transaction one snapshot does not
//! see but another does", so a change is found whenever its transaction commits, and a
//! long-running writer neither loses its rows nor holds back anybody else's.
//! The live tailer reads with [`Journal::read_batch`]; a resuming subscriber and the lag
//! recovery with [`Journal::replay_start`] and [`Journal::read_replay`].

mod cursor;
pub mod doorbell;
mod entry;
mod frames;
pub mod pruner;
mod rows;
mod snapshot;
mod sql;
pub mod tailer;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tokio_postgres::{Client, Statement};

pub use cursor::{journal_tag, Cursor, CursorError, CursorKey, CursorScope};
pub use entry::{
    AppEvent, Change, Entry, EventKind, RowValues, SharedAppEvent, SharedChange, Truncation,
};
pub use frames::{Frame, Frames};
pub use snapshot::PgSnapshot;
pub use sql::{hot_statements, INDEX_PLANNER_SETTINGS, REPLAY_PLANNER_SETTINGS};

use crate::tenant::TenantId;
use rows::running;
use sql::{
    more_after, CURSOR_KEY_SQL, INDEX_PLANNER_SETTINGS_LOCAL, JOURNAL_IDENTITY, REPLAY,
    REPLAY_START_SQL, TAIL, TAIL_NEW,
};
/// How far the tailer has handed changes to the hub: every change whose transaction
/// `prev` sees, plus those `next` sees with a journal id up to `through_id` (the pages of
/// the batch in progress). When no batch is in progress, `prev == next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub prev: PgSnapshot,
    pub next: PgSnapshot,
    pub through_id: i64,
}

impl Published {
    pub fn complete(snapshot: PgSnapshot) -> Self {
        Published {
            prev: snapshot.clone(),
            next: snapshot,
            through_id: 0,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.prev == self.next
    }
}

/// What [`Journal::read_new`] found.
pub struct NewRows {
    /// The snapshot the rows were read up to.
    pub snapshot: PgSnapshot,
    /// Rows of transactions below this id may have been pruned (as of `snapshot`).
    pub pruned_below: u64,
    /// The journal's identity as of `snapshot` (see [`Journal::follow`]).
    pub journal_id: String,
    /// The first page of them.
    pub entries: Vec<Entry>,
    /// Whether more may follow the page (it is full, in rows or bytes).
    pub more: bool,
}

/// Which of one tenant's entries a replay reads besides the snapshot bounds: a coarse
/// cut, so pages hold mostly what the subscriber wants. The subscriber's
/// [`crate::selection::Selection`] decides about each entry, live and replayed alike.
#[derive(Clone, Copy)]
pub struct ReplayFilter<'a> {
    pub tenant: &'a TenantId,
    /// Row changes and truncations of these types only (`None`: of every type).
    pub types: Option<&'a [String]>,
    /// Whether application events are read at all.
    pub app_events: bool,
}

pub type DbResult<T> = Result<T, tokio_postgres::Error>;

/// The tailer's statements, prepared on its connection (see [`Journal::prepare_tail`]).
pub struct TailStatements {
    new: Statement,
    batch: Statement,
    /// [`doorbell::QUEUED_ON_NOTIFY_LOCK`].
    pub queued: Statement,
}

/// Reads the journal and mints cursors bound to it.
pub struct Journal {
    /// The journal's identity ([`CursorScope::tag`]); it changes when the journal starts
    /// over (see [`Journal::follow`]).
    scope: AtomicU32,
    /// Authenticates the cursors it mints; the same for every instance on the database.
    cursor_key: CursorKey,
}

impl Journal {
    /// Reads the journal's identity and the cursor key; the migrations must have run.
    pub async fn open(client: &Client) -> anyhow::Result<Journal> {
        let row = client
            .query_one(&format!("select {JOURNAL_IDENTITY}"), &[])
            .await?;
        let key = client.query_one(CURSOR_KEY_SQL, &[]).await?;
        Ok(Journal {
            scope: AtomicU32::new(journal_tag(row.get(0))),
            cursor_key: CursorKey::new(key.get(0))?,
        })
    }

    /// The tailer's reads, prepared on `client` (valid on that connection only), with
    /// the connection's planner settings ([`INDEX_PLANNER_SETTINGS`]).
    pub async fn prepare_tail(client: &Client) -> DbResult<TailStatements> {
        client.batch_execute(INDEX_PLANNER_SETTINGS).await?;
        Ok(TailStatements {
            new: client.prepare(TAIL_NEW.as_str()).await?,
            batch: client.prepare(TAIL.as_str()).await?,
            queued: client.prepare(&doorbell::QUEUED_ON_NOTIFY_LOCK).await?,
        })
    }

    pub fn scope(&self) -> CursorScope {
        CursorScope::from_tag(self.scope.load(Ordering::Relaxed), self.cursor_key.clone())
    }

    /// Follows the journal's identity as the database now states it (another instance
    /// may have started the journal over, see `db::adopt_moved_journal`); true when it
    /// changed: cursors minted before belong to a journal that is gone.
    pub fn follow(&self, journal_id: &str) -> bool {
        let now = journal_tag(journal_id);
        self.scope.swap(now, Ordering::Relaxed) != now
    }

    pub async fn current_snapshot(client: &Client) -> DbResult<PgSnapshot> {
        let row = client
            .query_one("select pg_current_snapshot()::text", &[])
            .await?;
        Ok(row
            .get::<_, &str>(0)
            .parse()
            .expect("BUG: PostgreSQL printed an invalid pg_snapshot"))
    }

    /// Rows of transactions below this id may have been pruned (0: nothing pruned yet).
    pub async fn pruned_below(client: &Client) -> DbResult<u64> {
        let row = client
            .query_one(
                "select pruned_below::text from changecast.journal_meta",
                &[],
            )
            .await?;
        Ok(row
            .get::<_, &str>(0)
            .parse()
            .expect("BUG: xid8 is a number"))
    }

    /// Entries of every tenant whose transaction `unseen` does not see but `upto`
    /// covers, with journal id above `after_id`, in journal-id order, at most `limit` and
    /// `max_bytes`; and whether more may follow.
    /// Row changes carry `known_since` (the wake-up that led to the read), else the time
    /// of the read.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_batch(
        &self,
        client: &Client,
        statements: &TailStatements,
        unseen: &PgSnapshot,
        upto: &Published,
        after_id: i64,
        (limit, max_bytes): (usize, usize),
        known_since: Option<Instant>,
    ) -> DbResult<(Vec<Entry>, bool)> {
        let rows = client
            .query(
                &statements.batch,
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &upto.prev.to_string(),
                    &upto.next.to_string(),
                    &upto.through_id,
                    &after_id,
                    &(limit as i64),
                    &(max_bytes as i64),
                ],
            )
            .await?;
        let more = more_after(rows.len(), rows.first().map(|r| r.get(10)), limit);
        Ok((self.entries(&rows, known_since), more))
    }

    /// A fresh snapshot, the journal's `pruned_below` as of that snapshot, and the first
    /// page of entries whose transaction `unseen` does not see but the snapshot does, in
    /// journal-id order, at most `limit` and `max_bytes`.
    pub async fn read_new(
        &self,
        client: &Client,
        statements: &TailStatements,
        unseen: &PgSnapshot,
        (limit, max_bytes): (usize, usize),
        known_since: Option<Instant>,
    ) -> DbResult<NewRows> {
        let rows = client
            .query(
                &statements.new,
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &(limit as i64),
                    &(max_bytes as i64),
                ],
            )
            .await?;
        let first = rows.first().expect("BUG: the snapshot row is always there");
        let snapshot = first
            .get::<_, &str>(0)
            .parse()
            .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
        let pruned_below = first
            .get::<_, &str>(1)
            .parse()
            .expect("BUG: xid8 is a number");
        let journal_id = first.get::<_, String>(2);
        let known_since = known_since.unwrap_or_else(Instant::now);
        let entries = rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(3).is_some())
            .map(|row| self.entry_from_row_at(row, 3, known_since))
            .collect::<Vec<_>>();
        let more = more_after(entries.len(), first.get(13), limit);
        Ok(NewRows {
            snapshot,
            pruned_below,
            journal_id,
            entries,
            more,
        })
    }

    /// The journal id a replay of `cursor` for `tenant` starts after (every row the
    /// cursor did not see has a greater id), and the database's current snapshot.
    pub async fn replay_start(
        &self,
        client: &mut deadpool_postgres::Client,
        cursor: &Cursor,
        tenant: &TenantId,
    ) -> DbResult<(i64, PgSnapshot)> {
        // Prepared once per pooled connection: every resume runs it, in a transaction
        // of its own for the planner settings.
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(&INDEX_PLANNER_SETTINGS_LOCAL)
            .await?;
        let statement = transaction.prepare_cached(REPLAY_START_SQL).await?;
        let row = transaction
            .query_one(
                &statement,
                &[
                    &tenant.as_str(),
                    &cursor.seen.xmax.to_string(),
                    &running(&cursor.seen),
                ],
            )
            .await?;
        transaction.commit().await?;
        // `min` is the first row to replay: start just before it. None: nothing to replay
        // yet (later rows come after the newest id, which every later page starts from).
        let start = row.get::<_, Option<i64>>(0).map_or(0, |id| id - 1);
        let now = row
            .get::<_, &str>(1)
            .parse()
            .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
        Ok((start, now))
    }

    /// One page of a replay: `filter`'s entries after journal id `after_id` whose
    /// transaction `unseen` does not see but `upto` covers, in journal-id order, at most
    /// `limit` of them and, past the first, at most `max_bytes`; and whether it is the
    /// last page (nothing after it in the range).
    #[allow(clippy::too_many_arguments)]
    pub async fn read_replay(
        &self,
        client: &mut deadpool_postgres::Client,
        unseen: &PgSnapshot,
        upto: &Published,
        after_id: i64,
        filter: ReplayFilter<'_>,
        limit: usize,
        max_bytes: usize,
    ) -> DbResult<(Vec<Entry>, bool)> {
        // A young journal's statistics (before autovacuum analyzed it) make the planner
        // expect a handful of rows after `after_id` and fetch all of them by bitmap, then
        // sort: every page would read the rest of the replay. Only the ordered walk of
        // (tenant_id, id), stopped by the LIMIT, keeps a page's cost to its own rows.
        let transaction = client.transaction().await?;
        transaction.batch_execute(REPLAY_PLANNER_SETTINGS).await?;
        let statement = transaction.prepare_cached(REPLAY.as_str()).await?;
        let rows = transaction
            .query(
                &statement,
                &[
                    &filter.tenant.as_str(),
                    &after_id,
                    &unseen.to_string(),
                    &upto.prev.to_string(),
                    &upto.next.to_string(),
                    &upto.through_id,
                    &filter.types,
                    &filter.app_events,
                    &(limit as i64),
                    &(max_bytes as i64),
                ],
            )
            .await?;
        transaction.commit().await?;
        let last = !more_after(rows.len(), rows.first().map(|r| r.get(10)), limit);
        Ok((self.entries(&rows, None), last))
    }
}

/// A cursor for "everything `snapshot` sees", handed out with a `/v1/snapshot` read.
pub fn snapshot_cursor(journal: &Journal, tenant: &TenantId, snapshot: PgSnapshot) -> String {
    journal
        .scope()
        .encode(tenant, &Cursor::of_snapshot(snapshot))
}
