//! Floods: many subscribers dropped at once and reconnecting with their
//! cursors, and the NOTIFY queue under pressure (a foreign listener that stops reading,
//! the service's own listener backend stopped a while). Like the fault tests, each
//! compares the ids every subscriber received, as sets, with the ids committed.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::helpers::cluster::OwnCluster;
use crate::helpers::followers::{assert_all_followers_got, Follower, Interest, Via};
use crate::helpers::process::{peak_rss_kib, status_kib, ServiceProcess};
use crate::helpers::writers::spawn_writers;
use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// A reconnect storm.

/// Subscribers in the storm: half SSE, half WebSocket, spread over [`STORM_TENANTS`].
const STORM_SUBSCRIBERS: usize = 2000;
const STORM_TENANTS: usize = 20;
/// Changes per tenant in each of three rounds: before the drop, during the storm, after.
const STORM_ROUND: usize = 8;
/// Bound for one connection attempt of a storm subscriber.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one storm subscriber received, over all its streams.
#[derive(Default)]
struct Got {
    /// Resource ids of the changes received (every one a `created` here).
    ids: HashSet<String>,
    /// Changes received, repeats included.
    changes: usize,
    /// Their event ids: a repeat must come with the id it had the first time.
    change_ids: HashSet<String>,
    /// Changes of another tenant (there must be none).
    foreign: Vec<String>,
    resyncs: Vec<String>,
    /// Streams confirmed: SSE response headers, WS `subscription_confirmed`.
    streams: usize,
    /// The last event id received (a change's, a resync's, or a fresh stream's start).
    cursor: Option<String>,
    /// Attempts that failed (the subscriber retried after each).
    errors: Vec<String>,
}

impl Got {
    fn record(&mut self, tenant: &str, message: &Value) {
        if let Some(id) = message["id"].as_str() {
            self.cursor = Some(id.to_owned());
        }
        match message["type"].as_str() {
            Some("resource_change") => {
                self.changes += 1;
                self.change_ids
                    .insert(message["id"].as_str().unwrap_or("").to_owned());
                let id = change_id(message);
                if message["tenant_id"] == tenant {
                    self.ids.insert(id);
                } else {
                    self.foreign.push(id);
                }
            }
            Some("resync") => self.resyncs.push(message.to_string()),
            _ => {}
        }
    }
}

struct StormSubscriber {
    tenant: String,
    via: Via,
    got: Arc<Mutex<Got>>,
    task: JoinHandle<()>,
}

impl StormSubscriber {
    fn start(
        addr: &str,
        via: Via,
        tenant: &str,
        drops: watch::Receiver<u32>,
        stop: CancellationToken,
    ) -> StormSubscriber {
        let got = Arc::new(Mutex::new(Got::default()));
        let task = tokio::spawn(storm_subscribe(
            addr.to_owned(),
            via,
            tenant.to_owned(),
            got.clone(),
            drops,
            stop,
        ));
        StormSubscriber {
            tenant: tenant.to_owned(),
            via,
            got,
            task,
        }
    }

    fn streams(&self) -> usize {
        self.got.lock().unwrap().streams
    }

    fn has_all(&self, expected: &HashSet<String>) -> bool {
        expected.is_subset(&self.got.lock().unwrap().ids)
    }
}

