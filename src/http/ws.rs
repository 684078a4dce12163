//! `GET /v1/ws`: subscriptions over a WebSocket (API.md §6). Formats and forwards, never
//! decides: what a subscriber gets comes from `subscription`, exactly as for SSE.
//!
//! Each connection is one task running two halves side by side: the session loop, which
//! keeps reading the socket at all times (protocol pings are only answered while it is
//! read), and a writer that awaits every send, so a slow reader pushes back on its
//! subscription (which then catches up from the journal) instead of growing memory.
//! The writer flushes once nothing more is queued: messages that are ready together
//! (a large transaction's changes) share socket writes of [`WRITE_BATCH_BYTES`], instead
//! of a system call and a TCP segment each.
//!
//! A text message longer than [`FRAGMENT_BYTES`] goes out as fragments of that size
//! (RFC 6455 §5.4; every client reassembles them), sliced from the bytes every subscriber
//! shares: tungstenite copies each frame it sends into the socket's own buffer, so a
//! socket holds at most a batch and one fragment, never a whole large change.
//!
//! Close codes: 1001 peer silent for two keepalive intervals, 1008 rate limit or unread
//! replies piling up, 1009 frame over [`MAX_FRAME_BYTES`], 1011 subscription ended
//! unexpectedly, 1012 service restart, 4001 token expired (after `auth_expired`).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::Instrument as _;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::error::ApiError;
use super::request::{self, Params};
use super::stream::{Connection, Streams};
use super::upgrade::{Handshake, WebSocket};
use crate::auth::{Authenticator, Identity};
use crate::resources::Catalog;
use crate::selection::Selection;
use crate::stats::{Activity, Report};
use crate::subscription::{Opened, Outbound, Transport};
use crate::wire::Delivery;

/// Largest frame (and message) the transport reads. tungstenite refuses a bigger one
/// without reading it, which leaves the stream unusable: the connection closes with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest client message handled. Between this and [`MAX_FRAME_BYTES`] a message gets
/// an `error` (`message_too_large`) and the connection stays open.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Largest frame payload sent: longer text messages go out in fragments of this size.
pub const FRAGMENT_BYTES: usize = 64 * 1024;
/// Frames gather in tungstenite's outgoing buffer until it holds more than this, or the
/// writer flushes. Small, because the buffer keeps its size for the connection's life.
const WRITE_BATCH_BYTES: usize = 8 * 1024;
/// Cap of tungstenite's outgoing buffer: a batch, the frame that completes it (at most
/// a fragment), and an automatic pong.
const MAX_WRITE_BUFFER_BYTES: usize = WRITE_BATCH_BYTES + 2 * FRAGMENT_BYTES;
/// Messages between the session loop and the writer: what one flush may cover.
const WRITE_QUEUE: usize = 32;
/// Replies (pong, error, heartbeat) a peer may leave unread before that counts as abuse.
const MAX_UNSENT: usize = 64;
/// Per-connection rate limit: more than this many frames within [`RATE_WINDOW`] closes
/// the connection with 1008.
pub const RATE_LIMIT_MESSAGES: u32 = 50;
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How long each closing step waits for the peer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Keepalive intervals without any frame from the peer before it counts as gone.
const DEAD_AFTER_INTERVALS: u32 = 2;

const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_RESTART: u16 = 1012;
const CLOSE_AUTH_EXPIRED: u16 = 4001;

/// Authenticates, then upgrades; a refused token gets the same 401 JSON as SSE.
pub async fn handle(
    auth: Arc<Authenticator>,
    catalog: Arc<Catalog>,
    streams: Arc<Streams>,
    activity: Arc<Activity>,
    handshake: Handshake,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    let context = SessionContext {
        catalog,
        streams,
        activity,
    };
    super::error::respond(upgrade(&auth, context, handshake, &headers, query.as_deref()).await)
}

/// What a session uses besides its connection: the watched types (a `subscribe`'s
/// are checked against them), the streams, and the activity (`get_stats`).
struct SessionContext {
    catalog: Arc<Catalog>,
    streams: Arc<Streams>,
    activity: Arc<Activity>,
}

