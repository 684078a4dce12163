//! The journal `changecast.change_log`: the only code that knows commit order.
//!
//! Row ids come from a sequence and are not commit order; transaction ids and
//! snapshots are. Every read here selects "rows whose transaction one snapshot does not
//! see but another does", so a change is found whenever its transaction commits, and a
//! long-running writer neither loses its rows nor holds back anybody else's.
//! Positions in that order ([`Position`], the hub's boundary [`Published`]) are opaque
//! outside: callers ask whether one includes an entry, never how.
//!
//! The capture side reads with [`Journal::read_new`] and [`Journal::read_batch`]; a
//! resuming subscriber and the lag recovery with [`Journal::replay_page`], which also
//! says when a cursor cannot be honoured ([`ResyncReason`]).

mod cursor;
mod entry;
mod frames;
mod id_floor;
mod position;
pub mod pruner;
mod replay;
mod rows;
mod snapshot;
mod sql;
mod transactions;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tokio_postgres::{Client, Statement};

pub use cursor::{journal_tag, Cursor, CursorError, CursorKey, CursorScope, ResyncReason};
pub use entry::{
    AppEvent, Change, Entry, EventKind, ResyncMarker, RowValues, SharedAppEvent, SharedChange,
};
pub use frames::{Frame, Frames, MAX_CACHED_OMIT_SETS};
pub use id_floor::{IdFloor, Mark};
pub use position::{Position, PrunedBelow, Published};
pub use replay::{ReplayFilter, ReplayPage, SentThrough};
pub use snapshot::PgSnapshot;
pub use sql::{
    hot_statements, DbResult, INDEX_PLANNER_SETTINGS, INDEX_PLANNER_SETTINGS_LOCAL,
    REPLAY_PLANNER_SETTINGS,
};

use crate::tenant::TenantId;
use rows::running;
use sql::{
    more_after, under_index_settings, CURSOR_KEY_SQL, JOURNAL_IDENTITY, PRIMARY_MARK_SQL, TAIL,
    TAIL_MARK, TAIL_NEW,
};

/// What [`Journal::read_new`] found.
pub struct NewRows {
    /// The position the rows were read up to.
    pub position: Position,
    /// How far the journal was pruned (as of `position`).
    pub pruned_below: PrunedBelow,
    /// The journal's identity as of `position` (see [`Journal::follow`]).
    pub journal_id: String,
    /// The first page of them.
    pub entries: Vec<Entry>,
    /// Whether more may follow the page (it is full, in rows or bytes).
    pub more: bool,
}

/// The tailer's statements, prepared on its connection (see [`Journal::prepare_tail`]).
pub struct TailStatements {
    new: Statement,
    batch: Statement,
    /// A batch's first page on a hot standby.
    mark: Statement,
    connection: TailConnection,
}

/// The connection the tailer reads on, as far as its planner settings go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailConnection {
    /// A session of the tailer's own (the LISTEN connection, which no transaction-mode
    /// pooler can carry): the settings are made once, for the session.
    Own,
    /// A connection that may go through a transaction-mode pooler (a standby's reader,
    /// from the read URL the pooled replays use too): every read runs in a transaction
    /// of its own under the settings, which end with it.
    MaybePooled,
}

