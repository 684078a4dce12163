//! One subscriber's stream: replay from its cursor, then live, nothing missing.
//!
//! Shared by both transports. `open` joins the tenant's fan-out *before* it returns,
//! so a transport that sends its first byte afterwards cannot miss a later commit. A
//! task then replays from the journal what the cursor has not seen, up to the hub's
//! boundary, and continues with live changes, skipping those the cursor already saw.
//! If the subscriber falls behind the fan-out it rejoins and replays again from the last
//! change it was given: a slow subscriber costs a journal read, never unbounded memory.
//! A truncation of a table it watches becomes a `resync` here, and its
//! [`Selection`] decides what of each entry it gets (view transitions included), so
//! transports only ever write finished [`Delivery`]s.

mod places;
pub mod replay_gate;
mod shared_reads;

pub use places::{Limits, PerTransport, Place, Places, Refused, Transport};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::Instrument as _;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Identity;
use crate::hub::{Fanned, Hub, Live};
use crate::journal::{snapshot_cursor, Cursor, Entry, Journal, Published, ReplayFilter};
use crate::metrics::Metrics;
use crate::selection::{Decision, Selection};
use crate::tenant::TenantId;
use crate::wire::Delivery;
use replay_gate::{ReplayGate, Turn};
use shared_reads::{SharedReads, Weighed};

/// Items queued between the subscription task and its transport.
const OUTBOUND_QUEUE: usize = 64;
/// Journal rows per replay query.
const REPLAY_PAGE_ROWS: usize = 500;
/// Most bytes of row JSON (as stored) per replay page after its first row: memory per
/// replaying subscriber stays bounded however large the rows.
const REPLAY_PAGE_BYTES: usize = 4 * 1024 * 1024;
const RETRY_AFTER_DB_ERROR: Duration = Duration::from_secs(1);
/// How long a replay page read for one subscriber is kept for others replaying the same
/// range (a reconnect storm's subscribers arrive within moments of each other).
const KEEP_REPLAY_PAGES: Duration = Duration::from_secs(2);
/// Most bytes of row JSON kept in shared replay pages.
const MAX_KEPT_REPLAY_BYTES: usize = 32 * 1024 * 1024;
/// How long a replay read dropped mid-statement waits for its statement to stop before
/// giving its gate turn back regardless (see [`ReadInProgress`]).
const STOP_STATEMENT_WITHIN: Duration = Duration::from_secs(5);
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
    replay_pages: SharedReads<ReplayPage>,
    /// Subscriber places, counted against the limits.
    pub places: Arc<Places>,
    pub shutdown: CancellationToken,
    /// Every subscription task, so shutdown can wait for them.
    pub tracker: TaskTracker,
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
            replay_pages: SharedReads::new(KEEP_REPLAY_PAGES, MAX_KEPT_REPLAY_BYTES),
            places: Arc::new(Places::new(limits)),
            shutdown,
            tracker,
        }
    }
}

/// One replay page as read from the journal, shareable.
#[derive(Clone)]
struct ReplayPage {
    /// The journal id the page was read after.
    start: i64,
    /// The database's next transaction id when the replay started (first page only).
    now_xmax: Option<u64>,
    entries: Arc<Vec<Entry>>,
    /// Nothing of the range comes after it.
    last: bool,
    /// The journal's `pruned_below`, read right after the page.
    pruned_below: u64,
    bytes: usize,
}

/// A replay page, or the `resync` reason when the cursor cannot be honoured.
type PageRead = anyhow::Result<Result<ReplayPage, &'static str>>;

