//! One subscriber's task state, what all subscriptions share, and how a subscriber hands
//! items to its transport: every item through one bounded queue, waiting while the
//! transport is busy, stopping when it is gone, the service shuts down or the token
//! expires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outbound::{Delivered, Outbound, Resync};
use super::places::{Limits, Places};
use super::replay_gate::ReplayGate;
use super::replay_pages::{self, SharedPages};
use crate::hub::Hub;
use crate::journal::{Entry, Journal, Published, ResyncReason};
use crate::metrics::Metrics;
use crate::otel::Traces;
use crate::selection::{Decision, Selection};
use crate::tenant::TenantId;

/// How long an expired subscriber's transport may take to make room for `AuthExpired`.
const AUTH_EXPIRED_SEND: Duration = Duration::from_secs(5);

/// What subscriptions share: the fan-out, the journal to replay from, and the limits.
pub struct Subscriptions {
    pub hub: Arc<Hub>,
    pub journal: Arc<Journal>,
    pub pool: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    /// Bounds concurrent journal replays, overall and per tenant.
    pub replay_gate: ReplayGate,
    /// Replay pages read once for every subscriber replaying the same range.
    pub(super) replay_pages: SharedPages,
    /// Subscriber places, counted against the limits.
    pub places: Arc<Places>,
    pub shutdown: CancellationToken,
    /// Every subscription task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Traces of replays, and of sampled changes' socket writes.
    pub traces: Traces,
}

impl Subscriptions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        journal: Arc<Journal>,
        pool: deadpool_postgres::Pool,
        metrics: Arc<Metrics>,
        replay_gate: ReplayGate,
        limits: Limits,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Subscriptions {
            hub,
            journal,
            pool,
            metrics,
            replay_gate,
            replay_pages: replay_pages::shared_pages(),
            places: Arc::new(Places::new(limits)),
            shutdown,
            tracker,
            traces: Traces::off(),
        }
    }

    /// The same, with their replays and deliveries traced into `traces`.
    pub fn traced(self, traces: Traces) -> Self {
        Subscriptions { traces, ..self }
    }
}

/// One subscriber's task: where its items go, and what it may receive until when.
pub(super) struct Subscription {
    pub(super) services: Arc<Subscriptions>,
    pub(super) tenant: TenantId,
    pub(super) selection: Selection,
    pub(super) tx: mpsc::Sender<Outbound>,
    pub(super) expires: Instant,
    /// The transaction of the last resync marker sent (0, no transaction's id: none).
    /// Its other markers (`TRUNCATE a, b`, rows of unknown events) are not sent: one
    /// `resync` has the client refetch all its state, and a resume from its cursor, which
    /// replays the transaction, must not bring another, whose cursor would bring the
    /// first back in turn.
    pub(super) resynced_xid: AtomicU64,
}

impl Subscription {
    /// Sends one journal entry as the selection decides: a row change or application
    /// event as the subscriber receives it, a resync marker as a `resync`.
    pub(super) async fn deliver(&self, entry: &Entry) -> Delivered {
        self.send_decided(entry, self.selection.decide(entry)).await
    }

    /// Sends what the selection decided of `entry`: one resync per transaction.
    pub(super) async fn send_decided(&self, entry: &Entry, decision: Decision) -> Delivered {
        let sent = match decision {
            Decision::Skip => return Delivered::Filtered,
            Decision::Send(delivery) => self.send(Outbound::Event(delivery)).await,
            Decision::Resync { reason, cursor } => {
                if self.resynced_xid.swap(entry.xid(), Ordering::Relaxed) == entry.xid() {
                    return Delivered::Filtered;
                }
                let cursor = self.cursor_past_published(entry.xid()).unwrap_or(cursor);
                self.send_resync(reason, cursor).await
            }
        };
        if sent {
            Delivered::Sent
        } else {
            Delivered::Gone
        }
    }

    /// Tells the client to refetch its state and resume from where live delivery starts.
    pub(super) async fn resync(&self, reason: ResyncReason, upto: &Published) -> bool {
        // Live delivery starts after `upto`'s settled position: a cursor there resumes
        // there (repeating at most the page the tailer was in the middle of).
        let cursor = self
            .services
            .journal
            .cursor_at(&self.tenant, upto.settled());
        self.send_resync(reason, cursor).await
    }

    /// The cursor of a marker's resync: past everything published, when that includes
    /// the marker's transaction `xid`. The client refetches all its state on a resync,
    /// after it, so the refetch holds all that; and a resume from there replays
    /// neither the marker's transaction nor a concurrent one (unseen by the marker's
    /// own cursor) whose marker, resumed from in turn, would bring this one back. None
    /// (the marker's own cursor) while the batch holding the marker is being published;
    /// for a subscriber of application events, which no refetch brings back; and with a
    /// standby, where a refetch may not hold yet all that was published.
    fn cursor_past_published(&self, xid: u64) -> Option<String> {
        if self.selection.wants_app_events() || self.services.journal.reads_standby() {
            return None;
        }
        let published = self.services.hub.published();
        let at = published.settled();
        at.includes_transaction(xid)
            .then(|| self.services.journal.cursor_at(&self.tenant, at))
    }

    /// Counts `xid`'s resync markers as sent (0: none): the replay of a cursor that
    /// names one of them sends none.
    pub(super) fn resynced(&self, xid: u64) {
        self.resynced_xid.store(xid, Ordering::Relaxed);
    }

    pub(super) async fn send_resync(&self, reason: ResyncReason, cursor: String) -> bool {
        self.services
            .metrics
            .resyncs
            .with_label_values(&[reason.as_str()])
            .inc();
        self.send(Outbound::Resync(Box::new(Resync { reason, cursor })))
            .await
    }

    /// The last item of an expired subscriber. Waits for room behind queued changes (a
    /// bounded while), so the client learns why the stream ends and fetches a new token.
    pub(super) async fn auth_expired(&self) {
        let _ = tokio::time::timeout(AUTH_EXPIRED_SEND, self.tx.send(Outbound::AuthExpired)).await;
    }

    /// Queues one item, waiting while the transport is busy; false once it is gone, the
    /// service shuts down or the token expires (then after telling the client so).
    async fn send(&self, item: Outbound) -> bool {
        // A replay sends a page at a time: stop within it too.
        if self.services.shutdown.is_cancelled() {
            return false;
        }
        if Instant::now() >= self.expires {
            Box::pin(self.auth_expired()).await;
            return false;
        }
        // Usually there is room: nothing to wait for.
        let item = match self.tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        // Boxed: waiting for room is the rare case, and every idle subscriber's task would
        // otherwise carry room for its state (memory per subscriber).
        Box::pin(self.send_waiting(item)).await
    }

    async fn send_waiting(&self, item: Outbound) -> bool {
        tokio::select! {
            biased;
            _ = self.services.shutdown.cancelled() => false,
            _ = tokio::time::sleep_until(self.expires) => {
                self.auth_expired().await;
                false
            }
            sent = self.tx.send(item) => sent.is_ok(),
        }
    }
}
