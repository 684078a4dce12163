//! Publishing into the hub: one batch at a time, page by page, each page with the
//! boundary it moves the hub to. A batch is every change committed between the boundary
//! and the database's present; a batch a lost connection interrupted is finished first.
//!
//! Three checks keep what the hub vouches for continuous: the database's transaction ids
//! must not go backwards (a restore, a failover to a lagging standby), the journal's
//! identity must not change (started over, a new timeline), and the journal must not be
//! pruned past the boundary (an outage longer than the retention). When one fails, live
//! subscribers are cut off and catch up from their own cursors, learning there whether
//! they must resync.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::connection::{bounded, Lost};
use crate::hub::Hub;
use crate::journal::{
    Entry, IdFloor, Journal, NewRows, Position, PrimaryMark, Published, TailStatements,
};
use crate::metrics::Metrics;
use crate::otel::Traces;
use crate::stats::Activity;

/// Rows read and published at a time.
const PAGE_ROWS: usize = 1000;
/// ... and at most this many bytes of row JSON (as stored) past a page's first row, so
/// a transaction of thousands of multi-MB rows is read a few at a time.
const PAGE_BYTES: usize = 16 * 1024 * 1024;
const PAGE_LIMITS: (usize, usize) = (PAGE_ROWS, PAGE_BYTES);
/// How often a paced batch looks whether its subscribers made room.
const PACE_POLL: Duration = Duration::from_millis(1);
/// How long a paced batch may wait for its subscribers whatever the tailer's own work on
/// it: on a busy machine a subscriber that keeps up may fall a moment behind a batch
/// whose pages the database served fast.
const PACE_GRACE: Duration = Duration::from_millis(250);

/// A batch of more than one page (a large transaction) is published no faster than its
/// tenants' slowest subscribers take it: each page goes out as their channels have room,
/// so they stay on the fan-out, where the batch is read from the journal once and
/// rendered once, instead of lagging and each reading it again on a catch-up. The
/// tailer waits at most as long as it worked on the batch (everyone else's changes in
/// the batch arrive at worst half as fast) or [`PACE_GRACE`], and stops waiting for the
/// rest of the batch
/// once it would wait longer: a subscriber that slow, or stalled, or replaying, lags
/// and catches up from the journal as it always could.
struct Pacing {
    started: Instant,
    waited: Duration,
    /// Given up for this batch.
    off: bool,
}

impl Pacing {
    fn new() -> Self {
        Pacing {
            started: Instant::now(),
            waited: Duration::ZERO,
            off: false,
        }
    }

    fn may_wait(&self) -> bool {
        let worked = self.started.elapsed().saturating_sub(self.waited);
        !self.off && self.waited < worked.max(PACE_GRACE)
    }
}

/// Hands batches of the journal to the hub.
pub struct Publisher {
    pub journal: Arc<Journal>,
    pub hub: Arc<Hub>,
    /// Every published entry is counted here, subscribers or not (`/v1/stats`).
    pub activity: Arc<Activity>,
    pub metrics: Arc<Metrics>,
    /// Traces of the reads that find sampled changes.
    pub traces: Traces,
}

/// What one call of `publish_batch` did.
pub(super) enum Batch {
    /// Finished a batch begun before the connection was lost.
    Resumed,
    /// Published everything up to a snapshot it took: `rows` changes.
    Published { rows: usize },
}

