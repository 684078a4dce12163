//! The tailer: follows the journal in commit order and hands each change to the hub.
//!
//! It owns the LISTEN connection. On every wake-up it takes a snapshot and reads the
//! rows whose transactions committed since the previous one, page by page, so nothing
//! waits for a long-running writer and nothing committed in between is skipped. When
//! the connection drops it reconnects with backoff; the next batch then simply spans
//! the outage, so catch-up needs no code of its own.
//!
//! Under contention it stops waiting for wake-ups. A wake-up costs the writer a place in
//! the queue for the NOTIFY commit lock; while changes arrive, the tailer looks at that
//! queue every few milliseconds, and once writers are seen waiting in it most of the
//! time it releases the doorbell (see `doorbell`): writers skip NOTIFY, and the tailer
//! reads batch after batch, each one coalescing everything committed meanwhile. Below
//! that point wake-ups cost writers next to nothing and deliver sooner than any poll, so
//! a busy but uncontended journal keeps them; and when the queue stays while draining,
//! other NOTIFYs in the writers' transactions hold the lock, so draining would only delay
//! delivery, and the tailer gives it up for a while. When the rate falls to half of what
//! it was when draining began, or the journal goes quiet, it requests the doorbell again
//! and reads once more; writers that did not ring may still be committing, so it polls a
//! few times at growing intervals, and reads once more when the doorbell is granted
//! (they have all ended then).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::doorbell::{self, Doorbell};
use super::{Journal, NewRows, PgSnapshot, Published, TailStatements};
use crate::backoff::Backoff;
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
/// The change rate is measured over windows this long.
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// Below this rate (changes/s) writers rarely meet at the NOTIFY lock: no sampling.
const SAMPLE_ABOVE_RATE: f64 = 100.0;
/// While busy, the queue on the NOTIFY lock is sampled at most this often ...
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// ... and draining starts when at least this many of the last [`SAMPLES`] samples saw a
/// writer waiting: the lock is then busy most of the time, so commits wait for each
/// other's WAL flush instead of sharing one.
const QUEUED_SAMPLES_TO_DRAIN: u32 = 4;
const SAMPLES: u32 = 8;
/// While draining, a read that found fewer changes than this is followed by a pause of
/// [`DRAIN_PAUSE`] rather than the next read at once: under load every read then
/// coalesces a millisecond's commits, instead of the reads competing with the writers for
/// the database's CPU a few rows at a time.
const DRAIN_READ_AGAIN_FROM: usize = 100;
/// While draining, the pause after a read that found few changes or none ...
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
/// ... and how many such reads in a row end the draining.
const QUIET_READS_TO_STOP_DRAINING: u32 = 20;
/// Draining also ends when the rate falls below this share of the rate when it began:
/// the load that caused the queue is gone (and if it comes back, so does the queue).
const STOP_DRAINING_BELOW_SHARE: f64 = 0.5;
/// Draining must empty the queue: sampled again once the doorbell has been released this
/// long (for writers that rang just before it to commit), a queue still there means
/// other NOTIFYs in the writers' transactions hold the lock. Skipping ours then only
/// delays delivery, so the tailer waits for wake-ups and does not try again for
/// [`HOLD_OFF_AFTER_NO_EFFECT`].
const SETTLE_BEFORE_SAMPLING_DRAIN: Duration = Duration::from_millis(50);
const HOLD_OFF_AFTER_NO_EFFECT: Duration = Duration::from_secs(30);
/// Draining ends after this long anyway, to look at the lock again: a queue caused by a
/// moment's stall (a checkpoint's flushes) must not keep a steady, uncontended load on
/// polls for good. If writers still queue, draining starts again within [`SAMPLES`]
/// samples.
const DRAIN_AT_MOST: Duration = Duration::from_secs(5);
/// After draining, polls for writers that skipped ringing just before the doorbell was
/// requested start this soon and double up to [`POLL_INTERVAL`].
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
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut connected_before = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = timeout(QUERY_TIMEOUT, self.connect()) => attempt,
            };
            let (connection, mut doorbell) = match attempt {
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
            match self.follow(&connection, &mut doorbell, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    self.ready.send_replace(false);
                    tracing::warn!(%error, "listener lost; reconnecting");
                }
            }
        }
    }

    /// The LISTEN connection, and the doorbell's (a connection of its own).
    async fn connect(&self) -> Result<(ListenConnection, Doorbell), tokio_postgres::Error> {
        Ok((
            listener::connect(&self.pg).await?,
            Doorbell::connect(&self.pg).await?,
        ))
    }

    /// Publishes batch after batch while writers commit, and waits for a wake-up when
    /// they don't, until a connection fails or shutdown.
    async fn follow(
        &self,
        connection: &ListenConnection,
        doorbell: &mut Doorbell,
        shutdown: &CancellationToken,
    ) -> Result<(), Lost> {
        let client = &connection.client;
        // Writers ring from now on, but those that skipped it while the previous
        // connection drained may still be committing: the first batch reads what they
        // committed so far, the short polls and the grant the rest.
        doorbell.request();
        self.metrics.draining.set(0);
        // Parsed and planned once per connection, not for every batch: at a batch per
        // commit, planning would be most of what a batch costs PostgreSQL.
        let statements = bounded(Journal::prepare_tail(client)).await?;
        let mut pace = Pace::new(Instant::now());
        // When the notification that woke us arrived: where delivery latency starts.
        let mut woke_at = None;
        let doorbell_lost = doorbell.lost.clone();
        // While draining: the next transaction id when the doorbell was released.
        let mut released_at = 0;
        loop {
            if shutdown.is_cancelled() {
                // Dropping the doorbell's connection releases its lock.
                return Ok(());
            }
            if connection.lost.is_cancelled() || doorbell_lost.is_cancelled() {
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
            let mut step = pace.after_batch(rows, Instant::now());
            if step == Step::Sample {
                let queued = bounded(doorbell::writers_queued(
                    client,
                    &statements.queued,
                    pace.draining.then_some(released_at),
                ))
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
                _ = connection.wake.notified() => woke_at = Some(Instant::now()),
                // Every writer that did not ring has ended: read what they wrote.
                granted = doorbell.granted() => granted?,
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
                // A failover also changes the journal's identity (its timeline): follow it
                // now, or the next batch would cut everyone off a second time.
                self.journal.follow(&journal_id);
                self.hub.publish(Vec::new(), Published::complete(next));
                self.hub.cut_off_everyone();
                return Ok(Batch::Published { rows: 0 });
            }
            if self.journal.follow(&journal_id) {
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
    /// Busy: look whether writers queue on the NOTIFY lock, and tell
    /// [`Pace::after_sample`].
    Sample,
    /// Writers queue on the NOTIFY lock: release the doorbell, read again.
    StartDraining,
    /// Draining and the last read found many changes: read again at once.
    ReadAgain,
    /// Draining and the last read found few changes or none: read again after this pause.
    Pause(Duration),
    /// Draining, and quiet or much calmer, or draining did not empty the queue
    /// (`had_effect` false): request the doorbell, then read once more.
    StopDraining { had_effect: bool },
    /// Wait for a wake-up, or poll after this long.
    Wait(Duration),
}

/// The tailer's pace: when to drain, when to wait, how soon to poll. Pure (time is
/// passed in), so the rules are tested without a database or a clock.
struct Pace {
    draining: bool,
    /// When the doorbell was released.
    drain_started: Instant,
    /// This drain has been seen to empty the queue: no more samples until it ends.
    drain_confirmed: bool,
    /// The rate when draining began.
    drain_rate: f64,
    /// No draining before this (the last one did not empty the queue).
    hold_off_until: Option<Instant>,
    quiet_reads: u32,
    /// Changes counted since `window_start` ...
    window_start: Instant,
    window_rows: usize,
    /// ... and the rate (changes/s) over the last complete window.
    rate: f64,
    /// The last samples of the NOTIFY lock's queue, newest in the lowest bit: set when a
    /// writer was waiting; `samples` of them count (since the mode last changed).
    queued: u32,
    samples: u32,
    last_sample: Instant,
    /// What to do after the pending sample, unless the sample changes the mode.
    after_sample: Step,
    next_poll: Duration,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace {
            draining: false,
            drain_started: now,
            drain_confirmed: false,
            drain_rate: 0.0,
            hold_off_until: None,
            quiet_reads: 0,
            window_start: now,
            window_rows: 0,
            rate: 0.0,
            queued: 0,
            samples: 0,
            last_sample: now,
            after_sample: Step::Wait(POLL_INTERVAL),
            // A connection lost while draining left writers skipping NOTIFY until the
            // doorbell was requested again: poll soon at first, as after draining.
            next_poll: FIRST_POLL_AFTER_DRAINING,
        }
    }

    fn after_batch(&mut self, rows: usize, now: Instant) -> Step {
        self.window_rows += rows;
        let elapsed = now.saturating_duration_since(self.window_start);
        let window_done = elapsed >= RATE_WINDOW;
        if window_done {
            self.rate = self.window_rows as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_rows = 0;
        }
        if !self.busy() {
            // Samples from an earlier burst say nothing about the next one.
            self.samples = 0;
        }
        let step = if self.draining {
            let calmer = window_done && self.rate < self.drain_rate * STOP_DRAINING_BELOW_SHARE;
            if calmer || now.saturating_duration_since(self.drain_started) >= DRAIN_AT_MOST {
                return self.stop_draining(now, true);
            }
            if rows >= DRAIN_READ_AGAIN_FROM {
                self.quiet_reads = 0;
                Step::ReadAgain
            } else if rows > 0 {
                self.quiet_reads = 0;
                Step::Pause(DRAIN_PAUSE)
            } else {
                self.quiet_reads += 1;
                if self.quiet_reads >= QUIET_READS_TO_STOP_DRAINING {
                    return self.stop_draining(now, true);
                }
                Step::Pause(DRAIN_PAUSE)
            }
        } else if rows > 0 {
            // Writers who committed meanwhile rang (their wake-up is stored): no poll
            // needed, but after draining keep the short polls going.
            Step::Wait(self.next_poll)
        } else {
            let poll = self.next_poll;
            self.next_poll = (self.next_poll * 2).min(POLL_INTERVAL);
            Step::Wait(poll)
        };
        if !self.sample_due(now) {
            return step;
        }
        self.after_sample = step;
        Step::Sample
    }

    /// `queued`: whether a writer was waiting for the NOTIFY lock.
    fn after_sample(&mut self, queued: bool, now: Instant) -> Step {
        self.last_sample = now;
        self.queued = (self.queued << 1) | u32::from(queued);
        self.samples = (self.samples + 1).min(SAMPLES);
        let recent = self.queued & ((1 << SAMPLES) - 1);
        let after = std::mem::replace(&mut self.after_sample, Step::Wait(POLL_INTERVAL));
        if self.samples < SAMPLES {
            return after;
        }
        if recent.count_ones() < QUEUED_SAMPLES_TO_DRAIN {
            // Draining emptied the queue: sampling it again only costs (pg_locks takes
            // every lock-table partition's lock, which the writers need too).
            self.drain_confirmed = self.draining;
            return after;
        }
        if self.draining {
            // We do not ring, yet writers still queue: others' NOTIFYs hold the lock.
            self.hold_off_until = Some(now + HOLD_OFF_AFTER_NO_EFFECT);
            return self.stop_draining(now, false);
        }
        self.draining = true;
        self.drain_started = now;
        self.drain_confirmed = false;
        self.samples = 0;
        self.quiet_reads = 0;
        self.drain_rate = self.rate.max(self.partial_rate(now)).max(SAMPLE_ABOVE_RATE);
        Step::StartDraining
    }

    /// The doorbell is released: writers stop ringing from `now` on.
    fn marked_draining(&mut self, now: Instant) {
        self.drain_started = now;
        self.drain_confirmed = false;
        self.samples = 0;
    }

    fn stop_draining(&mut self, now: Instant, had_effect: bool) -> Step {
        self.draining = false;
        self.samples = 0;
        self.next_poll = FIRST_POLL_AFTER_DRAINING;
        self.last_sample = now;
        Step::StopDraining { had_effect }
    }

    fn sample_due(&self, now: Instant) -> bool {
        if !self.busy() || now.saturating_duration_since(self.last_sample) < SAMPLE_EVERY {
            return false;
        }
        if self.draining {
            !self.drain_confirmed
                && now.saturating_duration_since(self.drain_started) >= SETTLE_BEFORE_SAMPLING_DRAIN
        } else {
            self.hold_off_until.is_none_or(|until| now >= until)
        }
    }

    /// Whether changes arrive fast enough for writers to meet at the NOTIFY lock.
    fn busy(&self) -> bool {
        let window_so_far = self.window_rows as f64 / RATE_WINDOW.as_secs_f64();
        self.rate >= SAMPLE_ABOVE_RATE || window_so_far >= SAMPLE_ABOVE_RATE
    }

    /// The rate in the window so far, once it is half over (earlier, a backlog read at
    /// its start would count as a rate several times too high).
    fn partial_rate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW / 2 {
            return 0.0;
        }
        self.window_rows as f64 / elapsed.as_secs_f64()
    }
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Lost> {
    Ok(timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| Lost::Timeout)??)
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

    /// Drives a [`Pace`] on a clock of its own, against a model of the NOTIFY lock.
    struct Clock {
        pace: Pace,
        now: Instant,
        /// Writers commit fast enough to queue on the lock when they all ring ...
        crowded: bool,
        /// ... and their transactions also NOTIFY on their own, so they ring even while
        /// changecast drains.
        others_ring: bool,
    }

    impl Clock {
        fn new() -> Self {
            let now = Instant::now();
            Clock {
                pace: Pace::new(now),
                now,
                crowded: false,
                others_ring: false,
            }
        }

        fn batch(&mut self, rows: usize, after: Duration) -> Step {
            self.now += after;
            self.pace.after_batch(rows, self.now)
        }

        /// A batch, and the sample it may ask for answered by the model.
        fn step(&mut self, rows: usize, after: Duration) -> Step {
            match self.batch(rows, after) {
                Step::Sample => {
                    let queued = self.crowded && (self.others_ring || !self.pace.draining);
                    self.pace.after_sample(queued, self.now)
                }
                step => step,
            }
        }

        /// Batches of `rows` every `every` for `span`: the steps that change the mode.
        fn run(&mut self, rows: usize, every: Duration, span: Duration) -> Vec<Step> {
            let mut steps = Vec::new();
            let mut elapsed = Duration::ZERO;
            while elapsed < span {
                elapsed += every;
                let step = self.step(rows, every);
                if !matches!(step, Step::Wait(_) | Step::ReadAgain | Step::Pause(_)) {
                    steps.push(step);
                }
            }
            steps
        }
    }

    const MS: Duration = Duration::from_millis(1);
    const CALMER: Step = Step::StopDraining { had_effect: true };
    const NO_EFFECT: Step = Step::StopDraining { had_effect: false };

    #[test]
    fn a_busy_journal_keeps_its_wake_ups_while_writers_do_not_queue() {
        let mut clock = Clock::new();
        // Just connected: short polls first (writers that skipped ringing while a lost
        // connection drained may still be committing), doubling up to the safety net.
        assert_eq!(clock.batch(1, MS), Step::Wait(FIRST_POLL_AFTER_DRAINING));
        for _ in 0..20 {
            if clock.batch(0, 50 * MS) == Step::Wait(POLL_INTERVAL) {
                break;
            }
        }
        // A trickle: wait for wake-ups, polling as a safety net; nothing sampled.
        assert_eq!(clock.batch(1, MS), Step::Wait(POLL_INTERVAL));
        assert_eq!(clock.batch(0, 50 * MS), Step::Wait(POLL_INTERVAL));
        // 1,000 changes/s: the lock is sampled, but writers are rarely seen waiting.
        assert_eq!(clock.run(1, MS, 200 * MS), vec![]);
        let mut sampled = 0;
        for i in 0..2000 {
            if clock.batch(1, MS) == Step::Sample {
                sampled += 1;
                // One sample in four sees a writer waiting: not enough.
                assert_eq!(
                    clock.pace.after_sample(i % 4 == 0, clock.now),
                    Step::Wait(POLL_INTERVAL)
                );
            }
        }
        // At most one sample per SAMPLE_EVERY.
        assert!((350..=400).contains(&sampled), "{sampled} samples in 2 s");
    }

    #[test]
    fn drains_while_writers_queue_and_waits_again_when_calm_or_quiet() {
        let mut clock = Clock::new();
        clock.crowded = true;
        // Writers queue on the lock: draining starts within the samples it takes, and
        // stays, since the queue is gone once changecast stops ringing.
        assert_eq!(clock.run(3, MS, 500 * MS), vec![Step::StartDraining]);
        assert!(clock.pace.draining);
        // Once draining is seen to empty the queue, the lock is not sampled again.
        assert!((0..100).all(|_| clock.batch(3, MS) != Step::Sample));
        // Draining: reads back to back while changes come, pauses briefly when not (in
        // a fresh rate window, so only the quiet reads can end it).
        assert_eq!(clock.step(300, 100 * MS), Step::ReadAgain);
        assert_eq!(clock.step(10, MS), Step::Pause(DRAIN_PAUSE));
        for _ in 1..QUIET_READS_TO_STOP_DRAINING {
            assert_eq!(clock.step(0, MS), Step::Pause(DRAIN_PAUSE));
        }
        assert_eq!(clock.step(0, MS), CALMER);
        // Then short polls, doubling, for writers that skipped ringing just before.
        let mut polls = Vec::new();
        while let Step::Wait(poll) = clock.step(0, MS) {
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

        // Draining again at 3,000/s; the rate rising meanwhile keeps it draining ...
        assert_eq!(clock.run(3, MS, 200 * MS), vec![Step::StartDraining]);
        assert_eq!(clock.run(8, MS, 500 * MS), vec![]);
        // ... and it falling below half of 3,000/s ends it without a quiet spell.
        clock.crowded = false;
        assert_eq!(clock.run(1, MS, 300 * MS), vec![CALMER]);
        assert!(!clock.pace.draining);
    }

    #[test]
    fn draining_that_leaves_the_queue_is_given_up_for_a_while() {
        let mut clock = Clock::new();
        clock.crowded = true;
        clock.others_ring = true;
        // The writers' own NOTIFYs keep them queued while changecast drains: draining
        // is tried once, then given up ...
        assert_eq!(
            clock.run(2, MS, 500 * MS),
            vec![Step::StartDraining, NO_EFFECT]
        );
        // ... for HOLD_OFF_AFTER_NO_EFFECT, while wake-ups deliver ...
        let held = HOLD_OFF_AFTER_NO_EFFECT - 500 * MS;
        assert_eq!(clock.run(2, MS, held), vec![]);
        // ... then tried again.
        assert_eq!(
            clock.run(2, MS, 500 * MS),
            vec![Step::StartDraining, NO_EFFECT]
        );
        // Once only changecast rings, draining empties the queue and stays (but for a
        // look at the lock every DRAIN_AT_MOST, which finds the queue again).
        clock.others_ring = false;
        let steps = clock.run(2, MS, HOLD_OFF_AFTER_NO_EFFECT + 500 * MS);
        assert_eq!(steps.first(), Some(&Step::StartDraining));
        assert!(!steps.contains(&NO_EFFECT), "{steps:?}");
        assert!(clock.pace.draining);
    }

    #[test]
    fn a_queue_that_was_only_a_moment_does_not_keep_the_journal_draining() {
        let mut clock = Clock::new();
        // A stall makes writers queue for a moment: draining starts ...
        clock.crowded = true;
        assert_eq!(clock.run(1, MS, 200 * MS), vec![Step::StartDraining]);
        // ... and the steady load (no quiet reads, no fall in rate) no longer queues.
        clock.crowded = false;
        assert_eq!(clock.run(1, MS, DRAIN_AT_MOST), vec![CALMER]);
        // Back on wake-ups, and staying there.
        assert_eq!(clock.run(1, MS, 10 * DRAIN_AT_MOST), vec![]);
        assert!(!clock.pace.draining);
    }

    #[test]
    fn samples_from_an_earlier_burst_do_not_count() {
        let mut clock = Clock::new();
        // A short burst with writers queued: seven samples, one short of deciding.
        let mut samples = 0;
        while samples < SAMPLES - 1 {
            if clock.batch(5, MS) == Step::Sample {
                assert_ne!(
                    clock.pace.after_sample(true, clock.now),
                    Step::StartDraining
                );
                samples += 1;
            }
        }
        // A quiet spell, then a burst whose first sample sees a writer waiting: the
        // earlier samples are forgotten, so it does not drain on one sample.
        clock.batch(0, 500 * MS);
        clock.batch(0, 500 * MS);
        let mut step = clock.batch(50, MS);
        assert_eq!(step, Step::Sample);
        step = clock.pace.after_sample(true, clock.now);
        assert!(matches!(step, Step::Wait(_)), "{step:?}");
    }
}
