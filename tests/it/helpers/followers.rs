//! Subscribers that resume: like a browser's EventSource (or the WebSocket client), a
//! [`Follower`] reconnects whenever its stream ends, passing its last cursor.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::helpers::rng::Rng;
use crate::helpers::{
    assert_nothing_lost, change_id, eventually, token, ws_handshake, SseStream, WAIT,
};

#[derive(Clone, Copy, Debug)]
pub enum Via {
    Sse,
    Ws,
}

/// What a follower subscribes to.
#[derive(Clone)]
pub struct Interest {
    pub via: Via,
    pub tenant: String,
    /// Resource types (`None`: all).
    pub types: Option<Vec<&'static str>>,
}

impl Interest {
    pub fn new(via: Via, tenant: &str, types: Option<Vec<&'static str>>) -> Self {
        Interest {
            via,
            tenant: tenant.to_owned(),
            types,
        }
    }

    pub fn wants(&self, tenant: &str, resource_type: &str) -> bool {
        self.tenant == tenant
            && self
                .types
                .as_ref()
                .is_none_or(|t| t.contains(&resource_type))
    }
}

#[derive(Default)]
pub struct Received {
    /// Every `resource_change`, in arrival order, duplicates included.
    pub changes: Vec<Value>,
    pub resyncs: Vec<Value>,
    /// Streams opened (the first one included).
    pub connections: usize,
    /// Attempts that found no service (it was down).
    pub refused: usize,
    /// What happened, in order: streams opened (with their cursor) and changes; shown
    /// when a follower's share does not add up.
    pub trace: Vec<String>,
}

/// A subscriber that reconnects with its last cursor whenever its stream ends — or, with
/// a `dropper`, of its own accord after a random number of changes.
pub struct Follower {
    pub interest: Interest,
    pub received: Arc<Mutex<Received>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Follower {
    /// Returns once the first stream is confirmed (SSE: headers; WS:
    /// `subscription_confirmed`): every change committed from then on is owed to it.
    pub async fn start(
        addr: watch::Receiver<String>,
        interest: Interest,
        dropper: Option<Rng>,
    ) -> Follower {
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            addr,
            interest.clone(),
            dropper,
            received.clone(),
            stop.clone(),
        ));
        let follower = Follower {
            interest,
            received,
            stop,
            task,
        };
        eventually("a follower's first stream is confirmed", || async {
            follower.received.lock().unwrap().connections > 0
        })
        .await;
        follower
    }

    /// The resource ids of every change received so far.
    pub fn ids(&self) -> HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .changes
            .iter()
            .map(change_id)
            .collect()
    }

    /// Waits until every id in `expected` arrived (bounded); the ids received.
    async fn receive_all(&self, expected: &HashSet<String>) -> HashSet<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ids = self.ids();
            if expected.is_subset(&ids) || Instant::now() >= deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Received {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("a follower did not stop")
            .expect("a follower panicked");
        Arc::try_unwrap(self.received)
            .ok()
            .expect("the follower's task has ended")
            .into_inner()
            .unwrap()
    }
}

