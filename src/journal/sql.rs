//! The journal's SQL: every statement that reads it, and the planner settings they run
//! under. Each read selects by snapshot ("rows whose transaction one snapshot does not
//! see but another does"); see the module documentation of `journal`.

use std::sync::LazyLock;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// What a statement comes to.
pub type DbResult<T> = Result<T, tokio_postgres::Error>;

/// The cursor key, as the migrations made it (`changecast.cursor_key`, readable by the
/// service's role only).
pub(super) const CURSOR_KEY_SQL: &str = "select key from changecast.cursor_key";

/// What cursors are bound to: the journal, and the timeline of the database's history it
/// is on (the current WAL file's). A promoted standby starts a new timeline; if it lagged,
/// its new transactions reuse ids that cursors of the old timeline already count as seen,
/// and may pass the tailer's position before it reconnects — undetectable from the ids
/// alone. With the timeline in the identity, every cursor of the old one is foreign:
/// subscribers resync (`cursor_invalid`) instead of silently missing changes. The price:
/// a failover resyncs every subscriber, even one that lost nothing. The first timeline
/// adds nothing, so cursors minted before the timeline was part of the identity stay
/// valid. Both functions are executable by any role.
pub(super) const JOURNAL_IDENTITY: &str = "(select journal_id::text from changecast.journal_meta) \
     || coalesce('/' || nullif(substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), '00000001'), '')";

pub(super) const COLUMNS: &str = r#"id, xid::text, writer_snapshot::text, tenant_id, resource_type, event, resource::text,
       to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), resource_id, old::text"#;