async fn upgrade(
    auth: &Authenticator,
    context: SessionContext,
    handshake: Handshake,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = Params::parse_for(query, request::WS_PARAMS)?;
    // A malformed request is refused before anything else, as a bad query is.
    if let Handshake::Malformed(why) = handshake {
        return Err(ApiError::bad_request("invalid_websocket_handshake", why));
    }
    let identity = request::authenticate(auth, headers, &params).await?;
    let Handshake::Valid(ws) = handshake else {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "`/v1/ws` is a WebSocket endpoint; send a WebSocket upgrade request",
        ));
    };
    // Counted from the upgrade on, subscribed or not: idle sockets cannot bypass limits.
    let connection = context.streams.connect(&identity.tenant, Transport::Ws)?;
    Ok(ws.into_response(
        MAX_FRAME_BYTES,
        WRITE_BATCH_BYTES,
        MAX_WRITE_BUFFER_BYTES,
        move |socket| {
            // Spawned with a bare `tokio::spawn`: track it so shutdown waits.
            let tracker = context.streams.tracker().clone();
            let span = connection.span().clone();
            tracker.track_future(session(context, identity, connection, socket).instrument(span))
        },
    ))
}

async fn session(
    context: SessionContext,
    identity: Identity,
    connection: Connection,
    socket: WebSocket,
) {
    tracing::debug!("connected");
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let mut writer = pin!(write_frames(sink, rx));
    tokio::select! {
        // The writer only ends first when the socket failed: nobody left to tell.
        () = &mut writer => return,
        () = Session::new(context, identity, connection).run(&mut stream, tx) => {}
    }
    // The close frame is queued (or the peer's close answered): let it out and read until
    // the peer's reply, so the handshake completes cleanly, bounded against a vanished peer.
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = timeout(CLOSE_GRACE, futures_util::future::join(writer, drain)).await;
    tracing::debug!("disconnected");
}

/// Forwards queued frames, awaiting each write (backpressure), until a close frame or
/// the end of the queue; flushes whenever the queue runs empty. Then closes the sink,
/// which also flushes tungstenite's answer to a peer's close.
async fn write_frames(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut closing = false;
        let mut written = Ok(());
        while let Some(message) = next.take() {
            closing = message.is_close();
            written = feed(&mut sink, message).await;
            if closing || written.is_err() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if written.is_ok() {
            written = sink.flush().await;
        }
        if let Err(error) = written {
            if matches!(error, tungstenite::Error::WriteBufferFull(_)) {
                tracing::warn!("a message exceeds the WebSocket write buffer; closing");
                let close = close_with(CLOSE_TOO_BIG, "message exceeds the size limit");
                let _ = sink.send(close).await;
            } else {
                tracing::debug!(%error, "write failed");
            }
            // Still close: after a peer's close, this flushes tungstenite's answer.
            break;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Writes one message into the socket's buffer (which goes out once it holds a batch,
/// or on a flush), a long text message as fragments of at most [`FRAGMENT_BYTES`], each
/// awaited (so the buffer holds at most a batch and one fragment).
async fn feed(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
) -> Result<(), tungstenite::Error> {
    let text = match message {
        Message::Text(text) if text.len() > FRAGMENT_BYTES => Bytes::from(text),
        other => return sink.feed(other).await,
    };
    let mut start = 0;
    while start < text.len() {
        let end = text.len().min(start + FRAGMENT_BYTES);
        // Zero-copy slices of the shared bytes; a fragment may split a UTF-8 sequence,
        // which RFC 6455 allows (only the whole message must be valid UTF-8).
        let opcode = if start == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fragment = Frame::message(text.slice(start..end), opcode, end == text.len());
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

fn close_with(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// What the server writes, one JSON text frame each; `resource_change` is the change's
/// own pre-rendered §4 JSON.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    ConnectionEstablished {
        tenant_id: &'a str,
    },
    /// The effective selection; `null` means all (`filter`: none).
    SubscriptionConfirmed {
        /// Where this subscription starts: a `last_event_id` to resume from.
        id: &'a str,
        resource_types: Option<&'a [String]>,
        events: Option<Vec<&'static str>>,
        topics: Option<Vec<String>>,
        filter: Vec<&'a str>,
        ids: Option<&'a [String]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_txn_events: Option<usize>,
    },
    Stats(Report),
    Pong,
    Heartbeat,
    Resync {
        reason: &'a str,
        id: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
    AuthExpired,
}

impl ServerMessage<'_> {
    fn frame(&self) -> Message {
        Message::text(serde_json::to_string(self).expect("BUG: serialising a WS message"))
    }
}

/// `{"type":"subscribe", ...}`; every field optional, `null` like absent; any other
/// field is refused (a misspelt `filters` must not silently mean "everything").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    resource_types: Option<Vec<String>>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<Vec<String>>,
    #[serde(default, deserialize_with = "ids_as_text")]
    ids: Option<Vec<String>>,
    #[serde(default)]
    last_event_id: Option<String>,
    /// Any JSON value: a whole number is checked as the query's text, anything else refused.
    #[serde(default)]
    max_txn_events: Option<Value>,
}

/// What a client may send (API.md §6).
pub enum ClientMessage {
    Ping,
    Subscribe(Subscribe),
    Unsubscribe,
    GetStats,
}

/// Why a client message was refused: the `error` frame's code and message.
pub struct ClientError {
    pub code: &'static str,
    pub message: String,
}

/// Parses one text frame; the connection stays open whatever it holds.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ClientError> {
    let refuse = |code, message: String| Err(ClientError { code, message });
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return refuse("invalid_json", format!("not valid JSON: {error}")),
    };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return refuse(
            "invalid_message",
            "a message must be a JSON object with a string `type`".into(),
        );
    };
    match kind {
        "ping" => Ok(ClientMessage::Ping),
        "subscribe" => match serde_json::from_value::<Subscribe>(value) {
            Ok(subscribe) => Ok(ClientMessage::Subscribe(subscribe)),
            Err(error) => refuse("invalid_message", format!("bad `subscribe`: {error}")),
        },
        "unsubscribe" => Ok(ClientMessage::Unsubscribe),
        "get_stats" => Ok(ClientMessage::GetStats),
        _ => refuse(
            "unknown_type",
            "`type` must be one of: subscribe, unsubscribe, ping, get_stats".into(),
        ),
    }
}

