//! The live loop: entries from the tenant's fan-out, delivered as they come, until the
//! subscriber must catch up from the journal (it lagged, the hub cut everyone off, or an
//! entry it follows was too large to fan out) or stops.

use tokio::sync::broadcast;

use super::outbound::Delivered;
use super::subscriber::Subscription;
use crate::hub::{Fanned, Live};
use crate::journal::{Entry, Position};

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
    /// delivered them); `last` follows the last entry sent.
    pub(super) async fn live(
        &self,
        live: &mut Live,
        already_seen: Option<&Position>,
        last: &mut Option<Entry>,
    ) -> LiveEnded {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.services.shutdown.cancelled() => return LiveEnded::Stopped,
                _ = self.tx.closed() => return LiveEnded::Stopped,
                _ = tokio::time::sleep_until(self.expires) => return LiveEnded::TokenExpired,
                next = live.recv() => next,
            };
            match next {
                Ok(Fanned::Entry(entry)) => {
                    if already_seen.is_some_and(|seen| seen.includes(&entry)) {
                        continue;
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
                    if !seen && followed {
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
}