/// The tailer's read: rows of every tenant. `$1`/`$2` spell "not seen by `unseen`" as two
/// ranges of the xid index (transactions that started after it, and those it saw
/// running), so rows it did see are never scanned, however long a writer stays open.
/// At most `$7` rows and `$8` bytes (see [`byte_bounded`]).
pub(super) const TAIL_SQL: &str = r#"
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
///
/// `$5` is an id no row of those transactions is below ([`IdFloor`](super::IdFloor)),
/// or `i64::MIN`: the read skips the partitions wholly below it when it starts (a
/// generic plan prunes by parameters at executor start), where setting up the scans of
/// a dozen partitions cost more than the read itself. It is written `id >= all(array[$5])`:
/// partition pruning takes that form, and no index can (`id >= $5` could drive a walk
/// of the primary key from the floor, which a plan made on a young journal picks, and a
/// floor of `i64::MIN` makes a walk of the whole journal).
pub(super) const TAIL_NEW_SQL: &str = r#"
with new as materialized (
    -- Only the xid index can answer this (a fence: the planner cannot trade it for a
    -- walk of the primary key in id order, whatever its statistics say).
    select id from changecast.change_log
    where id >= all(array[$5::int8])
      and ((xid >= $1::text::xid8 and xid < pg_snapshot_xmax(pg_current_snapshot()))
           or xid = any($2::text[]::xid8[]))
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

/// The first page of a batch read on a hot standby up to the primary's snapshot `$3`
/// (which the standby has replayed): the rows not seen by `unseen` ($1, $2 as in
/// [`TAIL_SQL`]) that `$3` sees, at most `$4` rows and `$5` bytes, from the partitions
/// at or above the id floor `$6` only (as [`TAIL_NEW_SQL`]'s `$5`: the primary's marks
/// hold on a standby that replays it). Fenced like [`TAIL_NEW_SQL`]: with no id to start
/// from, [`TAIL_SQL`]'s generic plan would walk the primary key from the journal's first
/// row for every batch. The page's ids are collected first (`= any(array(...))`), so
/// each partition of the journal is searched for exactly those in its primary key (see
/// [`TAIL_NEW_PAGE_SQL`] for the ORDER BY).
pub(super) const TAIL_MARK_SQL: &str = r#"
with new as materialized (
    select id, xid from changecast.change_log
    where id >= all(array[$6::int8])
      and ((xid >= $1::text::xid8 and xid < pg_snapshot_xmax($3::text::pg_snapshot))
           or xid = any($2::text[]::xid8[]))
)
select * from changecast.change_log
where id >= all(array[$6::int8])
  and id = any(array(select id from new
                     where pg_visible_in_snapshot(xid, $3::text::pg_snapshot)
                     order by id
                     limit $4))
order by id
limit $4
"#;

/// The rows of [`TAIL_NEW_SQL`]'s page, at most `$3` rows and `$4` bytes (from the
/// partitions at or above `$5` only). The page's ids are collected first
/// (`= any(array(...))`) and read in id order (the ORDER BY and LIMIT cut nothing), so
/// the partitions' primary keys are the only way to read them without a sort. A lookup
/// by id alone can also go through the `(tenant_id, id)` index, and a generic plan made
/// while a partition's statistics say it is empty (analyzed before its first row)
/// finds that one as cheap: a walk of the whole index for every row, once the partition
/// fills.
pub(super) const TAIL_NEW_PAGE_SQL: &str = r#"
select * from changecast.change_log
where id >= all(array[$5::int8])
  and id = any(array(select id from new order by id limit $3))
order by id
limit $3
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
pub(super) const REPLAY_START_SQL: &str = r#"
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
pub(super) const REPLAY_SQL: &str = r#"
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
/// [`INDEX_PLANNER_SETTINGS`] for one transaction (a pooled connection's replay start).
pub static INDEX_PLANNER_SETTINGS_LOCAL: LazyLock<String> =
    LazyLock::new(|| INDEX_PLANNER_SETTINGS.replace("set ", "set local "));

/// Opens the transaction a tail read runs in on a connection that may be pooled, under
/// [`INDEX_PLANNER_SETTINGS`] until it ends.
static TAIL_TRANSACTION: LazyLock<String> =
    LazyLock::new(|| format!("begin; {}", *INDEX_PLANNER_SETTINGS_LOCAL));

/// Runs `statement` (one of the tailer's, prepared on `client`) under
/// [`INDEX_PLANNER_SETTINGS`], which end with it: for a connection that may go through a
/// transaction-mode pooler, where settings made for the session would stay on whichever
/// server connection took them, for the pooler's other clients, and be missing on the
/// next. BEGIN with the settings, the statement and COMMIT are sent together, each queued
/// before any answer is awaited: one round trip, as the statement alone. A failed
/// statement aborts the transaction, whose COMMIT then rolls it back, so the connection
/// is never left inside it.
pub(super) async fn under_index_settings(
    client: &Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> DbResult<Vec<Row>> {
    // try_join3 polls in order: the three requests leave in this order on its first poll.
    let (_, rows, _) = futures_util::future::try_join3(
        client.batch_execute(&TAIL_TRANSACTION),
        client.query(statement, params),
        client.batch_execute("commit"),
    )
    .await?;
    Ok(rows)
}

/// Planner settings of a replay page's transaction (see `replay::read_replay`).
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
pub(super) fn more_after(returned: usize, candidates: Option<i64>, limit: usize) -> bool {
    let candidates = candidates.unwrap_or(0) as usize;
    candidates >= limit || returned < candidates
}

pub(super) static TAIL: LazyLock<String> = LazyLock::new(|| byte_bounded(TAIL_SQL, "$8"));
pub(super) static TAIL_MARK: LazyLock<String> = LazyLock::new(|| byte_bounded(TAIL_MARK_SQL, "$5"));
pub(super) static TAIL_NEW: LazyLock<String> = LazyLock::new(|| {
    with_columns(
        &TAIL_NEW_SQL
            .replace("{PAGE}", &byte_bounded(TAIL_NEW_PAGE_SQL, "$4"))
            .replace("{JOURNAL_IDENTITY}", JOURNAL_IDENTITY),
    )
});
/// The id the journal's sequence hands out next, as a scalar subquery. Read from the
/// sequence itself (the service's role owns it): `pg_sequence_last_value()` is NULL
/// until the first `nextval` after `setval(..., false)`, as the migration that creates
/// the sequence leaves it, though the next id is then far above 1.
pub(super) const NEXT_ID: &str =
    "(select case when is_called then last_value + 1 else last_value end
                        from changecast.change_log_id_seq)";

/// An [`IdFloor`](super::IdFloor) mark: the sequence's next id, then a transaction id,
/// in that order (the subquery is a fence: its row exists before the outer one asks
/// for an id). No row when the sequence caches ids. The id is taken for a transaction
/// that writes nothing: its commit record is all it costs, and it need not wait for
/// that to be flushed.
pub(super) static ID_FLOOR_MARK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select marked.next_id, pg_current_xact_id()::text
         from (select set_config('synchronous_commit', 'off', true),
                      {NEXT_ID} as next_id,
                      (select seqcache from pg_sequence
                        where seqrelid = 'changecast.change_log_id_seq'::regclass) as cache
               offset 0) marked
         where marked.cache = 1"
    )
});