impl Subscribe {
    /// The selection's raw lists, as the query's are (checked by `request::selection`).
    pub fn selection(&self) -> request::RawSelection<'_> {
        fn as_strs(list: &Option<Vec<String>>) -> Option<Vec<&str>> {
            list.as_ref()
                .map(|items| items.iter().map(String::as_str).collect())
        }
        request::RawSelection {
            types: as_strs(&self.resource_types),
            events: as_strs(&self.events),
            topics: as_strs(&self.topics),
            filter: as_strs(&self.filter),
            ids: as_strs(&self.ids),
            max_txn_events: self.max_txn_events.as_ref().map(|value| match value {
                Value::Number(number) if number.as_u64().is_some() => number.to_string(),
                // Only a JSON whole number is a count (not "5", 1.5, -1 or [5]); empty
                // text is what `request::max_txn_events` refuses for all of them.
                _ => String::new(),
            }),
        }
    }
}

/// Where a WebSocket connection's stream stands (see `Session::position`).
enum Position {
    After(Delivery),
    Cursor(String),
}

impl Position {
    fn into_cursor(self) -> String {
        match self {
            Position::After(delivery) => delivery.cursor_text().to_owned(),
            Position::Cursor(cursor) => cursor,
        }
    }
}

/// A resource id in `ids`: a string, or a number (as `resource_id` spells it).
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

fn ids_as_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let ids: Option<Vec<Id>> = Deserialize::deserialize(deserializer)?;
    Ok(ids.map(|ids| {
        ids.into_iter()
            .map(|id| match id {
                Id::Text(text) => text,
                Id::Number(number) => number.to_string(),
            })
            .collect()
    }))
}

/// How the session loop ends.
enum End {
    /// The peer closed or vanished: nothing more to send.
    PeerGone,
    /// Send what is queued, then close with this code and reason.
    Close(u16, &'static str),
}

struct Session {
    context: SessionContext,
    identity: Identity,
    /// Counted against the subscriber limits and in the series until it closes.
    connection: Connection,
    /// The current subscription, if any (dropping it ends it).
    subscription: Option<Opened>,
    /// Where this connection's stream stands while subscribed: the cursor of the last
    /// change or resync forwarded, else where the subscription started. A replacing
    /// `subscribe` resumes from it, so changing the filter loses nothing.
    position: Option<Position>,
    /// Frames for the writer, in order. Changes are only taken from the subscription
    /// while this is empty, so a slow reader holds back the subscription, not memory.
    unsent: VecDeque<Message>,
    /// When the peer last sent any frame (pongs included).
    last_heard: Instant,
    window_start: Instant,
    window_count: u32,
}

impl Session {
    fn new(context: SessionContext, identity: Identity, connection: Connection) -> Self {
        let now = Instant::now();
        Session {
            context,
            identity,
            connection,
            subscription: None,
            position: None,
            unsent: VecDeque::new(),
            last_heard: now,
            window_start: now,
            window_count: 0,
        }
    }

