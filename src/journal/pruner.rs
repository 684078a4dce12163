//! Retention: removes journal rows whose transactions committed more than the retention
//! period ago — whole partitions where it can, else in small batches of rows — with at
//! most one instance pruning at a time, and records the horizon below which rows may be
//! gone, so cursors that may have needed them get `cursor_expired`.
//!
//! Commit time is what counts, not insert time: a transaction that wrote for an hour is
//! kept as long as one that wrote for a millisecond. PostgreSQL has no commit time per row
//! (without `track_commit_timestamp`), so each run records a tick — "every transaction
//! below this xid has ended" — and rows are pruned below the horizon of the newest tick
//! older than the retention period. A row therefore waits for the next tick after its
//! commit (up to one interval), then for that tick to age past the retention, then for
//! the next run (up to one interval more): it outlives the retention by at most two
//! intervals. So the interval is capped at a small fraction of the retention
//! ([`interval`]); a row is gone within about 1/8 of the retention after it
//! expired. Any transaction of the cluster still running holds the horizon back (it may
//! yet write rows that commit later), and so pruning.
//!
//! # Partitions
//!
//! The journal is partitioned by range of id (migration V15), so that what the retention
//! removes mostly goes a partition at a time: a TRUNCATE writes a few WAL records where a
//! DELETE writes one per row, and leaves no dead rows to vacuum and no index bloat. Each
//! run, under the pruning lock:
//!
//! 1. records its tick and raises `pruned_below` to the horizon, in a transaction of its
//!    own, committed before any row goes;
//! 2. TRUNCATEs each range partition whose rows all belong to transactions below the
//!    horizon, and DROPs the empty ones wholly below the ids handed out (a partition
//!    still receiving rows is only emptied);
//! 3. DELETEs, in batches as before, the rows below the horizon of the DEFAULT partition
//!    and of partitions that also hold newer rows, unless such a partition filled
//!    [`FILLED_AGO`] of the retention ago or earlier (the ticks record the sequence's
//!    position): then its newest rows expire soon, and its expired rows wait to go
//!    with them, whole. In the steady state the partition at the horizon is always
//!    such a one, and deleting its rows one by one, run after run, would cost the WAL
//!    and the vacuuming partitions avoid; a slow journal's partitions, which may take
//!    longer than the retention to fill, are pruned row by row on time;
//! 4. creates partitions until they reach [`AHEAD`] spans past the ids handed out. A span
//!    is the ids written in 1/[`PARTITIONS_PER_RETENTION`] of the retention at the rate
//!    observed since the oldest tick kept (the ticks record the sequence's position), and
//!    at least [`MIN_SPAN`]: about ten partitions live, each removed about 1/8 of the
//!    retention after its last row expired (rows of the DEFAULT partition and of
//!    partitions filled recently go by DELETE, on time).
//!
//! The DEFAULT partition takes ids beyond the partitions created (the service was down
//! for days, or a burst outran them): writers never fail for want of a partition. New
//! partitions start above whatever it holds (ATTACH checks that it holds no row of the
//! new range, and fails otherwise: retried next run), and, when the writers have
//! overtaken the partitions, a minute of writing above the ids being handed out
//! (checked again while no writer is at work, see Locks).
//!
//! ## Locks
//!
//! Writers take ROW EXCLUSIVE on the journal and on the partition a row goes to, readers
//! ACCESS SHARE on it and its partitions, until their transactions end. On PostgreSQL 13
//! to 18:
//!
//! * `CREATE TABLE ... PARTITION OF` takes ACCESS EXCLUSIVE on the parent (and on the
//!   DEFAULT partition): never used. A partition is created standalone (`LIKE ...
//!   INCLUDING ALL`: columns, defaults, constraints, the same indexes) and attached.
//! * `ATTACH PARTITION` takes SHARE UPDATE EXCLUSIVE on the parent, which neither
//!   writers nor readers conflict with, and ACCESS EXCLUSIVE on the table attached (new
//!   and empty: nothing to scan) and on the DEFAULT partition, which it scans for rows of
//!   the new range — empty or small as a rule (what is written before the first run
//!   after the journal was converted; later, only an outage longer than the partitions
//!   created ahead fills it). It may then hold millions: no partition is attached (the
//!   scan would block every writer and reader for as long, about 0.2 s per million
//!   rows, and could hit a `statement_timeout`) while it holds more than
//!   [`MAX_DEFAULT_ROWS_TO_ATTACH`] rows (some 20 ms of scanning). Its rows go by DELETE
//!   as they expire; but writers past the partitions go on into it meanwhile, so a
//!   journal that writes more than that per retention period stays there, pruned by
//!   DELETE only, with a warning at every run.
//!
//!   A statement routes its rows with the partitions there were when it began (a
//!   transaction, once it wrote to the journal, may keep them too), and PostgreSQL
//!   refuses a row it routes to the DEFAULT partition if a partition attached meanwhile
//!   covers it: a writer's statement, a bulk one above all, would fail. So the pruner,
//!   the new table created, takes SHARE ROW EXCLUSIVE on the parent (which includes what
//!   ATTACH needs there) for the rest of the attaching transaction: it waits for the
//!   journal's writers to end and holds new ones back, not readers. Writers then wait
//!   for the lock request (at most `lock_timeout`), then for ATTACH's lock on the DEFAULT
//!   partition (readers hold it for a statement; at most `lock_timeout` too) and its
//!   scan. While one writer of the journal stays open, no partition is attached: once
//!   the writers pass the partitions, the pruner warns at every run.
//! * `TRUNCATE` of a partition takes ACCESS EXCLUSIVE on that partition only.
//! * `DETACH PARTITION` and `DROP TABLE` of a partition take ACCESS EXCLUSIVE on the
//!   parent (and the DEFAULT partition). `DETACH ... CONCURRENTLY` (PostgreSQL 14+) would
//!   not, but it is refused while a DEFAULT partition exists, and inside a transaction.
//!   So partitions are emptied with TRUNCATE as soon as they may be, and dropped
//!   (empty: holding the lock for a catalog change only) when the lock comes, if they
//!   are still empty under it.
//!
//! Every such statement runs with `lock_timeout` = [`LOCK_TIMEOUT`]: a lock that
//! conflicts with a long transaction is given up, and the step retried next run, so
//! writers and readers queue behind the pruner's request for at most that long (and
//! behind an ATTACH for that long twice, plus its scan) — never behind a long
//! transaction's. Whether a partition may be emptied, or dropped, is
//! decided again once its lock (or the parent's) is held: a writer that has not
//! committed (its rows are invisible to the first look) holds ROW EXCLUSIVE on it and on
//! the parent until it ends, so the lock is refused while it runs and its partition is
//! held back (or, if it ended during the wait, its rows are seen and kept); a DELETE of
//! a partition's older rows never touches its newer ones. Readers are single statements
//! (or take every partition's lock with their first one), so a TRUNCATE cannot empty a
//! partition under a snapshot that is reading it; and what it removes is below
//! `pruned_below`, committed before.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::sql::NEXT_ID;
use crate::backoff::sleep_or_shutdown;
use crate::metrics::Metrics;

