//! Reading the journal from a hot standby (`CHANGECAST_READ_DATABASE_URL`).
//!
//! Wake-ups still come from the primary (NOTIFY does not reach a standby), and a
//! notification may arrive before the standby has replayed the commit it announces: a
//! batch read there at once would miss it, and nothing would wake the tailer for it
//! again. So before every batch the tailer takes the primary's snapshot and WAL insert
//! position (one trivial statement on its LISTEN connection) and waits until the
//! standby has replayed at least that far ([`Standby::caught_up`]): every transaction
//! that snapshot sees has its commit replayed there, and the batch reads their rows on
//! the standby by the primary's snapshot. Positions (and so cursors) stay the primary's
//! snapshots: a standby's own `pg_current_snapshot()` lists no running transaction.
//! WAL inserted but not yet flushed is not sent until something flushes it. The WAL
//! writer flushes asynchronous commits within three `wal_writer_delay`s; records after
//! the last commit (say, a pruning record on an idle primary) it leaves in a partial
//! page. So when the standby has replayed everything flushed and still waits that long,
//! one transaction with a synchronous commit flushes the rest, at most once a second.
//! It takes a transaction id: in PostgreSQL before 17 nothing cheaper callable from SQL
//! flushes WAL (`pg_logical_emit_message` flushes only from 17 on, `pg_switch_wal`
//! starts a new segment file, a checkpoint writes every dirty page).
//!
//! Past `CHANGECAST_READ_MAX_LAG` the instance stops waiting: it reads each batch on
//! the primary instead, by the same primary snapshot, until the standby catches up
//! within a short wait (`CHANGECAST_READ_FALLBACK=primary`, the default); or it keeps waiting
//! and reports itself not ready until the standby catches up (`wait`). Either way the
//! batch holds every commit. A read server that has left recovery (promoted) is a
//! primary of its own: nothing to wait for, and its own journal identity (with its new
//! timeline) counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::connection::{bounded, Lost};
use crate::journal::{Journal, PrimaryMark};
use crate::metrics::Metrics;

/// The first pause while the standby is behind, doubled up to [`MAX_PAUSE`]: replay
/// usually trails by well under a millisecond.
const FIRST_PAUSE: Duration = Duration::from_micros(200);
const MAX_PAUSE: Duration = Duration::from_millis(50);
/// While batches are read on the primary, how long one waits for the standby before it
/// is read there too: a standby that has caught up trails the newest WAL by about
/// this much under steady writes, and gets the batches back.
const RETURN_WAIT: Duration = Duration::from_millis(20);

/// On the standby: whether it is still one, and how many bytes of WAL it has yet to
/// replay to reach `$1` (0 or less: it is there). A standby that has replayed nothing
/// yet counts as infinitely behind.
const REPLAYED: &str = "select pg_is_in_recovery(),
        case when pg_is_in_recovery()
             then coalesce(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()),
                           9223372036854775807)::bigint
             else 0::bigint end,
        case when pg_is_in_recovery()
             then coalesce(pg_wal_lsn_diff($2::text::pg_lsn, pg_last_wal_replay_lsn()),
                           9223372036854775807)::bigint
             else 0::bigint end";

/// How many `wal_writer_delay`s the standby may sit at the primary's flush position
/// before the tailer flushes the rest: the WAL writer's own bound for asynchronous
/// commits.
const FLUSH_AFTER_WAL_WRITER_DELAYS: u32 = 3;
/// Fewest seconds between two flushes the tailer forces.
const FORCED_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The primary's `wal_writer_delay`, in milliseconds.
const WAL_WRITER_DELAY: &str =
    "select setting::bigint from pg_settings where name = 'wal_writer_delay'";
/// A transaction that writes a commit record and flushes WAL up to it (whatever the
/// server's `synchronous_commit`); it takes a transaction id and writes nothing else.
const FLUSH: &str = "begin; set local synchronous_commit = on; \
     select pg_current_xact_id(); commit";

/// The tailer's connection to the standby, where it reads the journal.
pub struct Standby {
    pub client: Client,
    /// Cancelled when the connection is gone.
    pub lost: CancellationToken,
    replayed: Statement,
    /// How long the standby may wait at the primary's flush position (read from the
    /// primary when first needed).
    flush_after: std::sync::OnceLock<Duration>,
    /// When the tailer last forced a flush.
    forced_at: std::sync::Mutex<Option<Instant>>,
    /// Batches are read on the primary: the standby lagged past the bound and has not
    /// caught up since.
    falling_back: AtomicBool,
}

/// Where the tailer reads a batch.
pub(super) enum ReadAt {
    /// On the standby, which has replayed the primary's mark.
    Standby(PrimaryMark),
    /// On the primary, by the mark's snapshot: the standby lags past the bound.
    Primary(PrimaryMark),
    /// On the read server as a primary of its own: it has left recovery (promoted).
    Promoted,
}

/// How long the wait may last before the instance reports itself not ready, and where
/// it reports.
pub(super) struct Limits<'a> {
    pub max_lag: Duration,
    /// Past `max_lag`, read the primary instead of waiting.
    pub fall_back: bool,
    pub metrics: &'a Metrics,
    pub ready: &'a watch::Sender<bool>,
}

