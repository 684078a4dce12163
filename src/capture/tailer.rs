//! The tailer: the capture source that follows the journal through the LISTEN connection.
//!
//! On every wake-up it takes a snapshot and publishes the rows whose transactions
//! committed since the previous one (see `publish`), so nothing waits for a long-running
//! writer and nothing committed in between is skipped. When the connection drops it
//! reconnects with backoff; the next batch then simply spans the outage, so catch-up
//! needs no code of its own. Under contention it stops waiting for wake-ups and drains
//! the journal instead: when is the call of its `Pace`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::connection::{bounded, Lost, QUERY_TIMEOUT};
use super::doorbell::{self, Doorbell, QueueProbe};
use super::listener::{self, ListenConnection};
use super::pace::{Pace, Step, HOLD_OFF_AFTER_NO_EFFECT};
use super::publish::{Batch, Publisher};
use super::standby::{self, ReadAt, Standby};
use crate::backoff::Backoff;
use crate::journal::{IdFloor, Journal, Mark, TailConnection, TailStatements};
use crate::metrics::Metrics;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Tailer {
    pub pg: tokio_postgres::Config,
    /// A hot standby to read the journal from (`CHANGECAST_READ_DATABASE_URL`); LISTEN,
    /// the doorbell and the WAL position batches wait for stay on `pg`.
    pub read: Option<tokio_postgres::Config>,
    /// How long a batch may wait for the standby before it is read on the primary
    /// (`read_fall_back`) or the instance is not ready.
    pub read_max_lag: Duration,
    pub read_fall_back: bool,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// True while connected and caught up: what `/readyz` reports.
    pub ready: watch::Sender<bool>,
}