/// Arbitrary but fixed: the advisory lock that makes one instance the pruner.
pub const PRUNE_LOCK: i64 = 0x6368_616e_6765_6302;
/// Rows deleted per transaction: keeps each delete short.
const BATCH_ROWS: i64 = 5000;
/// How long each statement of partition maintenance waits for a lock before it gives up
/// until the next run.
const LOCK_TIMEOUT: Duration = Duration::from_millis(100);
/// Partitions a retention period's rows spread over (so a row outlives the retention by
/// about this fraction of it more before its partition goes, as a whole).
pub const PARTITIONS_PER_RETENTION: u32 = 8;
/// Partitions created ahead of the ids handed out, in spans.
const AHEAD: i64 = 2;
/// A partition that also holds rows newer than the horizon is left to go whole when it
/// filled at least this share of the retention ago (its expired rows then wait at most
/// the rest, a quarter); one filled later is pruned row by row. A partition spans 1/8
/// of the retention's writing, so in the steady state the one at the horizon filled
/// 7/8 of it ago: the margin absorbs a rate that varies and the ticks' spacing.
const FILLED_AGO: f64 = 0.75;

/// However slowly the journal grows, a partition spans at least this many ids.
pub const MIN_SPAN: i64 = 10_000;
/// Partitions created per run at most (ahead of a burst, the DEFAULT partition catches
/// the rest).
const MAX_CREATED_PER_RUN: usize = 4;
/// When the writers have overtaken the partitions, the first new one starts this many
/// seconds of writing above them (and at least [`MIN_MARGIN`] ids).
const CATCH_UP_SECS: f64 = 60.0;
const MIN_MARGIN: i64 = 100;
/// No partition is attached while the DEFAULT partition holds more rows than this: ATTACH
/// would scan them all under a lock that blocks its writers and the journal's readers.
const MAX_DEFAULT_ROWS_TO_ATTACH: i64 = 100_000;
/// Pruning runs at least this often per retention period (see the module doc: a row
/// outlives the retention by at most two intervals and their jitter).
pub const RUNS_PER_RETENTION: u32 = 20;
/// However short the retention, runs are at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Jitter is at most a quarter of the interval, and never more than this.
const MAX_JITTER: Duration = Duration::from_secs(1);

