//! Retention: deletes journal rows whose transactions committed more than the retention
//! period ago, in small batches, with at most one instance pruning at a time, and records
//! the horizon below which rows may be gone, so cursors that may have needed them get
//! `cursor_expired`.
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

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::backoff::sleep_or_shutdown;
use crate::metrics::Metrics;

/// Arbitrary but fixed: the advisory lock that makes one instance the pruner.
pub const PRUNE_LOCK: i64 = 0x6368_616e_6765_6302;
/// Rows deleted per transaction: keeps each delete short.
const BATCH_ROWS: i64 = 5000;
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
        }
    }
}

/// Time between runs: the `configured` interval, but at most 1/[`RUNS_PER_RETENTION`] of
/// the `retention` and at least [`MIN_INTERVAL`].
pub fn interval(configured: Duration, retention: Duration) -> Duration {
    configured
        .min(retention / RUNS_PER_RETENTION)
        .max(MIN_INTERVAL)
}

/// Records a tick, then deletes every journal row whose transaction had committed before
/// the newest tick older than `retention`; returns how many rows. Skips (returning 0)
/// while another instance holds the pruning lock.
pub async fn prune(pool: &Pool, retention: Duration) -> anyhow::Result<u64> {
    let mut client = pool.get().await?;
    let retention_secs = retention.as_secs_f64();
    let mut total = 0u64;
    loop {
        let tx = client.transaction().await?;
        let locked: bool = tx
            .query_one("select pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(total);
        }
        if total == 0 {
            // One tick per pruning run; ticks older than the one in use are dropped.
            tx.execute(
                "insert into changecast.journal_ticks (taken_at, horizon)
                 values (clock_timestamp(), pg_snapshot_xmin(pg_current_snapshot()))
                 on conflict do nothing",
                &[],
            )
            .await?;
        }
        // Raise the recorded horizon first, in the same transaction as the deletion, so a
        // replay can never see rows missing without also seeing why.
        let deleted: i64 = tx
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
                 ),
                 doomed as (
                     delete from changecast.change_log
                     where id in (select id from changecast.change_log
                                  where xid < (select horizon from horizon)
                                  limit $2)
                     returning 1
                 )
                 select count(*) from doomed",
                &[&retention_secs, &BATCH_ROWS],
            )
            .await?
            .get(0);
        tx.commit().await?;
        total += deleted as u64;
        if deleted < BATCH_ROWS {
            return Ok(total);
        }
    }
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
}
