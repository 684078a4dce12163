//! The live loop: entries from the tenant's fan-out, delivered as they come, until the
//! subscriber must catch up from the journal (it lagged, the hub cut everyone off, or an
//! entry it follows was too large to fan out) or stops. With `max_txn_events`, entries
//! wait until their transaction is known whole (`withheld`).

use tokio::sync::{broadcast, watch};

use super::outbound::Delivered;
use super::subscriber::Subscription;
use super::withheld::{Offer, Settled, Withheld};
use crate::hub::{Fanned, Live};
use crate::journal::{Cursor, Entry, Position, ResyncReason};

/// Why live delivery ended.
pub(super) enum LiveEnded {
    /// Rejoin the fan-out and read from the journal what this subscriber has not had.
    CatchUp,
    TokenExpired,
    /// The transport is gone, or the service stops.
    Stopped,
}

impl Subscription {
    /// Delivers live entries, skipping those `already_seen` includes (the replay before
    /// delivered them); `last` follows the last entry sent, `received` the cursor of a
    /// `bulk_change` resync sent since.
    pub(super) async fn live(
        &self,
        live: &mut Live,
        already_seen: Option<&Position>,
        last: &mut Option<Entry>,
        received: &mut Cursor,
        mut withheld: Option<&mut Withheld>,
    ) -> LiveEnded {
        let mut batches = withheld.is_some().then(|| live.batches());
        let mut batch_done = false;
        loop {
            if let Some(withheld) = withheld.as_deref_mut() {
                batch_done |= batches
                    .as_ref()
                    .is_some_and(|b| b.has_changed().unwrap_or(false));
                if withheld.needs_reading(batch_done) {
                    if let Some(batches) = &mut batches {
                        batches.borrow_and_update();
                    }
                    batch_done = false;
                    let (published, pending) = live.boundary();
                    withheld.read(&published, pending);
                }
                if let Some(settled) = withheld.settle() {
                    if let Err(ended) = self.release(settled, last, received).await {
                        return ended;
                    }
                    continue;
                }
            }
            let awaits_batch = withheld.as_deref().is_some_and(Withheld::awaits_batch);
            let next = tokio::select! {
                biased;
                _ = self.services.shutdown.cancelled() => return LiveEnded::Stopped,
                _ = self.tx.closed() => return LiveEnded::Stopped,
                _ = tokio::time::sleep_until(self.expires) => return LiveEnded::TokenExpired,
                next = live.recv() => next,
                _ = batch_published(&mut batches), if awaits_batch => {
                    batch_done = true;
                    continue;
                }
            };
            if let (Ok(_), Some(withheld)) = (&next, withheld.as_deref_mut()) {
                withheld.received();
            }
            match next {
                Ok(Fanned::Entry(entry)) => {
                    if already_seen.is_some_and(|seen| seen.includes(&entry)) {
                        continue;
                    }
                    if let Some(withheld) = withheld.as_deref_mut() {
                        let decision = self.selection.decide(&entry);
                        match withheld.offer(entry, decision) {
                            Offer::Taken => continue,
                            Offer::Overflow => {
                                tracing::debug!(tenant = %self.tenant, "too much waiting for its transactions; catching up from the journal");
                                return LiveEnded::CatchUp;
                            }
                        }
                    }
                    match self.deliver(&entry).await {
                        Delivered::Sent => *last = Some(entry),
                        Delivered::Filtered => {}
                        Delivered::Gone => return LiveEnded::Stopped,
                    }
                }
                // Too large for the fan-out: read it (and whatever follows) from the
                // journal, if it concerns this subscriber at all.
                Ok(Fanned::InJournal(marker)) => {
                    let seen =
                        already_seen.is_some_and(|seen| seen.includes_transaction(marker.xid));
                    let followed = if marker.app_event {
                        self.selection.follows_topic(&marker.name)
                    } else {
                        self.selection.follows_type(&marker.name)
                            && self.selection.may_include_id(marker.resource_id.as_deref())
                    };
                    let bulk = withheld.as_deref().is_some_and(|w| w.is_bulk(marker.xid));
                    if !seen && followed && !bulk {
                        return LiveEnded::CatchUp;
                    }
                }
                Err(error) => {
                    match error {
                        broadcast::error::RecvError::Lagged(missed) => {
                            tracing::debug!(tenant = %self.tenant, missed, "subscriber lagged; catching up from the journal");
                            self.services.metrics.subscribers_lagged.inc();
                        }
                        // The hub cut everyone off (a gap in what the tailer could read):
                        // same recovery, from this subscriber's own cursor.
                        broadcast::error::RecvError::Closed => {
                            tracing::debug!(tenant = %self.tenant, "cut off the fan-out; catching up from the journal");
                        }
                    }
                    return LiveEnded::CatchUp;
                }
            }
        }
    }

    /// Sends what a settled boundary released: the events of whole transactions within
    /// the bound or, when some are over it, one `bulk_change` resync instead of all of
    /// them. The resync's cursor includes every released transaction, and the client
    /// refetches its state on it; were the later transactions' events sent first, their
    /// cursors would already pass the bulk one, and a disconnect before the resync would
    /// lose it.
    async fn release(
        &self,
        settled: Settled,
        last: &mut Option<Entry>,
        received: &mut Cursor,
    ) -> Result<(), LiveEnded> {
        if let Some(at) = settled.resync_at {
            if !self.bulk_resync(&at, last, received).await {
                return Err(LiveEnded::Stopped);
            }
            return Ok(());
        }
        for (entry, decision) in settled.events {
            match self.send_decided(&entry, decision).await {
                Delivered::Sent => *last = Some(entry),
                Delivered::Filtered => {}
                Delivered::Gone => return Err(LiveEnded::Stopped),
            }
        }
        Ok(())
    }

    /// Sends a `bulk_change` resync whose cursor is `at`: everything it includes has been
    /// sent (or was over the bound), so the subscriber's position is now `at`.
    pub(super) async fn bulk_resync(
        &self,
        at: &Position,
        last: &mut Option<Entry>,
        received: &mut Cursor,
    ) -> bool {
        let cursor = self.services.journal.cursor_at(&self.tenant, at);
        *last = None;
        *received = at.cursor();
        self.send_resync(ResyncReason::BulkChange, cursor).await
    }
}

/// Waits until a batch has been published in full (never without a receiver).
async fn batch_published(batches: &mut Option<watch::Receiver<u64>>) {
    let Some(batches) = batches else {
        return std::future::pending().await;
    };
    if batches.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
