//! Retention: deletes journal rows older than the retention period, in small batches,
//! with at most one instance pruning at a time, and records the newest pruned
//! transaction so that cursors which may have needed those rows get `cursor_expired`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::tailer::sleep_or_shutdown;
use crate::metrics::Metrics;

/// Arbitrary but fixed: the advisory lock that makes one instance the pruner.
pub const PRUNE_LOCK: i64 = 0x6368_616e_6765_6302;
/// Rows deleted per transaction: keeps each delete short.
const BATCH_ROWS: i64 = 5000;

pub struct Pruner {
    pub pool: deadpool_postgres::Pool,
    pub retention: Duration,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
}

impl Pruner {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // Jitter spreads several instances' attempts apart.
            let jitter = Duration::from_millis(u64::from(rand_u16()) % 1000);
            if sleep_or_shutdown(self.interval + jitter, &shutdown).await {
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

/// Deletes every journal row older than `retention`; returns how many. Skips (returning
/// 0) while another instance holds the pruning lock.
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
        // Ids grow with time, so the oldest rows are at the start of the primary key:
        // delete within an id window from there, never scanning the whole table.
        let row = tx
            .query_one(
                "with doomed as (
                     delete from changecast.change_log
                     where id <= (select min(id) from changecast.change_log) + $2
                       and occurred_at < now() - make_interval(secs => $1)
                     returning xid
                 ),
                 newest as (
                     update changecast.journal_meta
                        set pruned_xid = greatest(pruned_xid, (select max(xid) from doomed))
                      where (select count(*) from doomed) > 0
                 )
                 select count(*) from doomed",
                &[&retention_secs, &(BATCH_ROWS - 1)],
            )
            .await?;
        tx.commit().await?;
        let deleted = row.get::<_, i64>(0) as u64;
        total += deleted;
        if deleted == 0 {
            return Ok(total);
        }
    }
}

fn rand_u16() -> u16 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).ok();
    u16::from_ne_bytes(bytes)
}
