//! The tests' one Server-Sent Events client: [`parse_block`] reads one event block as
//! the WHATWG EventSource does; [`SseStream`] reads a response body with it.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;

use crate::helpers::WAIT;

/// One event block of a Server-Sent Events stream (its lines up to a blank line), its
/// fields as the WHATWG EventSource reads them.
#[derive(Debug, Default)]
pub struct SseBlock {
    pub id: Option<String>,
    /// `message` unless the block names another.
    pub event: String,
    /// The `data` lines joined by newlines; `None` without any (no event is dispatched).
    pub data: Option<String>,
    /// The last `retry` field's value, unparsed.
    pub retry: Option<String>,
    /// Comment lines (`:`, e.g. keepalives).
    pub comments: usize,
}

/// Reads one event block: each line a `field: value` (the one space after the colon is
/// not part of the value), a comment, or a field with no value.
pub fn parse_block(block: &str) -> SseBlock {
    let mut parsed = SseBlock {
        event: "message".to_owned(),
        ..SseBlock::default()
    };
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            parsed.comments += 1;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => parsed.id = Some(value.to_owned()),
            "event" => parsed.event = value.to_owned(),
            "data" => data.push(value),
            "retry" => parsed.retry = Some(value.to_owned()),
            _ => {}
        }
    }
    if !data.is_empty() {
        parsed.data = Some(data.join("\n"));
    }
    parsed
}

/// A Server-Sent Events stream, parsed as the WHATWG EventSource does.
pub struct SseStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub retry: Option<u64>,
    pub comments: usize,
    pub last_event_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> Self {
        SseStream {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            retry: None,
            comments: 0,
            last_event_id: None,
        }
    }

    /// The next event, or `None` if the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .ok()
            .flatten()
    }

    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.dispatch(&block) {
                    return Some(event);
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The event `block` dispatches, if any; notes its comments, `retry` and `id`.
    fn dispatch(&mut self, block: &str) -> Option<SseEvent> {
        let block = parse_block(block);
        self.comments += block.comments;
        if let Some(retry) = &block.retry {
            self.retry = retry.parse().ok();
        }
        if let Some(id) = &block.id {
            self.last_event_id = Some(id.clone());
        }
        let data = serde_json::from_str(&block.data?).expect("SSE data is JSON");
        Some(SseEvent {
            id: block.id,
            event: block.event,
            data,
        })
    }

    /// Reads `resource_change` events until `n` distinct resources arrived (bounded by
    /// [`WAIT`]); returns every change event read, in order.
    pub async fn changes_until(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut distinct = HashSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while distinct.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_within(left).await else {
                break;
            };
            if event.event == "resource_change" {
                distinct.insert(resource_key(&event));
                events.push(event);
            }
        }
        events
    }

    /// Reads `resource_change` events until every id in `expected` arrived (bounded by
    /// [`WAIT`]); returns the ids of every resource received, expected or not.
    pub async fn receive_ids(&mut self, expected: &HashSet<String>) -> HashSet<String> {
        let mut received = HashSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !expected.is_subset(&received) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_within(left).await else {
                break;
            };
            if event.event == "resource_change" {
                received.insert(event.data["resource"]["id"].as_str().unwrap().to_owned());
            }
        }
        received
    }

    /// Asserts that no `resource_change` arrives within `quiet`.
    pub async fn assert_no_change_within(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_within(left).await {
                Some(event) if event.event == "resource_change" => {
                    panic!("unexpected change: {:?}", event.data)
                }
                Some(_) => continue,
                None => return,
            }
        }
    }
}

/// `event:resource_id` — what "a change of a resource" means in set comparisons.
pub fn resource_key(event: &SseEvent) -> String {
    format!(
        "{}:{}",
        event.data["event"].as_str().unwrap_or(""),
        event.data["resource"]["id"].as_str().unwrap_or("")
    )
}

/// The next `n` events with data (any name), bounded by [`WAIT`].
pub async fn next_events(stream: &mut SseStream, n: usize) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match stream.next_within(left).await {
            Some(event) => events.push(event),
            None => panic!("got {} of {n} events: {events:?}", events.len()),
        }
    }
    events
}