/// On the primary, for a batch read on a hot standby: the position the batch reads up
/// to (the primary's snapshot), how far the primary has flushed WAL (taken after the
/// snapshot), the journal's identity and its pruning. The position is the primary's,
/// not the standby's: a standby's `pg_current_snapshot()` lists no running transaction
/// (in recovery PostgreSQL keeps them apart from the `xip` it prints), so it would count
/// transactions still running as seen. A standby that has replayed up to the flush
/// position has every transaction the snapshot sees (a synchronous commit is flushed
/// before it becomes visible), and the batch reads its rows there by that snapshot.
/// The insert position (also taken after the snapshot) covers asynchronous commits
/// (`synchronous_commit = off`) too, which become visible before they are flushed; WAL
/// inserted but not flushed may stay unsent while the primary is idle, which
/// `capture::standby` deals with.
pub(super) static PRIMARY_MARK_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select pg_current_wal_flush_lsn()::text, {JOURNAL_IDENTITY}, pg_current_snapshot()::text,
                (select pruned_below::text from changecast.journal_meta),
                pg_current_wal_insert_lsn()::text"
    )
});

pub(super) static REPLAY: LazyLock<String> = LazyLock::new(|| byte_bounded(REPLAY_SQL, "$10"));

/// The statements that run for every batch or replay page (and, for subscribers with
/// `max_txn_events`, for the transactions a replay page meets), by name, as sent: for
/// plan checks (`EXPLAIN`) against a journal of realistic size.
pub fn hot_statements() -> [(&'static str, String); 7] {
    [
        ("tail_new", TAIL_NEW.clone()),
        ("tail_page", TAIL.clone()),
        ("tail_mark", TAIL_MARK.clone()),
        ("replay_start", REPLAY_START_SQL.to_owned()),
        ("replay_page", REPLAY.clone()),
        ("transaction_sizes", TRANSACTION_SIZES_SQL.to_owned()),
        ("transaction_rows", TRANSACTION_ROWS.clone()),
    ]
}

/// How many rows each of the transactions `$5` wrote for tenant `$1` that a replay with
/// the same coarse filter (`$2` types, `$3` application events) would read, counted up
/// to `$4` each: whether a transaction may exceed a subscriber's `max_txn_events`.
/// Resync markers (truncations, rows of an unknown event) are not events and are not
/// counted. Each transaction's rows are found by the xid index, and the tenant's counted
/// among them until `$4` are: `offset 0` fences the xid scan, so that no plan can walk
/// the tenant's whole history in `(tenant_id, id)` instead, for every transaction, as a
/// plan made on a young journal would (and one made while a partition was analyzed
/// empty would, in that partition). A large transaction of other tenants is read
/// through once.
pub(super) const TRANSACTION_SIZES_SQL: &str = r#"
select x::text,
       (select count(*)
        from (select 1
              from (select c.tenant_id, c.event, c.resource_type
                    from changecast.change_log c
                    where c.xid = x
                    offset 0) c
              where c.tenant_id = $1
                and c.event in ('created', 'updated', 'deleted', 'published')
                and (case when c.event = 'published' then $3
                          else $2::text[] is null or c.resource_type = any($2) end)
              limit $4) s)
from unnest($5::text[]::xid8[]) x
"#;

/// Every row transaction `$2` wrote for tenant `$1` under a replay's coarse filter
/// (`$3` types, `$4` application events), in no particular order: read through a portal
/// a page at a time to count what one subscriber's selection takes of it. Found by the
/// xid index, fenced as in [`TRANSACTION_SIZES_SQL`].
pub(super) static TRANSACTION_ROWS: LazyLock<String> = LazyLock::new(|| {
    with_columns(
        r#"
select {COLUMNS}
from (select * from changecast.change_log where xid = $2::text::xid8 offset 0) change_log
where tenant_id = $1
  and event in ('created', 'updated', 'deleted', 'published')
  and (case when event = 'published' then $4
            else $3::text[] is null or resource_type = any($3) end)
"#,
    )
});
