//! `GET /v1/snapshot`: the tenant's current rows plus the cursor to stream on from.
//!
//! The answer is written as its rows are read, so a snapshot holds a few rows in memory,
//! not all of them. Its status is sent before the first row: every check that can refuse
//! it (parameters, token, limits, the database transaction and its cursor) is made
//! before, and a failure after can only cut the body short, which the client sees as an
//! incomplete response, never as a valid but partial answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warp::http::HeaderMap;
use warp::reply::{Reply, Response};

use super::error::ApiError;
use super::request::{self, Params};
use crate::auth::Authenticator;
use crate::journal::{DbResult, Journal};
use crate::otel::{SnapshotTrace, Traces};
use crate::resources::{self, Catalog, SnapshotPart};
use crate::selection::Selection;
use crate::snapshot_limits::SnapshotLimits;
use crate::tenant::TenantId;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// Rows read ahead of the client: the reader waits while this many are unwritten.
const ROWS_AHEAD: usize = 8;
/// Small rows are written together, up to about this many bytes per body chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long a snapshot waits for a place among those in progress before it is refused.
const WAIT_FOR_A_PLACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a snapshot read that is no longer wanted may take to stop once cancelled.
const STOP_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What snapshots are read with.
pub struct Snapshots {
    /// Snapshots in progress, against their limits.
    pub limits: Arc<SnapshotLimits>,
    /// Mints each snapshot's cursor.
    pub journal: Arc<Journal>,
    pub pool: deadpool_postgres::Pool,
    /// How long a snapshot's read may take (`CHANGECAST_SNAPSHOT_TIMEOUT`).
    pub timeout: std::time::Duration,
    /// Cancelled when the service shuts down: reads in progress stop.
    pub shutdown: CancellationToken,
    pub traces: Traces,
}

pub async fn handle(
    auth: Arc<Authenticator>,
    catalog: Arc<Catalog>,
    snapshots: Arc<Snapshots>,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    super::error::respond(start(&auth, &catalog, &snapshots, headers, query).await)
}

async fn start(
    auth: &Authenticator,
    catalog: &Catalog,
    snapshots: &Snapshots,
    headers: HeaderMap,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let params = Params::parse_for(query.as_deref(), request::SNAPSHOT_PARAMS)?;
    let identity = request::authenticate(auth, &headers, &params).await?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let mut selection = request::selection(catalog, params.selection(), &identity.scope).await?;
    let types = match selection.types.take() {
        Some(types) => types,
        None => catalog.types().await,
    };
    let trace = snapshots.traces.snapshot(&identity.tenant, &types, limit);
    let permit = snapshots
        .limits
        .admit_within(&identity.tenant, WAIT_FOR_A_PLACE)
        .await?;
    let client = snapshots.pool.get().await.map_err(ApiError::unavailable)?;
    let cancel = client.cancel_token();
    let stopping = Arc::new(AtomicBool::new(false));
    let (begun_tx, begun) = oneshot::channel();
    let (parts_tx, parts) = mpsc::channel(ROWS_AHEAD);
    let reader = read(
        client,
        snapshots.journal.clone(),
        identity.tenant.clone(),
        types,
        selection,
        limit,
        stopping.clone(),
        begun_tx,
        parts_tx,
    );
    let deadline = snapshots.timeout;
    let shutdown = snapshots.shutdown.clone();
    // The permit goes with the reader: the snapshot counts as in progress for as long as
    // the database works on it, not only while its client listens.
    tokio::spawn(async move {
        let _permit = permit;
        let mut reader = std::pin::pin!(reader);
        let stop = tokio::select! {
            _ = &mut reader => return,
            _ = tokio::time::sleep(deadline) => "it took longer than CHANGECAST_SNAPSHOT_TIMEOUT",
            _ = shutdown.cancelled() => "the service is stopping",
        };
        tracing::debug!(reason = stop, "stopping a snapshot's read");
        stopping.store(true, Ordering::SeqCst);
        if let Err(error) = cancel.cancel_query(tokio_postgres::NoTls).await {
            tracing::debug!(?error, "could not cancel a snapshot's statement");
        }
        if tokio::time::timeout(STOP_READ_WITHIN, reader)
            .await
            .is_err()
        {
            tracing::warn!("a cancelled snapshot read did not stop in time");
        }
    });
    let cursor = match begun.await {
        Ok(Ok(cursor)) => cursor,
        Ok(Err(error)) => return Err(ApiError::unavailable(error)),
        Err(_) => return Err(ApiError::unavailable("the snapshot reader stopped")),
    };
    let body = SnapshotBody {
        opening: Some(opening(&cursor)),
        parts,
        types_written: 0,
        rows_in_type: 0,
        finished: false,
        trace: trace.answering(),
    };
    let mut response = warp::reply::stream(body).into_response();
    response.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Reads the snapshot on its own pooled connection, reporting the cursor (or why there
/// is none) on `begun`, then the rows on `parts`. A read that does not get to the end
/// (its client left, it failed, or it is being stopped: `stopping`) may leave a
/// statement running or a cancel on its way: its connection is cancelled and closed,
/// never returned to the pool.
#[allow(clippy::too_many_arguments)]
async fn read(
    mut client: deadpool_postgres::Object,
    journal: Arc<Journal>,
    tenant: TenantId,
    types: Vec<String>,
    selection: Selection,
    limit: usize,
    stopping: Arc<AtomicBool>,
    begun: oneshot::Sender<DbResult<String>>,
    parts: mpsc::Sender<SnapshotPart>,
) {
    let begin = resources::begin_snapshot(&mut client, &journal, &tenant, &types, &selection.ids);
    let snapshot = match begin.await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let _ = begun.send(Err(error));
            return;
        }
    };
    if begun.send(Ok(snapshot.cursor.clone())).is_err() {
        return;
    }
    let read = snapshot.send_rows(&selection, limit, &parts).await;
    if matches!(read, Ok(true)) && !stopping.load(Ordering::SeqCst) {
        return;
    }
    if matches!(read, Ok(false)) {
        // Left in the middle of a page, perhaps: stop the statement before closing.
        let _ = client
            .cancel_token()
            .cancel_query(tokio_postgres::NoTls)
            .await;
    }
    drop(deadpool_postgres::Object::take(client));
    if let Err(error) = read {
        if !stopping.load(Ordering::SeqCst) {
            tracing::warn!(
                ?error,
                "a snapshot's read failed after its answer began; the answer is cut short"
            );
        }
    }
}

