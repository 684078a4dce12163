//! The tailer: follows the journal in commit order and hands each change to the hub.
//!
//! It owns the LISTEN connection. On every wake-up it takes a snapshot and reads the
//! rows whose transactions committed since the previous one, page by page, so nothing
//! waits for a long-running writer and nothing committed in between is skipped. When
//! the connection drops it reconnects with backoff; the next batch then simply spans
//! the outage, so catch-up needs no code of its own.
//!
//! Under load it stops waiting for wake-ups: once changes arrive faster than one batch
//! at a time, it marks itself draining (see `doorbell`), so writers skip NOTIFY and its
//! commit lock, and reads batch after batch, each one coalescing everything committed
//! meanwhile. When the journal goes quiet it clears the mark, reads once more, and polls
//! a few times at growing intervals for writers that saw the mark just before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::doorbell::{self, Doorbell};
use super::{Journal, NewRows, PgSnapshot, Published, TailStatements};
use crate::db::listener::{self, ListenConnection};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Rows read and published at a time.
const PAGE_ROWS: usize = 1000;
/// ... and at most this many bytes of row JSON (as stored) past a page's first row, so
/// a transaction of thousands of multi-MB rows is read a few at a time.
const PAGE_BYTES: usize = 16 * 1024 * 1024;
const PAGE_LIMITS: (usize, usize) = (PAGE_ROWS, PAGE_BYTES);
/// Reads even without a notification this often: a safety net, not the mechanism.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Changes per [`RATE_WINDOW`] above which the tailer drains instead of waiting for
/// wake-ups: 500/s. The NOTIFY commit lock caps commits at one WAL flush each (about
/// 1,000/s on a disk with 1 ms flushes), and a rate held down by that cap must still
/// be seen as load, so the threshold sits well below it.
const DRAIN_ABOVE_CHANGES: usize = 25;
const RATE_WINDOW: Duration = Duration::from_millis(50);
/// While draining, the pause after a read that found nothing ...
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
/// ... and how many such reads in a row end the draining.
const QUIET_READS_TO_STOP_DRAINING: u32 = 20;
/// After draining, polls for writers that saw the mark just before it was cleared start
/// this soon and double up to [`POLL_INTERVAL`].
const FIRST_POLL_AFTER_DRAINING: Duration = Duration::from_millis(1);
/// A query on the listener connection taking longer means the connection is dead.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Tailer {
    pub pg: tokio_postgres::Config,
    pub journal: Arc<Journal>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// True while connected and caught up: what `/readyz` reports.
    pub ready: watch::Sender<bool>,
    /// This instance's mark that tells writers whether to ring.
    pub doorbell: Doorbell,
}

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("database error: {0:?}")]
    Db(#[from] tokio_postgres::Error),
    #[error("query timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
}