impl TailStatements {
    async fn query(
        &self,
        client: &Client,
        statement: &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> DbResult<Vec<tokio_postgres::Row>> {
        match self.connection {
            TailConnection::Own => client.query(statement, params).await,
            TailConnection::MaybePooled => under_index_settings(client, statement, params).await,
        }
    }
}

/// The primary at one moment, for a batch read on a hot standby (see
/// [`Journal::primary_mark`]): the position the batch reads up to, and the WAL the
/// standby must have replayed first.
#[derive(Clone, Debug)]
pub struct PrimaryMark {
    /// The WAL insert position after the snapshot was taken (`pg_lsn` text): the standby
    /// has every transaction `position` sees once it has replayed this far.
    pub insert_lsn: String,
    /// The flush position then: WAL up to it is on its way to the standby.
    pub flushed: String,
    pub journal_id: String,
    position: Position,
    pruned_below: PrunedBelow,
}

impl PrimaryMark {
    /// The primary's position the batch reads up to.
    pub fn position(&self) -> &Position {
        &self.position
    }
}

/// Reads the journal and mints cursors bound to it.
pub struct Journal {
    /// The journal's identity ([`CursorScope::tag`]); it changes when the journal starts
    /// over (see [`Journal::follow`]).
    scope: AtomicU32,
    /// Authenticates the cursors it mints; the same for every instance on the database.
    cursor_key: CursorKey,
    /// The primary, when the journal is read from a hot standby: the authority on which
    /// transaction ids exist (see [`Journal::checked_against`]).
    authority: Option<deadpool_postgres::Pool>,
    /// With a standby: the primary's WAL position (`pg_lsn` text) as of the tailer's
    /// newest batch, and the primary's position then (every transaction it sees is in
    /// that WAL); replays and snapshots wait for their standby to get there.
    standby_reached: std::sync::Mutex<Option<(String, Position)>>,
    /// Longest a replay page waits for its standby to get to `standby_reached`.
    standby_wait: std::time::Duration,
    /// The tailer reads the primary because its standby lags: replays and snapshots do
    /// not wait for the standby either.
    standby_lagging: std::sync::atomic::AtomicBool,
}

/// Longest a replay page waits, by default, for its standby to replay what the hub has
/// published before it is read on the primary instead.
const STANDBY_REPLAYED_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

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
            authority: None,
            standby_reached: std::sync::Mutex::new(None),
            standby_wait: STANDBY_REPLAYED_WITHIN,
            standby_lagging: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This journal, read from a hot standby of `primary`: a cursor that saw
    /// transactions the standby has not replayed yet (minted by an instance reading the
    /// primary, or a standby further ahead) is checked against the primary's present
    /// rather than the standby's, so a lagging standby never makes it `resync`; its
    /// changes arrive live once the standby has replayed them.
    pub fn checked_against(mut self, primary: deadpool_postgres::Pool) -> Self {
        self.authority = Some(primary);
        self
    }

    /// Whether the journal is read from a hot standby (see [`Journal::checked_against`]).
    pub fn reads_standby(&self) -> bool {
        self.authority.is_some()
    }

    /// Replay pages wait at most `within` for their standby to replay what the hub has
    /// published, then are read on the primary.
    pub fn standby_wait_within(mut self, within: std::time::Duration) -> Self {
        self.standby_wait = within;
        self
    }

    /// The tailer publishes what the primary had written up to `lsn` (its standby has
    /// replayed that far, or the batch is read on the primary while the standby lags):
    /// replays and snapshots read on a standby wait for it to get there.
    pub fn standby_reached(&self, lsn: &str, position: &Position) {
        *crate::sync::lock(&self.standby_reached) = Some((lsn.to_owned(), position.clone()));
    }

    /// Whether the tailer reads the primary because its standby lags (see
    /// `CHANGECAST_READ_FALLBACK`): meanwhile replay pages and snapshots look at their
    /// standby once and, if it has not replayed what the hub published, read the primary
    /// (replays) or claim no more than the standby's own snapshot (snapshots) at once.
    pub fn standby_lagging(&self, lagging: bool) {
        self.standby_lagging.store(lagging, Ordering::Relaxed);
    }

    /// Longest a replay page or snapshot waits for its standby now.
    fn standby_wait_now(&self) -> std::time::Duration {
        if self.standby_lagging.load(Ordering::Relaxed) {
            std::time::Duration::ZERO
        } else {
            self.standby_wait
        }
    }

    /// With a standby behind `client`: a primary position it has replayed (the
    /// tailer's newest, waited for within the replay bound), which a snapshot
    /// transaction begun on `client` after it sees all of; `None` without one (no
    /// standby, no batch read yet, or the standby still behind).
    pub async fn standby_settled(&self, client: &Client) -> DbResult<Option<Position>> {
        let Some((lsn, position)) = crate::sync::lock(&self.standby_reached).clone() else {
            return Ok(None);
        };
        Ok(
            replay::standby_replayed(client, &lsn, self.standby_wait_now())
                .await?
                .then_some(position),
        )
    }

    /// The primary's WAL flush position and journal identity, read on `client` (a
    /// connection to the primary): what a standby must have replayed before a batch
    /// read there misses nothing the primary had committed.
    pub async fn primary_mark(client: &Client) -> DbResult<PrimaryMark> {
        let row = client.query_one(PRIMARY_MARK_SQL.as_str(), &[]).await?;
        Ok(PrimaryMark {
            flushed: row.get(0),
            journal_id: row.get(1),
            position: Position(
                row.get::<_, &str>(2)
                    .parse()
                    .expect("BUG: PostgreSQL printed an invalid pg_snapshot"),
            ),
            pruned_below: PrunedBelow(
                row.get::<_, &str>(3)
                    .parse()
                    .expect("BUG: xid8 is a number"),
            ),
            insert_lsn: row.get(4),
        })
    }

