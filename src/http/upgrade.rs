//! The WebSocket handshake, done here rather than by `warp::ws()`: warp offers no way to
//! set tungstenite's read and write buffers, whose 128 KiB defaults made each idle
//! WebSocket cost about 140 KiB. With small buffers an idle socket costs a few KiB; a
//! message larger than the buffer still arrives (the buffer grows while it is read).

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

/// `Some` for a valid WebSocket upgrade request (RFC 6455 §4.2.1), `None` for any other.
pub fn upgrade_request(
) -> impl Filter<Extract = (Option<Upgrade>,), Error = std::convert::Infallible> + Clone {
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
            let valid = wants("connection", "upgrade")
                && wants("upgrade", "websocket")
                && wants("sec-websocket-version", "13");
            match (valid, headers.typed_get::<SecWebsocketKey>(), on_upgrade) {
                (true, Some(key), Some(on_upgrade)) => Some(Upgrade { key, on_upgrade }),
                _ => None,
            }
        })
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `session` on the socket once the
    /// client has it. `max_frame_bytes` bounds what a client may send; every send is
    /// awaited, so the outgoing buffer holds one message at a time, capped at
    /// `max_write_bytes` (beyond, the send fails instead of growing memory).
    pub fn into_response<F, Fut>(
        self,
        max_frame_bytes: usize,
        max_write_bytes: usize,
        session: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
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
