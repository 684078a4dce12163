//! What a subscription hands its transport, and how: every item through one bounded
//! queue, waiting while the transport is busy, stopping when it is gone, the service
//! shuts down or the token expires.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Subscription;
use crate::journal::{Entry, Published, ResyncReason};
use crate::selection::Decision;
use crate::wire::Delivery;

/// How long an expired subscriber's transport may take to make room for `AuthExpired`.
const AUTH_EXPIRED_SEND: Duration = Duration::from_secs(5);

/// What a transport writes.
#[derive(Debug)]
pub enum Outbound {
    /// A row change or an application event, as this subscriber receives it.
    Event(Delivery),
    /// The client must refetch its state; the stream continues live from `cursor`, which
    /// replaces the client's last event id (so its next reconnect does not resync again).
    /// After a truncation of a table of a type the subscriber follows, `cursor` is the
    /// truncation's own.
    /// (Boxed: a rare item, and every idle subscriber's queue holds room for 32 items.)
    Resync(Box<Resync>),
    /// The token expired: the last item before the stream ends.
    AuthExpired,
}

/// See [`Outbound::Resync`].
#[derive(Debug)]
pub struct Resync {
    pub reason: ResyncReason,
    pub cursor: String,
}

/// What became of one entry handed to the subscriber.
pub(super) enum Delivered {
    Sent,
    /// Not of the subscriber's selection.
    Filtered,
    /// The transport is gone, or the service stops, or the token expired.
    Gone,
}

impl Subscription {
    /// Sends one journal entry as the selection decides: a row change or application
    /// event as the subscriber receives it, a truncation as a `resync`.
    pub(super) async fn deliver(&self, entry: &Entry) -> Delivered {
        let sent = match self.selection.decide(entry) {
            Decision::Skip => return Delivered::Filtered,
            Decision::Send(delivery) => self.send(Outbound::Event(delivery)).await,
            Decision::Resync { cursor } => self.send_resync(ResyncReason::Truncated, cursor).await,
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

    async fn send_resync(&self, reason: ResyncReason, cursor: String) -> bool {
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