/// `{"cursor":"...","resources":{`: what an answer starts with.
fn opening(cursor: &str) -> Vec<u8> {
    let mut out = b"{\"cursor\":".to_vec();
    out.extend_from_slice(json_string(cursor).as_bytes());
    out.extend_from_slice(b",\"resources\":{");
    out
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("BUG: a string always serialises")
}

/// The answer's body: `{"cursor":...,"resources":{"<type>":[<row>,...],...},
/// "truncated":<bool>}`, exactly as serialising the whole answer at once would write it.
struct SnapshotBody {
    opening: Option<Vec<u8>>,
    parts: mpsc::Receiver<SnapshotPart>,
    types_written: usize,
    rows_in_type: usize,
    finished: bool,
    trace: SnapshotTrace,
}

/// The reader stopped before the answer was complete: the body ends abruptly.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's read stopped before the answer was complete")]
struct CutShort;

impl SnapshotBody {
    fn write(&mut self, part: SnapshotPart, out: &mut Vec<u8>) {
        match part {
            SnapshotPart::ResourceType(resource_type) => {
                if self.types_written > 0 {
                    out.extend_from_slice(b"],");
                }
                self.types_written += 1;
                self.rows_in_type = 0;
                out.extend_from_slice(json_string(&resource_type).as_bytes());
                out.extend_from_slice(b":[");
            }
            SnapshotPart::Row(json) => {
                if self.rows_in_type > 0 {
                    out.push(b',');
                }
                self.rows_in_type += 1;
                self.trace.row();
                out.extend_from_slice(json.as_bytes());
            }
            SnapshotPart::End { truncated } => {
                if self.types_written > 0 {
                    out.push(b']');
                }
                out.extend_from_slice(format!("}},\"truncated\":{truncated}}}").as_bytes());
                self.finished = true;
                self.trace.end(truncated);
            }
        }
    }
}

impl Stream for SnapshotBody {
    type Item = Result<Bytes, CutShort>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let mut chunk = self.opening.take().unwrap_or_default();
        while !self.finished && chunk.len() < CHUNK_BYTES {
            match self.parts.poll_recv(cx) {
                Poll::Ready(Some(part)) => self.write(part, &mut chunk),
                Poll::Ready(None) if chunk.is_empty() => {
                    self.finished = true;
                    return Poll::Ready(Some(Err(CutShort)));
                }
                // What is written so far goes out first; the next poll ends the body.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if chunk.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Bytes::from(chunk))))
        }
    }
}