impl Standby {
    pub async fn connect(
        config: &tokio_postgres::Config,
    ) -> Result<Standby, tokio_postgres::Error> {
        let mut config = config.clone();
        config.application_name("changecast:standby-reader");
        let (client, connection) = config.connect(NoTls).await?;
        let lost = CancellationToken::new();
        let guard = lost.clone().drop_guard();
        tokio::spawn(async move {
            let _lost = guard;
            if let Err(error) = connection.await {
                tracing::warn!(?error, "standby connection failed");
            }
        });
        let replayed = client.prepare(REPLAYED).await?;
        Ok(Standby {
            client,
            lost,
            replayed,
            flush_after: std::sync::OnceLock::new(),
            forced_at: std::sync::Mutex::new(None),
            falling_back: AtomicBool::new(false),
        })
    }

    /// How long the standby may sit at the primary's flush position before a flush is
    /// forced: three `wal_writer_delay`s of `primary`.
    async fn flush_after(&self, primary: &Client) -> Result<Duration, Lost> {
        if let Some(after) = self.flush_after.get() {
            return Ok(*after);
        }
        let row = bounded(primary.query_one(WAL_WRITER_DELAY, &[])).await?;
        let delay = Duration::from_millis(row.get::<_, i64>(0).max(1) as u64);
        Ok(*self
            .flush_after
            .get_or_init(|| delay * FLUSH_AFTER_WAL_WRITER_DELAYS))
    }

    /// Whether a forced flush may run now (none within [`FORCED_FLUSH_EVERY`]); if so,
    /// it counts as run.
    fn may_force_flush(&self) -> bool {
        let mut forced_at = crate::sync::lock(&self.forced_at);
        if forced_at.is_some_and(|at| at.elapsed() < FORCED_FLUSH_EVERY) {
            return false;
        }
        *forced_at = Some(Instant::now());
        true
    }

    /// Where to read the next batch so that it holds everything the primary
    /// (`primary`, the LISTEN connection) had written when this was called: waits until
    /// the standby has replayed that far, at most `limits.max_lag` when falling back is
    /// allowed. While batches are read on the primary, each waits for the standby for
    /// [`RETURN_WAIT`] only.
    pub(super) async fn read_at(
        &self,
        primary: &Client,
        primary_lost: &CancellationToken,
        limits: &Limits<'_>,
        shutdown: &CancellationToken,
    ) -> Result<ReadAt, Lost> {
        let mark = bounded(Journal::primary_mark(primary)).await?;
        let began = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut reported = false;
        let mut flushed = false;
        loop {
            let row = bounded(
                self.client
                    .query_one(&self.replayed, &[&mark.insert_lsn, &mark.flushed]),
            )
            .await?;
            let (in_recovery, behind, behind_flushed): (bool, i64, i64) =
                (row.get(0), row.get(1), row.get(2));
            limits.metrics.standby_lag_bytes.set(behind.max(0));
            if !in_recovery {
                self.stop_falling_back(limits);
                return Ok(ReadAt::Promoted);
            }
            if behind > 0
                && behind_flushed <= 0
                && !flushed
                && began.elapsed() >= self.flush_after(primary).await?
                && self.may_force_flush()
            {
                // Everything flushed is replayed and the WAL writer has not flushed
                // the rest: it may never be sent unless something flushes it.
                flushed = true;
                bounded(primary.batch_execute(FLUSH)).await?;
            }
            if behind <= 0 {
                limits
                    .metrics
                    .standby_waits
                    .observe(began.elapsed().as_secs_f64());
                if reported {
                    tracing::info!("the standby caught up with the primary");
                }
                self.stop_falling_back(limits);
                return Ok(ReadAt::Standby(mark));
            }
            if self.falling_back.load(Ordering::Relaxed) && began.elapsed() >= RETURN_WAIT {
                return Ok(ReadAt::Primary(mark));
            }
            if limits.fall_back && began.elapsed() >= limits.max_lag {
                self.falling_back.store(true, Ordering::Relaxed);
                limits.metrics.standby_fallback.set(1);
                tracing::warn!(
                    behind_bytes = behind,
                    waited = ?began.elapsed(),
                    "the standby (CHANGECAST_READ_DATABASE_URL) lags the primary by more \
                     than CHANGECAST_READ_MAX_LAG: reading the journal on the primary until \
                     it catches up"
                );
                return Ok(ReadAt::Primary(mark));
            }
            if !reported && began.elapsed() >= limits.max_lag {
                reported = true;
                limits.ready.send_replace(false);
                tracing::warn!(
                    behind_bytes = behind,
                    waited = ?began.elapsed(),
                    "the standby (CHANGECAST_READ_DATABASE_URL) lags the primary by more \
                     than CHANGECAST_READ_MAX_LAG: not ready until it catches up"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Lost::Closed),
                _ = primary_lost.cancelled() => return Err(Lost::Closed),
                _ = self.lost.cancelled() => return Err(Lost::Closed),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    fn stop_falling_back(&self, limits: &Limits<'_>) {
        if self.falling_back.swap(false, Ordering::Relaxed) {
            limits.metrics.standby_fallback.set(0);
            tracing::info!(
                "the standby caught up with the primary: reading the journal there again"
            );
        }
    }
}
