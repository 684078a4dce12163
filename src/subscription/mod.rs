//! One subscriber's stream: replay from its cursor, then live, nothing missing.
//!
//! Shared by both transports. `open` joins the tenant's fan-out *before* it returns,
//! so a transport that sends its first byte afterwards cannot miss a later commit. A
//! task then replays from the journal what the cursor has not seen, up to the hub's
//! boundary (`replay`), and continues with live changes, skipping those the cursor
//! already saw (`live`). If the subscriber falls behind the fan-out it rejoins and
//! replays again from the last change it was given: a slow subscriber costs a journal
//! read, never unbounded memory. A resync marker of a type it follows (a truncation)
//! becomes a `resync`, and its [`Selection`] decides what of each entry it gets (view
//! transitions included), so transports only ever write finished [`Outbound`] items
//! (`outbound`).

mod live;
mod outbound;
mod places;
mod replay;
pub mod replay_gate;
mod replay_pages;
mod shared_reads;
mod subscriber;
mod withheld;

pub use outbound::{Outbound, Resync};
pub use places::{Limits, PerTransport, Place, Places, Refused, Transport};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
pub use subscriber::Subscriptions;

use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::auth::Identity;
use crate::hub::Live;
use crate::journal::{Cursor, Entry, Position, Published, ResyncReason};
use crate::selection::Selection;
use live::LiveEnded;
use replay::Replayed;
use subscriber::Subscription;
use withheld::Withheld;

/// Items queued between the subscription task and its transport.
const OUTBOUND_QUEUE: usize = 64;

/// An opened subscription; dropping it ends the subscription.
pub struct Opened {
    /// What to write, in order.
    pub outbound: mpsc::Receiver<Outbound>,
    /// A cursor to resume this subscription from before any change arrived: the client's
    /// own cursor, or one for the point where live delivery starts. Transports hand it
    /// out at once (SSE `id:`, WS `subscription_confirmed`), so even a client that
    /// received nothing yet can reconnect without losing what commits meanwhile.
    pub start: String,
}

/// Starts a subscription for `identity`'s tenant. The stream ends when the receiver is
/// dropped, the token expires (after `AuthExpired`) or the service shuts down. The
/// transport holds the connection's [`Place`] (taken before it accepted the client).
pub fn open(
    services: &Arc<Subscriptions>,
    identity: &Identity,
    selection: Selection,
    resume: Option<String>,
) -> Opened {
    // The journal `start` belongs to: read once, before minting it (see `run`).
    let journal = services.journal.scope().tag();
    let (live, upto) = services.hub.subscribe(&identity.tenant);
    let start = resume
        .clone()
        .unwrap_or_else(|| services.journal.cursor_at(&identity.tenant, upto.settled()));
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let subscription = Subscription {
        services: services.clone(),
        tenant: identity.tenant.clone(),
        selection,
        tx,
        expires: identity.expiry(),
        resynced_xid: AtomicU64::new(0),
    };
    // The transport's span (tenant, transport) follows the task into its logs.
    services.tracker.spawn(
        subscription
            .run(live, upto, resume, journal)
            .instrument(tracing::Span::current()),
    );
    Opened {
        outbound: rx,
        start,
    }
}

/// Where a subscription stands.
enum State {
    /// Reading from the journal what `from` has not seen, up to the hub's boundary.
    Replaying { from: Cursor },
    /// Delivering from the fan-out; entries `already_seen` includes were replayed.
    Live { already_seen: Option<Position> },
    /// The client must refetch its state: tell it, then go live from the boundary.
    Resyncing(ResyncReason),
    /// Fell behind the fan-out (or must read an entry too large for it): rejoin, and
    /// replay from the last entry this subscriber was sent.
    CatchingUp,
}

impl Subscription {
    /// `journal`: the journal identity the transport's first cursor was minted under.
    ///
    /// An `async` block rather than an `async fn`: the state of an `async fn` keeps its
    /// arguments twice (as passed, and as moved into its body), and this state is what
    /// every idle subscriber costs.
    #[allow(clippy::manual_async_fn)]
    fn run(
        self,
        mut live: Live,
        mut upto: Published,
        resume: Option<String>,
        journal: u32,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // What this subscriber has provably received: everything before the boundary,
            // or up to its own cursor.
            let mut received = upto.settled().cursor();
            let mut state = State::Live { already_seen: None };
            if let Some(text) = resume {
                state = match self.services.journal.scope().decode(&self.tenant, &text) {
                    Ok(cursor) => {
                        received = cursor.clone();
                        State::Replaying { from: cursor }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cursor refused");
                        State::Resyncing(error.resync_reason())
                    }
                };
            }
            // The last entry sent, where a catch-up resumes from.
            let mut last: Option<Entry> = None;
            // With `max_txn_events`: what waits for its transaction to be known whole.
            let mut withheld = self.selection.max_txn_events.map(Withheld::new);
            // The journal this subscription's cursors belong to.
            let mut journal = journal;
            loop {
                state = match state {
                    // Boxed: a replay's state (queries, pool checkout) is large, and an idle
                    // subscriber's task should not carry room for it (memory per subscriber).
                    State::Replaying { from } => {
                        let replay =
                            self.replay(&from, &upto, &mut last, &mut received, withheld.as_mut());
                        match Box::pin(replay).await {
                            Replayed::Done => State::Live {
                                already_seen: Some(from.position()),
                            },
                            Replayed::Unusable(reason) => State::Resyncing(reason),
                            Replayed::TokenExpired => return Box::pin(self.auth_expired()).await,
                            Replayed::Stopped => return,
                        }
                    }
                    State::Resyncing(reason) => {
                        // From here on the client starts over at the live boundary.
                        received = upto.settled().cursor();
                        last = None;
                        // Transaction ids may repeat (a database restored to an earlier
                        // point): no marker is taken for one already resynced.
                        self.resynced(0);
                        if let Some(withheld) = &mut withheld {
                            withheld.reset();
                        }
                        if !Box::pin(self.resync(reason, &upto)).await {
                            return;
                        }
                        State::Live { already_seen: None }
                    }
                    State::Live { already_seen } => {
                        let ended = self
                            .live(
                                &mut live,
                                already_seen.as_ref(),
                                &mut last,
                                &mut received,
                                withheld.as_mut(),
                            )
                            .await;
                        match ended {
                            LiveEnded::CatchUp => State::CatchingUp,
                            LiveEnded::TokenExpired => return Box::pin(self.auth_expired()).await,
                            LiveEnded::Stopped => return,
                        }
                    }
                    State::CatchingUp => {
                        // Everything published so far is within the new boundary: the replay
                        // from this subscriber's own cursor reads what it has not had.
                        (live, upto) = self.services.hub.subscribe(&self.tenant);
                        if let Some(entry) = &last {
                            received = entry.cursor().clone();
                        }
                        // What waited is read again from the journal.
                        if let Some(withheld) = &mut withheld {
                            withheld.reset();
                        }
                        // The journal started over: its cursors, and the client's state,
                        // belong to a database that is gone.
                        let now = self.services.journal.scope().tag();
                        if now != journal {
                            journal = now;
                            State::Resyncing(ResyncReason::CursorInvalid)
                        } else {
                            State::Replaying {
                                from: received.clone(),
                            }
                        }
                    }
                };
            }
        }
    }
}
