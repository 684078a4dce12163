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
pub mod pruner;
mod snapshot;
pub mod tailer;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use cursor::{Cursor, CursorError, CursorScope};
pub use snapshot::PgSnapshot;

use crate::auth::TenantId;

/// `created | updated | deleted`, as the journal and the wire spell them. (The journal's
/// fourth kind, `truncated`, is not a resource change: it is read as [`Entry::Truncated`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Created, EventKind::Updated, EventKind::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One journal row as the hub fans it out: a row change, or a truncation marker.
#[derive(Clone, Debug)]
pub enum Entry {
    Change(SharedChange),
    /// The table of `resource_type` was truncated: every row of the tenant is gone.
    /// Subscribers resync; it has no `resource_change` form.
    Truncated(Truncation),
}

impl Entry {
    /// Journal row id.
    pub fn id(&self) -> i64 {
        match self {
            Entry::Change(change) => change.id,
            Entry::Truncated(marker) => marker.id,
        }
    }

    /// The writer's transaction id.
    pub fn xid(&self) -> u64 {
        match self {
            Entry::Change(change) => change.xid,
            Entry::Truncated(marker) => marker.xid,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        match self {
            Entry::Change(change) => &change.tenant,
            Entry::Truncated(marker) => &marker.tenant,
        }
    }

    pub fn cursor(&self) -> &Cursor {
        match self {
            Entry::Change(change) => &change.cursor,
            Entry::Truncated(marker) => &marker.cursor,
        }
    }
}

/// A journalled TRUNCATE of one tenant's rows of one resource type.
#[derive(Clone, Debug)]
pub struct Truncation {
    pub id: i64,
    pub xid: u64,
    pub tenant: TenantId,
    pub resource_type: String,
    pub cursor: Cursor,
    /// `cursor` as the client sees it: the `id` of the `resync` it becomes.
    pub cursor_text: String,
}

/// One committed row change, with its wire forms rendered once for all subscribers.
#[derive(Debug)]
pub struct Change {
    /// Journal row id.
    pub id: i64,
    /// The writer's transaction id.
    pub xid: u64,
    pub tenant: TenantId,
    pub resource_type: String,
    pub event: EventKind,
    pub cursor: Cursor,
    /// `cursor` as the client sees it: the event's `id`.
    pub cursor_text: String,
    /// The §4 `resource_change` object, shared by every WebSocket subscriber: kept in
    /// the type WebSocket text frames are made of, so a frame costs neither a copy nor a
    /// UTF-8 check per subscriber.
    pub json: Utf8Bytes,
    /// `id: …\nevent: resource_change\ndata: <json>\n\n`
    pub sse_frame: Bytes,
    /// Since when the service knows of it (the wake-up that led to reading it, else the
    /// read itself): the start of the delivery-latency histogram.
    pub known_since: Instant,
}

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
    /// The first page of them.
    pub entries: Vec<Entry>,
}

/// Which of one tenant's rows a replay returns besides the snapshot bounds.
#[derive(Clone, Copy)]
pub struct ReplayFilter<'a> {
    pub tenant: &'a TenantId,
    pub types: Option<&'a [String]>,
    /// Row changes of these kinds only; truncation markers of the types always pass.
    pub events: Option<&'a [EventKind]>,
}

/// The journal's `event` of a truncation marker.
const TRUNCATED: &str = "truncated";

pub type DbResult<T> = Result<T, tokio_postgres::Error>;

/// Reads the journal and mints cursors bound to it.
pub struct Journal {
    scope: CursorScope,
}

const COLUMNS: &str = r#"id, xid::text, writer_snapshot::text, tenant_id, resource_type, event, resource::text,
       to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

/// The tailer's read: rows of every tenant. `$1`/`$2` spell "not seen by `unseen`" as two
/// ranges of the xid index (transactions that started after it, and those it saw
/// running), so rows it did see are never scanned, however long a writer stays open.
const TAIL_SQL: &str = r#"
select {COLUMNS}
from changecast.change_log
where (xid >= $1::text::xid8 or xid = any($2::text[]::xid8[]))
  and xid < pg_snapshot_xmax($4::text::pg_snapshot)
  and (pg_visible_in_snapshot(xid, $3::text::pg_snapshot)
       or (id <= $5 and pg_visible_in_snapshot(xid, $4::text::pg_snapshot)))
  and id > $6
