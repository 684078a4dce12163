//! What every capture connection shares: queries bounded in time, and why a connection
//! is given up (and made anew).

use std::time::Duration;

use tokio::time::timeout;

/// A query on a capture connection taking longer means the connection is dead.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a capture connection is given up (and made anew).
#[derive(Debug, thiserror::Error)]
pub(super) enum Lost {
    #[error("database error: {0:?}")]
    Db(#[from] tokio_postgres::Error),
    #[error("query timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
}

/// `query`, or [`Lost::Timeout`] after [`QUERY_TIMEOUT`].
pub(super) async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Lost> {
    Ok(timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| Lost::Timeout)??)
}
