//! Replays: what a cursor has not seen, read page by page up to the hub's boundary, and
//! why a cursor cannot be honoured when it cannot.

use super::cursor::{Cursor, CursorScope, ResyncReason};
use super::entry::Entry;
use super::position::{Position, PrunedBelow, Published};
use super::rows::{entries, running};
use super::sql::DbResult;
use super::sql::{
    more_after, INDEX_PLANNER_SETTINGS_LOCAL, REPLAY, REPLAY_PLANNER_SETTINGS, REPLAY_START_SQL,
};
use crate::tenant::TenantId;

/// Which of one tenant's entries a replay reads besides the snapshot bounds: a coarse
/// cut, so pages hold mostly what the subscriber wants. The subscriber's
/// [`crate::selection::Selection`] decides about each entry, live and replayed alike.
#[derive(Clone, Copy)]
pub struct ReplayFilter<'a> {
    pub tenant: &'a TenantId,
    /// Row changes and resync markers of these types only (`None`: of every type).
    pub types: Option<&'a [String]>,
    /// Whether application events are read at all.
    pub app_events: bool,
}

/// One page of a replay, as read.
pub struct ReplayPage {
    /// The journal id the page was read after.
    after: i64,
    /// The database's present when the replay started (its first page only).
    now: Option<Position>,
    /// The journal's pruning, read right after the page.
    pruned_below: PrunedBelow,
    pub entries: Vec<Entry>,
    /// Nothing of the range comes after it.
    pub last: bool,
}

impl ReplayPage {
    /// Whether the page can be trusted for `from`, the cursor it was read for; else the
    /// reason its subscriber resyncs.
    pub fn honours(&self, from: &Cursor) -> Result<(), ResyncReason> {
        // A cursor that saw transactions beyond the database's own next one comes from a
        // timeline the database has left (failover to a lagging standby, point-in-time
        // restore): new commits will reuse those ids, and the cursor would count them
        // as seen.
        if self
            .now
            .as_ref()
            .is_some_and(|now| from.seen.xmax > now.0.xmax)
        {
            return Err(ResyncReason::CursorInvalid);
        }
        // A prune that removed rows this page would have held committed before the
        // page's read began, so `pruned_below` (read after it) shows it.
        if !from.seen.sees_all_below(self.pruned_below.0) {
            return Err(ResyncReason::CursorExpired);
        }
        Ok(())
    }

    /// The journal id this page was read after: where a replay that did not know its
    /// start yet goes on from.
    pub fn after(&self) -> i64 {
        self.after
    }
}

/// What a catch-up after `last`, the last entry a subscriber was sent, must not send
/// again. A cursor does not see its own transaction, so the replay from `last`'s cursor
/// returns `last` and the earlier entries of its transaction, all sent before it.
/// (Transactions its writer saw running may still come again, with their ids: API.md
/// §4 allows repeats.)
#[derive(Clone, Copy, Debug)]
pub struct SentThrough {
    xid: u64,
    id: i64,
}

impl SentThrough {
    pub fn of(last: &Entry) -> Self {
        SentThrough {
            xid: last.xid(),
            id: last.id(),
        }
    }

    pub fn covers(&self, entry: &Entry) -> bool {
        entry.xid() == self.xid && entry.id() <= self.id
    }
}

impl Cursor {
    /// Where this cursor stands: everything before it was delivered to its holder.
    pub fn position(&self) -> Position {
        Position(self.seen.clone())
    }

    /// Whether `entry` is the resync marker this cursor is the `resync` cursor of: the
    /// client has had it (as that resync), and resuming from it must not loop.
    pub fn names_marker(&self, entry: &Entry) -> bool {
        matches!(entry, Entry::Resync(marker) if marker.id == self.id)
    }
}

/// One page of the replay of `from` up to `upto`: `filter`'s entries after journal id
/// `after` (found first when `None`) whose transaction `from` does not see but
/// `upto` covers, in journal-id order, at most `limit` of them and, past the first,
/// at most `max_bytes`.
///
/// With a standby, the page is read there once it has replayed `reached.0` (where the
/// hub's boundaries are known to be); one that has not within `reached.1` (another
/// standby of a multi-host URL further behind, one just restarted) has the page read
/// on the primary instead: a page read on it could miss rows inside the boundary, and
/// waiting on without bound could hold the replay forever. Without a primary to be
/// had, the read fails and its caller retries.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_page(
    scope: &CursorScope,
    client: &mut deadpool_postgres::Client,
    authority: Option<&deadpool_postgres::Pool>,
    reached: Option<(String, std::time::Duration)>,
    from: &Cursor,
    upto: &Published,
    after: Option<i64>,
    filter: ReplayFilter<'_>,
    (limit, max_bytes): (usize, usize),
) -> anyhow::Result<ReplayPage> {
    let mut on_primary;
    let client = match reached {
        Some((lsn, within)) if !standby_replayed(client, &lsn, within).await? => {
            let Some(primary) = authority else {
                anyhow::bail!(
                    "the standby has not replayed what the hub published ({lsn}) within {within:?}"
                );
            };
            tracing::warn!(
                "a replay's standby has not replayed what the hub published within {within:?}: \
                 reading the page from the primary"
            );
            on_primary = primary.get().await?;
            &mut on_primary
        }
        _ => client,
    };
    let (after, now) = match after {
        Some(id) => (id, None),
        None => {
            let (start, mut now) = replay_start(client, from, filter.tenant).await?;
            if let Some(primary) = authority.filter(|_| from.seen.xmax > now.0.xmax) {
                // Read from a standby that has not replayed everything the cursor saw:
                // the primary says whether those transactions exist. The replay reads
                // what the standby has (up to the hub's boundary, itself read there);
                // the rest arrives live as it is replayed, skipped where the cursor saw
                // it.
                now = primary_present(primary).await?.unwrap_or(now);
            }
            (start, Some(now))
        }
    };
    let (entries, last) =
        read_replay(scope, client, from, upto, after, filter, limit, max_bytes).await?;
    let pruned_below = pruned_below(client).await?;
    Ok(ReplayPage {
        after,
        now,
        pruned_below,
        entries,
        last,
    })
}