impl Weighed for ReplayPage {
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What a transport writes.
#[derive(Debug)]
pub enum Outbound {
    /// A row change or an application event, as this subscriber receives it.
    Event(Delivery),
    /// The client must refetch its state; the stream continues live from `cursor`, which
    /// replaces the client's last event id (so its next reconnect does not resync again).
    /// Reasons: `cursor_expired`, `cursor_invalid`, `truncated` (a table of a type the
    /// subscriber follows was truncated; `cursor` is the truncation's own).
    /// (Boxed: a rare item, and every idle subscriber's queue holds room for 32 items.)
    Resync(Box<Resync>),
    /// The token expired: the last item before the stream ends.
    AuthExpired,
}

/// See [`Outbound::Resync`].
#[derive(Debug)]
pub struct Resync {
    pub reason: &'static str,
    pub cursor: String,
}

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
        .unwrap_or_else(|| snapshot_cursor(&services.journal, &identity.tenant, upto.prev.clone()));
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let subscription = Subscription {
        services: services.clone(),
        tenant: identity.tenant.clone(),
        selection,
        tx,
        expires: identity.expiry(),
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

struct Subscription {
    services: Arc<Subscriptions>,
    tenant: TenantId,
    selection: Selection,
    tx: mpsc::Sender<Outbound>,
    expires: Instant,
}

enum Delivered {
    Sent,
    /// Not of the subscriber's selection.
    Filtered,
    /// The transport is gone, or the service stops, or the token expired.
    Gone,
}

enum Replayed {
    Done,
    /// The cursor cannot be honoured: the `resync` reason (`cursor_expired` when the
    /// journal was pruned past it, `cursor_invalid` when it sees transactions the
    /// database has not reached — a database restored to an earlier point).
    Unusable(&'static str),
    /// The subscriber's token expired meanwhile.
    TokenExpired,
    Stopped,
}

/// A replay read's hold on the database: its turn at the replay gate and its pooled
/// connection. A read dropped before it finished (its subscriber left, or re-subscribed)
/// leaves its statement running on the server: dropping this cancels that statement and
/// gives the turn back only once the connection has answered after it, so the gate
/// bounds the statements actually running, not the replays still waiting for them.
struct ReadInProgress {
    turn: Option<Turn>,
    client: Option<deadpool_postgres::Client>,
}

impl ReadInProgress {
    fn client(&mut self) -> &mut deadpool_postgres::Client {
        self.client
            .as_mut()
            .expect("BUG: a read in progress has its connection")
    }

    /// The read is done: the turn and the connection go back as they are.
    fn finish(mut self) {
        self.client = None;
        self.turn = None;
    }
}

impl Drop for ReadInProgress {
    fn drop(&mut self) {
        let (Some(client), Some(turn)) = (self.client.take(), self.turn.take()) else {
            return;
        };
        // Outside a runtime (it is shutting down) the connection just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(stop_statement(client, turn));
        }
    }
}

/// Cancels whatever statement `client` is running, waits (a bounded while) until the
/// connection answers after it, then closes the connection and gives `turn` back.
async fn stop_statement(client: deadpool_postgres::Client, turn: Turn) {
    let cancel = client.cancel_token();
    let stopped = tokio::time::timeout(STOP_STATEMENT_WITHIN, async {
        if let Err(error) = cancel.cancel_query(tokio_postgres::NoTls).await {
            tracing::debug!(?error, "could not cancel an abandoned replay read");
        }
        // The connection answers in order: once this empty query has its answer (or its
        // error, should the cancel reach it instead), the statement before it has ended.
        let _ = client.simple_query("").await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("an abandoned replay read did not stop in time; giving its turn back");
    }
    // Not back into the pool: the cancel request travels on its own connection, and a
    // late one would hit whatever statement the next user of this one runs.
    drop(deadpool_postgres::Object::take(client));
    drop(turn);
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
            // What this subscriber has provably received: every change this snapshot sees.
            let mut received = Cursor::of_snapshot(upto.prev.clone());
            let mut replay_from = None;
            if let Some(text) = resume {
                match self.services.journal.scope().decode(&self.tenant, &text) {
                    Ok(cursor) => {
                        received = cursor.clone();
                        replay_from = Some(cursor);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cursor refused");
                        if !Box::pin(self.resync(error.resync_reason(), &upto)).await {
                            return;
                        }
                    }
                }
            }
            let mut last: Option<Entry> = None;
            // The journal this subscription's cursors belong to.
            let mut journal = journal;
            loop {
                // Live changes this snapshot sees were delivered (or replayed) already.
                let mut already_seen = None;
                if let Some(from) = replay_from.take() {
                    // Boxed: a replay's state (queries, pool checkout) is large, and an idle
                    // subscriber's task should not carry room for it (memory per subscriber).
                    match Box::pin(self.replay(&from, &upto, &mut last)).await {
                        Replayed::Done => already_seen = Some(from.seen),
                        Replayed::Unusable(reason) => {
                            // From here on the client starts over at the live boundary.
                            received = Cursor::of_snapshot(upto.prev.clone());
                            last = None;
                            if !Box::pin(self.resync(reason, &upto)).await {
                                return;
                            }
                        }
                        Replayed::TokenExpired => return Box::pin(self.auth_expired()).await,
                        Replayed::Stopped => return,
                    }
                }
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = self.services.shutdown.cancelled() => return,
                        _ = self.tx.closed() => return,
                        _ = tokio::time::sleep_until(self.expires) => return Box::pin(self.auth_expired()).await,
                        next = live.recv() => next,
                    };
                    let catch_up = match next {
                        Ok(Fanned::Entry(entry)) => {
                            if already_seen
                                .as_ref()
                                .is_some_and(|seen| seen.sees(entry.xid()))
                            {
                                continue;
                            }
                            match self.deliver(&entry).await {
                                Delivered::Sent => last = Some(entry),
                                Delivered::Filtered => {}
                                Delivered::Gone => return,
                            }
                            false
                        }
                        // Too large for the fan-out: read it (and whatever follows) from the
                        // journal, if it concerns this subscriber at all.
                        Ok(Fanned::InJournal(marker)) => {
                            let seen = already_seen.as_ref().is_some_and(|s| s.sees(marker.xid));
                            let followed = if marker.app_event {
                                self.selection.follows_topic(&marker.name)
                            } else {
                                self.selection.follows_type(&marker.name)
                                    && self.selection.may_include_id(marker.resource_id.as_deref())
                            };
                            !seen && followed
                        }
                        Err(error) => {
                            match error {
                                broadcast::error::RecvError::Lagged(missed) => {
                                    tracing::debug!(tenant = %self.tenant, missed, "subscriber lagged; catching up from the journal");
                                    self.services.metrics.subscribers_lagged.inc();
                                }
                                // The hub cut everyone off (a gap in what the tailer could
                                // read): same recovery, from this subscriber's own cursor.
                                broadcast::error::RecvError::Closed => {
                                    tracing::debug!(tenant = %self.tenant, "cut off the fan-out; catching up from the journal");
                                }
                            }
                            true
                        }
                    };
                    if catch_up {
                        // Everything published so far is within the new boundary: the replay
                        // from this subscriber's own cursor reads what it has not had.
                        (live, upto) = self.services.hub.subscribe(&self.tenant);
                        if let Some(entry) = &last {
                            received = entry.cursor().clone();
                        }
                        replay_from = Some(received.clone());
                        // The journal started over: its cursors, and the client's state,
                        // belong to a database that is gone.
                        let now = self.services.journal.scope().tag();
                        if now != journal {
                            journal = now;
                            replay_from = None;
                            received = Cursor::of_snapshot(upto.prev.clone());
                            last = None;
                            if !Box::pin(self.resync("cursor_invalid", &upto)).await {
                                return;
                            }
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Sends every change of this tenant and filter that `from` does not see and `upto`
    /// covers, in journal order. Each page waits for a turn at the replay gate, so a
    /// storm of resuming subscribers queues instead of scanning the journal all at once.
    /// The next page is read while this one is delivered: otherwise PostgreSQL waits for
    /// the delivery and the delivery for PostgreSQL, page after page (each took about half
    /// of a long replay's time). The truncation the client already got as a resync (the
    /// one `from` names) is not sent again, so resuming from it does not loop.
    async fn replay(&self, from: &Cursor, upto: &Published, last: &mut Option<Entry>) -> Replayed {
        self.services.metrics.replays.inc();
        // A cursor does not see its own transaction, so a catch-up from the last entry
        // this connection sent would send that entry (and earlier ones of its
        // transaction, all sent before it) again: skip them. (Transactions its writer saw
        // running may still come again, with their ids: API.md §4 allows repeats.)
        let sent_through = last.as_ref().map(|entry| (entry.xid(), entry.id()));
        let mut after_id = None;
        let mut prefetched = None;
        loop {
            if Instant::now() >= self.expires {
                return Replayed::TokenExpired;
            }
            let read = match prefetched.take() {
                Some(read) => read,
                // A subscriber gone meanwhile frees its pooled connection at once.
                None => tokio::select! {
                    _ = self.services.shutdown.cancelled() => return Replayed::Stopped,
                    _ = self.tx.closed() => return Replayed::Stopped,
                    read = self.read_page(from, upto, &mut after_id) => read,
                },
            };
            let page = match read {
                Ok(Ok(page)) => page,
                Ok(Err(reason)) => return Replayed::Unusable(reason),
                Err(error) => {
                    tracing::warn!(?error, "journal replay failed; retrying");
                    tokio::select! {
                        _ = self.services.shutdown.cancelled() => return Replayed::Stopped,
                        _ = self.tx.closed() => return Replayed::Stopped,
                        _ = tokio::time::sleep_until(self.expires) => return Replayed::TokenExpired,
                        _ = tokio::time::sleep(RETRY_AFTER_DB_ERROR) => continue,
                    }
                }
            };
            if page.last {
                let stopped = self.deliver_page(&page, from, sent_through, last).await;
                return stopped.unwrap_or(Replayed::Done);
            }
            let mut next_after_id = page.entries.last().map(Entry::id).or(after_id);
            let read = self
                .deliver_while_reading(
                    self.deliver_page(&page, from, sent_through, last),
                    self.read_page(from, upto, &mut next_after_id),
                )
                .await;
            prefetched = match read {
                Ok(read) => Some(read),
                Err(stopped) => return stopped,
            };
            // Where a failed read of the next page is retried from.
            after_id = next_after_id;
        }
    }

    /// Runs `delivery` (of one page) and `next` (the read of the following one) together;
    /// the read once both are done, or why the replay stops.
    async fn deliver_while_reading(
        &self,
        delivery: impl Future<Output = Option<Replayed>>,
        next: impl Future<Output = PageRead>,
    ) -> Result<PageRead, Replayed> {
        tokio::pin!(delivery, next);
        let mut next_read = None;
        let stopped = loop {
            tokio::select! {
                stopped = &mut delivery => break stopped,
                read = &mut next, if next_read.is_none() => next_read = Some(read),
            }
        };
        if let Some(stopped) = stopped {
            return Err(stopped);
        }
        match next_read {
            Some(read) => Ok(read),
            None => tokio::select! {
                _ = self.services.shutdown.cancelled() => Err(Replayed::Stopped),
                _ = self.tx.closed() => Err(Replayed::Stopped),
                read = &mut next => Ok(read),
            },
        }
    }

    /// Sends one replay page's entries; `Some` when the subscriber stops meanwhile.
    async fn deliver_page(
        &self,
        page: &ReplayPage,
        from: &Cursor,
        sent_through: Option<(u64, i64)>,
        last: &mut Option<Entry>,
    ) -> Option<Replayed> {
        for entry in page.entries.iter().cloned() {
            if matches!(&entry, Entry::Truncated(marker) if marker.id == from.id) {
                continue;
            }
            if sent_through.is_some_and(|(xid, id)| entry.xid() == xid && entry.id() <= id) {
                continue;
            }
            match self.deliver(&entry).await {
                Delivered::Sent => *last = Some(entry),
                Delivered::Filtered => {}
                Delivered::Gone => return Some(Replayed::Stopped),
            }
        }
        None
    }

    /// One replay page after `after_id` (found first, when still unknown), or the
    /// `resync` reason when `from` cannot be honoured. Subscribers replaying the same
    /// range (same cursor, boundary and coarse filter) share one read of each page.
    async fn read_page(
        &self,
        from: &Cursor,
        upto: &Published,
        after_id: &mut Option<i64>,
    ) -> PageRead {
        let types = self.selection.journal_types();
        let app_events = self.selection.wants_app_events();
        let key = format!(
            "{}|{from:?}|{upto:?}|{after_id:?}|{types:?}|{app_events}",
            self.tenant
        );
        let at = *after_id;
        let page = self
            .services
            .replay_pages
            .get_or_read(key, || {
                self.read_journal_page(from, upto, at, types, app_events)
            })
            .await?;
        // A cursor that saw transactions beyond the database's own next one comes from a
        // timeline the database has left (failover to a lagging standby, point-in-time
        // restore): new commits will reuse those ids, and the cursor would count them
        // as seen.
        if page.now_xmax.is_some_and(|now| from.seen.xmax > now) {
            return Ok(Err("cursor_invalid"));
        }
        // A prune that removed rows this page would have held committed before the
        // page's read began, so `pruned_below` (read after it) shows it.
        if !from.seen.sees_all_below(page.pruned_below) {
            return Ok(Err("cursor_expired"));
        }
        after_id.get_or_insert(page.start);
        Ok(Ok(page))
    }

    /// Reads one replay page from the journal (waiting for a turn at the replay gate).
    async fn read_journal_page(
        &self,
        from: &Cursor,
        upto: &Published,
        after_id: Option<i64>,
        types: Option<Vec<String>>,
        app_events: bool,
    ) -> anyhow::Result<ReplayPage> {
        let turn = self.services.replay_gate.turn(&self.tenant).await;
        let client = self.services.pool.get().await?;
        let mut hold = ReadInProgress {
            turn: Some(turn),
            client: Some(client),
        };
        let client = hold.client();
        let journal = &self.services.journal;
        // An error ends the statement as surely as an answer: either way the read is over.
        let read = async {
            let (start, now_xmax) = match after_id {
                Some(id) => (id, None),
                None => {
                    let (start, now) = journal.replay_start(client, from, &self.tenant).await?;
                    (start, Some(now.xmax))
                }
            };
            let filter = ReplayFilter {
                tenant: &self.tenant,
                types: types.as_deref(),
                app_events,
            };
            let (entries, last) = journal
                .read_replay(
                    client,
                    &from.seen,
                    upto,
                    start,
                    filter,
                    REPLAY_PAGE_ROWS,
                    REPLAY_PAGE_BYTES,
                )
                .await?;
            let pruned_below = Journal::pruned_below(client).await?;
            anyhow::Ok((start, now_xmax, entries, last, pruned_below))
        }
        .await;
        hold.finish();
        let (start, now_xmax, entries, last, pruned_below) = read?;
        self.services.metrics.replay_pages_read.inc();
        let bytes = entries.iter().map(Entry::size_hint).sum();
        Ok(ReplayPage {
            start,
            now_xmax,
            entries: Arc::new(entries),
            last,
            pruned_below,
            bytes,
        })
    }

    /// Sends one journal entry as the selection decides: a row change or application
    /// event as the subscriber receives it, a truncation as a `resync`.
    async fn deliver(&self, entry: &Entry) -> Delivered {
        let sent = match self.selection.decide(entry) {
            Decision::Skip => return Delivered::Filtered,
            Decision::Send(delivery) => self.send(Outbound::Event(delivery)).await,
            Decision::Resync { cursor } => self.send_resync("truncated", cursor).await,
        };
        if sent {
            Delivered::Sent
        } else {
            Delivered::Gone
        }
    }

    async fn resync(&self, reason: &'static str, upto: &Published) -> bool {
        // Live delivery starts after `upto`: a cursor seeing `upto.prev` resumes there
        // (repeating at most the page the tailer was in the middle of).
        let cursor = snapshot_cursor(&self.services.journal, &self.tenant, upto.prev.clone());
        self.send_resync(reason, cursor).await
    }

    async fn send_resync(&self, reason: &'static str, cursor: String) -> bool {
        self.services
            .metrics
            .resyncs
            .with_label_values(&[reason])
            .inc();
        self.send(Outbound::Resync(Box::new(Resync { reason, cursor })))
            .await
    }

    /// The last item of an expired subscriber. Waits for room behind queued changes (a
    /// bounded while), so the client learns why the stream ends and fetches a new token.
    async fn auth_expired(&self) {
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