order by id
limit $7
"#;

/// The tailer's read when no batch is in progress: takes the snapshot it reads up to
/// (returned with every row, and alone when there is none) and the rows not seen by the
/// previous one, in one round trip. The statement's own snapshot is that snapshot, so
/// every row it returns is visible in it; the xid index ranges drive the read.
const TAIL_NEW_SQL: &str = r#"
with new as materialized (
    -- Only the xid index can answer this (a fence: the planner cannot trade it for a
    -- walk of the primary key in id order, whatever its statistics say).
    select id from changecast.change_log
    where (xid >= $1::text::xid8 and xid < pg_snapshot_xmax(pg_current_snapshot()))
       or xid = any($2::text[]::xid8[])
)
select pg_current_snapshot()::text,
       (select pruned_below::text from changecast.journal_meta),
       j.*
from (select 1) one
left join (
    select {COLUMNS}
    from changecast.change_log
    where id in (select id from new order by id limit $3)
) j on true
order by j.id
"#;

/// Where a replay's first page starts: below every row of `tenant` its cursor did not
/// see. Rows of transactions that began after the cursor's snapshot were written after
/// every row that snapshot sees, so the newest row it sees below the cursor's own change
/// ($1) bounds them (a short backward walk of the primary key); rows of transactions it
/// saw running ($3) are found by xid. Pages then walk (tenant_id, id) forward from here.
const REPLAY_START_SQL: &str = r#"
with running as materialized (
    -- Fenced, so the xid index answers it: as `min(id) ... where tenant_id = $4` the
    -- planner would walk the tenant's whole history in id order looking for a match.
    select id, tenant_id from changecast.change_log where xid = any($3::text[]::xid8[])
)
select least(
    coalesce((select id from changecast.change_log
              where id < $1 and pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
              order by id desc limit 1), 0),
    (select min(id) from running where tenant_id = $4)),
    pg_current_snapshot()::text
"#;

/// See [`Journal::replay_start`]: false while REPLAY_START_SQL can miss rows.
const STARTING_BY_WALKING_BACK_IS_SAFE: bool = false;

/// [`REPLAY_START_SQL`] for a cursor whose snapshot may have been cut short (see
/// `PgSnapshot::bounded`): transactions it counts as "started later" may have written
/// earlier rows, so the start is the tenant's first row it did not see (one scan).
const REPLAY_START_CUT_SQL: &str = r#"
with unseen as materialized (
    select id, tenant_id from changecast.change_log
    where (xid >= $2::text::xid8 and xid < pg_snapshot_xmax(pg_current_snapshot()))
       or xid = any($3::text[]::xid8[])
)
select (select min(id) from unseen where tenant_id = $1), pg_current_snapshot()::text
"#;

/// One replay page: the tenant's rows after `$2` in id order, of transactions the
/// cursor did not see ($3) and the published boundary covers ($4, $5, $6). Only
/// (tenant_id, id) can drive it — an index range scan that starts where the previous
/// page ended: the xid conditions are written as snapshot tests on purpose, so that a
/// long replay is never planned as "every unseen row of the xid index, sorted, for each
/// page" (rows^2 / page).
const REPLAY_SQL: &str = r#"
select {COLUMNS}
from changecast.change_log
where tenant_id = $1
  and id > $2
  and not pg_visible_in_snapshot(xid, $3::text::pg_snapshot)
  and (pg_visible_in_snapshot(xid, $4::text::pg_snapshot)
       or (id <= $6 and pg_visible_in_snapshot(xid, $5::text::pg_snapshot)))
  and ($7::text[] is null or resource_type = any($7))
  and ($8::text[] is null or event = any($8))
order by id
limit $9
"#;

/// Planner settings of a replay page's transaction (see [`Journal::read_replay`]).
pub const REPLAY_PLANNER_SETTINGS: &str =
    "set local enable_bitmapscan = off; set local enable_sort = off";

fn with_columns(sql: &str) -> String {
    sql.replace("{COLUMNS}", COLUMNS)
}