impl Tailer {
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut connected_before = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = timeout(QUERY_TIMEOUT, self.connect()) => attempt,
            };
            let (connection, mut doorbell, standby) = match attempt {
                Ok(Ok(connected)) => connected,
                failed => {
                    match failed {
                        Ok(Err(error)) => {
                            tracing::warn!(?error, retry_in = ?backoff.next_delay(), "cannot connect the listener")
                        }
                        _ => {
                            tracing::warn!(retry_in = ?backoff.next_delay(), "connecting the listener timed out")
                        }
                    }
                    if backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if connected_before {
                self.metrics.db_reconnects.inc();
            }
            connected_before = true;
            backoff.reset();
            tracing::info!("listener connected; catching up from the journal");
            match self
                .follow(&connection, &mut doorbell, standby.as_ref(), &shutdown)
                .await
            {
                Ok(()) => return,
                Err(_) if shutdown.is_cancelled() => return,
                Err(error) => {
                    self.ready.send_replace(false);
                    tracing::warn!(%error, "listener lost; reconnecting");
                }
            }
        }
    }

    /// The LISTEN connection, the doorbell's (a connection of its own), and the
    /// standby's when the journal is read there.
    async fn connect(
        &self,
    ) -> Result<(ListenConnection, Doorbell, Option<Standby>), tokio_postgres::Error> {
        let standby = match &self.read {
            Some(read) => Some(Standby::connect(read).await?),
            None => None,
        };
        Ok((
            listener::connect(&self.pg).await?,
            Doorbell::connect(&self.pg).await?,
            standby,
        ))
    }

    /// Publishes batch after batch while writers commit, and waits for a wake-up when
    /// they don't, until a connection fails or shutdown.
    async fn follow(
        &self,
        connection: &ListenConnection,
        doorbell: &mut Doorbell,
        standby: Option<&Standby>,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let client = &connection.client;
        // Where the journal is read: the standby, else the LISTEN connection itself.
        let reader = standby.map_or(client, |standby| &standby.client);
        let standby_lost = standby.map_or_else(CancellationToken::new, |s| s.lost.clone());
        let waiting = standby::Limits {
            max_lag: self.read_max_lag,
            fall_back: self.read_fall_back,
            metrics: &self.metrics,
            ready: &self.ready,
        };
        // Writers ring from now on, but those that skipped it while the previous
        // connection drained may still be committing: the first batch reads what they
        // committed so far, the short polls and the grant the rest.
        doorbell.request();
        self.metrics.draining.set(0);
        // Parsed and planned once per connection, not for every batch: at a batch per
        // commit, planning would be most of what a batch costs PostgreSQL.
        let reader_connection = if standby.is_some() {
            TailConnection::MaybePooled
        } else {
            TailConnection::Own
        };
        let statements = bounded(Journal::prepare_tail(reader, reader_connection)).await?;
        // The same statements on the primary, for batches read there while the standby
        // lags (prepared when first needed).
        let mut on_primary: Option<TailStatements> = None;
        let probe = bounded(QueueProbe::prepare(client)).await?;
        let mut pace = Pace::new(Instant::now());
        // When the notification that woke us arrived: where delivery latency starts.
        let mut woke_at = None;
        let doorbell_lost = doorbell.lost.clone();
        // While draining: the next transaction id when the doorbell was released.
        let mut released_at = 0;
        // Taken on the primary; they hold for reads there and on a standby replaying it.
        let mut floor = IdFloor::default();
        loop {
            if shutdown.is_cancelled() {
                // Dropping the doorbell's connection releases its lock.
                return Ok(());
            }
            if connection.lost.is_cancelled()
                || doorbell_lost.is_cancelled()
                || standby_lost.is_cancelled()
            {
                return Err(Lost::Closed);
            }
            // On a standby: once it has replayed what the primary had written by now,
            // so the batch holds every commit a wake-up (or a poll) stands for.
            // `marks_hold`: the primary's id floor marks bound what the batch reads.
            let (batch_reader, batch_statements, mark, marks_hold) = match standby {
                Some(standby) => {
                    let read_at = standby
                        .read_at(client, &connection.lost, &waiting, shutdown)
                        .await?;
                    self.publisher
                        .journal
                        .standby_lagging(matches!(read_at, ReadAt::Primary(_)));
                    match read_at {
                        ReadAt::Standby(mark) => (reader, &statements, Some(mark), true),
                        ReadAt::Primary(mark) => {
                            if on_primary.is_none() {
                                on_primary = Some(
                                    bounded(Journal::prepare_tail(client, TailConnection::Own))
                                        .await?,
                                );
                            }
                            let primary_statements =
                                on_primary.as_ref().expect("BUG: prepared just now");
                            (client, primary_statements, Some(mark), true)
                        }
                        // A server of its own now: the primary's marks say nothing of
                        // its ids.
                        ReadAt::Promoted => (reader, &statements, None, false),
                    }
                }
                None => (reader, &statements, None, true),
            };
            if !marks_hold {
                floor.forget();
            }
            if let Some(mark) = &mark {
                // Replays and snapshots on the standby wait for it to get this far (a
                // batch read on the primary publishes what the standby may lack yet).
                self.publisher
                    .journal
                    .standby_reached(&mark.insert_lsn, mark.position());
            }
            let now = Instant::now();
            if marks_hold && floor.mark_due(now) {
                match bounded(Mark::take(client)).await {
                    Ok(taken) => floor.record(taken, now),
                    // Without marks every read scans every partition: slower, no less
                    // complete. Tried again at the next mark.
                    Err(Lost::Db(error)) if !client.is_closed() => {
                        tracing::debug!(?error, "cannot take an id floor mark");
                        floor.record(None, now);
                    }
                    Err(lost) => return Err(lost),
                }
            }
            let rows = match self
                .publisher
                .publish_batch(
                    batch_reader,
                    batch_statements,
                    shutdown,
                    woke_at.take(),
                    (mark.as_ref(), &mut floor),
                )
                .await?
            {
                // Not caught up yet: a batch from before the connection was lost.
                Batch::Resumed => continue,
                Batch::Published { rows } => rows,
            };
            self.ready.send_replace(true);
            floor.read(rows);
            let mut step = pace.after_batch(rows, Instant::now());
            if step == Step::Sample {
                let queued =
                    bounded(probe.writers_queued(client, pace.draining.then_some(released_at)))
                        .await?;
                step = pace.after_sample(queued, Instant::now());
            }
            let wait = match step {
                Step::StartDraining => {
                    tracing::debug!("writers queue on the NOTIFY lock: draining without wake-ups");
                    bounded(doorbell.release()).await?;
                    // Writers stop ringing only from now: those with an older id may
                    // still queue to commit their wake-up.
                    released_at = bounded(doorbell::next_transaction_id(client)).await?;
                    pace.marked_draining(Instant::now());
                    self.metrics.draining.set(1);
                    continue;
                }
                Step::ReadAgain => continue,
                Step::Pause(pause) => pause,
                Step::StopDraining { had_effect } => {
                    doorbell.request();
                    self.metrics.draining.set(0);
                    if had_effect {
                        tracing::debug!("journal calmer: waiting for wake-ups again");
                    } else {
                        tracing::info!(
                            "writers keep queueing on the NOTIFY lock while changecast does not \
                             ring (their own NOTIFYs hold it): waiting for wake-ups again, \
                             not draining for {HOLD_OFF_AFTER_NO_EFFECT:?}"
                        );
                        self.metrics.drains_without_effect.inc();
                    }
                    // Writers ring again: read once more for those that did not.
                    continue;
                }
                Step::Wait(poll) => poll,
                Step::Sample => unreachable!("a sample's outcome is a step of its own"),
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection.lost.cancelled() => return Err(Lost::Closed),
                _ = doorbell_lost.cancelled() => return Err(Lost::Closed),
                _ = standby_lost.cancelled() => return Err(Lost::Closed),
                _ = connection.wake.notified() => woke_at = Some(Instant::now()),
                // Every writer that did not ring has ended: read what they wrote.
                granted = doorbell.granted() => granted?,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