pub struct Pruner {
    pub pool: deadpool_postgres::Pool,
    pub retention: Duration,
    /// The configured interval; see [`interval`] for the one used.
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
}

impl Pruner {
    pub async fn run(&self, shutdown: CancellationToken) {
        let interval = interval(self.interval, self.retention);
        if interval < self.interval {
            tracing::info!(?interval, retention = ?self.retention, "pruning more often than configured, to honour the short retention");
        }
        let max_jitter = (interval / 4).min(MAX_JITTER).as_millis() as u64 + 1;
        loop {
            // Jitter spreads several instances' attempts apart.
            let jitter = Duration::from_millis(u64::from(rand_u16()) % max_jitter);
            if sleep_or_shutdown(interval + jitter, &shutdown).await {
                return;
            }
            match prune(&self.pool, self.retention).await {
                Ok(0) => {}
                Ok(rows) => {
                    self.metrics.journal_rows_pruned.inc_by(rows);
                    tracing::info!(rows, "pruned journal rows past retention");
                }
                Err(error) => tracing::warn!(?error, "pruning the journal failed; will retry"),
            }
            match storage(&self.pool).await {
                Ok((bytes, partitions)) => {
                    self.metrics.journal_bytes.set(bytes);
                    self.metrics.journal_partitions.set(partitions);
                }
                Err(error) => tracing::debug!(?error, "measuring the journal failed"),
            }
        }
    }
}

