//! `GET /v1/stats` (API.md §10): the token's tenant's live counters, as one JSON object,
//! or with `Accept: text/event-stream` as `event: stats` every `interval` (1s..60s,
//! default 5s) until the token expires. A stream holds a subscriber place while open.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use tokio::time::Instant;
use warp::http::HeaderMap;
use warp::reply::{Reply, Response};

use super::error::ApiError;
use super::request::{self, Params};
use super::sse::{control_frame, event_stream, RETRY_MS};
use super::stream::Streams;
use crate::auth::{Authenticator, Scope};
use crate::stats::{Activity, Report};
use crate::subscription::Transport;
use crate::tenant::TenantId;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// `tenant`'s report: its recent activity (of what `scope` allows) and its connected
/// subscribers per transport.
pub fn report(activity: &Activity, streams: &Streams, tenant: &TenantId, scope: &Scope) -> Report {
    let connected = streams.connected(tenant);
    let subscribers = Transport::delivering()
        .map(|transport| (transport.label(), connected[transport]))
        .collect();
    activity.report(tenant, subscribers, scope.bounds())
}

pub async fn handle(
    auth: Arc<Authenticator>,
    activity: Arc<Activity>,
    streams: Arc<Streams>,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    super::error::respond(answer(&auth, activity, streams, &headers, query.as_deref()).await)
}

async fn answer(
    auth: &Authenticator,
    activity: Arc<Activity>,
    streams: Arc<Streams>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = Params::parse_for(query, request::STATS_PARAMS)?;
    let identity = request::authenticate(auth, headers, &params).await?;
    if !identity.scope.allows_stats() {
        return Err(ApiError::forbidden(
            "the token's scope does not allow statistics (`stats: false`)",
        ));
    }
    let interval = match params.interval.as_deref() {
        None => DEFAULT_INTERVAL,
        Some(text) => text
            .strip_suffix('s')
            .filter(|n| !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(Duration::from_secs)
            .filter(|d| (MIN_INTERVAL..=MAX_INTERVAL).contains(d))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_interval",
                    "`interval` is whole seconds from 1s to 60s, e.g. 5s",
                )
            })?,
    };
    let wants_stream = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_stream {
        let report = report(&activity, &streams, &identity.tenant, &identity.scope);
        return Ok(warp::reply::json(&report).into_response());
    }
    let connection = streams.connect(&identity.tenant, Transport::Stats)?;
    let expires = identity.expiry();
    let (tenant, scope) = (identity.tenant, identity.scope);
    let first = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
    // One frame per tick (`next`: when the next is due); the stream ends after
    // `auth_expired` or at shutdown.
    let frames = stream::unfold(Some(Instant::now()), move |next| {
        let (activity, streams) = (activity.clone(), streams.clone());
        let (tenant, scope) = (tenant.clone(), scope.clone());
        async move {
            let next = next?;
            tokio::select! {
                _ = streams.shutdown().cancelled() => None,
                _ = tokio::time::sleep_until(expires) => {
                    Some((control_frame("auth_expired", None, None), None))
                }
                _ = tokio::time::sleep_until(next) => {
                    let json = serde_json::to_string(&StatsEvent {
                        kind: "stats",
                        report: report(&activity, &streams, &tenant, &scope),
                    })
                    .expect("BUG: serialising stats");
                    let frame = Bytes::from(format!("event: stats\ndata: {json}\n\n"));
                    Some((frame, Some(next + interval)))
                }
            }
        }
    });
    let body = stream::iter([first]).chain(frames).map(move |frame| {
        // Held, and counted against the limits, until the stream is dropped.
        let _ = &connection;
        Ok::<_, std::convert::Infallible>(frame)
    });
    Ok(event_stream(body))
}

/// The streamed form: the report with `"type":"stats"`, as over WebSocket.
#[derive(serde::Serialize)]
struct StatsEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    report: Report,
}