impl Publisher {
    /// Publishes one batch, page by page: the one a lost connection interrupted, or else
    /// every change committed up to a fresh snapshot (taken by the first page's read).
    /// `primary`: when `client` is a hot standby, the primary's mark it has replayed.
    /// `floor`: the marks that let a read on the primary skip older partitions.
    pub(super) async fn publish_batch(
        &self,
        client: &Client,
        statements: &TailStatements,
        shutdown: &CancellationToken,
        woke_at: Option<Instant>,
        (primary, floor): (Option<&PrimaryMark>, &mut IdFloor),
    ) -> Result<Batch, Lost> {
        let mut published = self.hub.published();
        let mut rows = 0;
        let mut pacing = Pacing::new();
        // The batch's next page, read while the one before went out.
        let mut ahead = None;
        let resumed = !published.is_complete();
        if !resumed {
            let read_at = self.traces.clock();
            let floor_id = floor.below(&published);
            self.metrics.tail_id_floor.set(floor_id.max(0));
            let NewRows {
                position: next,
                pruned_below,
                journal_id,
                entries: page,
                more,
            } = bounded(self.journal.read_new(
                client,
                statements,
                &published,
                PAGE_LIMITS,
                woke_at,
                primary,
                floor_id,
            ))
            .await?;
            if next.is_behind(published.settled()) {
                // The database is not the one we followed a moment ago: restored from a
                // backup, or a standby that lagged was promoted. Its new transactions
                // reuse ids our snapshot already counts as published, and would be
                // skipped. Follow it from its present; every live subscriber catches up
                // from its own cursor, and learns there whether it must resync.
                tracing::error!(
                    published_up_to = %published.settled(),
                    database_now_at = %next,
                    "the database's transaction ids went backwards (a restore or a failover?); \
                     every live subscriber catches up from its cursor"
                );
                self.metrics.xid_rewinds.inc();
                floor.forget();
                // A failover also changes the journal's identity (its timeline): follow it
                // now, or the next batch would cut everyone off a second time.
                self.journal.follow(&journal_id);
                self.publish(Vec::new(), Published::complete(next));
                self.hub.cut_off_everyone();
                return Ok(Batch::Published { rows: 0 });
            }
            if self.journal.follow(&journal_id) {
                floor.forget();
                // The journal was started over (another instance found the database
                // copied from elsewhere), or the database moved to a new timeline (a
                // standby was promoted): cursors minted before may count transactions
                // that never happened here. Live subscribers catch up and learn there
                // that they must resync.
                tracing::error!(
                    "the journal's identity changed (started over by another instance, or \
                     a failover to a new timeline); every live subscriber resyncs"
                );
                self.hub.cut_off_everyone();
            }
            if !published.settled().kept_after(pruned_below) {
                // Away longer than the retention (another instance pruned meanwhile):
                // rows committed since our last batch may be gone, so live subscribers
                // cannot be sure they missed nothing. Cut them all off the fan-out; each
                // catches up from its own cursor, and learns there whether it must resync.
                tracing::warn!(
                    %pruned_below,
                    "the journal was pruned past what this instance had published; \
                     every live subscriber catches up from its cursor"
                );
                self.metrics.journal_gaps.inc();
                self.hub.cut_off_everyone();
            }
            self.traces.journal_read(read_at, woke_at, &page);
            rows = page.len();
            self.metrics.events_received.inc_by(rows as u64);
            published = if more {
                // The next page is read while this one goes out: otherwise the
                // subscribers wait for PostgreSQL and PostgreSQL for the subscribers,
                // page after page.
                let after = published.begin_batch(next.clone(), &page, more);
                let (done, read) = tokio::join!(
                    self.publish_paced(page, published, Some(next), more, &mut pacing, shutdown),
                    self.read_page(client, statements, &after, woke_at),
                );
                ahead = Some(read?);
                done
            } else {
                let published = published.begin_batch(next, &page, more);
                self.publish(page, published.clone());
                published
            };
        }
        while !published.is_complete() && !shutdown.is_cancelled() {
            let (page, more) = match ahead.take() {
                Some(read) => read,
                None => {
                    self.read_page(client, statements, &published, woke_at)
                        .await?
                }
            };
            rows += page.len();
            self.metrics.events_received.inc_by(page.len() as u64);
            let after = published.continue_batch(&page, more);
            if after.is_complete() {
                published = self
                    .publish_paced(page, published, None, more, &mut pacing, shutdown)
                    .await;
            } else {
                let (done, read) = tokio::join!(
                    self.publish_paced(page, published, None, more, &mut pacing, shutdown),
                    self.read_page(client, statements, &after, woke_at),
                );
                published = done;
                ahead = Some(read?);
            }
        }
        Ok(if resumed {
            Batch::Resumed
        } else {
            Batch::Published { rows }
        })
    }

    /// The page of the batch in progress after `published`, and whether more follow.
    async fn read_page(
        &self,
        client: &Client,
        statements: &TailStatements,
        published: &Published,
        woke_at: Option<Instant>,
    ) -> Result<(Vec<Entry>, bool), Lost> {
        let read_at = self.traces.clock();
        let (page, more) =
            bounded(
                self.journal
                    .read_batch(client, statements, published, PAGE_LIMITS, woke_at),
            )
            .await?;
        self.traces.journal_read(read_at, woke_at, &page);
        Ok((page, more))
    }

    /// Publishes one page of a batch of several as its tenants' channels have room for
    /// it (see [`Pacing`]): in parts, each with the boundary through its last entry, so
    /// a subscriber joining in between learns exactly what it will receive live.
    /// `next`: the batch's end, when `page` is its first. Returns the boundary after it.
    async fn publish_paced(
        &self,
        mut page: Vec<Entry>,
        mut published: Published,
        mut next: Option<Position>,
        more: bool,
        pacing: &mut Pacing,
        shutdown: &CancellationToken,
    ) -> Published {
        loop {
            let mut fit = if pacing.off {
                page.len()
            } else {
                self.hub.fits(&page)
            };
            if fit == 0 && !page.is_empty() {
                if pacing.may_wait() && !shutdown.is_cancelled() {
                    let waiting = Instant::now();
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(PACE_POLL) => {}
                    }
                    pacing.waited += waiting.elapsed();
                    continue;
                }
                pacing.off = true;
                fit = page.len();
            }
            let rest = page.split_off(fit);
            let more = more || !rest.is_empty();
            published = match next.take() {
                Some(next) => published.begin_batch(next, &page, more),
                None => published.continue_batch(&page, more),
            };
            self.publish(page, published.clone());
            if rest.is_empty() {
                return published;
            }
            page = rest;
        }
    }

    /// The one output of capture: `page`, in journal order, and the boundary the hub
    /// moves to with it.
    fn publish(&self, page: Vec<Entry>, published: Published) {
        self.activity.record(&page);
        self.hub.publish(page, published);
    }
}