    async fn run(mut self, stream: &mut SplitStream<WebSocket>, tx: mpsc::Sender<Message>) {
        let end = self.serve(stream, &tx).await;
        let close = match end {
            End::PeerGone => return,
            End::Close(code, reason) => {
                tracing::debug!(code, reason, "closing");
                close_with(code, reason)
            }
        };
        // Bounded: a peer that does not read never gets them.
        let unsent = std::mem::take(&mut self.unsent);
        let _ = timeout(CLOSE_GRACE, async {
            for message in unsent.into_iter().chain([close]) {
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        tx: &mpsc::Sender<Message>,
    ) -> End {
        let hello = ServerMessage::ConnectionEstablished {
            tenant_id: self.identity.tenant.as_str(),
        };
        self.unsent.push_back(hello.frame());
        let mut tick = self.context.streams.keepalive();
        let keepalive = tick.period();
        // Made once, not once per turn of the loop: a turn per message otherwise
        // registers and removes a timer each time.
        let mut expiry = pin!(tokio::time::sleep_until(self.identity.expiry()));
        let shutdown = self.context.streams.shutdown().clone();
        loop {
            let writable = !self.unsent.is_empty();
            let end = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Some(End::Close(CLOSE_RESTART, "service restart")),
                // Also while not subscribed (a subscription reports expiry by itself).
                _ = &mut expiry => Some(self.auth_expired()),
                frame = stream.next() => self.on_frame(frame).await,
                permit = tx.reserve(), if writable => match permit {
                    Ok(permit) => {
                        permit.send(self.unsent.pop_front().expect("BUG: checked non-empty"));
                        None
                    }
                    Err(_) => Some(End::PeerGone),
                },
                item = next_outbound(&mut self.subscription), if !writable => self.on_outbound(item),
                _ = tick.tick() => self.on_tick(keepalive),
            };
            if let Some(end) = end.or_else(|| self.forward_ready(tx)) {
                return end;
            }
            if self.unsent.len() > MAX_UNSENT {
                return End::Close(CLOSE_POLICY, "too many unread messages");
            }
        }
    }

    /// Hands the writer what it has room for without waiting: queued replies, then the
    /// items the subscription has ready, so a burst of changes takes a turn of the
    /// session loop per [`WRITE_QUEUE`] messages, not two per message.
    fn forward_ready(&mut self, tx: &mpsc::Sender<Message>) -> Option<End> {
        loop {
            if self.unsent.is_empty() {
                // An ended subscription is left to the loop, which sees a shutdown first.
                let Ok(item) = self.subscription.as_mut()?.outbound.try_recv() else {
                    return None;
                };
                if let Some(end) = self.on_outbound(Some(item)) {
                    return Some(end);
                }
                continue;
            }
            match tx.try_reserve() {
                Ok(permit) => permit.send(self.unsent.pop_front().expect("BUG: checked non-empty")),
                Err(mpsc::error::TrySendError::Full(())) => return None,
                Err(mpsc::error::TrySendError::Closed(())) => return Some(End::PeerGone),
            }
        }
    }

    fn push(&mut self, message: &ServerMessage<'_>) {
        self.unsent.push_back(message.frame());
    }

    fn error(&mut self, code: &str, message: &str) {
        self.push(&ServerMessage::Error { code, message });
    }

    fn auth_expired(&mut self) -> End {
        self.push(&ServerMessage::AuthExpired);
        End::Close(CLOSE_AUTH_EXPIRED, "token expired")
    }

    fn on_outbound(&mut self, item: Option<Outbound>) -> Option<End> {
        match item {
            Some(Outbound::Event(delivery)) => {
                self.connection.delivered(&delivery);
                // The delivery itself (shared), not a copy of its cursor per event.
                self.position = Some(Position::After(delivery.clone()));
                // The JSON rendered once for every subscriber, shared, not copied.
                self.unsent
                    .push_back(Message::Text(delivery.frame().json.clone()));
                None
            }
            Some(Outbound::Resync(resync)) => {
                self.push(&ServerMessage::Resync {
                    reason: resync.reason.as_str(),
                    id: &resync.cursor,
                });
                self.position = Some(Position::Cursor(resync.cursor));
                None
            }
            Some(Outbound::AuthExpired) => Some(self.auth_expired()),
            // Shutdown and expiry are seen first; anything else is unexpected.
            None => {
                tracing::warn!("subscription ended unexpectedly");
                Some(End::Close(CLOSE_INTERNAL, "subscription ended; reconnect"))
            }
        }
    }

    fn on_tick(&mut self, keepalive: Duration) -> Option<End> {
        if self.last_heard.elapsed() >= keepalive * DEAD_AFTER_INTERVALS {
            return Some(End::Close(CLOSE_GOING_AWAY, "no answer to pings"));
        }
        self.push(&ServerMessage::Heartbeat);
        // Answered by the peer's WebSocket stack; any frame back proves it alive.
        self.unsent.push_back(Message::Ping(Default::default()));
        None
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<End> {
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                if let tungstenite::Error::Capacity(too_big) = &error {
                    tracing::debug!(%too_big, "frame over the limit");
                    return Some(End::Close(CLOSE_TOO_BIG, "message too large"));
                }
                tracing::debug!(%error, "read failed");
                return Some(End::PeerGone);
            }
            None => return Some(End::PeerGone),
        };
        self.last_heard = Instant::now();
        if self.over_rate_limit() {
            return Some(End::Close(CLOSE_POLICY, "rate limit exceeded"));
        }
        if message.is_close() {
            // tungstenite queued its answer; closing the sink sends it.
            return Some(End::PeerGone);
        }
        if message.is_binary() {
            self.error(
                "binary_not_supported",
                "only text frames holding one JSON object are understood",
            );
            return None;
        }
        // Pings are answered by tungstenite; pongs only prove the peer alive.
        let Message::Text(text) = &message else {
            return None;
        };
        if text.len() > MAX_MESSAGE_BYTES {
            self.error(
                "message_too_large",
                &format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
            );
            return None;
        }
        self.on_text(text).await;
        None
    }

    fn over_rate_limit(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= RATE_WINDOW {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        self.window_count > RATE_LIMIT_MESSAGES
    }

    async fn on_text(&mut self, text: &str) {
        match parse_client_message(text) {
            Err(ClientError { code, message }) => self.error(code, &message),
            Ok(ClientMessage::Ping) => self.push(&ServerMessage::Pong),
            Ok(ClientMessage::Subscribe(subscribe)) => self.subscribe(subscribe).await,
            Ok(ClientMessage::Unsubscribe) => {
                self.subscription = None;
                self.position = None;
            }
            Ok(ClientMessage::GetStats) if !self.identity.scope.allows_stats() => self.error(
                "forbidden",
                "the token's scope does not allow statistics (`stats: false`)",
            ),
            Ok(ClientMessage::GetStats) => {
                let context = &self.context;
                let report = super::stats::report(
                    &context.activity,
                    &context.streams,
                    &self.identity.tenant,
                    &self.identity.scope,
                );
                self.push(&ServerMessage::Stats(report));
            }
        }
    }

    /// Opens a subscription, replacing any current one; on a bad selection the current
    /// one stays as it was.
    async fn subscribe(&mut self, subscribe: Subscribe) {
        let selection = match request::selection(
            &self.context.catalog,
            subscribe.selection(),
            &self.identity.scope,
        )
        .await
        {
            Ok(selection) => selection,
            Err(error) => return self.error(error.code, &error.message),
        };
        // The client's cursor wins; else a replaced subscription continues from where this
        // connection stands (changes it had not forwarded yet are replayed, none lost).
        let resume = subscribe
            .last_event_id
            .filter(|cursor| !cursor.trim().is_empty())
            .or_else(|| self.position.take().map(Position::into_cursor));
        self.subscription = None;
        let opened = self
            .context
            .streams
            .open(&self.identity, selection.clone(), resume);
        self.position = Some(Position::Cursor(opened.start.clone()));
        // Only now: `open` joined the fan-out, so every later commit will be delivered.
        self.push(&confirmation(&opened.start, &selection));
        self.subscription = Some(opened);
    }
}

fn confirmation<'a>(id: &'a str, selection: &'a Selection) -> ServerMessage<'a> {
    ServerMessage::SubscriptionConfirmed {
        id,
        resource_types: selection.types.as_deref(),
        events: selection
            .events
            .as_ref()
            .map(|events| events.iter().map(|e| e.as_str()).collect()),
        topics: selection
            .topics
            .as_ref()
            .map(|topics| topics.iter().map(ToString::to_string).collect()),
        filter: selection.rows.iter().map(|row| row.text.as_str()).collect(),
        ids: selection.ids.as_deref(),
        max_txn_events: selection.max_txn_events,
    }
}

async fn next_outbound(subscription: &mut Option<Opened>) -> Option<Outbound> {
    match subscription {
        Some(opened) => opened.outbound.recv().await,
        None => std::future::pending().await,
    }
}