/// The journal id a replay of `cursor` for `tenant` starts after (every row the
/// cursor did not see has a greater id), and the database's present.
async fn replay_start(
    client: &mut deadpool_postgres::Client,
    cursor: &Cursor,
    tenant: &TenantId,
) -> DbResult<(i64, Position)> {
    // Prepared once per pooled connection: every resume runs it, in a transaction
    // of its own for the planner settings.
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&INDEX_PLANNER_SETTINGS_LOCAL)
        .await?;
    let statement = transaction.prepare_cached(REPLAY_START_SQL).await?;
    let row = transaction
        .query_one(
            &statement,
            &[
                &tenant.as_str(),
                &cursor.seen.xmax.to_string(),
                &running(&cursor.seen),
            ],
        )
        .await?;
    transaction.commit().await?;
    // `min` is the first row to replay: start just before it. None: nothing to replay
    // yet (later rows come after the newest id, which every later page starts from).
    let start = row.get::<_, Option<i64>>(0).map_or(0, |id| id - 1);
    let now = row
        .get::<_, &str>(1)
        .parse()
        .expect("BUG: PostgreSQL printed an invalid pg_snapshot");
    Ok((start, Position(now)))
}

/// `filter`'s entries after journal id `after_id` whose transaction `from` does not
/// see but `upto` covers, in journal-id order, at most `limit` of them and, past the
/// first, at most `max_bytes`; and whether it is the last page (nothing after it in
/// the range).
#[allow(clippy::too_many_arguments)]
async fn read_replay(
    scope: &CursorScope,
    client: &mut deadpool_postgres::Client,
    from: &Cursor,
    upto: &Published,
    after_id: i64,
    filter: ReplayFilter<'_>,
    limit: usize,
    max_bytes: usize,
) -> DbResult<(Vec<Entry>, bool)> {
    // A young journal's statistics (before autovacuum analyzed it) make the planner
    // expect a handful of rows after `after_id` and fetch all of them by bitmap, then
    // sort: every page would read the rest of the replay. Only the ordered walk of
    // (tenant_id, id), stopped by the LIMIT, keeps a page's cost to its own rows.
    let transaction = client.transaction().await?;
    transaction.batch_execute(REPLAY_PLANNER_SETTINGS).await?;
    let statement = transaction.prepare_cached(REPLAY.as_str()).await?;
    let rows = transaction
        .query(
            &statement,
            &[
                &filter.tenant.as_str(),
                &after_id,
                &from.seen.to_string(),
                &upto.prev.0.to_string(),
                &upto.next.0.to_string(),
                &upto.through_id,
                &filter.types,
                &filter.app_events,
                &(limit as i64),
                &(max_bytes as i64),
            ],
        )
        .await?;
    transaction.commit().await?;
    let last = !more_after(rows.len(), rows.first().map(|r| r.get(10)), limit);
    Ok((entries(scope, &rows, None), last))
}

/// Whether the standby behind `client` replays WAL up to `lsn` within `within` (the
/// newest position the tailer waited for, so past every boundary the hub has
/// published): the page read next on it then holds every row that boundary covers. The
/// tailer's standby has; this connection may reach another standby of a multi-host
/// URL, or one restarted (a standby that starts again accepts connections once
/// consistent, which may be behind what it had replayed). A primary has everything.
pub(super) async fn standby_replayed(
    client: &tokio_postgres::Client,
    lsn: &str,
    within: std::time::Duration,
) -> DbResult<bool> {
    let began = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let row = client
            .query_one(
                "select case when pg_is_in_recovery()
                             then coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)
                             else true end",
                &[&lsn],
            )
            .await?;
        if row.get(0) {
            return Ok(true);
        }
        if began.elapsed() > within {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// The primary's present, on a connection of its pool; `None` when no connection can
/// be had (the pool's bounded wait): the standby's answer then stands, and the cursor
/// resyncs as §4 says of one that cannot be honoured, rather than waiting without bound
/// for a primary that is gone (a failover moves cursors to a new timeline anyway).
async fn primary_present(primary: &deadpool_postgres::Pool) -> DbResult<Option<Position>> {
    let client = match primary.get().await {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(?error, "cannot reach the primary to check a cursor");
            return Ok(None);
        }
    };
    let row = client
        .query_one("select pg_current_snapshot()::text", &[])
        .await?;
    Ok(Some(Position(
        row.get::<_, &str>(0)
            .parse()
            .expect("BUG: PostgreSQL printed an invalid pg_snapshot"),
    )))
}

/// How far the journal has been pruned (nothing yet: 0).
async fn pruned_below(client: &tokio_postgres::Client) -> DbResult<PrunedBelow> {
    let row = client
        .query_one(
            "select pruned_below::text from changecast.journal_meta",
            &[],
        )
        .await?;
    Ok(PrunedBelow(
        row.get::<_, &str>(0)
            .parse()
            .expect("BUG: xid8 is a number"),
    ))
}
