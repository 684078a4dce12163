//! The tailer: follows the journal in commit order and hands each change to the hub.
//!
//! It owns the LISTEN connection. On every wake-up it takes a snapshot and reads the
//! rows whose transactions committed since the previous one, page by page, so nothing
//! waits for a long-running writer and nothing committed in between is skipped. When
//! the connection drops it reconnects with backoff; the next batch then simply spans
//! the outage, so catch-up needs no code of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{Journal, Published};
use crate::db::listener::{self, ListenConnection};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Rows read and published at a time.
const PAGE_ROWS: usize = 1000;
/// Reads even without a notification this often: a safety net, not the mechanism.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
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
        // When the notification that woke us arrived: where delivery latency starts.
        let mut woke_at = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if connection.lost.is_cancelled() {
                return Err(Lost::Closed);
            }
            match self
                .publish_batch(connection, shutdown, woke_at.take())
                .await?
            {
                // Not caught up yet: a batch from before the connection was lost.
                Batch::Resumed => continue,
                // Caught up to a snapshot taken on this connection; more may have
                // committed meanwhile, so look again at once.
                Batch::Published { rows } if rows > 0 => {
                    self.ready.send_replace(true);
                    continue;
                }
                // Nothing of ours committed (the snapshot moves with any transaction in
                // the cluster): wait for a notification rather than spin.
                Batch::Published { .. } | Batch::Nothing => self.ready.send_replace(true),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = connection.lost.cancelled() => return Err(Lost::Closed),
                _ = connection.wake.notified() => woke_at = Some(Instant::now()),
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Publishes one batch, page by page: the one a lost connection interrupted, or else
    /// every change committed up to a fresh snapshot.
    async fn publish_batch(
        &self,
        connection: &ListenConnection,
        shutdown: &CancellationToken,
        woke_at: Option<Instant>,
    ) -> Result<Batch, Lost> {
        let client = &connection.client;
        let mut published = self.hub.published();
        let mut outcome = if published.is_complete() {
            let now = bounded(Journal::current_snapshot(client)).await?;
            if now == published.prev {
                return Ok(Batch::Nothing);
            }
            published.next = now;
            published.through_id = 0;
            Batch::Published { rows: 0 }
        } else {
            Batch::Resumed
        };
        let batch = Published {
            through_id: i64::MAX,
            ..published.clone()
        };
        while !published.is_complete() && !shutdown.is_cancelled() {
            let page = bounded(self.journal.read_batch(
                client,
                &published.prev,
                &batch,
                published.through_id,
                PAGE_ROWS,
                woke_at,
            ))
            .await?;
            published = match page.last() {
                Some(last) if page.len() == PAGE_ROWS => Published {
                    through_id: last.id(),
                    ..published
                },
                _ => Published::complete(published.next),
            };
            self.metrics.events_received.inc_by(page.len() as u64);
            if let Batch::Published { rows } = &mut outcome {
                *rows += page.len();
            }
            self.hub.publish(page, published.clone());
        }
        Ok(outcome)
    }
}

/// What one call of `publish_batch` did.
enum Batch {
    /// Finished a batch begun before the connection was lost.
    Resumed,
    /// Published everything up to a snapshot it took: `rows` changes.
    Published { rows: usize },
    /// Nothing had committed since the last batch.
    Nothing,
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
