//! The replay pipeline: what a subscriber's cursor has not seen, read from the journal
//! page by page up to the hub's boundary and delivered in journal order.
//!
//! Each page waits for a turn at the replay gate (`replay_gate`), so a storm of resuming
//! subscribers queues instead of scanning the journal all at once; subscribers replaying
//! the same range share one read of each page (`shared_reads`); and the next page is
//! read while this one is delivered.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::outbound::Delivered;
use super::replay_gate::Turn;
use super::replay_pages::SharedPage;
use super::subscriber::Subscription;
use super::withheld::{takes_all_it_reads, Withheld};
use crate::journal::{
    Cursor, Entry, Published, ReplayFilter, ReplayPage, ResyncReason, SentThrough,
};
use crate::selection::Decision;

/// Journal rows per replay query.
const REPLAY_PAGE_ROWS: usize = 500;
/// Most bytes of row JSON (as stored) per replay page after its first row: memory per
/// replaying subscriber stays bounded however large the rows.
const REPLAY_PAGE_BYTES: usize = 4 * 1024 * 1024;
const RETRY_AFTER_DB_ERROR: Duration = Duration::from_secs(1);
/// How long a replay read dropped mid-statement waits for its statement to stop before
/// giving its gate turn back regardless (see [`ReadInProgress`]).
const STOP_STATEMENT_WITHIN: Duration = Duration::from_secs(5);

/// What reading a replay page came to.
enum PageRead {
    Page(SharedPage),
    /// The cursor cannot be honoured: the subscriber resyncs.
    Resync(ResyncReason),
    /// The database failed; the read is retried.
    Failed(anyhow::Error),
}

