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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::{Client, Statement};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use cursor::{journal_tag, Cursor, CursorError, CursorKey, CursorScope};
pub use snapshot::PgSnapshot;

use crate::selection::Row;
use crate::tenant::TenantId;

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

/// One journal row as the hub fans it out: a row change, an application event, or a
/// truncation marker.
#[derive(Clone, Debug)]
pub enum Entry {
    Change(SharedChange),
    AppEvent(SharedAppEvent),
    /// The table of `resource_type` was truncated: every row of the tenant is gone.
    /// Subscribers resync; it has no `resource_change` form.
    Truncated(Truncation),
}

impl Entry {
    /// Journal row id.
    pub fn id(&self) -> i64 {
        match self {
            Entry::Change(change) => change.id,
            Entry::AppEvent(event) => event.id,
            Entry::Truncated(marker) => marker.id,
        }
    }

    /// The writer's transaction id.
    pub fn xid(&self) -> u64 {
        match self {
            Entry::Change(change) => change.xid,
            Entry::AppEvent(event) => event.xid,
            Entry::Truncated(marker) => marker.xid,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        match self {
            Entry::Change(change) => &change.tenant,
            Entry::AppEvent(event) => &event.tenant,
            Entry::Truncated(marker) => &marker.tenant,
        }
    }

    /// Roughly the bytes it holds (its JSON), for memory budgets.
    pub fn size_hint(&self) -> usize {
        const OVERHEAD: usize = 256;
        OVERHEAD
            + match self {
                Entry::Change(change) => {
                    change.resource.get().len() + change.old.as_ref().map_or(0, |o| o.get().len())
                }
                Entry::AppEvent(event) => event.payload.get().len(),
                Entry::Truncated(_) => 0,
            }
    }

    pub fn cursor(&self) -> &Cursor {
        match self {
            Entry::Change(change) => &change.cursor,
            Entry::AppEvent(event) => &event.cursor,
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

/// One committed row change. Its wire forms (`crate::wire`) are rendered at most once
/// each, on first use, and shared by every subscriber.
#[derive(Debug)]
pub struct Change {
    /// Journal row id.
    pub id: i64,
    /// The writer's transaction id.
    pub xid: u64,
    pub tenant: TenantId,
    pub resource_type: String,
    pub event: EventKind,
    /// The row's id column, as text.
    pub resource_id: String,
    /// The new row; the old row for `deleted`.
    pub resource: Box<RawValue>,
    /// For `updated`: the previous values of exactly the columns that changed.
    pub old: Option<Box<RawValue>>,
    /// RFC 3339, UTC, microseconds.
    pub occurred_at: String,
    pub cursor: Cursor,
    /// `cursor` as the client sees it: the event's `id`.
    pub cursor_text: String,
    /// Since when the service knows of it (the wake-up that led to reading it, else the
    /// read itself): the start of the delivery-latency histogram.
    pub known_since: Instant,
    /// `resource` and `old` parsed, for row filters (only if some subscriber has one).
    values: OnceLock<RowValues>,
    pub(crate) frames: Frames,
}

#[cfg(test)]
impl Change {
    /// A change as the journal would read it, for tests of what subscribers receive.
    pub(crate) fn for_test(
        event: EventKind,
        resource_id: &str,
        resource: &str,
        old: Option<&str>,
    ) -> Change {
        let raw = |json: &str| RawValue::from_string(json.to_owned()).expect("test JSON");
        Change {
            id: 1,
            xid: 1,
            tenant: TenantId::new("t").expect("a tenant"),
            resource_type: "ticket".into(),
            event,
            resource_id: resource_id.into(),
            resource: raw(resource),
            old: old.map(raw),
            occurred_at: "2026-11-29T00:00:00.000000Z".into(),
            cursor: Cursor::of_snapshot("1:1:".parse().expect("a snapshot")),
            cursor_text: String::new(),
            known_since: Instant::now(),
            values: OnceLock::new(),
            frames: Frames::default(),
        }
    }
}

/// A row's column values, before and after a change, for row filters.
#[derive(Debug, Default)]
pub struct RowValues {
    pub new: Row,
    /// Previous values of the columns that changed (empty unless `updated`).
    pub old: Row,
}

impl Change {
    pub fn values(&self) -> &RowValues {
        // jsonb always prints an object; anything else would match no filter but
        // `is.null`, as a row without the columns would.
        let row = |json: &RawValue| {
            Row::parse(json.get()).unwrap_or_else(|| {
                tracing::warn!(id = self.id, "a journalled row is not a JSON object");
                Row::default()
            })
        };
        self.values.get_or_init(|| RowValues {
            new: row(&self.resource),
            old: self.old.as_deref().map(row).unwrap_or_default(),
        })
    }
}

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
pub struct Frames([OnceLock<Frame>; 3]);

impl Frames {
    pub fn slot(&self, index: usize) -> &OnceLock<Frame> {
        &self.0[index]
    }
}

/// One committed `changecast.publish()` (API.md §8).
#[derive(Debug)]
pub struct AppEvent {
    pub id: i64,
    pub xid: u64,
    pub tenant: TenantId,
    pub topic: String,
    pub payload: Box<RawValue>,
    pub occurred_at: String,
    pub cursor: Cursor,
    pub cursor_text: String,
    pub known_since: Instant,
    pub(crate) frames: Frames,
}

pub type SharedAppEvent = Arc<AppEvent>;

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

/// The journal's `event` of a truncation marker.
const TRUNCATED: &str = "truncated";
/// The journal's `event` of an application event.
const PUBLISHED: &str = "published";

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

/// The cursor key, as the migrations made it (`changecast.cursor_key`, readable by the
/// service's role only).
const CURSOR_KEY_SQL: &str = "select key from changecast.cursor_key";

/// What cursors are bound to: the journal, and the timeline of the database's history it
/// is on (the current WAL file's). A promoted standby starts a new timeline; if it lagged,
/// its new transactions reuse ids that cursors of the old timeline already count as seen,
/// and may pass the tailer's position before it reconnects — undetectable from the ids
/// alone. With the timeline in the identity, every cursor of the old one is foreign:
/// subscribers resync (`cursor_invalid`) instead of silently missing changes. The price:
/// a failover resyncs every subscriber, even one that lost nothing. The first timeline
/// adds nothing, so cursors minted before the timeline was part of the identity stay
/// valid. Both functions are executable by any role.
const JOURNAL_IDENTITY: &str = "(select journal_id::text from changecast.journal_meta) \
     || coalesce('/' || nullif(substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), '00000001'), '')";

const COLUMNS: &str = r#"id, xid::text, writer_snapshot::text, tenant_id, resource_type, event, resource::text,
       to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), resource_id, old::text"#;

/// The tailer's read: rows of every tenant. `$1`/`$2` spell "not seen by `unseen`" as two
/// ranges of the xid index (transactions that started after it, and those it saw
/// running), so rows it did see are never scanned, however long a writer stays open.
/// At most `$7` rows and `$8` bytes (see [`byte_bounded`]).
const TAIL_SQL: &str = r#"
select * from changecast.change_log
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
       {JOURNAL_IDENTITY},
       j.*
from (select 1) one
left join (
    {PAGE}
) j on true
order by j.id
"#;

/// The rows of [`TAIL_NEW_SQL`]'s page, at most `$3` rows and `$4` bytes.
const TAIL_NEW_PAGE_SQL: &str = r#"
select * from changecast.change_log where id in (select id from new order by id limit $3)
"#;

/// Where a replay's first page starts: the tenant's first row its cursor did not see,
/// found among the rows of transactions the cursor's snapshot does not see — those it saw
/// running ($3), and every one from its `xmax` ($2) on. (A backward walk from the
/// cursor's own row to the newest row it sees is not enough: `xmax` is the newest
/// *completed* transaction + 1, so a transaction with a later id may already have been
/// running, and writing rows, before the snapshot.) Reads the xid index over what every
/// tenant wrote since the cursor: short for a reconnect, and shared by subscribers
/// resuming from one cursor. `offset 0` fences the scan (no walk of the primary key in
/// id order instead) without materializing it: a materialized CTE would write every
/// unseen row to a temporary file first.
const REPLAY_START_SQL: &str = r#"
select (select min(id)
        from (select id, tenant_id from changecast.change_log
              where (xid >= $2::text::xid8 and xid < pg_snapshot_xmax(pg_current_snapshot()))
                 or xid = any($3::text[]::xid8[])
              offset 0) unseen
        where tenant_id = $1),
       pg_current_snapshot()::text
"#;

/// One replay page: the tenant's rows after `$2` in id order, of transactions the
/// cursor did not see ($3) and the published boundary covers ($4, $5, $6), at most `$9`
/// of them and `$10` bytes (see [`byte_bounded`]). Only (tenant_id, id) can drive it — an
/// index range scan that starts where the previous page ended: the xid conditions are
/// written as snapshot tests on purpose, so that a long replay is never planned as
/// "every unseen row of the xid index, sorted, for each page" (rows^2 / page).
const REPLAY_SQL: &str = r#"
select *
from changecast.change_log
where tenant_id = $1
  and id > $2
  and not pg_visible_in_snapshot(xid, $3::text::pg_snapshot)
  and (pg_visible_in_snapshot(xid, $4::text::pg_snapshot)
       or (id <= $6 and pg_visible_in_snapshot(xid, $5::text::pg_snapshot)))
  and (case when event = 'published' then $8
            else $7::text[] is null or resource_type = any($7) end)
order by id
limit $9
"#;

/// Planner settings of the tailer's connection, and of a replay start's transaction. Their
/// statements are prepared, so PostgreSQL may plan them once, generically, and keep the
/// plan for the connection's life: planned on a young journal (a few hundred rows
/// expected), the tailer's page can become a hash join over a sequential scan of the
/// whole journal, run for every batch as the journal grows. Every one of these
/// statements is an index lookup by design; these settings keep it one whatever the
/// statistics say when it is planned. A disabled plan shape counts as hugely expensive,
/// and a plan that looks expensive gets compiled by JIT, which costs far more than these
/// statements run: JIT is off too. And the generic plan is used from the first run on:
/// left to choose, PostgreSQL finds a custom plan for "rows from the newest transaction
/// on" cheaper every time and plans the tailer's read anew for every batch, where the
/// planning costs more than the read (BENCHMARKS.md).
pub const INDEX_PLANNER_SETTINGS: &str = "set enable_seqscan = off; set enable_hashjoin = off; \
     set enable_mergejoin = off; set jit = off; set plan_cache_mode = force_generic_plan";
static INDEX_PLANNER_SETTINGS_LOCAL: LazyLock<String> =
    LazyLock::new(|| INDEX_PLANNER_SETTINGS.replace("set ", "set local "));

/// Planner settings of a replay page's transaction (see [`Journal::read_replay`]).
pub const REPLAY_PLANNER_SETTINGS: &str =
    "set local enable_bitmapscan = off; set local enable_sort = off; set local jit = off";

fn with_columns(sql: &str) -> String {
    sql.replace("{COLUMNS}", COLUMNS)
}

/// `page` (a statement choosing rows of the journal, `select *`, with its LIMIT), cut
/// after the row that reaches `max_bytes` (a parameter, e.g. `$8`) of row JSON (`resource`
/// and `old`) as stored, i.e. compressed where PostgreSQL compressed it:
/// a page of huge rows is short rather than huge, and always holds at least one row.
/// The bytes are counted over the rows the LIMIT chose (a window beside the LIMIT would
/// count every matching row first). Each row also carries `candidates`, how many the
/// LIMIT chose, so a page cut by bytes is not taken for the last one (see [`more_after`]).
fn byte_bounded(page: &str, max_bytes: &str) -> String {
    with_columns(&format!(
        "select {{COLUMNS}}, candidates
         from (select page.*,
                      sum(pg_column_size(page.resource) + coalesce(pg_column_size(page.old), 0))
                          over (order by page.id) as through_bytes,
                      count(*) over () as candidates
               from ({page}) page) sized
         where through_bytes - pg_column_size(resource) - coalesce(pg_column_size(old), 0)
               < {max_bytes}
         order by id"
    ))
}

/// Whether rows may follow a page read with [`byte_bounded`] and `limit`: its LIMIT was
/// reached, or the byte bound cut it. `candidates` is the page's first row's count.
fn more_after(returned: usize, candidates: Option<i64>, limit: usize) -> bool {
    let candidates = candidates.unwrap_or(0) as usize;
    candidates >= limit || returned < candidates
}

static TAIL: LazyLock<String> = LazyLock::new(|| byte_bounded(TAIL_SQL, "$8"));
static TAIL_NEW: LazyLock<String> = LazyLock::new(|| {
    with_columns(
        &TAIL_NEW_SQL
            .replace("{PAGE}", &byte_bounded(TAIL_NEW_PAGE_SQL, "$4"))
            .replace("{JOURNAL_IDENTITY}", JOURNAL_IDENTITY),
    )
});
static REPLAY: LazyLock<String> = LazyLock::new(|| byte_bounded(REPLAY_SQL, "$10"));

/// The statements that run for every batch or replay page, by name, as sent: for plan
/// checks (`EXPLAIN`) against a journal of realistic size.
pub fn hot_statements() -> [(&'static str, String); 4] {
    [
        ("tail_new", TAIL_NEW.clone()),
        ("tail_page", TAIL.clone()),
        ("replay_start", REPLAY_START_SQL.to_owned()),
        ("replay_page", REPLAY.clone()),
    ]
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
        let cursor_text = self.scope().encode(&tenant, &cursor);
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
        let payload =
            RawValue::from_string(resource.to_owned()).expect("BUG: jsonb prints valid JSON");
        let occurred_at = occurred_at.to_owned();
        if event == PUBLISHED {
            return Entry::AppEvent(Arc::new(AppEvent {
                id,
                xid,
                tenant,
                topic: resource_type,
                payload,
                occurred_at,
                cursor,
                cursor_text,
                known_since,
                frames: Frames::default(),
            }));
        }
        let event = EventKind::parse(event)
            .expect("BUG: the journal's check constraint allows only known events");
        let old = row.get::<_, Option<&str>>(at + 9).map(|old| {
            RawValue::from_string(old.to_owned()).expect("BUG: jsonb prints valid JSON")
        });
        Entry::Change(Arc::new(Change {
            id,
            xid,
            tenant,
            resource_type,
            event,
            resource_id: row.get(at + 8),
            resource: payload,
            old,
            occurred_at,
            cursor,
            cursor_text,
            known_since,
            values: OnceLock::new(),
            frames: Frames::default(),
        }))
    }
}

/// A cursor for "everything `snapshot` sees", handed out with a `/v1/snapshot` read.
pub fn snapshot_cursor(journal: &Journal, tenant: &TenantId, snapshot: PgSnapshot) -> String {
    journal
        .scope()
        .encode(tenant, &Cursor::of_snapshot(snapshot))
}

pub type SharedChange = Arc<Change>;

/// The transactions `snapshot` saw running, as SQL parameters.
fn running(snapshot: &PgSnapshot) -> Vec<String> {
    snapshot.xip.iter().map(u64::to_string).collect()
}
