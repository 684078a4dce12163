//! `GET /v1/events`: a subscription written as Server-Sent Events. Formats, never decides.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Serialize;
use tokio::time::Interval;
use warp::http::HeaderMap;
use warp::reply::{Reply, Response};

use super::error::ApiError;
use super::request::{self, Params};
use super::stream::{Connection, Streams};
use crate::auth::Authenticator;
use crate::resources::Catalog;
use crate::subscription::{Opened, Outbound, Transport};

/// How long an EventSource waits before reconnecting.
pub(super) const RETRY_MS: u64 = 2000;
/// Reconnect delay suggested when the service shuts down (another instance may be up).
const RETRY_AFTER_SHUTDOWN_MS: u64 = 500;
const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";
/// Events that are ready together go out as one chunk of at most this many bytes: a
/// subscriber that is behind (a bulk transaction, a replay) then costs one chunk and one
/// share of a write per several events, not per event. Only what is ready is joined, so
/// no event waits for another. A joined chunk is the connection's own copy, where a
/// single event's frame is shared with every subscriber: hyper queues up to 16 chunks for
/// a client that stopped reading, so this bounds what such a client holds to 128 KiB.
const GATHER_BYTES: usize = 8 * 1024;

pub async fn handle(
    auth: Arc<Authenticator>,
    catalog: Arc<Catalog>,
    streams: Arc<Streams>,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    super::error::respond(open(&auth, &catalog, streams, headers, query).await)
}

async fn open(
    auth: &Authenticator,
    catalog: &Catalog,
    streams: Arc<Streams>,
    headers: HeaderMap,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let params = Params::parse_for(query.as_deref(), request::EVENTS_PARAMS)?;
    let identity = request::authenticate(auth, &headers, &params).await?;
    let selection = request::selection(catalog, params.selection(), &identity.scope).await?;
    // The header wins over the query parameter, as in API.md §5.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id)
        .filter(|c| !c.trim().is_empty());
    let resumed = resume.is_some();
    let connection = streams.connect(&identity.tenant, Transport::Sse)?;
    let opened = {
        let _span = connection.span().enter();
        streams.open(&identity, selection, resume)
    };
    // A fresh stream's first bytes set the EventSource's last event id to where live
    // delivery starts (an `id:` without data dispatches nothing), so a reconnect before
    // the first change still resumes from here.
    let preamble = if resumed {
        format!("retry: {RETRY_MS}\n\n")
    } else {
        format!("retry: {RETRY_MS}\nid: {}\n\n", opened.start)
    };
    let body = SseBody {
        preamble: Some(Bytes::from(preamble)),
        subscription: opened,
        keepalive: streams.keepalive(),
        stashed: None,
        finished: false,
        connection,
        streams,
    };
    Ok(event_stream(body))
}

/// A response streaming `body` as Server-Sent Events (API.md §5's headers).
pub(super) fn event_stream<S>(body: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static,
{
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
    ] {
        headers.insert(name, value.parse().expect("BUG: static header"));
    }
    response
}

struct SseBody {
    preamble: Option<Bytes>,
    /// Held for the life of the stream: dropping it ends the subscription.
    subscription: Opened,
    keepalive: Interval,
    /// An item met while joining events that did not join them (a control item, or an
    /// event past [`GATHER_BYTES`]): the next one to send.
    stashed: Option<Outbound>,
    finished: bool,
    /// Counted against the limits and in the series until the client is gone.
    connection: Connection,
    streams: Arc<Streams>,
}

impl SseBody {
    /// `first`, followed by the events that are ready now, up to [`GATHER_BYTES`] in all.
    /// An event that would go past it is kept for the next chunk.
    fn join_ready_events(&mut self, first: Bytes) -> Bytes {
        let mut joined: Option<BytesMut> = None;
        loop {
            let len = joined.as_ref().map_or(first.len(), BytesMut::len);
            match self.subscription.outbound.try_recv() {
                Ok(Outbound::Event(delivery))
                    if len + delivery.frame().sse.len() <= GATHER_BYTES =>
                {
                    self.connection.delivered(&delivery);
                    let joined = joined.get_or_insert_with(|| {
                        let mut joined = BytesMut::with_capacity(GATHER_BYTES);
                        joined.extend_from_slice(&first);
                        joined
                    });
                    joined.extend_from_slice(&delivery.frame().sse);
                }
                Ok(other) => {
                    self.stashed = Some(other);
                    break;
                }
                // Empty, or closed: the next poll tells which.
                Err(_) => break,
            }
        }
        joined.map_or(first, BytesMut::freeze)
    }
}

#[derive(Serialize)]
struct Control<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

pub(super) fn control_frame(event: &str, reason: Option<&str>, id: Option<&str>) -> Bytes {
    let data = serde_json::to_string(&Control {
        kind: event,
        reason,
        id,
    })
    .expect("BUG: serialising a control event");
    match id {
        Some(id) => Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n")),
        None => Bytes::from(format!("event: {event}\ndata: {data}\n\n")),
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(preamble) = self.preamble.take() {
            return Poll::Ready(Some(Ok(preamble)));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        let next = match self.stashed.take() {
            Some(item) => Poll::Ready(Some(item)),
            None => self.subscription.outbound.poll_recv(cx),
        };
        let frame = match next {
            Poll::Ready(Some(Outbound::Event(delivery))) => {
                self.connection.delivered(&delivery);
                let first = delivery.frame().sse.clone();
                self.join_ready_events(first)
            }
            Poll::Ready(Some(Outbound::Resync(resync))) => {
                control_frame("resync", Some(resync.reason.as_str()), Some(&resync.cursor))
            }
            Poll::Ready(Some(Outbound::AuthExpired)) => {
                self.finished = true;
                control_frame("auth_expired", None, None)
            }
            // The service is shutting down: say so, then end. EventSource reconnects by
            // itself after `retry`; other clients learn to reconnect (elsewhere) now.
            Poll::Ready(None) if self.streams.shutdown().is_cancelled() => {
                self.finished = true;
                let mut frame = format!("retry: {RETRY_AFTER_SHUTDOWN_MS}\n").into_bytes();
                frame.extend_from_slice(&control_frame("reconnect", Some("shutdown"), None));
                Bytes::from(frame)
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => match self.keepalive.poll_tick(cx) {
                Poll::Ready(_) => Bytes::from_static(KEEPALIVE_FRAME),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }
}