    /// The tailer's reads, prepared on `client` (valid on that connection only), under
    /// [`INDEX_PLANNER_SETTINGS`]. They must hold whenever a statement is planned — at
    /// its first run, and again whenever its plan is invalidated (a partition attached or
    /// dropped, new statistics) — and `plan_cache_mode` is looked at on every run. On
    /// the tailer's own connection they are made once for the session, which costs
    /// nothing per read; made for each read (a transaction with SET LOCAL around it),
    /// they add a fifth to a third to what PostgreSQL spends on a read that finds
    /// nothing (`cargo bench --bench tail_read`), which a connection that may be pooled
    /// pays. What else runs on the tailer's own connection plans the same under these
    /// settings: function calls (WAL positions, the doorbell's queue probe over
    /// `pg_locks`, whose join starts from the few lock waiters) and one-row tables.
    pub async fn prepare_tail(
        client: &Client,
        connection: TailConnection,
    ) -> DbResult<TailStatements> {
        if connection == TailConnection::Own {
            client.batch_execute(INDEX_PLANNER_SETTINGS).await?;
        }
        Ok(TailStatements {
            new: client.prepare(TAIL_NEW.as_str()).await?,
            batch: client.prepare(TAIL.as_str()).await?,
            mark: client.prepare(TAIL_MARK.as_str()).await?,
            connection,
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

    /// The database's present: where live delivery of a starting service begins.
    pub async fn current_position(client: &Client) -> DbResult<Position> {
        let row = client
            .query_one("select pg_current_snapshot()::text", &[])
            .await?;
        Ok(Position(
            row.get::<_, &str>(0)
                .parse()
                .expect("BUG: PostgreSQL printed an invalid pg_snapshot"),
        ))
    }

    /// The next page of the batch in progress in `published`: entries of every tenant
    /// past its boundary and within the batch, in journal-id order, at most `limit` and
    /// `max_bytes`; and whether more may follow. Row changes carry `known_since` (the
    /// wake-up that led to the read), else the time of the read.
    pub async fn read_batch(
        &self,
        client: &Client,
        statements: &TailStatements,
        published: &Published,
        (limit, max_bytes): (usize, usize),
        known_since: Option<Instant>,
    ) -> DbResult<(Vec<Entry>, bool)> {
        let unseen = &published.prev.0;
        let upto = published.whole_batch();
        let rows = statements
            .query(
                client,
                &statements.batch,
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &upto.prev.0.to_string(),
                    &upto.next.0.to_string(),
                    &upto.through_id,
                    &published.through_id,
                    &(limit as i64),
                    &(max_bytes as i64),
                ],
            )
            .await?;
        let more = more_after(rows.len(), rows.first().map(|r| r.get(10)), limit);
        Ok((rows::entries(&self.scope(), &rows, known_since), more))
    }

    /// The database's present, the journal's pruning as of then, and the first page of
    /// entries committed since `published` (which has no batch in progress) up to that
    /// present, in journal-id order, at most `limit` and `max_bytes`.
    ///
    /// `primary`: when `client` is a hot standby, the primary's mark the standby has
    /// replayed; its journal identity is the one returned (a standby cannot name its
    /// timeline).
    ///
    /// `floor`: no row to read is below it ([`IdFloor::below`], from marks taken on the
    /// primary, which hold on a standby replaying it); the read skips the partitions
    /// wholly below it.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_new(
        &self,
        client: &Client,
        statements: &TailStatements,
        published: &Published,
        (limit, max_bytes): (usize, usize),
        known_since: Option<Instant>,
        primary: Option<&PrimaryMark>,
        floor: i64,
    ) -> DbResult<NewRows> {
        if let Some(mark) = primary {
            return self
                .read_new_on_standby(
                    client,
                    statements,
                    published,
                    mark,
                    (limit, max_bytes),
                    known_since,
                    floor,
                )
                .await;
        }
        let unseen = &published.prev.0;
        let rows = statements
            .query(
                client,
                &statements.new,
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &(limit as i64),
                    &(max_bytes as i64),
                    &floor,
                ],
            )
            .await?;
        let first = rows.first().expect("BUG: the snapshot row is always there");
        let position = Position(
            first
                .get::<_, &str>(0)
                .parse()
                .expect("BUG: PostgreSQL printed an invalid pg_snapshot"),
        );
        let pruned_below = PrunedBelow(
            first
                .get::<_, &str>(1)
                .parse()
                .expect("BUG: xid8 is a number"),
        );
        let journal_id = first.get::<_, String>(2);
        let known_since = known_since.unwrap_or_else(Instant::now);
        let scope = self.scope();
        let entries = rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(3).is_some())
            .map(|row| rows::entry_at(&scope, row, 3, known_since))
            .collect::<Vec<_>>();
        let more = more_after(entries.len(), first.get(13), limit);
        Ok(NewRows {
            position,
            pruned_below,
            journal_id,
            entries,
            more,
        })
    }

    /// [`Journal::read_new`] on a hot standby that has replayed `mark` (or on the primary
    /// while the standby lags): the first page of the rows the primary's snapshot in
    /// `mark` sees and `published` does not, read by that snapshot, from `floor` on.
    #[allow(clippy::too_many_arguments)]
    async fn read_new_on_standby(
        &self,
        client: &Client,
        statements: &TailStatements,
        published: &Published,
        mark: &PrimaryMark,
        limits: (usize, usize),
        known_since: Option<Instant>,
        floor: i64,
    ) -> DbResult<NewRows> {
        let unseen = &published.prev.0;
        let (limit, max_bytes) = limits;
        let rows = statements
            .query(
                client,
                &statements.mark,
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &mark.position.0.to_string(),
                    &(limit as i64),
                    &(max_bytes as i64),
                    &floor,
                ],
            )
            .await?;
        let more = more_after(rows.len(), rows.first().map(|r| r.get(10)), limit);
        let entries = rows::entries(
            &self.scope(),
            &rows,
            Some(known_since.unwrap_or_else(Instant::now)),
        );
        Ok(NewRows {
            position: mark.position.clone(),
            pruned_below: mark.pruned_below,
            journal_id: mark.journal_id.clone(),
            entries,
            more,
        })
    }

    /// One page of the replay of `from` up to `upto`: `filter`'s entries after journal id
    /// `after` (found first when `None`) whose transaction `from` does not see but
    /// `upto` covers, in journal-id order, at most `limit` of them and, past the first,
    /// at most `max_bytes`. Whether the page honours `from` is [`ReplayPage::honours`].
    pub async fn replay_page(
        &self,
        client: &mut deadpool_postgres::Client,
        from: &Cursor,
        upto: &Published,
        after: Option<i64>,
        filter: ReplayFilter<'_>,
        limits: (usize, usize),
    ) -> anyhow::Result<ReplayPage> {
        let authority = self.authority.as_ref();
        let reached = crate::sync::lock(&self.standby_reached)
            .clone()
            .map(|(lsn, _)| (lsn, self.standby_wait_now()));
        replay::read_page(
            &self.scope(),
            client,
            authority,
            reached,
            from,
            upto,
            after,
            filter,
            limits,
        )
        .await
    }

    /// How many rows each transaction of `xids` wrote that a replay with `filter` reads
    /// (resync markers aside), each counted up to `cap`.
    pub async fn transaction_sizes(
        &self,
        client: &mut deadpool_postgres::Client,
        filter: ReplayFilter<'_>,
        xids: &[u64],
        cap: usize,
    ) -> DbResult<Vec<(u64, usize)>> {
        transactions::sizes(client, filter, xids, cap).await
    }

    /// How many of transaction `xid`'s rows under `filter` `counts` takes, up to
    /// `stop_at`; reads them a page at a time.
    pub async fn count_transaction(
        &self,
        client: &mut deadpool_postgres::Client,
        filter: ReplayFilter<'_>,
        xid: u64,
        counts: impl Fn(&Entry) -> bool,
        stop_at: usize,
    ) -> DbResult<usize> {
        transactions::count(&self.scope(), client, filter, xid, counts, stop_at).await
    }

    /// The cursor text of a subscriber of `tenant` that has received everything before
    /// `position`.
    pub fn cursor_at(&self, tenant: &TenantId, position: &Position) -> String {
        self.scope().encode(tenant, &position.cursor())
    }
}

/// A cursor for "everything `snapshot` sees", handed out with a `/v1/snapshot` read.
pub fn snapshot_cursor(journal: &Journal, tenant: &TenantId, snapshot: PgSnapshot) -> String {
    journal
        .scope()
        .encode(tenant, &Cursor::of_snapshot(snapshot))
}