async fn follow(
    addr: watch::Receiver<String>,
    interest: Interest,
    mut dropper: Option<Rng>,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
) {
    let token = token(&interest.tenant);
    let http = reqwest::Client::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    while !stop.is_cancelled() {
        let addr = addr.borrow().clone();
        // Changes to read before dropping the stream of our own accord.
        let budget = dropper.as_mut().map(|rng| 1 + rng.below(12) as usize);
        let mut read = 0;
        // Like an EventSource, the cursor is the id of the last event received, repeats
        // included; the random drops count changes not seen before, so that a resume
        // whose replay starts with many repeats still makes progress.
        let mut record = |message: Value, cursor: &mut Option<String>| -> bool {
            let mut received = received.lock().unwrap();
            match message["type"].as_str() {
                Some("resource_change") => {
                    *cursor = message["id"].as_str().map(str::to_owned);
                    let new = seen.insert(cursor.clone().unwrap_or_default());
                    let line = format!(
                        "  {} {}{}",
                        received_key(&message),
                        message["id"].as_str().unwrap_or(""),
                        if new { "" } else { " (repeat)" }
                    );
                    received.trace.push(line);
                    received.changes.push(message);
                    new
                }
                Some("resync") => {
                    if let Some(id) = message["id"].as_str() {
                        *cursor = Some(id.to_owned());
                    }
                    received.resyncs.push(message);
                    false
                }
                _ => false,
            }
        };
        match interest.via {
            Via::Sse => {
                let mut query = String::new();
                if let Some(types) = &interest.types {
                    query = format!("types={}", types.join(","));
                }
                let mut request = http
                    .get(format!("http://{addr}/v1/events?{query}"))
                    .bearer_auth(&token);
                if let Some(cursor) = &cursor {
                    request = request.header("last-event-id", cursor);
                }
                let response = tokio::select! {
                    _ = stop.cancelled() => return,
                    response = tokio::time::timeout(Duration::from_secs(5), request.send()) => response,
                };
                let response = match response {
                    Ok(Ok(response)) if response.status() == 200 => response,
                    Ok(Ok(response)) => panic!(
                        "SSE refused: {} {:?}",
                        response.status(),
                        response.text().await
                    ),
                    _ => {
                        received.lock().unwrap().refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                {
                    let mut received = received.lock().unwrap();
                    received.connections += 1;
                    received.trace.push(format!("stream from {cursor:?}"));
                }
                let mut stream = SseStream::new(response);
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        event = stream.next_event() => event,
                    };
                    let Some(event) = event else { break };
                    let mut message = event.data;
                    if event.event == "resync" && message.get("type").is_none() {
                        message["type"] = "resync".into();
                    }
                    if record(message, &mut cursor) {
                        read += 1;
                        if Some(read) == budget {
                            break;
                        }
                    }
                }
                if let Some(id) = stream.last_event_id {
                    cursor = Some(id);
                }
            }
            Via::Ws => {
                let connected = tokio::select! {
                    _ = stop.cancelled() => return,
                    connected = tokio::time::timeout(
                        Duration::from_secs(5),
                        ws_handshake(&addr, Some(&token), ""),
                    ) => connected,
                };
                let Ok(Ok(mut socket)) = connected else {
                    received.lock().unwrap().refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut subscribe = json!({"type": "subscribe"});
                if let Some(types) = &interest.types {
                    subscribe["resource_types"] = json!(types);
                }
                if let Some(cursor) = &cursor {
                    subscribe["last_event_id"] = json!(cursor);
                }
                if socket
                    .send(Message::text(subscribe.to_string()))
                    .await
                    .is_err()
                {
                    continue;
                }
                loop {
                    let frame = tokio::select! {
                        _ = stop.cancelled() => return,
                        frame = socket.next() => frame,
                    };
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let message: Value = serde_json::from_str(&text).expect("server sent JSON");
                    if message["type"] == "subscription_confirmed" {
                        let mut received = received.lock().unwrap();
                        received.connections += 1;
                        received.trace.push(format!("stream from {cursor:?}"));
                    }
                    if message["type"] == "error" {
                        panic!("the server refused the subscription: {message}");
                    }
                    if record(message, &mut cursor) {
                        read += 1;
                        if Some(read) == budget {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Every id written by `tenant` arrived at each follower (within [`WAIT`]), and nothing
/// else did; no follower was told to resync. Returns (written, the least received).
pub async fn assert_all_followers_got(
    followers: &[Follower],
    written: &HashSet<String>,
) -> (usize, usize) {
    let mut least = usize::MAX;
    for follower in followers {
        let received = follower.receive_all(written).await;
        assert_nothing_lost(written, &received, &HashSet::new());
        least = least.min(received.len());
        let resyncs = follower.received.lock().unwrap().resyncs.clone();
        assert!(
            resyncs.is_empty(),
            "{:?} was told to resync: {resyncs:?}",
            follower.interest.via
        );
    }
    (written.len(), least)
}

/// The key of a received `resource_change`: `event:id:mark`, the mark being the row's
/// title (ticket) or name (agent), which the writers of the fault tests make unique per
/// write.
pub fn received_key(change: &Value) -> String {
    let resource = &change["resource"];
    let mark = resource["title"]
        .as_str()
        .or(resource["name"].as_str())
        .unwrap_or("");
    format!(
        "{}:{}:{}",
        change["event"].as_str().unwrap_or(""),
        change_id(change),
        mark
    )
}