/// How a replay ended.
pub(super) enum Replayed {
    Done,
    /// The cursor cannot be honoured: `cursor_expired` when the journal was pruned past
    /// it, `cursor_invalid` when it sees transactions the database has not reached (a
    /// database restored to an earlier point).
    Unusable(ResyncReason),
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
    /// Sends every change of this tenant and filter that `from` does not see and `upto`
    /// covers, in journal order. Each page waits for a turn at the replay gate, so a
    /// storm of resuming subscribers queues instead of scanning the journal all at once.
    /// The next page is read while this one is delivered: otherwise PostgreSQL waits for
    /// the delivery and the delivery for PostgreSQL, page after page, neither ever busy
    /// while the other works. No resync marker of the transaction whose resync `from`
    /// names is sent again, so resuming from a resync does not loop.
    ///
    /// With `max_txn_events` (`withheld`), the replay ends at the first transaction over
    /// the bound with one `bulk_change` resync at `upto`'s settled position: no event of
    /// a later transaction may reach the client before it (see `withheld`). `received`
    /// follows its cursor.
    pub(super) async fn replay(
        &self,
        from: &Cursor,
        upto: &Published,
        last: &mut Option<Entry>,
        received: &mut Cursor,
        mut withheld: Option<&mut Withheld>,
    ) -> Replayed {
        self.services.metrics.replays.inc();
        let mut trace = self.services.traces.replay(&self.tenant);
        // A catch-up from the last entry this connection sent must not send it again.
        let sent_through = last.as_ref().map(SentThrough::of);
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
                PageRead::Page(page) => {
                    trace.page(page.page.entries.len());
                    page.page
                }
                PageRead::Resync(reason) => return Replayed::Unusable(reason),
                PageRead::Failed(error) => {
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
                let delivered = self
                    .deliver_page(&page, from, sent_through, last, withheld.as_deref_mut())
                    .await;
                return match delivered {
                    Ok(met_bulk) => self.end(upto, met_bulk, last, received, withheld).await,
                    Err(stopped) => stopped,
                };
            }
            let mut next_after_id = page.entries.last().map(Entry::id).or(after_id);
            let read = self
                .deliver_while_reading(
                    self.deliver_page(&page, from, sent_through, last, withheld.as_deref_mut()),
                    self.read_page(from, upto, &mut next_after_id),
                )
                .await;
            prefetched = match read {
                Ok(Some(read)) => Some(read),
                Ok(None) => return self.end(upto, true, last, received, withheld).await,
                Err(stopped) => return stopped,
            };
            // Where a failed read of the next page is retried from.
            after_id = next_after_id;
        }
    }

    /// The replay is over: `met_bulk` when it stopped at a transaction over the bound.
    /// One `bulk_change` resync at the settled boundary then covers it and the rest of
    /// the replay; without one, it covers those over the bound the boundary includes.
    async fn end(
        &self,
        upto: &Published,
        met_bulk: bool,
        last: &mut Option<Entry>,
        received: &mut Cursor,
        withheld: Option<&mut Withheld>,
    ) -> Replayed {
        let at = upto.settled();
        let covered = withheld.is_some_and(|w| w.take_bulk_within(at));
        if (covered || met_bulk) && !self.bulk_resync(at, last, received).await {
            return Replayed::Stopped;
        }
        Replayed::Done
    }

    /// Runs `delivery` (of one page) and `next` (the read of the following one) together;
    /// the read once both are done (`None` when the delivery met a transaction over the
    /// bound, which ends the replay), or why the replay stops.
    async fn deliver_while_reading(
        &self,
        delivery: impl Future<Output = Result<bool, Replayed>>,
        next: impl Future<Output = PageRead>,
    ) -> Result<Option<PageRead>, Replayed> {
        tokio::pin!(delivery, next);
        let mut next_read = None;
        let delivered = loop {
            tokio::select! {
                delivered = &mut delivery => break delivered,
                read = &mut next, if next_read.is_none() => next_read = Some(read),
            }
        };
        if delivered? {
            return Ok(None);
        }
        match next_read {
            Some(read) => Ok(Some(read)),
            None => tokio::select! {
                _ = self.services.shutdown.cancelled() => Err(Replayed::Stopped),
                _ = self.tx.closed() => Err(Replayed::Stopped),
                read = &mut next => Ok(Some(read)),
            },
        }
    }

    /// Sends one replay page's entries up to the first of a transaction over the bound;
    /// whether it met one, or why the replay stops.
    async fn deliver_page(
        &self,
        page: &ReplayPage,
        from: &Cursor,
        sent_through: Option<SentThrough>,
        last: &mut Option<Entry>,
        mut withheld: Option<&mut Withheld>,
    ) -> Result<bool, Replayed> {
        if let Some(withheld) = withheld.as_deref_mut() {
            self.size_transactions(&page.entries, withheld).await?;
        }
        // The client had the resync `from` names for its whole transaction. (Should the
        // transaction's markers span pages, one on an earlier page comes again; its own
        // cursor then names a marker of the same transaction.)
        if let Some(named) = page.entries.iter().find(|entry| from.names_marker(entry)) {
            self.resynced(named.xid());
        }
        for entry in page.entries.iter().cloned() {
            if from.names_marker(&entry) {
                continue;
            }
            if sent_through.is_some_and(|sent| sent.covers(&entry)) {
                continue;
            }
            if withheld.as_deref().is_some_and(|w| w.is_bulk(entry.xid())) {
                return Ok(true);
            }
            match self.deliver(&entry).await {
                Delivered::Sent => *last = Some(entry),
                Delivered::Filtered => {}
                Delivered::Gone => return Err(Replayed::Stopped),
            }
        }
        Ok(false)
    }

    /// Finds out, from the journal, which transactions of `entries` not sized yet bring
    /// this subscriber more events than its bound. Retries while the database fails.
    async fn size_transactions(
        &self,
        entries: &[Entry],
        withheld: &mut Withheld,
    ) -> Result<(), Replayed> {
        // Only transactions with an event for this subscriber matter.
        let mut unknown: Vec<u64> = Vec::new();
        for entry in entries {
            let xid = entry.xid();
            if withheld.is_unknown(xid)
                && !unknown.contains(&xid)
                && matches!(self.selection.decide(entry), Decision::Send(_))
            {
                unknown.push(xid);
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        loop {
            let sized = tokio::select! {
                _ = self.services.shutdown.cancelled() => return Err(Replayed::Stopped),
                _ = self.tx.closed() => return Err(Replayed::Stopped),
                sized = self.read_sizes(&unknown, withheld.max()) => sized,
            };
            match sized {
                Ok(sizes) => {
                    for (xid, over) in sizes {
                        if over {
                            withheld.found_bulk(xid);
                        } else {
                            withheld.found_small(xid);
                        }
                    }
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(
                        ?error,
                        "sizing transactions for max_txn_events failed; retrying"
                    );
                    tokio::select! {
                        _ = self.services.shutdown.cancelled() => return Err(Replayed::Stopped),
                        _ = self.tx.closed() => return Err(Replayed::Stopped),
                        _ = tokio::time::sleep(RETRY_AFTER_DB_ERROR) => {}
                    }
                }
            }
        }
    }

    /// Whether each transaction of `xids` brings this subscriber more than `max` events.
    /// Waits for a turn at the replay gate like a page read: a storm of resuming bounded
    /// subscribers queues its sizing queries too.
    async fn read_sizes(&self, xids: &[u64], max: usize) -> anyhow::Result<Vec<(u64, bool)>> {
        let _turn = self.services.replay_gate.turn(&self.tenant).await;
        let mut client = self.services.pool.get().await?;
        let types = self.selection.journal_types();
        let filter = ReplayFilter {
            tenant: &self.tenant,
            types: types.as_deref(),
            app_events: self.selection.wants_app_events(),
        };
        let journal = &self.services.journal;
        let sizes = journal
            .transaction_sizes(&mut client, filter, xids, max + 1)
            .await?;
        let mut over = Vec::with_capacity(sizes.len());
        for (xid, size) in sizes {
            // More rows than the bound in the journal: more events, unless the selection
            // takes fewer than the journal read returns; then count what it takes.
            let bulk = size > max
                && (takes_all_it_reads(&self.selection)
                    || journal
                        .count_transaction(
                            &mut client,
                            filter,
                            xid,
                            |entry| matches!(self.selection.decide(entry), Decision::Send(_)),
                            max + 1,
                        )
                        .await?
                        > max);
            over.push((xid, bulk));
        }
        Ok(over)
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
        let read = self
            .services
            .replay_pages
            .get_or_read(key, || {
                self.read_journal_page(from, upto, at, types, app_events)
            })
            .await;
        let shared = match read {
            Ok(shared) => shared,
            Err(error) => return PageRead::Failed(error),
        };
        if let Err(reason) = shared.page.honours(from) {
            return PageRead::Resync(reason);
        }
        after_id.get_or_insert(shared.page.after());
        PageRead::Page(shared)
    }

    /// Reads one replay page from the journal (waiting for a turn at the replay gate).
    async fn read_journal_page(
        &self,
        from: &Cursor,
        upto: &Published,
        after_id: Option<i64>,
        types: Option<Vec<String>>,
        app_events: bool,
    ) -> anyhow::Result<SharedPage> {
        let turn = self.services.replay_gate.turn(&self.tenant).await;
        let client = self.services.pool.get().await?;
        let mut hold = ReadInProgress {
            turn: Some(turn),
            client: Some(client),
        };
        let filter = ReplayFilter {
            tenant: &self.tenant,
            types: types.as_deref(),
            app_events,
        };
        // An error ends the statement as surely as an answer: either way the read is over.
        let read = self
            .services
            .journal
            .replay_page(
                hold.client(),
                from,
                upto,
                after_id,
                filter,
                (REPLAY_PAGE_ROWS, REPLAY_PAGE_BYTES),
            )
            .await;
        hold.finish();
        let page = read?;
        self.services.metrics.replay_pages_read.inc();
        Ok(SharedPage::new(page))
    }
}
