//! The tests' one WebSocket client of `/v1/ws`: [`ws_handshake`] opens the socket,
//! [`WsClient`] reads and writes its JSON messages.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::WAIT;

/// A socket of `/v1/ws` once upgraded.
pub type WsSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket handshake on `ws://{addr}/v1/ws?{query}`, with a bearer token if given,
/// as tungstenite reports it; not bounded in time (callers bound it as they need).
pub async fn ws_handshake(
    addr: &str,
    token: Option<&str>,
    query: &str,
) -> Result<WsSocket, tungstenite::Error> {
    let url = if query.is_empty() {
        format!("ws://{addr}/v1/ws")
    } else {
        format!("ws://{addr}/v1/ws?{query}")
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// A WebSocket handshake on `ws://{addr}/v1/ws?{query}`, with a bearer token if given:
/// the socket, or the refusal's HTTP status and JSON body.
pub async fn ws_connect(
    addr: &str,
    token: Option<&str>,
    query: &str,
) -> Result<WsClient, (u16, Value)> {
    let connected = tokio::time::timeout(WAIT, ws_handshake(addr, token, query))
        .await
        .expect("WebSocket handshake timed out");
    match connected {
        Ok(socket) => Ok(WsClient {
            socket,
            close: None,
        }),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                serde_json::from_slice(&body)
                    .unwrap_or(Value::String(String::from_utf8_lossy(&body).into())),
            ))
        }
        Err(error) => panic!("WebSocket handshake failed: {error}"),
    }
}

/// A WebSocket client of `/v1/ws`, reading one JSON object per text frame.
pub struct WsClient {
    pub socket: WsSocket,
    /// The server's close frame (code, reason), once one arrived.
    pub close: Option<(u16, String)>,
}

impl WsClient {
    pub async fn send_json(&mut self, message: Value) {
        self.send(Message::text(message.to_string())).await;
    }

    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.socket.send(message))
            .await
            .expect("WebSocket send timed out")
            .expect("WebSocket send failed");
    }

    /// The next frame of any kind, or `None` if the socket ended or nothing came in time.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Message> {
        let frame = tokio::time::timeout(wait, self.socket.next())
            .await
            .ok()??;
        let frame = frame.ok()?;
        if let Message::Close(Some(close)) = &frame {
            self.close = Some((close.code.into(), close.reason.to_string()));
        }
        Some(frame)
    }

    /// The next JSON message (protocol pings and pongs skipped), or `None` if the socket
    /// closed (see [`WsClient::close`]) or nothing came within `wait`.
    pub async fn next_json_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await? {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("server sent JSON"))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next message that is not a `heartbeat`; panics unless it is of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let message = self
                .next_json_within(WAIT)
                .await
                .unwrap_or_else(|| panic!("no {kind:?} message; closed: {:?}", self.close));
            if message["type"] == "heartbeat" && kind != "heartbeat" {
                continue;
            }
            assert_eq!(message["type"], kind, "unexpected message: {message}");
            return message;
        }
    }

    /// Skips messages until one of type `kind` arrives (bounded by [`WAIT`]).
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json_within(left).await {
                Some(message) if message["type"] == kind => return message,
                Some(_) => continue,
                None => panic!("no {kind:?} message; closed: {:?}", self.close),
            }
        }
    }

    /// Subscribes and waits for the confirmation; returns it.
    pub async fn subscribe(&mut self, subscribe: Value) -> Value {
        let mut message = subscribe;
        message["type"] = "subscribe".into();
        self.send_json(message).await;
        self.next_of_type("subscription_confirmed").await
    }

    /// An app-level ping answered by a pong: the connection is usable.
    pub async fn assert_usable(&mut self) {
        self.send_json(serde_json::json!({"type": "ping"})).await;
        self.expect("pong").await;
    }

    /// Reads (skipping everything else) until the server's close frame; its code and
    /// reason, or `None` if the socket ended without one or nothing came within `wait`.
    pub async fn close_within(&mut self, wait: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.close.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.next_frame_within(left).await?;
        }
        self.close.clone()
    }

    /// Reads `resource_change` messages until every resource id in `expected` arrived
    /// (bounded by [`WAIT`]); returns every change read, in order.
    pub async fn changes_until_ids(&mut self, expected: &HashSet<String>) -> Vec<Value> {
        let mut changes = Vec::new();
        let mut received = HashSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !expected.is_subset(&received) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(message) = self.next_json_within(left).await else {
                break;
            };
            if message["type"] == "resource_change" {
                received.insert(change_id(&message));
                changes.push(message);
            }
        }
        changes
    }

    /// The resource ids of the `resource_change` messages read until every id in
    /// `expected` arrived (bounded by [`WAIT`]).
    pub async fn receive_ids(&mut self, expected: &HashSet<String>) -> HashSet<String> {
        self.changes_until_ids(expected)
            .await
            .iter()
            .map(change_id)
            .collect()
    }

    /// Asserts that no `resource_change` arrives within `quiet`.
    pub async fn assert_no_change_within(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json_within(left).await {
                Some(message) if message["type"] == "resource_change" => {
                    panic!("unexpected change: {message}")
                }
                Some(_) => continue,
                None => return,
            }
        }
    }
}

/// The resource id of a `resource_change` message.
pub fn change_id(message: &Value) -> String {
    message["resource"]["id"].as_str().unwrap_or("").to_owned()
}
