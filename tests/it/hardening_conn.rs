//! What a client that holds connections open costs others: answers it never reads, a
//! stalled stream, WebSockets and stats streams against the caps, the size of what a
//! WebSocket copies per frame, and malformed WebSocket handshakes. Real sockets, with
//! small receive buffers where the attack needs them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

use crate::helpers::{
    assert_nothing_lost, eventually, parse_block, spawn_app_with, token, ws_handshake, SseStream,
    TestApp, WsSocket, WAIT,
};

/// A connection whose receive buffer is as small as the kernel allows, so the service's
/// writes stall after a few KiB the client does not read.
async fn small_buffer_socket(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the peer closes (or resets), bounded by `wait`; what arrived until then.
async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let _ = timeout(wait, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    received
}

/// One `GET /healthz` on a fresh connection: the reply's status line ("" if none).
async fn probe(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return String::new();
    }
    let reply = read_to_close(&mut stream, WAIT).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// The response head of a raw request (read until the blank line), and the bytes after.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            return (head, raw[end + 4..].to_vec());
        }
        let n = timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("no response head in time")
            .unwrap();
        assert!(n > 0, "closed before a response head: {raw:?}");
        raw.extend_from_slice(&buffer[..n]);
    }
}

/// Clients that pipeline requests and never read their answers (unbounded, that takes
/// every slot and refuses every new client) lose their slots after the write timeout,
/// and a new client is served.
#[tokio::test]
async fn clients_that_never_read_their_answers_lose_their_connection_slots() {
    const CAP: usize = 4;
    // The write timeout leaves room for a loaded machine to take every slot before the
    // first attacker's runs out.
    let mut app = spawn_app_with(|c| {
        c.max_connections = CAP;
        c.write_timeout = Duration::from_secs(5);
    })
    .await;
    // The test's own HTTP client keeps an idle connection (a slot): give it up.
    app.http = reqwest::Client::new();
    let pipeline = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(400);
    let mut attackers = Vec::new();
    let mut attempts = 0;
    while attackers.len() < CAP {
        attempts += 1;
        assert!(attempts < 200, "could not take every connection slot");
        let mut socket = small_buffer_socket(app.addr).await;
        let _ = socket.write_all(pipeline.as_bytes()).await;
        let mut status = [0u8; 12];
        let served = timeout(WAIT, socket.read_exact(&mut status))
            .await
            .is_ok_and(|read| read.is_ok())
            && &status == b"HTTP/1.1 200";
        if served {
            attackers.push(socket);
        } else {
            // Refused while the old idle connection still held its slot.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let taken = Instant::now();
    let refused = probe(app.addr).await;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("too_many_connections"),
        "the attack did not take every slot: {refused}"
    );
    eventually(
        "a new client is served while the attackers still hold their sockets",
        || async { probe(app.addr).await.starts_with("HTTP/1.1 200") },
    )
    .await;
    assert!(
        taken.elapsed() < Duration::from_secs(12),
        "slots came back only after {:?}",
        taken.elapsed()
    );
    drop(attackers);
}

/// A subscriber that stops reading while changes are written is closed once the write
/// timeout passes (its place freed), and resuming with the last id it read gets every
/// change.
#[tokio::test]
async fn a_stalled_sse_subscriber_is_closed_and_resumes_with_its_cursor() {
    let app = spawn_app_with(|c| c.write_timeout = Duration::from_secs(1)).await;
    let token = token("acme");
    let mut stalled = small_buffer_socket(app.addr).await;
    // HTTP/1.0: the stream comes close-delimited, not chunked, so it reads as plain SSE.
    let request =
        format!("GET /v1/events HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let (head, mut body) = read_head(&mut stalled).await;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    // The preamble (`retry`, `id` of where live delivery starts).
    while !body.windows(2).any(|w| w == b"\n\n") {
        let mut buffer = [0u8; 1024];
        let n = timeout(WAIT, stalled.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended before its preamble");
        body.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(subscribers(&app, &token, "sse").await, 1);

    let written = write_8_mb(&app).await;
    eventually("the stalled subscriber is closed", || async {
        subscribers(&app, &token, "sse").await == 0
    })
    .await;

    // What the client had received, up to the server's close, and the last id in it.
    body.extend(read_to_close(&mut stalled, WAIT).await);
    let (first, last_id) = sse_changes(&body);
    let last_id = last_id.expect("not even the preamble's id arrived");
    assert!(
        first.len() < written.len(),
        "everything arrived anyway: the subscriber did not stall"
    );

    let mut resumed: SseStream = app.sse_with(&token, "", Some(&last_id)).await;
    let rest: HashSet<String> = written.difference(&first).cloned().collect();
    let mut received = resumed.receive_ids(&rest).await;
    received.extend(first.iter().cloned());
    assert_nothing_lost(&written, &received, &HashSet::new());
}

/// `/v1/stats` `subscribers.{transport}` for the token's tenant.
async fn subscribers(app: &TestApp, token: &str, transport: &str) -> u64 {
    let (status, stats) = app.get("/v1/stats", Some(token)).await;
    assert_eq!(status, 200, "{stats}");
    stats["subscribers"][transport].as_u64().unwrap()
}

/// Writes about 8 MB of changes for `acme` (more than the socket buffers of both sides
/// hold); their ids.
async fn write_8_mb(app: &TestApp) -> HashSet<String> {
    let title = "x".repeat(2000);
    let mut written = HashSet::new();
    for _ in 0..8 {
        let rows = app
            .db
            .query(
                "insert into tickets (tenant_id, title) select 'acme', $1 || g
                 from generate_series(1, 500) g returning id::text",
                &[&title],
            )
            .await
            .unwrap();
        written.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    written
}

/// The resource ids of the complete `resource_change` events in a raw SSE body, and the
/// last `id:` of a complete event.
fn sse_changes(body: &[u8]) -> (HashSet<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    let complete = match text.rfind("\n\n") {
        Some(end) => &text[..end + 2],
        None => "",
    };
    let (mut ids, mut last_id) = (HashSet::new(), None);
    for block in complete.split("\n\n").map(parse_block) {
        if block.id.is_some() {
            last_id = block.id;
        }
        if let Some(data) = block.data.filter(|_| block.event == "resource_change") {
            let data: Value = serde_json::from_str(&data).unwrap();
            ids.insert(data["resource"]["id"].as_str().unwrap().to_owned());
        }
    }
    (ids, last_id)
}

/// A WebSocket handshake; `None` when refused (a 503, or reset with it).
async fn try_ws(addr: SocketAddr, token: &str) -> Option<WsSocket> {
    timeout(WAIT, ws_handshake(&addr.to_string(), Some(token), ""))
        .await
        .expect("WebSocket handshake timed out")
        .ok()
}

/// An open WebSocket keeps its connection slot after the upgrade: with the cap reached
/// by WebSockets, the next connection gets 503, and closing one lets a new one in.
#[tokio::test]
async fn websockets_hold_their_connection_slot_while_open() {
    const CAP: usize = 4;
    let mut app = spawn_app_with(|c| c.max_connections = CAP).await;
    app.http = reqwest::Client::new();
    let token = token("acme");
    let mut open = Vec::new();
    while let Some(socket) = try_ws(app.addr, &token).await {
        open.push(socket);
        assert!(
            open.len() <= CAP,
            "{} WebSockets open with a cap of {CAP} connections",
            open.len()
        );
    }
    assert!(
        open.len() >= CAP - 1,
        "only {} WebSockets opened",
        open.len()
    );
    let refused = probe(app.addr).await;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("too_many_connections"),
        "{refused}"
    );
    // The open ones still work.
    let first = open.first_mut().unwrap();
    let hello = timeout(WAIT, first.next()).await.unwrap().unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("connection_established"));
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    while try_ws(app.addr, &token).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "a closed WebSocket's slot was not reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens `/v1/stats` as a stream; the response (kept open while held).
async fn stats_stream(app: &TestApp, token: &str) -> reqwest::Response {
    timeout(
        WAIT,
        app.http
            .get(app.url("/v1/stats?interval=1s"))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// The status and error code of `GET /v1/events` (the stream, if opened, is dropped).
async fn subscribe_status(app: &TestApp, token: &str) -> (u16, String) {
    let response = timeout(
        WAIT,
        app.http
            .get(app.url("/v1/events"))
            .bearer_auth(token)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

/// `/v1/stats` streams hold subscriber places, per tenant and overall, while open.
#[tokio::test]
async fn stats_streams_count_against_the_subscriber_limits() {
    let app = spawn_app_with(|c| {
        c.max_subscribers_per_tenant = 2;
        c.max_subscribers = 3;
    })
    .await;
    let (acme, globex, initech) = (token("acme"), token("globex"), token("initech"));
    let first = stats_stream(&app, &acme).await;
    let second = stats_stream(&app, &acme).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // The tenant is at its limit: no third stream, and no subscriber either.
    let third = stats_stream(&app, &acme).await;
    assert_eq!(third.status(), 429);
    assert_eq!(
        third.json::<Value>().await.unwrap()["error"],
        "too_many_subscribers"
    );
    assert_eq!(
        subscribe_status(&app, &acme).await,
        (429, "too_many_subscribers".into())
    );
    // One more stream elsewhere fills the service: another tenant is refused.
    let other = stats_stream(&app, &globex).await;
    assert_eq!(other.status(), 200);
    assert_eq!(
        subscribe_status(&app, &initech).await,
        (503, "server_full".into())
    );
    // Closed streams give their places back.
    drop((first, other));
    eventually("closed stats streams free their places", || async {
        subscribe_status(&app, &initech).await.0 == 200
    })
    .await;
    // A one-off report needs no place.
    let (status, _) = app.get("/v1/stats", Some(&acme)).await;
    assert_eq!(status, 200);
    drop(second);
}

/// A frame as the server sent it (servers never mask).
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

async fn read_frame(stream: &mut TcpStream, pending: &mut Vec<u8>) -> RawFrame {
    async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>, n: usize) {
        let mut buffer = vec![0u8; 64 * 1024];
        while pending.len() < n {
            let read = timeout(WAIT, stream.read(&mut buffer))
                .await
                .expect("no frame in time")
                .unwrap();
            assert!(read > 0, "closed mid-frame");
            pending.extend_from_slice(&buffer[..read]);
        }
    }
    fill(stream, pending, 2).await;
    let (fin, opcode, masked) = (pending[0] & 0x80 != 0, pending[0] & 0x0f, pending[1] & 0x80);
    assert_eq!(masked, 0, "a server frame was masked");
    let (len, header) = match pending[1] & 0x7f {
        126 => {
            fill(stream, pending, 4).await;
            (u16::from_be_bytes([pending[2], pending[3]]) as usize, 4)
        }
        127 => {
            fill(stream, pending, 10).await;
            (
                u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        len => (len as usize, 2),
    };
    fill(stream, pending, header + len).await;
    let payload = pending[header..header + len].to_vec();
    pending.drain(..header + len);
    RawFrame {
        fin,
        opcode,
        payload,
    }
}

/// A client frame: text, masked as RFC 6455 requires (mask chosen arbitrarily).
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    assert!(text.len() < 126);
    frame.push(0x80 | text.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

const WS_HANDSHAKE: &str = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";

/// Upgrades `raw` to a WebSocket with `token` and subscribes to everything; answers
/// the socket and the bytes read past the response head.
async fn raw_ws_subscriber(mut raw: TcpStream, token: &str) -> (TcpStream, Vec<u8>) {
    let request = format!(
        "{WS_HANDSHAKE}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let (head, pending) = read_head(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw.write_all(&masked_text(r#"{"type":"subscribe"}"#))
        .await
        .unwrap();
    (raw, pending)
}

/// A change of 1.5 MB goes out in fragments of at most 64 KiB each (so a socket copies
/// one fragment at a time, not the change) that reassemble to the whole change, for a
/// raw reader and for a standard client alike.
#[tokio::test]
async fn a_large_change_goes_out_over_websocket_in_bounded_fragments() {
    const FRAGMENT: usize = 64 * 1024;
    let app = spawn_app_with(|_| {}).await;
    let token = token("acme");
    let raw = TcpStream::connect(app.addr).await.unwrap();
    let (mut raw, mut pending) = raw_ws_subscriber(raw, &token).await;
    let mut standard = app.ws(&token).await;
    standard.subscribe(json!({"type": "subscribe"})).await;
    loop {
        let frame = read_frame(&mut raw, &mut pending).await;
        if String::from_utf8_lossy(&frame.payload).contains("subscription_confirmed") {
            break;
        }
    }

    let title: String = "é".repeat(750_000); // 1.5 MB, fragments split characters
    let id = app.insert_ticket("acme", &title).await;
    let mut message = Vec::new();
    let mut fragments = 0;
    let change = loop {
        let frame = read_frame(&mut raw, &mut pending).await;
        if frame.opcode >= 8 {
            continue; // control frames may come between fragments
        }
        assert!(
            frame.payload.len() <= FRAGMENT,
            "a frame of {} bytes",
            frame.payload.len()
        );
        assert_eq!(
            frame.opcode,
            if message.is_empty() { 1 } else { 0 },
            "a text message starts with a text frame, then continuation frames"
        );
        fragments += 1;
        message.extend_from_slice(&frame.payload);
        if frame.fin {
            let value: Value = serde_json::from_slice(&message).expect("reassembles to JSON");
            if value["type"] == "resource_change" {
                break value;
            }
            (message, fragments) = (Vec::new(), 0);
        }
    };
    assert!(fragments >= 1_500_000 / FRAGMENT, "{fragments} fragments");
    assert_eq!(change["resource"]["id"], id);
    assert_eq!(change["resource"]["title"].as_str(), Some(&*title));

    let change = standard.next_of_type("resource_change").await;
    assert_eq!(change["resource"]["id"], id);
    assert_eq!(change["resource"]["title"].as_str(), Some(&*title));
}

/// The response head and body of a raw `/v1/ws` upgrade request with these extra lines.
async fn raw_upgrade(app: &TestApp, extra: &str) -> (String, String) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "{WS_HANDSHAKE}Authorization: Bearer {}\r\n{extra}\r\n",
        token("acme")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, mut body) = read_head(&mut stream).await;
    if head.starts_with("HTTP/1.1 101") {
        return (head, String::new());
    }
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a refusal has a content-length");
    while body.len() < length {
        let mut buffer = [0u8; 1024];
        let n = timeout(WAIT, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        body.extend_from_slice(&buffer[..n]);
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// `Sec-WebSocket-Key` must be one value of 16 bytes in base64 (RFC 6455 §4.1); any
/// other gets a 400 JSON error and no upgrade.
#[tokio::test]
async fn a_malformed_websocket_key_gets_400() {
    let app = spawn_app_with(|_| {}).await;
    for (what, extra) in [
        (
            "a key that is not base64 of 16 bytes",
            "Sec-WebSocket-Key: x\r\n",
        ),
        (
            "a key of 15 bytes",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n",
        ),
        (
            "a key of 17 bytes",
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        ),
        ("no key", ""),
        (
            "two keys",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        ),
    ] {
        let (head, body) = raw_upgrade(&app, extra).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "invalid_websocket_handshake", "{what}");
    }
    let (head, _) = raw_upgrade(&app, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "a valid key: {head}");
}

/// A WebSocket subscriber that stops reading while changes are written is closed once
/// the write timeout passes, and its subscriber place is freed.
#[tokio::test]
async fn a_stalled_websocket_subscriber_is_closed() {
    let app = spawn_app_with(|c| c.write_timeout = Duration::from_secs(1)).await;
    let token = token("acme");
    let raw = small_buffer_socket(app.addr).await;
    let (mut raw, mut pending) = raw_ws_subscriber(raw, &token).await;
    loop {
        let frame = read_frame(&mut raw, &mut pending).await;
        if String::from_utf8_lossy(&frame.payload).contains("subscription_confirmed") {
            break;
        }
    }
    assert_eq!(subscribers(&app, &token, "ws").await, 1);
    write_8_mb(&app).await;
    eventually("the stalled WebSocket is closed", || async {
        subscribers(&app, &token, "ws").await == 0
    })
    .await;
    drop(raw);
}