impl Tailer {
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = timeout(QUERY_TIMEOUT, listener::connect(&self.pg)) => attempt,
            };
            let connection = match attempt {
                Ok(Ok(connection)) => connection,
                failed => {
                    match failed {
                        Ok(Err(error)) => {
                            tracing::warn!(?error, retry_in = ?backoff, "cannot connect the listener")
                        }
                        _ => {
                            tracing::warn!(retry_in = ?backoff, "connecting the listener timed out")
                        }
                    }
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if connected_before {
                self.metrics.db_reconnects.inc();
            }
            connected_before = true;
            backoff = BACKOFF_MIN;
            tracing::info!("listener connected; catching up from the journal");
            match self.follow(&connection, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    self.ready.send_replace(false);
                    tracing::warn!(%error, "listener lost; reconnecting");
                }
            }
        }
    }

    /// Publishes batch after batch while writers commit, and waits for a wake-up when
    /// they don't, until the connection fails or shutdown.
    async fn follow(
        &self,
        connection: &ListenConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let client = &connection.client;
        bounded(self.doorbell.register(client)).await?;
        // Parsed and planned once per connection, not for every batch: at a batch per
        // commit, planning would be most of what a batch costs PostgreSQL.
        let statements = bounded(Journal::prepare_tail(client)).await?;
        let mut pace = Pace::new();
        // When the notification that woke us arrived: where delivery latency starts.
        let mut woke_at = None;
        loop {
            if shutdown.is_cancelled() {
                // Best effort: a row left behind only costs writers a NOTIFY until
                // another instance forgets it.
                let _ = bounded(self.doorbell.leave(client)).await;
                return Ok(());
            }
            if connection.lost.is_cancelled() {
                return Err(Lost::Closed);
            }
            let rows = match self
                .publish_batch(connection, &statements, shutdown, woke_at.take())
                .await?
            {
                // Not caught up yet: a batch from before the connection was lost.
                Batch::Resumed => continue,
                Batch::Published { rows } => rows,
            };
            self.ready.send_replace(true);
            let wait = match pace.after_batch(rows) {
                Step::StartDraining => {
                    tracing::debug!("journal busy: draining without wake-ups");
                    bounded(self.doorbell.set_draining(client, true)).await?;
                    continue;
                }
                Step::ReadAgain => continue,
                Step::Pause(pause) => pause,
                Step::StopDraining => {
                    tracing::debug!("journal quiet: waiting for wake-ups again");
                    bounded(self.doorbell.set_draining(client, false)).await?;
                    // The mark is cleared: read once more for writers that saw it set.
                    continue;
                }
                Step::Wait(poll) => {
                    if pace.heartbeat_due() {
                        bounded(self.doorbell.heartbeat(client)).await?;
                    }
                    poll
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection.lost.cancelled() => return Err(Lost::Closed),
                _ = connection.wake.notified() => woke_at = Some(Instant::now()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes one batch, page by page: the one a lost connection interrupted, or else
    /// every change committed up to a fresh snapshot (taken by the first page's read).
    async fn publish_batch(
        &self,
        connection: &ListenConnection,
        statements: &TailStatements,
        shutdown: &CancellationToken,
        woke_at: Option<Instant>,
    ) -> Result<Batch, Lost> {
        let client = &connection.client;
        let mut published = self.hub.published();
        let mut rows = 0;
        let resumed = !published.is_complete();
        if !resumed {
            let NewRows {
                snapshot: next,
                pruned_below,
                journal_id,
                entries: page,
                more,
            } = bounded(self.journal.read_new(
                client,
                statements,
                &published.prev,
                PAGE_LIMITS,
                woke_at,
            ))
            .await?;
            if went_backwards(&published.prev, &next) {
                // The database is not the one we followed a moment ago: restored from a
                // backup, or a standby that lagged was promoted. Its new transactions
                // reuse ids our snapshot already counts as published, and would be
                // skipped. Follow it from its present; every live subscriber catches up
                // from its own cursor, and learns there whether it must resync.
                tracing::error!(
                    published_up_to = published.prev.xmax,
                    database_now_at = next.xmax,
                    "the database's transaction ids went backwards (a restore or a failover?); \
                     every live subscriber catches up from its cursor"
                );
                self.metrics.xid_rewinds.inc();
                self.hub.publish(Vec::new(), Published::complete(next));
                self.hub.cut_off_everyone();
                return Ok(Batch::Published { rows: 0 });
            }
            if self.journal.follow(&journal_id) {
                // Another instance started the journal over (it found the database
                // copied from elsewhere): cursors minted before name a journal that is
                // gone. Live subscribers catch up and learn there that they must resync.
                tracing::error!(
                    "the journal was started over (by another instance); \
                     every live subscriber resyncs"
                );
                self.hub.cut_off_everyone();
            }
            if !published.prev.sees_all_below(pruned_below) {
                // Away longer than the retention (another instance pruned meanwhile):
                // rows committed since our last batch may be gone, so live subscribers
                // cannot be sure they missed nothing. Cut them all off the fan-out; each
                // catches up from its own cursor, and learns there whether it must resync.
                tracing::warn!(
                    pruned_below,
                    "the journal was pruned past what this instance had published; \
                     every live subscriber catches up from its cursor"
                );
                self.metrics.journal_gaps.inc();
                self.hub.cut_off_everyone();
            }
            published = match page.last() {
                Some(last) if more => Published {
                    prev: published.prev,
                    next,
                    through_id: last.id(),
                },
                _ => Published::complete(next),
            };
            rows = page.len();
            self.metrics.events_received.inc_by(rows as u64);
            self.hub.publish(page, published.clone());
        }
        let batch = Published {
            through_id: i64::MAX,
            ..published.clone()
        };
        while !published.is_complete() && !shutdown.is_cancelled() {
            let (page, more) = bounded(self.journal.read_batch(
                client,
                statements,
                &published.prev,
                &batch,
                published.through_id,
                PAGE_LIMITS,
                woke_at,
            ))
            .await?;
            published = match page.last() {
                Some(last) if more => Published {
                    through_id: last.id(),
                    ..published
                },
                _ => Published::complete(published.next),
            };
            rows += page.len();
            self.metrics.events_received.inc_by(page.len() as u64);
            self.hub.publish(page, published.clone());
        }
        Ok(if resumed {
            Batch::Resumed
        } else {
            Batch::Published { rows }
        })
    }
}

/// Whether the database's transaction ids went backwards between the snapshot the
/// tailer published up to and a fresh one: a healthy database's `xmax` (the next id it
/// will assign) never decreases.
fn went_backwards(published: &PgSnapshot, now: &PgSnapshot) -> bool {
    now.xmax < published.xmax
}

/// What one call of `publish_batch` did.
enum Batch {
    /// Finished a batch begun before the connection was lost.
    Resumed,
    /// Published everything up to a snapshot it took: `rows` changes.
    Published { rows: usize },
}

/// What the tailer does after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Changes arrive faster than wake-ups are worth: mark draining, read again.
    StartDraining,
    /// Draining and the last read found changes: read again at once.
    ReadAgain,
    /// Draining and the last read found nothing: read again after this pause.
    Pause(Duration),
    /// Draining, and quiet for a while: clear the mark, then read once more.
    StopDraining,
    /// Wait for a wake-up, or poll after this long.
    Wait(Duration),
}

/// The tailer's pace: when to drain, when to wait, how soon to poll. Pure, so the rules
/// are tested without a database.
struct Pace {
    draining: bool,
    quiet_reads: u32,
    window_start: Instant,
    window_rows: usize,
    next_poll: Duration,
    last_heartbeat: Instant,
}

impl Pace {
    fn new() -> Self {
        Pace {
            draining: false,
            quiet_reads: 0,
            window_start: Instant::now(),
            window_rows: 0,
            next_poll: POLL_INTERVAL,
            last_heartbeat: Instant::now(),
        }
    }

    fn after_batch(&mut self, rows: usize) -> Step {
        if self.window_start.elapsed() >= RATE_WINDOW {
            self.window_start = Instant::now();
            self.window_rows = 0;
        }
        self.window_rows += rows;
        if self.draining {
            if rows > 0 {
                self.quiet_reads = 0;
                return Step::ReadAgain;
            }
            self.quiet_reads += 1;
            if self.quiet_reads < QUIET_READS_TO_STOP_DRAINING {
                return Step::Pause(DRAIN_PAUSE);
            }
            self.draining = false;
            self.next_poll = FIRST_POLL_AFTER_DRAINING;
            self.window_start = Instant::now();
            self.window_rows = 0;
            return Step::StopDraining;
        }
        if self.window_rows > DRAIN_ABOVE_CHANGES {
            self.draining = true;
            self.quiet_reads = 0;
            return Step::StartDraining;
        }
        if rows > 0 {
            // Writers who committed meanwhile rang (their wake-up is stored): no poll
            // needed, but after draining keep the short polls going.
            return Step::Wait(self.next_poll);
        }
        let poll = self.next_poll;
        self.next_poll = (self.next_poll * 2).min(POLL_INTERVAL);
        Step::Wait(poll)
    }

    fn heartbeat_due(&mut self) -> bool {
        if self.last_heartbeat.elapsed() < doorbell::HEARTBEAT {
            return false;
        }
        self.last_heartbeat = Instant::now();
        true
    }
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Lost> {
    Ok(timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| Lost::Timeout)??)
}

/// Sleeps for `duration`; true when shutdown came first.
pub async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_going_backwards_is_told_from_progress() {
        let snapshot = |text: &str| text.parse::<PgSnapshot>().unwrap();
        let published = snapshot("100:110:102,105");
        // Progress, or nothing new: not a rewind.
        for now in ["100:110:102,105", "104:110:105", "110:110:", "120:135:130"] {
            assert!(!went_backwards(&published, &snapshot(now)), "{now}");
        }
        // A restore or a lagging standby's promotion: ids the tailer has counted as
        // published will be assigned again.
        for now in ["100:109:", "90:95:91", "3:3:"] {
            assert!(went_backwards(&published, &snapshot(now)), "{now}");
        }
    }

    #[test]
    fn drains_under_load_and_waits_again_when_quiet() {
        let mut pace = Pace::new();
        // A trickle: wait for wake-ups, polling as a safety net.
        assert_eq!(pace.after_batch(1), Step::Wait(POLL_INTERVAL));
        assert_eq!(pace.after_batch(0), Step::Wait(POLL_INTERVAL));
        // A burst within one rate window: drain.
        assert_eq!(pace.after_batch(DRAIN_ABOVE_CHANGES), Step::StartDraining);
        assert_eq!(pace.after_batch(5), Step::ReadAgain);
        for _ in 1..QUIET_READS_TO_STOP_DRAINING {
            assert_eq!(pace.after_batch(0), Step::Pause(DRAIN_PAUSE));
        }
        assert_eq!(pace.after_batch(0), Step::StopDraining);
        // Then short polls, doubling, for writers that saw the mark before it cleared.
        let mut polls = Vec::new();
        while let Step::Wait(poll) = pace.after_batch(0) {
            polls.push(poll);
            if poll == POLL_INTERVAL {
                break;
            }
        }
        assert_eq!(polls[0], FIRST_POLL_AFTER_DRAINING);
        assert!(polls
            .windows(2)
            .all(|w| w[1] == (w[0] * 2).min(POLL_INTERVAL)));
        assert_eq!(*polls.last().unwrap(), POLL_INTERVAL);
    }
}