/// The statements that run for every batch or replay page, by name, as sent: for plan
/// checks (`EXPLAIN`) against a journal of realistic size.
pub fn hot_statements() -> [(&'static str, String); 5] {
    [
        ("tail_new", with_columns(TAIL_NEW_SQL)),
        ("tail_page", with_columns(TAIL_SQL)),
        ("replay_start", REPLAY_START_SQL.to_owned()),
        ("replay_start_cut", REPLAY_START_CUT_SQL.to_owned()),
        ("replay_page", with_columns(REPLAY_SQL)),
    ]
}

impl Journal {
    /// Reads the journal's identity; the migrations must have run.
    pub async fn open(client: &Client) -> DbResult<Journal> {
        let row = client
            .query_one("select journal_id::text from changecast.journal_meta", &[])
            .await?;
        Ok(Journal {
            scope: CursorScope::new(row.get(0)),
        })
    }

    pub fn scope(&self) -> &CursorScope {
        &self.scope
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
    /// covers, with journal id above `after_id`, in journal-id order, at most `limit`.
    /// Row changes carry `known_since` (the wake-up that led to the read), else the time
    /// of the read.
    pub async fn read_batch(
        &self,
        client: &Client,
        unseen: &PgSnapshot,
        upto: &Published,
        after_id: i64,
        limit: usize,
        known_since: Option<Instant>,
    ) -> DbResult<Vec<Entry>> {
        let rows = client
            .query(
                &with_columns(TAIL_SQL),
                &[
                    &unseen.xmax.to_string(),
                    &running(unseen),
                    &upto.prev.to_string(),
                    &upto.next.to_string(),
                    &upto.through_id,
                    &after_id,
                    &(limit as i64),
                ],
            )
            .await?;
        Ok(self.entries(&rows, known_since))
    }

    /// A fresh snapshot, the journal's `pruned_below` as of that snapshot, and the first
    /// page of entries whose transaction `unseen` does not see but the snapshot does, in
    /// journal-id order, at most `limit`.
    pub async fn read_new(
        &self,
        client: &Client,
        unseen: &PgSnapshot,
        limit: usize,
        known_since: Option<Instant>,
    ) -> DbResult<NewRows> {
        let rows = client
            .query(
                &with_columns(TAIL_NEW_SQL),
                &[&unseen.xmax.to_string(), &running(unseen), &(limit as i64)],
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
        let known_since = known_since.unwrap_or_else(Instant::now);
        let entries = rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(2).is_some())
            .map(|row| self.entry_from_row_at(row, 2, known_since))
            .collect();
        Ok(NewRows {
            snapshot,
            pruned_below,
            entries,
        })
    }

    /// The journal id a replay of `cursor` for `tenant` starts after (every row the
    /// cursor did not see has a greater id), and the database's current snapshot.
    pub async fn replay_start(
        &self,
        client: &Client,
        cursor: &Cursor,
        tenant: &TenantId,
    ) -> DbResult<(i64, PgSnapshot)> {
        // A transaction with an id at or above the cursor's `xmax` may have been running
        // (and writing rows) before the cursor's snapshot was taken: `xmax` is the newest
        // completed id + 1, not the next one to be assigned. The backward walk of
        // REPLAY_START_SQL misses such rows (tests/it/faults.rs,
        // a_transaction_running_beyond_a_cursors_xmax_is_replayed): until a cheaper bound
        // exists, every cursor starts as a cut one does.
        let row = if cursor.may_be_cut() || !STARTING_BY_WALKING_BACK_IS_SAFE {
            client
                .query_one(
                    REPLAY_START_CUT_SQL,
                    &[
                        &tenant.as_str(),
                        &cursor.seen.xmax.to_string(),
                        &running(&cursor.seen),
                    ],
                )
                .await?
        } else {
            // A snapshot cursor (id 0) names no change: walk back from the newest row.
            let below = if cursor.id > 0 { cursor.id } else { i64::MAX };
            client
                .query_one(
                    REPLAY_START_SQL,
                    &[
                        &below,
                        &cursor.seen.to_string(),
                        &running(&cursor.seen),
                        &tenant.as_str(),
                    ],
                )
                .await?
        };
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
    /// transaction `unseen` does not see but `upto` covers, in journal-id order.
    pub async fn read_replay(
        &self,
        client: &mut Client,
        unseen: &PgSnapshot,
        upto: &Published,
        after_id: i64,
        filter: ReplayFilter<'_>,
        limit: usize,
    ) -> DbResult<Vec<Entry>> {
        let events: Option<Vec<&str>> = filter
            .events
            .map(|e| e.iter().map(|k| k.as_str()).chain([TRUNCATED]).collect());
        // A young journal's statistics (before autovacuum analyzed it) make the planner
        // expect a handful of rows after `after_id` and fetch all of them by bitmap, then
        // sort: every page would read the rest of the replay. Only the ordered walk of
        // (tenant_id, id), stopped by the LIMIT, keeps a page's cost to its own rows.
        let transaction = client.transaction().await?;
        transaction.batch_execute(REPLAY_PLANNER_SETTINGS).await?;
        let rows = transaction
            .query(
                &with_columns(REPLAY_SQL),
                &[
                    &filter.tenant.as_str(),
                    &after_id,
                    &unseen.to_string(),
                    &upto.prev.to_string(),
                    &upto.next.to_string(),
                    &upto.through_id,
                    &filter.types,
                    &events,
                    &(limit as i64),
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(self.entries(&rows, None))
    }

    fn entries(&self, rows: &[tokio_postgres::Row], known_since: Option<Instant>) -> Vec<Entry> {
        let known_since = known_since.unwrap_or_else(Instant::now);
        rows.iter()
            .map(|row| self.entry_from_row(row, known_since))
            .collect()
    }

    fn entry_from_row(&self, row: &tokio_postgres::Row, known_since: Instant) -> Entry {
        self.entry_from_row_at(row, 0, known_since)
    }

    /// The entry in `row`'s columns from `at` on (in [`COLUMNS`] order).
    fn entry_from_row_at(
        &self,
        row: &tokio_postgres::Row,
        at: usize,
        known_since: Instant,
    ) -> Entry {
        let id: i64 = row.get(at);
        let xid: u64 = row
            .get::<_, &str>(at + 1)
            .parse()
            .expect("BUG: xid8 is a number");
        let writer: PgSnapshot = row
            .get::<_, &str>(at + 2)
            .parse()
            .expect("BUG: invalid pg_snapshot");
        let tenant = TenantId::from_journal(row.get(at + 3));
        let resource_type: String = row.get(at + 4);
        let event: &str = row.get(at + 5);
        let resource: &str = row.get(at + 6);
        let occurred_at: &str = row.get(at + 7);

        // Rows of the writer's own transaction are not seen by its snapshot; neither may
        // they be by the cursor, or a resume after the first of them would skip the rest.
        let cursor = Cursor {
            id,
            seen: writer.not_seeing(xid),
        };
        let cursor_text = self.scope.encode(&tenant, &cursor);
        if event == TRUNCATED {
            return Entry::Truncated(Truncation {
                id,
                xid,
                tenant,
                resource_type,
                cursor,
                cursor_text,
            });
        }
        let event = EventKind::parse(event)
            .expect("BUG: the journal's check constraint allows only known events");
        let json = serde_json::to_string(&WireChange {
            kind: "resource_change",
            id: &cursor_text,
            event,
            resource_type: &resource_type,
            tenant_id: tenant.as_str(),
            resource: serde_json::from_str::<&RawValue>(resource)
                .expect("BUG: jsonb prints valid JSON"),
            occurred_at,
        })
        .expect("BUG: serialising a change cannot fail");
        let sse_frame = Bytes::from(format!(
            "id: {cursor_text}\nevent: resource_change\ndata: {json}\n\n"
        ));
        Entry::Change(SharedChange::new(Change {
            id,
            xid,
            tenant,
            resource_type,
            event,
            cursor,
            cursor_text,
            json: Utf8Bytes::from(json),
            sse_frame,
            known_since,
        }))
    }
}

#[derive(Serialize)]
struct WireChange<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    event: EventKind,
    resource_type: &'a str,
    tenant_id: &'a str,
    resource: &'a RawValue,
    occurred_at: &'a str,
}

/// A cursor for "everything `snapshot` sees", handed out with a `/v1/snapshot` read.
pub fn snapshot_cursor(journal: &Journal, tenant: &TenantId, snapshot: PgSnapshot) -> String {
    journal.scope.encode(tenant, &Cursor::of_snapshot(snapshot))
}

pub type SharedChange = Arc<Change>;

/// The transactions `snapshot` saw running, as SQL parameters.
fn running(snapshot: &PgSnapshot) -> Vec<String> {
    snapshot.xip.iter().map(u64::to_string).collect()
}