/// Subscribes, and again with its last cursor whenever the stream ends or `drops`
/// changes (then at once, dropping the socket without a goodbye, as a network blip does).
async fn storm_subscribe(
    addr: String,
    via: Via,
    tenant: String,
    got: Arc<Mutex<Got>>,
    mut drops: watch::Receiver<u32>,
    stop: CancellationToken,
) {
    let token = token(&tenant);
    while !stop.is_cancelled() {
        drops.borrow_and_update();
        let cursor = got.lock().unwrap().cursor.clone();
        let session = async {
            match via {
                Via::Sse => sse_session(&addr, &token, &tenant, cursor, &got).await,
                Via::Ws => ws_session(&addr, &token, &tenant, cursor, &got).await,
            }
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            changed = drops.changed() => {
                if changed.is_err() {
                    return stop.cancelled().await;
                }
                None
            }
            ended = session => Some(ended),
        };
        if let Some(Err(error)) = ended {
            got.lock().unwrap().errors.push(error);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One `GET /v1/events` over a socket of its own, read until the server ends it.
async fn sse_session(
    addr: &str,
    token: &str,
    tenant: &str,
    cursor: Option<String>,
    got: &Mutex<Got>,
) -> Result<(), String> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "SSE connect timed out".to_owned())?
        .map_err(|e| format!("SSE connect: {e}"))?;
    let mut request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\n"
    );
    if let Some(cursor) = &cursor {
        request.push_str(&format!("Last-Event-ID: {cursor}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("SSE request: {e}"))?;
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        let n = timeout(CONNECT_TIMEOUT, stream.read(&mut buffer))
            .await
            .map_err(|_| "no SSE response head in time".to_owned())?
            .map_err(|e| format!("SSE read: {e}"))?;
        if n == 0 {
            return Err("SSE closed before the response head".into());
        }
        raw.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!(
            "SSE refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    if !head.contains("transfer-encoding: chunked") {
        return Err(format!("SSE body not chunked: {head}"));
    }
    raw.drain(..head_end + 4);
    got.lock().unwrap().streams += 1;
    let mut chunks = Chunked::Size;
    let mut body = Vec::new();
    loop {
        chunks.decode(&mut raw, &mut body)?;
        while let Some(end) = find(&body, b"\n\n") {
            let frame: Vec<u8> = body.drain(..end + 2).collect();
            let block = parse_block(&String::from_utf8_lossy(&frame));
            let mut got = got.lock().unwrap();
            if let Some(id) = block.id {
                got.cursor = Some(id);
            }
            if let Some(data) = block.data {
                let mut message: Value =
                    serde_json::from_str(&data).map_err(|e| format!("SSE data: {e}"))?;
                if block.event == "resync" && message.get("type").is_none() {
                    message["type"] = "resync".into();
                }
                got.record(tenant, &message);
            }
        }
        if matches!(chunks, Chunked::Done) {
            return Ok(());
        }
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(|e| format!("SSE read: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buffer[..n]);
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
    fn decode(&mut self, raw: &mut Vec<u8>, body: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = find(&raw[at..], b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&raw[at..at + end]).into_owned();
                    let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    at += end + 2;
                    *self = if size == 0 {
                        Chunked::Done
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    let take = left.min(raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    body.extend_from_slice(&raw[at..at + take]);
                    at += take;
                    *self = if take == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataEnd if raw.len() - at >= 2 => {
                    at += 2;
                    *self = Chunked::Size;
                }
                Chunked::DataEnd | Chunked::Done => break,
            }
        }
        raw.drain(..at);
        Ok(())
    }
}

/// One `/v1/ws` connection with one `subscribe`, read until the server ends it.
async fn ws_session(
    addr: &str,
    token: &str,
    tenant: &str,
    cursor: Option<String>,
    got: &Mutex<Got>,
) -> Result<(), String> {
    let mut socket = timeout(CONNECT_TIMEOUT, ws_handshake(addr, Some(token), ""))
        .await
        .map_err(|_| "WS handshake timed out".to_owned())?
        .map_err(|e| format!("WS handshake: {e}"))?;
    let mut subscribe = json!({"type": "subscribe"});
    if let Some(cursor) = cursor {
        subscribe["last_event_id"] = json!(cursor);
    }
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .map_err(|e| format!("WS subscribe: {e}"))?;
    while let Some(frame) = socket.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => return Ok(()),
            Ok(_) => continue,
            Err(error) => return Err(format!("WS read: {error}")),
        };
        let message: Value = serde_json::from_str(&text).map_err(|e| format!("WS JSON: {e}"))?;
        match message["type"].as_str() {
            Some("subscription_confirmed") => {
                let mut got = got.lock().unwrap();
                got.streams += 1;
                got.record(tenant, &message);
            }
            Some("error") => return Err(format!("WS error: {message}")),
            _ => got.lock().unwrap().record(tenant, &message),
        }
    }
    Ok(())
}

/// Commits `rounds` × one change per tenant, each in a transaction of its own, pausing
/// `pause` after each round; the ids, by tenant.
async fn write_rounds(
    db: &tokio_postgres::Client,
    tenants: &[String],
    rounds: usize,
    pause: Duration,
) -> HashMap<String, HashSet<String>> {
    let mut written: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..rounds {
        for tenant in tenants {
            let row = db
                .query_one(
                    "insert into tickets (tenant_id, title) values ($1, $2) returning id::text",
                    &[tenant, &format!("storm {round}")],
                )
                .await
                .unwrap();
            written
                .entry(tenant.clone())
                .or_default()
                .insert(row.get(0));
        }
        tokio::time::sleep(pause).await;
    }
    written
}

fn merge(into: &mut HashMap<String, HashSet<String>>, from: HashMap<String, HashSet<String>>) {
    for (tenant, ids) in from {
        into.entry(tenant).or_default().extend(ids);
    }
}

/// Polls `/readyz` until stopped; the answers that were not 200 (or none at all).
fn watch_readiness(addr: &str, stop: CancellationToken) -> JoinHandle<(usize, Vec<String>)> {
    let url = format!("http://{addr}/readyz");
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let (mut polls, mut bad) = (0, Vec::new());
        while !stop.is_cancelled() {
            polls += 1;
            match timeout(Duration::from_secs(5), http.get(&url).send()).await {
                Ok(Ok(response)) if response.status() == 200 => {}
                Ok(Ok(response)) => bad.push(format!("status {}", response.status())),
                Ok(Err(error)) => bad.push(format!("error {error}")),
                Err(_) => bad.push("no answer within 5 s".into()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (polls, bad)
    })
}

/// Waits (bounded by `wait`) until `done` holds; panics naming `what`.
async fn until(what: &str, wait: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !done() {
        assert!(Instant::now() < deadline, "not within {wait:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// A reconnect storm: 2,000 subscribers (half SSE, half WebSocket, over 20
/// tenants) of one `changecast serve` all drop their sockets at once and reconnect at
/// once with their last cursors, while writers keep committing. The service stays ready
/// throughout, and every subscriber ends up with exactly its tenant's committed changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_2000_subscribers_loses_nothing() {
    // Each side holds a socket per subscriber, the service briefly two (an SSE stream
    // whose client left is noticed at its next write).
    let needed = (4 * STORM_SUBSCRIBERS + 1024) as u64;
    let limit = changecast::open_files::raise_to_hard_limit();
    if limit < needed {
        eprintln!(
            "SKIPPED a_reconnect_storm_of_2000_subscribers_loses_nothing: the open-file \
             limit is {limit} (hard), {needed} needed; raise it (ulimit -Hn) to run it"
        );
        return;
    }
    let started = Instant::now();
    let db_url = server().fresh_database().await;
    let service = ServiceProcess::start(&db_url, "127.0.0.1:0");
    let http = reqwest::Client::new();
    wait_for_status(&http, &format!("http://{}/readyz", service.addr), 200).await;
    let pid = service.child.id();
    let tenants: Vec<String> = (0..STORM_TENANTS)
        .map(|t| format!("storm-{t:02}"))
        .collect();

    let (drop_tx, drops) = watch::channel(0u32);
    let stop = CancellationToken::new();
    let subscribers: Vec<StormSubscriber> = (0..STORM_SUBSCRIBERS)
        .map(|i| {
            let via = if i % 2 == 0 { Via::Sse } else { Via::Ws };
            let tenant = &tenants[(i / 2) % STORM_TENANTS];
            StormSubscriber::start(&service.addr, via, tenant, drops.clone(), stop.clone())
        })
        .collect();
    until("every subscriber's first stream is confirmed", WAIT, || {
        subscribers.iter().all(|s| s.streams() >= 1)
    })
    .await;
    let connected_in = started.elapsed();

    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // Round 1, received by everyone: every subscriber then holds a cursor of a change.
    let mut written = write_rounds(&db, &tenants, STORM_ROUND, Duration::ZERO).await;
    until("round 1 reached every subscriber", WAIT, || {
        subscribers.iter().all(|s| s.has_all(&written[&s.tenant]))
    })
    .await;
    let rss_before = status_kib(pid, "VmRSS").unwrap();
    let readiness_stop = CancellationToken::new();
    let readiness = watch_readiness(&service.addr, readiness_stop.clone());

    // Round 2 commits while every socket is dropped at once and reconnects at once.
    let tenants_2 = tenants.clone();
    let (db_2, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let round_2 = tokio::spawn(async move {
        write_rounds(&db_2, &tenants_2, STORM_ROUND, Duration::from_millis(150)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dropped = Instant::now();
    drop_tx.send_replace(1);
    until("every subscriber reconnected", WAIT, || {
        subscribers.iter().all(|s| s.streams() >= 2)
    })
    .await;
    let reconnected_in = dropped.elapsed();
    merge(
        &mut written,
        timeout(WAIT, round_2).await.expect("round 2").unwrap(),
    );
    // Round 3, after the storm.
    merge(
        &mut written,
        write_rounds(&db, &tenants, STORM_ROUND, Duration::ZERO).await,
    );
    until(
        "every subscriber has all its tenant's changes",
        WAIT,
        || subscribers.iter().all(|s| s.has_all(&written[&s.tenant])),
    )
    .await;
    let caught_up_in = dropped.elapsed();
    readiness_stop.cancel();
    let (polls, not_ready) = timeout(WAIT, readiness).await.unwrap().unwrap();
    let fds = open_fds(pid);
    let peak = peak_rss_kib(pid).unwrap();
    stop.cancel();

    let mut received = 0;
    let mut repeats = 0;
    let mut reconnects = 0;
    for subscriber in subscribers {
        timeout(WAIT, subscriber.task)
            .await
            .expect("a subscriber did not stop")
            .expect("a subscriber panicked");
        let got = subscriber.got.lock().unwrap();
        let who = format!("{:?} subscriber of {}", subscriber.via, subscriber.tenant);
        assert!(got.foreign.is_empty(), "{who} got another tenant's changes");
        assert!(
            got.resyncs.is_empty(),
            "{who} was told to resync: {:?}",
            got.resyncs
        );
        assert!(got.errors.is_empty(), "{who}: {:?}", got.errors);
        assert_eq!(
            got.ids, written[&subscriber.tenant],
            "{who}: received ids differ from its tenant's committed ones"
        );
        assert_eq!(
            got.change_ids.len(),
            got.ids.len(),
            "{who}: a change arrived under two different ids"
        );
        // A resume may repeat a few changes (the cursor's own transaction), not replay
        // everything again.
        let repeated = got.changes - got.ids.len();
        assert!(
            repeated <= STORM_ROUND,
            "{who}: {repeated} changes repeated"
        );
        received += got.ids.len();
        repeats += repeated;
        reconnects += got.streams - 1;
    }
    assert!(
        not_ready.is_empty(),
        "/readyz was not 200 during the storm ({} of {polls} polls): {:?}",
        not_ready.len(),
        not_ready.first()
    );
    let mut service = service;
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service exited"
    );
    let total: usize = written.values().map(HashSet::len).sum();
    eprintln!(
        "reconnect storm: {STORM_SUBSCRIBERS} subscribers (SSE + WS) over {STORM_TENANTS} \
         tenants connected in {connected_in:?}; {total} changes committed \
         ({} per tenant, a third during the storm); all dropped at once: reconnected \
         ({reconnects} reconnects) in {reconnected_in:?}, all caught up {caught_up_in:?} \
         after the drop; {received} distinct changes received in all (= committed × 100), \
         {repeats} repeats; /readyz 200 in all {polls} polls; service RSS {rss_before} \
         KiB before the drop, peak {peak} KiB, {fds} fds open after; test {:?}",
        STORM_ROUND * 3,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// The NOTIFY queue under pressure.

/// Bytes PostgreSQL's notification queue may hold: `max_notify_queue_pages` (PostgreSQL
/// 17; before it a fixed 1,048,576 pages, which `pg_notification_queue_usage()` divides
/// by just the same) × the page size.
async fn notify_queue_bytes(db: &tokio_postgres::Client) -> f64 {
    let row = db
        .query_one(
            "select coalesce(current_setting('max_notify_queue_pages', true)::float8, 1048576)
                    * current_setting('block_size')::float8",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

async fn queue_usage(db: &tokio_postgres::Client) -> f64 {
    db.query_one("select pg_notification_queue_usage()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A session of its own that `LISTEN`s on the service's wake-up channel. `counting`
/// reads every notification (counting them, and their payloads' bytes); otherwise it
/// opens a transaction and stops reading its socket altogether, which keeps PostgreSQL's
/// shared notification queue from advancing past its position until it goes.
struct ForeignListener {
    notifications: Arc<AtomicUsize>,
    largest_payload: Arc<AtomicUsize>,
    pid: i32,
    /// Dropping it ends the session (its transaction rolled back).
    release: Option<oneshot::Sender<()>>,
    /// Kept: dropped, the counting listener would stop reading.
    _stop_reading: Option<oneshot::Sender<()>>,
    _client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl ForeignListener {
    async fn start(db_url: &str, counting: bool) -> ForeignListener {
        let name = if counting {
            "test:counting-listener"
        } else {
            "test:stalled-listener"
        };
        let mut config: tokio_postgres::Config = db_url.parse().unwrap();
        config.application_name(name);
        let (client, mut connection) = config.connect(NoTls).await.unwrap();
        let notifications = Arc::new(AtomicUsize::new(0));
        let largest_payload = Arc::new(AtomicUsize::new(0));
        let (stop_reading, mut stop_reading_rx) = oneshot::channel::<()>();
        let (release, release_rx) = oneshot::channel::<()>();
        let (count, largest) = (notifications.clone(), largest_payload.clone());
        let driver = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = &mut stop_reading_rx => break,
                    message = poll_fn(|cx| connection.poll_message(cx)) => message,
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        largest.fetch_max(notification.payload().len(), Ordering::SeqCst);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
            // Not reading any more: the socket stays open until released.
            let _ = release_rx.await;
            drop(connection);
        });
        let channel = changecast::capture::listener::CHANNEL;
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap();
        let pid: i32 = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let mut stop_reading = Some(stop_reading);
        if !counting {
            client.batch_execute("BEGIN").await.unwrap();
            client.query_one("select 1", &[]).await.unwrap();
            let _ = stop_reading.take().unwrap().send(());
        }
        ForeignListener {
            notifications,
            largest_payload,
            pid,
            release: Some(release),
            _stop_reading: stop_reading,
            _client: client,
            driver,
        }
    }

    async fn end(mut self) {
        drop(self.release.take());
        self.driver.abort();
        let _ = self.driver.await;
    }
}

/// Writes `n` tickets of `tenant`, one per transaction, pacing them `pause` apart (so
/// that the service waits for wake-ups rather than draining, and writers ring); every
/// 7th is 9 KB (over NOTIFY's 8,000-byte payload limit) and every 20th 100 KB (over the
/// fan-out's 64 KiB, read from the journal). Returns the ids committed, the failures
/// (there must be none) and the bytes of row data written.
async fn paced_writer(
    db_url: String,
    tenant: &'static str,
    tag: usize,
    n: usize,
    pause: Duration,
) -> (HashSet<String>, Vec<String>, usize) {
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let (mut ids, mut failures, mut bytes) = (HashSet::new(), Vec::new(), 0);
    for i in 0..n {
        let body_len: i32 = match i {
            i if i % 20 == 0 => 100 * 1024,
            i if i % 7 == 0 => 9 * 1024,
            _ => 64,
        };
        let written = db
            .query_one(
                "insert into tickets (tenant_id, title, body)
                 values ($1, $2, left(repeat(md5($2), $3 / 32 + 1), $3)) returning id::text",
                &[&tenant, &format!("w{tag}-{i}"), &body_len],
            )
            .await;
        match written {
            Ok(row) => {
                ids.insert(row.get(0));
                bytes += body_len as usize;
            }
            Err(error) => failures.push(format!("{error:?}")),
        }
        tokio::time::sleep(pause).await;
    }
    (ids, failures, bytes)
}

/// A session of another application `LISTEN`s on changecast's channel, opens a
/// transaction and stops reading: PostgreSQL's notification queue cannot advance past
/// it. Writers commit 600 changes meanwhile (some 9 KB, some 100 KB). No commit fails,
/// the subscribers (SSE and WS) get all 600, the queue holds only the small wake-ups (a
/// counting listener sees every payload empty, and the queue's bytes stay within what
/// those take — row data there would be megabytes), and the service's memory stays
/// bounded. Once the stalled session goes, the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_listener_that_stops_reading_costs_no_change_and_no_growth() {
    const PER_WRITER: usize = 300;
    let started = Instant::now();
    let cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("notifyq").await;
    let service = ServiceProcess::start(&db_url, "127.0.0.1:0");
    let http = reqwest::Client::new();
    wait_for_status(&http, &format!("http://{}/readyz", service.addr), 200).await;
    let pid = service.child.id();
    let (_addr_tx, addr) = watch::channel(service.addr.clone());
    let followers = vec![
        Follower::start(addr.clone(), Interest::new(Via::Sse, "acme", None), None).await,
        Follower::start(addr.clone(), Interest::new(Via::Ws, "acme", None), None).await,
    ];
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let queue_capacity = notify_queue_bytes(&db).await;

    let counting = ForeignListener::start(&db_url, true).await;
    let stalled = ForeignListener::start(&db_url, false).await;
    let state: String = db
        .query_one(
            "select state from pg_stat_activity where pid = $1",
            &[&stalled.pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        state, "idle in transaction",
        "the stalled listener's session"
    );
    let rss_before = status_kib(pid, "VmRSS").unwrap();

    // The queue's fill, sampled while the writers write.
    let sampling = CancellationToken::new();
    let sampler = {
        let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
        tokio::spawn(connection);
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut most: f64 = 0.0;
            while !sampling.is_cancelled() {
                most = most.max(queue_usage(&db).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let writing = Instant::now();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            tokio::spawn(paced_writer(
                db_url.clone(),
                "acme",
                w,
                PER_WRITER,
                Duration::from_millis(4),
            ))
        })
        .collect();
    let (mut written, mut failures, mut row_bytes) = (HashSet::new(), Vec::new(), 0);
    for writer in writers {
        let (ids, failed, bytes) = timeout(WAIT, writer).await.expect("a writer").unwrap();
        written.extend(ids);
        failures.extend(failed);
        row_bytes += bytes;
    }
    let wrote_in = writing.elapsed();
    assert!(failures.is_empty(), "commits failed: {failures:?}");
    assert_eq!(written.len(), 2 * PER_WRITER);

    let (n_written, n_received) = assert_all_followers_got(&followers, &written).await;
    let received_in = writing.elapsed();
    let usage_now = queue_usage(&db).await;
    sampling.cancel();
    let most = timeout(WAIT, sampler)
        .await
        .unwrap()
        .unwrap()
        .max(usage_now);
    let peak = peak_rss_kib(pid).unwrap();
    let wakeups = counting.notifications.load(Ordering::SeqCst);
    let largest_payload = counting.largest_payload.load(Ordering::SeqCst);
    let queued_bytes = most * queue_capacity;

    // Wake-ups carry no row data: every payload is (next to) empty, and what the queue
    // held is what that many small wake-ups take (whole pages of 8 KiB).
    assert!(
        largest_payload <= 32,
        "a wake-up carried {largest_payload} bytes"
    );
    assert!(
        queued_bytes <= (wakeups * 64 + 2 * 8192) as f64,
        "the notification queue held {queued_bytes} bytes for {wakeups} wake-ups"
    );
    // The pressure was real: the queue held what was sent after the stalled session's
    // position (a page holds 256 wake-ups, and usage counts whole pages).
    if wakeups > 2 * 256 {
        assert!(
            usage_now > 0.0,
            "{wakeups} wake-ups sent, yet the queue stayed empty behind the stalled session"
        );
    }
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "service memory grew from {rss_before} KiB to a peak of {peak} KiB"
    );

    // Once the stalled session is gone, the queue advances again (on the next wake-ups).
    stalled.end().await;
    eventually("the notification queue drains", || async {
        db.execute(
            "insert into tickets (tenant_id, title) values ('other', 'drain')",
            &[],
        )
        .await
        .unwrap();
        queue_usage(&db).await == 0.0
    })
    .await;
    counting.end().await;
    eprintln!(
        "notify queue, stalled foreign listener: {n_written} changes committed in \
         {wrote_in:?} ({} KiB of row data, 0 commits failed), {n_received} received by each \
         subscriber (SSE, WS) {received_in:?} after the first write; {wakeups} wake-ups \
         sent, largest payload {largest_payload} bytes; queue usage at most {most:.2e} \
         ({queued_bytes:.0} bytes); service RSS {rss_before} KiB before, peak {peak} KiB; \
         test {:?}",
        row_bytes / 1024,
        started.elapsed()
    );
}

/// The service's own listener backend stops (SIGSTOP) for three seconds while writers
/// commit, then continues (SIGCONT): the tailer's query just waits (no reconnect), no
/// change committed meanwhile arrives meanwhile, no write fails, and afterwards every
/// change arrives — none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_backend_stopped_a_while_loses_nothing() {
    const STOPPED_FOR: Duration = Duration::from_secs(3);
    let started = Instant::now();
    let cluster = OwnCluster::start().await;
    let db_url = cluster.create_database("sigstop").await;
    let app = start_on(db_url.clone(), |_| {}).await;
    let (_addr_tx, addr) = watch::channel(app.addr.to_string());
    let followers = vec![
        Follower::start(addr.clone(), Interest::new(Via::Sse, "acme", None), None).await,
        Follower::start(addr.clone(), Interest::new(Via::Ws, "acme", None), None).await,
    ];
    let writing = spawn_writers(&db_url, &[("acme", 1), ("acme", 3), ("globex", 1)]);
    writing.until_more(100).await;
    eventually("the followers are receiving", || async {
        followers.iter().all(|f| !f.ids().is_empty())
    })
    .await;

    let backend: i32 = app
        .db
        .query_one(
            "select pid from pg_stat_activity
             where application_name = 'changecast:listener' and datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // SAFETY: a plain syscall on a PostgreSQL backend of the test's own cluster.
    assert_eq!(unsafe { libc::kill(backend, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let committed_at_stop = writing.committed.load(Ordering::SeqCst);
    // Every ticket committed by now: a superset of what the tailer could have read
    // before the stop. What it read may still be reaching the followers (a lagging one
    // catches up from the journal on the pool); nothing committed later can.
    let readable: HashSet<String> = app
        .db
        .query("select id::text from tickets", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    tokio::time::sleep(STOPPED_FOR.saturating_sub(stopped.elapsed())).await;
    let arrived: Vec<HashSet<String>> = followers.iter().map(Follower::ids).collect();
    let during = writing.committed.load(Ordering::SeqCst) - committed_at_stop;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(backend, libc::SIGCONT) }, 0);
    let resumed = Instant::now();
    for (follower, arrived) in followers.iter().zip(&arrived) {
        let unreadable: Vec<&String> = arrived.difference(&readable).collect();
        assert!(
            unreadable.is_empty(),
            "{:?} received changes committed after the listener backend was stopped: \
             {unreadable:?}",
            follower.interest.via
        );
    }
    assert!(
        during > 50,
        "the writers committed only {during} changes meanwhile"
    );

    writing.until_more(100).await;
    let (written, retried) = writing.finish().await;
    assert_eq!(
        retried, 0,
        "writes failed while the listener backend was stopped"
    );
    let (n_written, n_received) = assert_all_followers_got(&followers, &written["acme"]).await;
    let caught_up = resumed.elapsed();
    app.wait_ready().await;
    assert_eq!(
        app.metric("changecast_db_reconnects_total").await,
        Some(0.0),
        "the tailer waited for its backend rather than reconnecting"
    );
    let total: usize = written.values().map(HashSet::len).sum();
    eprintln!(
        "listener backend SIGSTOP {STOPPED_FOR:?}: {total} changes committed ({during} \
         while it was stopped), {n_written} of the subscribers' tenant; {n_received} received \
         by each follower (SSE, WS), all within {caught_up:?} of SIGCONT; test {:?}",
        started.elapsed()
    );
    app.stop().await;
}
