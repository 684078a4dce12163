//! The WebSocket handshake, done here rather than by `warp::ws()`: warp offers no way to
//! set tungstenite's read and write buffers, whose 128 KiB defaults would make each
//! idle WebSocket cost about that much. With small buffers an idle socket costs a few KiB; a
//! message larger than the buffer still arrives (the buffer grows while it is read).
//! A handshake that RFC 6455 calls malformed is refused with 400, never upgraded.

use base64::Engine as _;
use headers::{HeaderMapExt as _, SecWebsocketAccept, SecWebsocketKey};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Filter;

pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Bytes read from the socket at a time (tungstenite's default: 128 KiB).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// A request asking for a WebSocket, not upgraded yet.
pub struct Upgrade {
    key: SecWebsocketKey,
    on_upgrade: OnUpgrade,
}

/// What a request to a WebSocket endpoint asks for.
pub enum Handshake {
    /// A valid WebSocket upgrade request (RFC 6455 §4.2.1).
    Valid(Upgrade),
    /// An upgrade to WebSocket version 13 whose `Sec-WebSocket-Key` is missing, repeated
    /// or not 16 bytes in base64 (RFC 6455 §4.1): a 400, with why.
    Malformed(&'static str),
    /// No WebSocket upgrade (or another protocol version).
    Absent,
}

/// The length RFC 6455 §4.1 requires of a decoded `Sec-WebSocket-Key`.
const KEY_BYTES: usize = 16;

/// What the request's headers ask for: see [`Handshake`].
pub fn upgrade_request(
) -> impl Filter<Extract = (Handshake,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .map(|headers: HeaderMap, on_upgrade: Option<OnUpgrade>| {
            let wants = |name: &str, value: &str| {
                headers.get_all(name).iter().any(|v| {
                    v.to_str().is_ok_and(|v| {
                        v.split(',')
                            .any(|part| part.trim().eq_ignore_ascii_case(value))
                    })
                })
            };
            let upgrading = wants("connection", "upgrade")
                && wants("upgrade", "websocket")
                && wants("sec-websocket-version", "13");
            let Some(on_upgrade) = on_upgrade.filter(|_| upgrading) else {
                return Handshake::Absent;
            };
            if let Err(why) = check_key(&headers) {
                return Handshake::Malformed(why);
            }
            match headers.typed_get::<SecWebsocketKey>() {
                Some(key) => Handshake::Valid(Upgrade { key, on_upgrade }),
                None => Handshake::Malformed(MALFORMED_KEY),
            }
        })
}

const MALFORMED_KEY: &str =
    "a WebSocket handshake needs one `Sec-WebSocket-Key`: 16 random bytes in base64";

/// Exactly one `Sec-WebSocket-Key`, decoding to 16 bytes.
fn check_key(headers: &HeaderMap) -> Result<(), &'static str> {
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(MALFORMED_KEY);
    };
    match base64::engine::general_purpose::STANDARD.decode(key.as_bytes()) {
        Ok(bytes) if bytes.len() == KEY_BYTES => Ok(()),
        _ => Err(MALFORMED_KEY),
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `session` on the socket once the
    /// client has it. `max_frame_bytes` bounds what a client may send. Frames sent
    /// gather in the outgoing buffer until it holds more than `batch_write_bytes` (or the
    /// session flushes), so a burst of small messages costs a socket write per batch,
    /// not per message; the buffer is capped at `max_write_bytes` (beyond, the send
    /// fails instead of growing memory).
    pub fn into_response<F, Fut>(
        self,
        max_frame_bytes: usize,
        batch_write_bytes: usize,
        max_write_bytes: usize,
        session: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(batch_write_bytes)
            .max_write_buffer_size(max_write_bytes)
            .max_frame_size(Some(max_frame_bytes))
            .max_message_size(Some(max_frame_bytes));
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    session(socket).await;
                }
                Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
            }
        });
        let mut response = Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert("connection", "upgrade".parse().expect("BUG: static header"));
        headers.insert("upgrade", "websocket".parse().expect("BUG: static header"));
        headers.typed_insert(SecWebsocketAccept::from(self.key));
        response
    }
}
