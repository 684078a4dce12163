//! Subscribers as the bench sees them: a raw-socket SSE client, a WebSocket client, and
//! the per-subscriber record of what arrived when. Cheap per connection (one task and a
//! few kilobytes), so ten thousand fit beside the service on one machine.
//!
//! Every benchmark row carries its sequence number in its title (`bench~<seq>~`), which
//! is all a client reads from a change: no JSON parsing on the hot path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::Histogram;

const MARKER: &[u8] = b"bench~";
const READ_CHUNK: usize = 16 * 1024;

/// The title of benchmark row `seq`.
pub fn title(seq: u64) -> String {
    format!("bench~{seq}~")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The sequence number of the benchmark row in `text` (a change's JSON or SSE frame).
pub fn parse_seq(text: &[u8]) -> Option<u64> {
    let start = find(text, MARKER)? + MARKER.len();
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&text[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// State shared by writers and readers of one measurement.
pub struct Shared {
    base: Instant,
    /// Per row: nanoseconds since `base` at which its writer's COMMIT returned (0: not yet).
    pub committed: Vec<AtomicU64>,
    /// Rows from this sequence number on are in the measured window.
    pub measure_from: AtomicU64,
    /// Distinct rows received, summed over all subscribers: progress without locks.
    pub received: AtomicU64,
    /// Subscribers whose stream is open (SSE first bytes, WS `subscription_confirmed`).
    pub ready: AtomicUsize,
}

impl Shared {
    pub fn new(rows: usize) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            committed: (0..rows).map(|_| AtomicU64::new(0)).collect(),
            measure_from: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Receipt latency of row `seq` received now: from its COMMIT returning to the writer;
    /// zero when the row arrived before the writer heard back. `None` outside the window.
    pub fn latency_ns(&self, seq: u64, now_ns: u64) -> Option<u64> {
        if seq < self.measure_from.load(Ordering::Relaxed) {
            return None;
        }
        let committed = self.committed.get(seq as usize)?.load(Ordering::Acquire);
        Some(if committed == 0 {
            0
        } else {
            now_ns.saturating_sub(committed)
        })
    }
}

/// What one subscriber received.
pub struct Tracker {
    pub tenant: u64,
    tenants: u64,
    /// Bit per row of this tenant (row `seq` is bit `seq / tenants`).
    seen: Vec<u64>,
    pub distinct: u64,
    pub duplicates: u64,
    pub resyncs: u64,
    pub latency: Histogram,
    /// When the subscriber asked, and when it had `until` rows (nanoseconds of `Shared`).
    pub started_ns: u64,
    pub done_ns: Option<u64>,
    /// When the first and the latest distinct row arrived (nanoseconds of `Shared`).
    pub first_ns: Option<u64>,
    pub last_ns: u64,
    /// The first cursor the service gave (SSE preamble `id:`, WS `subscription_confirmed`).
    pub cursor: Option<String>,
    pub error: Option<String>,
}

impl Tracker {
    fn new(tenant: u64, tenants: u64) -> Self {
        Tracker {
            tenant,
            tenants,
            seen: Vec::new(),
            distinct: 0,
            duplicates: 0,
            resyncs: 0,
            latency: Histogram::default(),
            started_ns: 0,
            done_ns: None,
            first_ns: None,
            last_ns: 0,
            cursor: None,
            error: None,
        }
    }

    pub fn has(&self, seq: u64) -> bool {
        let bit = seq / self.tenants;
        self.seen
            .get((bit / 64) as usize)
            .is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    fn deliver(&mut self, seq: u64, shared: &Shared) {
        let now = shared.now_ns();
        let bit = seq / self.tenants;
        let word = (bit / 64) as usize;
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << (bit % 64)) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << (bit % 64);
        self.distinct += 1;
        self.first_ns.get_or_insert(now);
        self.last_ns = now;
        shared.received.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = shared.latency_ns(seq, now) {
            self.latency.record_ns(latency);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WS",
        }
    }
}

/// One subscriber to start.
pub struct Subscriber {
    pub addr: SocketAddr,
    pub transport: Transport,
    pub token: String,
    pub tenant: u64,
    pub tenants: u64,
    /// Resume from this cursor (`Last-Event-ID` / `last_event_id`).
    pub resume: Option<String>,
    /// Stop after this many distinct rows (catch-up modes); else run until cancelled.
    pub until: Option<u64>,
    /// Ask for a `bulk_change` resync instead of a transaction's events beyond this many
    /// (API.md §5 `max_txn_events`); with `until`, a resync then ends the subscriber too.
    pub max_txn_events: Option<u64>,
}

impl Subscriber {
    /// Subscribes and records until cancelled, `until` is reached or the stream ends.
    pub async fn run(self, shared: Arc<Shared>, cancel: CancellationToken) -> Tracker {
        let mut tracker = Tracker::new(self.tenant, self.tenants);
        tracker.started_ns = shared.now_ns();
        let outcome = match self.transport {
            Transport::Sse => {
                let request = self.sse_request();
                self.sse(&request, &shared, &cancel, &mut tracker).await
            }
            Transport::Ws => self.ws(&shared, &cancel, &mut tracker).await,
        };
        if let Err(error) = outcome {
            tracker.error = Some(format!("{error:#}"));
        }
        tracker
    }

    /// Subscribes to the Node bridge of benches/node-bridge at `addr` as its clients do
    /// (`GET /events?tenant=t<n>`, no token), and records until cancelled or the stream ends.
    pub async fn run_on_node_bridge(
        self,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Tracker {
        let mut tracker = Tracker::new(self.tenant, self.tenants);
        tracker.started_ns = shared.now_ns();
        let request = format!(
            "GET /events?tenant=t{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.tenant, self.addr
        );
        if let Err(error) = self.sse(&request, &shared, &cancel, &mut tracker).await {
            tracker.error = Some(format!("{error:#}"));
        }
        tracker
    }

    /// The request head of a changecast SSE subscription.
    fn sse_request(&self) -> String {
        let query = match self.max_txn_events {
            Some(n) => format!("?max_txn_events={n}"),
            None => String::new(),
        };
        let mut request = format!(
            "GET /v1/events{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n",
            self.addr, self.token
        );
        if let Some(cursor) = &self.resume {
            request.push_str(&format!("Last-Event-ID: {cursor}\r\n"));
        }
        request.push_str("\r\n");
        request
    }

    fn done(&self, tracker: &mut Tracker, shared: &Shared) -> bool {
        match self.until {
            Some(until)
                if tracker.distinct >= until
                    || (self.max_txn_events.is_some() && tracker.resyncs > 0) =>
            {
                tracker.done_ns.get_or_insert_with(|| shared.now_ns());
                true
            }
            _ => false,
        }
    }

    /// Sends `request` (a complete request head) and reads the SSE stream it opens.
    async fn sse(
        &self,
        request: &str,
        shared: &Shared,
        cancel: &CancellationToken,
        tracker: &mut Tracker,
    ) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        write_all(&stream, request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(READ_CHUNK);
        let head_end = loop {
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                break end;
            }
            if read_some(&stream, &mut raw, cancel).await? == 0 {
                bail!("connection closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!(
                "{}",
                String::from_utf8_lossy(&raw)
                    .lines()
                    .next()
                    .unwrap_or("no status")
            );
        }
        let mut chunked = head
            .contains("transfer-encoding: chunked")
            .then_some(Chunked::Size);
        raw.drain(..head_end + 4);
        let mut body = Vec::with_capacity(READ_CHUNK);
        let mut ready = false;
        loop {
            match &mut chunked {
                Some(state) => state.decode(&mut raw, &mut body)?,
                None => body.append(&mut raw),
            }
            let mut consumed = 0;
            while let Some(end) = find(&body[consumed..], b"\n\n") {
                let frame = &body[consumed..consumed + end];
                if !ready {
                    ready = true;
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(seq) = parse_seq(frame) {
                    tracker.deliver(seq, shared);
                } else if find(frame, b"event: resync").is_some()
                    || find(frame, b"event:resync").is_some()
                {
                    tracker.resyncs += 1;
                } else if tracker.cursor.is_none() {
                    tracker.cursor = frame
                        .split(|b| *b == b'\n')
                        .find_map(|line| line.strip_prefix(b"id:"))
                        .map(|id| String::from_utf8_lossy(id).trim().to_owned());
                }
                consumed += end + 2;
            }
            body.drain(..consumed);
            if self.done(tracker, shared) {
                return Ok(());
            }
            if read_some(&stream, &mut raw, cancel).await? == 0 {
                return if cancel.is_cancelled() {
                    Ok(())
                } else {
                    bail!("the stream ended")
                };
            }
        }
    }

    async fn ws(
        &self,
        shared: &Shared,
        cancel: &CancellationToken,
        tracker: &mut Tracker,
    ) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        let mut request = format!("ws://{}/v1/ws", self.addr).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (mut socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .context("WebSocket handshake")?;
        let mut subscribe = serde_json::json!({"type": "subscribe"});
        if let Some(cursor) = &self.resume {
            subscribe["last_event_id"] = cursor.as_str().into();
        }
        if let Some(n) = self.max_txn_events {
            subscribe["max_txn_events"] = n.into();
        }
        socket.send(Message::text(subscribe.to_string())).await?;
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                message = socket.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_bytes();
                    if let Some(seq) = parse_seq(text) {
                        tracker.deliver(seq, shared);
                        if self.done(tracker, shared) {
                            return Ok(());
                        }
                    } else {
                        self.control(text, shared, tracker);
                        if self.done(tracker, shared) {
                            return Ok(());
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("closed by the service: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => bail!("the connection ended"),
            }
        }
    }

    fn control(&self, text: &[u8], shared: &Shared, tracker: &mut Tracker) {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(text) else {
            return;
        };
        match message["type"].as_str() {
            Some("subscription_confirmed") => {
                shared.ready.fetch_add(1, Ordering::Relaxed);
                tracker.cursor = message["id"].as_str().map(str::to_owned);
            }
            Some("resync") => tracker.resyncs += 1,
            _ => {}
        }
    }
}

/// Chunked transfer decoding of a response body, fed as bytes arrive.
enum Chunked {
    Size,
    Data(usize),
    DataEnd,
    Done,
}

impl Chunked {
    /// Moves the complete parts of `raw` into `body`, leaving the rest in `raw`.
    fn decode(&mut self, raw: &mut Vec<u8>, body: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut pos = 0;
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&raw[pos..pos + end])?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    pos += end + 2;
                    *self = if size == 0 {
                        Chunked::Done
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    let take = left.min(raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    body.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    *self = if take == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataEnd if raw.len() - pos >= 2 => {
                    pos += 2;
                    *self = Chunked::Size;
                }
                Chunked::DataEnd | Chunked::Done => break,
            }
        }
        raw.drain(..pos);
        Ok(())
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends what the socket has to `buffer`; 0 at the end of the stream or on cancel.
async fn read_some(
    stream: &TcpStream,
    buffer: &mut Vec<u8>,
    cancel: &CancellationToken,
) -> std::io::Result<usize> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(0),
            readable = stream.readable() => readable?,
        }
        let len = buffer.len();
        buffer.resize(len + READ_CHUNK, 0);
        match stream.try_read(&mut buffer[len..]) {
            Ok(n) => {
                buffer.truncate(len + n);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => buffer.truncate(len),
            Err(e) => {
                buffer.truncate(len);
                return Err(e);
            }
        }
    }
}

/// The status code of `GET path`, or `None` when nothing answered in time.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let ask = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        write_all(&stream, request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let never = CancellationToken::new();
        while !raw.contains(&b'\n') {
            if read_some(&stream, &mut raw, &never).await.ok()? == 0 {
                break;
            }
        }
        let line = String::from_utf8_lossy(&raw).into_owned();
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_from_frames() {
        let frame = br#"id: abc~1
event: resource_change
data: {"resource": {"title": "bench~1234~", "tenant_id": "t4"}}"#;
        assert_eq!(parse_seq(frame), Some(1234));
        assert_eq!(parse_seq(title(7).as_bytes()), Some(7));
        assert_eq!(parse_seq(b"no marker"), None);
    }

    #[test]
    fn chunked_bodies_across_reads() {
        let mut state = Chunked::Size;
        let mut body = Vec::new();
        let mut raw = b"5\r\nhel".to_vec();
        state.decode(&mut raw, &mut body).unwrap();
        raw.extend_from_slice(b"lo\r\n6;ext=1\r\n world\r\n0\r\n\r\n");
        state.decode(&mut raw, &mut body).unwrap();
        assert_eq!(body, b"hello world");
        assert!(matches!(state, Chunked::Done));
    }

    #[test]
    fn tracker_counts_duplicates_per_tenant_row() {
        let shared = Shared::new(100);
        let mut tracker = Tracker::new(3, 10);
        tracker.deliver(13, &shared);
        tracker.deliver(23, &shared);
        tracker.deliver(13, &shared);
        assert!(tracker.has(13) && tracker.has(23) && !tracker.has(33));
        assert_eq!((tracker.distinct, tracker.duplicates), (2, 1));
    }
}
