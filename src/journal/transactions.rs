//! How large one transaction is for one subscriber: what `max_txn_events` (API.md §5)
//! needs to know of a transaction met on a replay before sending any of its events.
//! Every transaction a replay meets has committed, so the journal holds all of its rows,
//! whichever page of the replay they fall on.

use super::entry::Entry;
use super::replay::ReplayFilter;
use super::rows::entry_at;
use super::sql::{DbResult, INDEX_PLANNER_SETTINGS_LOCAL, TRANSACTION_ROWS, TRANSACTION_SIZES_SQL};
use super::CursorScope;

/// Rows fetched from the portal at a time while counting one transaction.
const COUNT_PAGE_ROWS: i32 = 1000;
/// Most rows read while counting one transaction for one subscriber: each scoped or
/// filtered subscriber replaying it counts on its own, so a transaction not settled by
/// then is taken as over the bound (one `bulk_change` resync; the client refetches).
const MAX_COUNTED_ROWS: usize = 100_000;

/// How many rows of each transaction of `xids` a replay with `filter` reads, each
/// counted up to `cap` (a transaction with more counts `cap`).
pub(super) async fn sizes(
    client: &mut deadpool_postgres::Client,
    filter: ReplayFilter<'_>,
    xids: &[u64],
    cap: usize,
) -> DbResult<Vec<(u64, usize)>> {
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&INDEX_PLANNER_SETTINGS_LOCAL)
        .await?;
    let statement = transaction.prepare_cached(TRANSACTION_SIZES_SQL).await?;
    let xids: Vec<String> = xids.iter().map(u64::to_string).collect();
    let rows = transaction
        .query(
            &statement,
            &[
                &filter.tenant.as_str(),
                &filter.types,
                &filter.app_events,
                &(cap as i64),
                &xids,
            ],
        )
        .await?;
    transaction.commit().await?;
    Ok(rows
        .iter()
        .map(|row| {
            let xid = row
                .get::<_, &str>(0)
                .parse()
                .expect("BUG: xid8 is a number");
            (xid, row.get::<_, i64>(1) as usize)
        })
        .collect())
}

/// How many of transaction `xid`'s rows (under `filter`) `counts` takes, reading them
/// a page at a time and stopping once `stop_at` were taken: memory stays one page
/// however large the transaction. Past [`MAX_COUNTED_ROWS`] rows read it answers
/// `stop_at`.
pub(super) async fn count(
    scope: &CursorScope,
    client: &mut deadpool_postgres::Client,
    filter: ReplayFilter<'_>,
    xid: u64,
    counts: impl Fn(&Entry) -> bool,
    stop_at: usize,
) -> DbResult<usize> {
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&INDEX_PLANNER_SETTINGS_LOCAL)
        .await?;
    let statement = transaction
        .prepare_cached(TRANSACTION_ROWS.as_str())
        .await?;
    let xid_text = xid.to_string();
    let portal = transaction
        .bind(
            &statement,
            &[
                &filter.tenant.as_str(),
                &xid_text,
                &filter.types,
                &filter.app_events,
            ],
        )
        .await?;
    let known_since = std::time::Instant::now();
    let mut taken = 0;
    let mut read = 0;
    loop {
        if read >= MAX_COUNTED_ROWS {
            return Ok(stop_at);
        }
        let rows = transaction.query_portal(&portal, COUNT_PAGE_ROWS).await?;
        read += rows.len();
        for row in &rows {
            if counts(&entry_at(scope, row, 0, known_since)) {
                taken += 1;
                if taken >= stop_at {
                    return Ok(taken);
                }
            }
        }
        if rows.len() < COUNT_PAGE_ROWS as usize {
            return Ok(taken);
        }
    }
}