/// Bytes the journal takes (every partition, with its indexes and TOAST: the
/// partitioned parent stores nothing itself) and how many partitions it has.
pub async fn storage(pool: &Pool) -> anyhow::Result<(i64, i64)> {
    let row = pool
        .get()
        .await?
        .query_one(
            "select coalesce(sum(pg_total_relation_size(relid)), 0)::int8, count(*) filter (where isleaf)
             from pg_partition_tree('changecast.change_log')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Time between runs: the `configured` interval, but at most 1/[`RUNS_PER_RETENTION`] of
/// the `retention` and at least [`MIN_INTERVAL`].
pub fn interval(configured: Duration, retention: Duration) -> Duration {
    configured
        .min(retention / RUNS_PER_RETENTION)
        .max(MIN_INTERVAL)
}

/// Records a tick, removes every journal partition whose rows all belong to transactions
/// that had committed before the newest tick older than `retention`, deletes such rows
/// from the other partitions, and creates partitions ahead of the writers (see the module
/// doc); returns how many rows went. Skips (returning 0) while another instance holds
/// the pruning lock.
pub async fn prune(pool: &Pool, retention: Duration) -> anyhow::Result<u64> {
    prune_with(pool, retention, Partitioning::default()).await
}

/// How the pruner lays out the journal's partitions.
#[derive(Clone, Copy, Debug)]
pub struct Partitioning {
    /// A new partition spans at least this many ids, however slowly the journal grows.
    pub min_span: i64,
    /// No partition is attached while the DEFAULT partition holds more rows than this.
    pub max_default_rows: i64,
    /// How long each statement of partition maintenance waits for a lock before it gives
    /// up until the next run.
    pub lock_timeout: Duration,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning {
            min_span: MIN_SPAN,
            max_default_rows: MAX_DEFAULT_ROWS_TO_ATTACH,
            lock_timeout: LOCK_TIMEOUT,
        }
    }
}

/// [`prune`], with partitions laid out by `partitioning`.
pub async fn prune_with(
    pool: &Pool,
    retention: Duration,
    partitioning: Partitioning,
) -> anyhow::Result<u64> {
    let mut client = pool.get().await?;
    let Some(horizon) = tick(&mut client, retention).await? else {
        return Ok(0);
    };
    let mut total = 0;
    if let Some(horizon) = horizon {
        let Some(removed) =
            remove_partitions(&mut client, &horizon, retention, partitioning).await?
        else {
            return Ok(total);
        };
        total += removed.rows;
        for partition in removed.to_delete_from {
            let Some(deleted) = delete_rows(&mut client, &partition, &horizon).await? else {
                return Ok(total);
            };
            total += deleted;
        }
    }
    create_ahead(&mut client, retention, partitioning).await?;
    Ok(total)
}

/// Takes the pruning lock for the rest of `tx`: false when another instance holds it.
async fn lock(tx: &tokio_postgres::Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_one("select pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
        .await?
        .get(0))
}

/// Records a tick and raises `pruned_below` to the horizon of the newest tick older than
/// `retention` (committed before any row goes, so a replay can never see rows missing
/// without also seeing why); returns that horizon (`Some(None)`: no tick is old enough
/// yet), or None when another instance holds the pruning lock.
async fn tick(
    client: &mut deadpool_postgres::Client,
    retention: Duration,
) -> anyhow::Result<Option<Option<String>>> {
    let tx = client.transaction().await?;
    if !lock(&tx).await? {
        return Ok(None);
    }
    tx.execute(
        &format!(
            "insert into changecast.journal_ticks (taken_at, horizon, next_id)
             values (clock_timestamp(), pg_snapshot_xmin(pg_current_snapshot()), {NEXT_ID})
             on conflict do nothing"
        ),
        &[],
    )
    .await?;
    // Ticks older than the one in use are dropped.
    let horizon: Option<String> = tx
        .query_one(
            "with horizon as (
                 select taken_at, horizon from changecast.journal_ticks
                 where taken_at < now() - make_interval(secs => $1)
                 order by taken_at desc limit 1
             ),
             older_ticks as (
                 delete from changecast.journal_ticks
                 where taken_at < (select taken_at from horizon)
             ),
             recorded as (
                 update changecast.journal_meta
                    set pruned_below = greatest(pruned_below, (select horizon from horizon))
                  where exists (select 1 from horizon)
             )
             select (select horizon::text from horizon)",
            &[&retention.as_secs_f64()],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Some(horizon))
}

/// One range partition of the journal, as `changecast.journal_partitions` lists it.
struct RangePartition {
    name: String,
    upper: Option<i64>,
}

/// What [`remove_partitions`] did: rows removed, and the partitions that still hold rows
/// to delete one by one.
struct Removed {
    rows: u64,
    to_delete_from: Vec<String>,
}

/// The id the journal's sequence hands out next.
async fn next_id(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(&format!("select {NEXT_ID}"), &[])
        .await?
        .get(0))
}

/// Whether every id below `upper` had been handed out by a tick taken [`FILLED_AGO`] of
/// the retention ago or earlier: then the partition's newest rows expire within the rest
/// of it, and its expired rows wait to go with them, whole.
async fn filled_long_ago(
    client: &tokio_postgres::Client,
    upper: Option<i64>,
    retention: Duration,
) -> anyhow::Result<bool> {
    let Some(upper) = upper else {
        return Ok(false);
    };
    Ok(client
        .query_one(
            "select exists (select 1 from changecast.journal_ticks
                            where next_id >= $1
                              and taken_at <= clock_timestamp() - make_interval(secs => $2))",
            &[&upper, &(retention.as_secs_f64() * FILLED_AGO)],
        )
        .await?
        .get(0))
}

/// Whether `error` is a lock not granted within `lock_timeout` (or a DDL's check that
/// lost a race with a writer): the step is retried next run.
fn lost_race(error: &tokio_postgres::Error) -> bool {
    [SqlState::LOCK_NOT_AVAILABLE, SqlState::CHECK_VIOLATION]
        .iter()
        .any(|code| error.code() == Some(code))
}

/// Empties (TRUNCATE) every range partition holding rows whose transactions are all below
/// `horizon`, and drops the empty ones wholly below the ids handed out. Returns None
/// when another instance took the pruning lock.
async fn remove_partitions(
    client: &mut deadpool_postgres::Client,
    horizon: &str,
    retention: Duration,
    partitioning: Partitioning,
) -> anyhow::Result<Option<Removed>> {
    let lock_timeout = partitioning.lock_timeout.as_millis();
    let next = next_id(client).await?;
    let partitions: Vec<RangePartition> = client
        .query(
            "select partition::text, upper from changecast.journal_partitions
             where not is_default and coalesce(lower < $1, true)
             order by lower nulls first",
            &[&next],
        )
        .await?
        .iter()
        .map(|row| RangePartition {
            name: row.get(0),
            upper: row.get(1),
        })
        .collect();
    let mut removed = Removed {
        rows: 0,
        to_delete_from: vec!["changecast.change_log_default".to_owned()],
    };
    for partition in partitions {
        let name = &partition.name;
        // The xid index answers both; rows of transactions still running are invisible
        // here, which is why the check is made again under the partition's lock below.
        let row = client
            .query_one(
                &format!(
                    "select exists (select 1 from {name} where xid >= $1::text::xid8),
                            exists (select 1 from {name} where xid < $1::text::xid8)"
                ),
                &[&horizon],
            )
            .await?;
        let (kept, prunable): (bool, bool) = (row.get(0), row.get(1));
        if kept {
            if prunable && !filled_long_ago(client, partition.upper, retention).await? {
                removed.to_delete_from.push(name.clone());
            }
            continue;
        }
        if prunable {
            let rows: i64 = client
                .query_one(&format!("select count(*) from {name}"), &[])
                .await?
                .get(0);
            let tx = client.transaction().await?;
            if !lock(&tx).await? {
                return Ok(None);
            }
            // TRUNCATE locks only this partition (ACCESS EXCLUSIVE), never the parent:
            // writers of other partitions go on. A writer that wrote here and has not
            // committed holds ROW EXCLUSIVE on it until it ends, so the lock is not
            // granted: give up within `lock_timeout` rather than queue every later
            // reader of this partition behind a long transaction.
            let truncated = async {
                tx.batch_execute(&format!(
                    "set local lock_timeout = '{lock_timeout}ms';
                     lock table {name} in access exclusive mode"
                ))
                .await?;
                let kept: bool = tx
                    .query_one(
                        &format!(
                            "select exists (select 1 from {name} where xid >= $1::text::xid8)"
                        ),
                        &[&horizon],
                    )
                    .await?
                    .get(0);
                if kept {
                    return Ok(false);
                }
                tx.batch_execute(&format!("truncate {name}")).await?;
                Ok(true)
            }
            .await;
            match truncated {
                Ok(true) => {
                    tx.commit().await?;
                    removed.rows += rows as u64;
                }
                Ok(false) => {
                    // A transaction that had not committed at the first look wrote here.
                    drop(tx);
                    removed.to_delete_from.push(name.clone());
                    continue;
                }
                Err(error) if lost_race(&error) => {
                    tracing::debug!(partition = name, ?error, "not truncated this time");
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        if partition.upper.is_some_and(|upper| upper <= next)
            && drop_partition(client, name, lock_timeout).await?
        {
            return Ok(None);
        }
    }
    Ok(Some(removed))
}

/// Drops the partition `name` if it is empty: true when another instance took the
/// pruning lock. DROP locks the parent (and the DEFAULT partition) ACCESS EXCLUSIVE, on
/// every PostgreSQL version, so it waits at most `lock_timeout` for them: behind a long
/// writer it gives up, and the empty partition stays until a later run.
async fn drop_partition(
    client: &mut deadpool_postgres::Client,
    name: &str,
    lock_timeout: u128,
) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    if !lock(&tx).await? {
        return Ok(true);
    }
    // Emptiness was judged without a lock, where a writer's uncommitted rows are
    // invisible (and after a TRUNCATE, a writer may have written since). A writer holds
    // ROW EXCLUSIVE on the parent until it ends, so once the parent's lock is held every
    // row written here is committed and visible: look again before dropping.
    let dropped = async {
        tx.batch_execute(&format!(
            "set local lock_timeout = '{lock_timeout}ms';
             lock table changecast.change_log in access exclusive mode"
        ))
        .await?;
        let empty: bool = tx
            .query_one(&format!("select not exists (select 1 from {name})"), &[])
            .await?
            .get(0);
        if !empty {
            return Ok(false);
        }
        tx.batch_execute(&format!("drop table {name}")).await?;
        Ok(true)
    }
    .await;
    match dropped {
        Ok(true) => tx.commit().await?,
        Ok(false) => {
            tracing::debug!(partition = name, "not dropped this time: it holds rows");
        }
        Err(error) if lost_race(&error) => {
            tracing::debug!(partition = name, ?error, "not dropped this time");
        }
        Err(error) => return Err(error.into()),
    }
    Ok(false)
}

/// Deletes the rows of `partition` whose transactions are below `horizon`, in batches;
/// returns how many, or None when another instance took the pruning lock.
async fn delete_rows(
    client: &mut deadpool_postgres::Client,
    partition: &str,
    horizon: &str,
) -> anyhow::Result<Option<u64>> {
    let mut total = 0u64;
    loop {
        let tx = client.transaction().await?;
        if !lock(&tx).await? {
            return Ok(None);
        }
        let deleted = tx
            .execute(
                &format!(
                    "delete from {partition}
                     where id in (select id from {partition}
                                  where xid < $1::text::xid8 limit $2)"
                ),
                &[&horizon, &BATCH_ROWS],
            )
            .await?;
        tx.commit().await?;
        total += deleted;
        if deleted < BATCH_ROWS as u64 {
            return Ok(Some(total));
        }
    }
}

/// Creates partitions until those created reach [`AHEAD`] spans past the ids handed out.
/// A span is the ids written in 1/[`PARTITIONS_PER_RETENTION`] of the retention, at the
/// rate observed since the oldest tick kept, and at least `min_span`.
async fn create_ahead(
    client: &mut deadpool_postgres::Client,
    retention: Duration,
    partitioning: Partitioning,
) -> anyhow::Result<()> {
    // ATTACH scans the DEFAULT partition under ACCESS EXCLUSIVE, blocking the writers it
    // takes and every reader of the journal: not while it holds more than a few rows
    // (after an outage). Its rows go by DELETE as they expire (see the module doc).
    let in_default: i64 = client
        .query_one(
            "select count(*) from (select 1 from changecast.change_log_default limit $1) s",
            &[&(partitioning.max_default_rows + 1)],
        )
        .await?
        .get(0);
    if in_default > partitioning.max_default_rows {
        tracing::warn!(
            rows_at_least = in_default,
            "no journal partition created: the DEFAULT partition holds too many rows to scan \
             under its lock (after an outage longer than the partitions created ahead); the \
             journal is pruned by DELETE until it holds fewer"
        );
        return Ok(());
    }
    let lock_timeout = partitioning.lock_timeout.as_millis();
    for _ in 0..MAX_CREATED_PER_RUN {
        let row = client
            .query_one(
                &format!(
                    "select {NEXT_ID},
                            (select max(upper) from changecast.journal_partitions),
                            (select max(id) from changecast.change_log_default),
                            (select ({NEXT_ID} - next_id)::float8
                                    / extract(epoch from clock_timestamp() - taken_at)::float8
                             from changecast.journal_ticks
                             where next_id is not null
                               and taken_at < clock_timestamp() - interval '1 second'
                             order by taken_at limit 1)"
                ),
                &[],
            )
            .await?;
        let next: i64 = row.get(0);
        let highest: Option<i64> = row.get(1);
        let in_default: Option<i64> = row.get(2);
        let rate = row.get::<_, Option<f64>>(3).unwrap_or(0.0).max(0.0);
        let span = span(rate, retention, partitioning.min_span);
        let covered = highest.unwrap_or(i64::MIN);
        if covered >= next.saturating_add(AHEAD * span) {
            return Ok(());
        }
        // Contiguous with the partitions created, unless the writers are (nearly) past
        // them: then a margin above the ids being handed out (the gap goes to the
        // DEFAULT partition), checked again below once no writer is at work. And above
        // whatever the DEFAULT partition holds: ATTACH checks that it holds no row of
        // the new range.
        let margin = ((rate * CATCH_UP_SECS) as i64).max(MIN_MARGIN).min(span);
        let lower = covered
            .max(next + margin)
            .max(in_default.map_or(i64::MIN, |id| id + 1));
        let upper = lower + span;
        let name = format!("changecast.change_log_p{lower}");
        let tx = client.transaction().await?;
        if !lock(&tx).await? {
            return Ok(());
        }
        let created = async {
            // Created standalone, then attached: CREATE TABLE ... PARTITION OF would lock
            // the parent ACCESS EXCLUSIVE, blocking readers too. ATTACH takes SHARE UPDATE
            // EXCLUSIVE on it and ACCESS EXCLUSIVE on the new (empty) table and the
            // DEFAULT partition. Writers route their rows with the partitions they knew
            // when their statement began (their transaction, if it already wrote here),
            // and PostgreSQL checks a row routed to the DEFAULT partition against its
            // bounds as they are once its lock is granted: a writer that began before
            // the ATTACH committed would have its rows in the new range refused there,
            // failing the user's statement. So, the table created, the pruner takes
            // SHARE ROW EXCLUSIVE on the parent (what ATTACH needs and more), which waits
            // for every writer of the journal to end and holds new ones back until the
            // partition is attached, not readers; with no writer at work, the ids
            // handed out stand still, and the range is checked against them.
            tx.batch_execute(&format!(
                "set local lock_timeout = '{lock_timeout}ms';
                 create table {name} (like changecast.change_log including all);
                 lock table changecast.change_log in share row exclusive mode"
            ))
            .await?;
            let row = tx
                .query_one(
                    &format!(
                        "select {NEXT_ID}, (select max(id) from changecast.change_log_default)"
                    ),
                    &[],
                )
                .await?;
            let next: i64 = row.get(0);
            let in_default: Option<i64> = row.get(1);
            if next > lower || in_default.is_some_and(|id| id >= lower) {
                // The writers passed the margin meanwhile: next run.
                return Ok(false);
            }
            tx.batch_execute(&format!(
                "alter table changecast.change_log attach partition {name}
                     for values from ({lower}) to ({upper})"
            ))
            .await?;
            Ok::<_, tokio_postgres::Error>(true)
        }
        .await;
        match created {
            Ok(true) => {
                tx.commit().await?;
                tracing::debug!(
                    partition = name,
                    lower,
                    upper,
                    "created a journal partition"
                );
            }
            Ok(false) => {
                tracing::debug!(
                    partition = name,
                    "not created this time: the writers passed its lower bound"
                );
                return Ok(());
            }
            // A statement_timeout may cancel the DEFAULT partition's scan.
            Err(error) if lost_race(&error) || error.code() == Some(&SqlState::QUERY_CANCELED) => {
                if covered < next.saturating_add(span) {
                    tracing::warn!(
                        ?error,
                        "no journal partition created this time (a lock was not granted \
                         within lock_timeout: a writer of the journal stayed open, say): once \
                         the writers pass the partitions, rows go to the DEFAULT partition \
                         and are pruned by DELETE"
                    );
                } else {
                    tracing::debug!(?error, "no journal partition created this time");
                }
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Ids per partition: those written at `rate` (per second) in 1/[`PARTITIONS_PER_RETENTION`]
/// of `retention`, at least `min_span`.
fn span(rate: f64, retention: Duration, min_span: i64) -> i64 {
    let span = rate * retention.as_secs_f64() / f64::from(PARTITIONS_PER_RETENTION);
    (span.min(i64::MAX as f64 / 4.0) as i64)
        .max(min_span)
        .max(1)
}

fn rand_u16() -> u16 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).ok();
    u16::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(retention: &str, configured: &str) -> Duration {
        let parse = |text| crate::config::parse_duration(text).unwrap();
        super::interval(parse(configured), parse(retention))
    }

    #[test]
    fn the_interval_scales_down_with_a_short_retention() {
        assert_eq!(interval("24h", "60s"), Duration::from_secs(60));
        assert_eq!(interval("10m", "60s"), Duration::from_secs(30));
        assert_eq!(interval("2s", "60s"), Duration::from_millis(100));
        assert_eq!(interval("0s", "60s"), MIN_INTERVAL);
        assert_eq!(interval("24h", "0s"), MIN_INTERVAL);
    }

    #[test]
    fn a_partition_spans_an_eighth_of_the_retention_at_the_observed_rate() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(span(100.0, hours(8), 10), 360_000);
        assert_eq!(span(0.0, hours(24), MIN_SPAN), MIN_SPAN);
        assert_eq!(span(0.001, hours(24), MIN_SPAN), MIN_SPAN);
        assert_eq!(span(f64::INFINITY, hours(24), 10), 1 << 61);
    }
}
