//! The security model, tried from outside as an attacker or a careless operator would:
//! tokens the verifier must survive, limits idle sockets must not bypass, connections
//! that never finish their headers, and replay storms. (The signing secret's rules are
//! in `cli.rs`; the database side is in `security_sql.rs`.)

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Every hostile token gets a 401 JSON; the process survives them all.
#[tokio::test]
async fn hostile_tokens_get_a_401_json_and_never_a_panic() {
    let app = spawn_app().await;
    let exp = now() + 600;
    let cases = [
        // An `exp` no clock can hold (2^63 + 5): once a panic in the verifier.
        (
            signed(json!({"tenant_id": "acme", "exp": 9_223_372_036_854_775_813u64})),
            "invalid_token",
        ),
        (
            signed(json!({"tenant_id": "acme", "exp": u64::MAX})),
            "invalid_token",
        ),
        (
            signed(json!({"tenant_id": "acme", "exp": 1e300})),
            "invalid_token",
        ),
        (
            signed(json!({"tenant_id": "acme", "exp": exp, "nbf": now() + 300})),
            "token_not_yet_valid",
        ),
        // Over 8 KiB: refused before any parsing.
        (
            signed(json!({"tenant_id": "acme", "exp": exp, "pad": "x".repeat(9000)})),
            "invalid_token",
        ),
    ];
    for (token, code) in &cases {
        for path in ["/v1/events", "/v1/snapshot?types=ticket", "/v1/ws"] {
            let (status, body) = app.get(path, Some(token)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some(*code)),
                "{path}: {body}"
            );
            assert!(body["message"].is_string(), "{body}");
        }
    }
    // A token whose `nbf` has passed is fine; the service is still up.
    let started = signed(json!({"tenant_id": "acme", "exp": exp, "nbf": now() - 5}));
    let mut stream = app.sse(&started, "").await;
    let id = app.insert_ticket("acme", "after the hostile tokens").await;
    assert!(stream
        .receive_ids(&HashSet::from([id.clone()]))
        .await
        .contains(&id));
}

/// With `CHANGECAST_JWT_AUDIENCE`/`_ISSUER` set, tokens must carry both.
#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let app = spawn_app_with(|c| {
        c.token_rules.jwt_audience = Some("changecast".into());
        c.token_rules.jwt_issuer = Some("https://id.example.com".into());
    })
    .await;
    let exp = now() + 600;
    for claims in [
        json!({"tenant_id": "acme", "exp": exp}),
        json!({"tenant_id": "acme", "exp": exp, "aud": "changecast"}),
        json!({"tenant_id": "acme", "exp": exp, "aud": "billing", "iss": "https://id.example.com"}),
        json!({"tenant_id": "acme", "exp": exp, "aud": "changecast", "iss": "https://evil.example"}),
    ] {
        let (status, body) = app
            .get("/v1/snapshot?types=ticket", Some(&signed(claims.clone())))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{claims}"
        );
    }
    let good = signed(json!({"tenant_id": "acme", "exp": exp,
                             "aud": ["changecast", "billing"], "iss": "https://id.example.com"}));
    assert_eq!(
        app.get("/v1/snapshot?types=ticket", Some(&good)).await.0,
        200
    );
}

/// A WebSocket holds a subscriber place from its upgrade on, subscribed or not;
/// beyond the limits the upgrade itself is refused with 429/503 JSON.
#[tokio::test]
async fn idle_websockets_count_against_the_subscriber_limits() {
    let app = spawn_app_with(|c| {
        c.max_subscribers_per_tenant = 2;
        c.max_subscribers = 3;
    })
    .await;
    let acme = token("acme");
    // Two idle sockets: never subscribed, yet they fill the tenant's places.
    let mut first = app.ws(&acme).await;
    first.expect("connection_established").await;
    let mut second = app.ws(&acme).await;
    second.expect("connection_established").await;
    let (status, body) = app
        .ws_connect(Some(&acme), "")
        .await
        .err()
        .expect("a third socket was accepted");
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_subscribers")),
        "{body}"
    );
    let (status, _) = app.get("/v1/events", Some(&acme)).await;
    assert_eq!(status, 429, "SSE shares the same places");

    // The service-wide limit counts every tenant's sockets too.
    let mut other = app.ws(&token("globex")).await;
    other.expect("connection_established").await;
    let (status, body) = app
        .ws_connect(Some(&token("initech")), "")
        .await
        .err()
        .expect("over the service limit");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("server_full")),
        "{body}"
    );

    // A socket at the limit changes its filter freely: its one place is reused.
    first.subscribe(json!({"resource_types": ["ticket"]})).await;
    let confirmed = first.subscribe(json!({"resource_types": ["agent"]})).await;
    assert_eq!(confirmed["resource_types"], json!(["agent"]));
    first.assert_usable().await;

    // Closing a socket frees its place.
    second.close_within(WAIT).await;
    drop(second);
    eventually("the closed socket's place is given back", || async {
        app.ws_connect(Some(&acme), "").await.is_ok()
    })
    .await;
}

/// Reads until the server closes the connection; what it sent, or None when it stayed
/// open for `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    closed
        .ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// A client that trickles its headers (slowloris) or sends nothing is cut off
/// after the header deadline, and connections beyond the cap are refused at once with a
/// JSON 503 while the ones within keep working.
#[tokio::test]
async fn slow_header_senders_are_cut_off_and_open_connections_are_capped() {
    let app = spawn_app_with(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.max_connections = 4;
    })
    .await;
    let mut trickling = TcpStream::connect(app.addr).await.unwrap();
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    for stream in [&mut trickling, &mut silent] {
        let reply = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            reply.is_some(),
            "a connection without complete headers stayed open"
        );
        assert!(
            !reply.unwrap().contains("200 OK"),
            "served without complete headers"
        );
    }

    let app = spawn_app_with(|c| {
        c.header_timeout = Duration::from_secs(30);
        c.max_connections = 3;
    })
    .await;
    // Keep-alive connections that each completed one request hold a slot while idle;
    // open them until one is refused (the test's own HTTP client may hold a slot too).
    let mut held = Vec::new();
    let refusal = loop {
        assert!(
            held.len() <= 3,
            "more connections than the cap were accepted"
        );
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        if reply.starts_with("HTTP/1.1 200") {
            held.push(stream);
            continue;
        }
        // Refused: told why at once, then closed rather than queued.
        let rest = read_until_closed(&mut stream, WAIT)
            .await
            .expect("a refused connection stayed open");
        break reply + &rest;
    };
    assert!(!held.is_empty(), "no connection was accepted at all");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    let body: serde_json::Value =
        serde_json::from_str(refusal.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "too_many_connections");
    // Freeing one slot lets a request through again.
    drop(held.pop());
    eventually("a freed connection slot is reused", || async {
        let Ok(mut stream) = TcpStream::connect(app.addr).await else {
            return false;
        };
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(request).await.is_ok()
            && read_until_closed(&mut stream, WAIT)
                .await
                .is_some_and(|reply| reply.starts_with("HTTP/1.1 200"))
    })
    .await;
}

/// Writes an acme ticket titled `title` and waits for `stream` to receive it: its id, and
/// the cursor to resume after it.
async fn anchor(app: &TestApp, stream: &mut SseStream, title: &str) -> (String, String) {
    let id = app.insert_ticket("acme", title).await;
    stream.receive_ids(&HashSet::from([id.clone()])).await;
    let cursor = stream.last_event_id.clone().expect("changes carry an id");
    (id, cursor)
}

/// What each of `streams`, read side by side, received until it had all of `written`.
async fn receive_all(streams: Vec<SseStream>, written: &HashSet<String>) -> Vec<HashSet<String>> {
    futures_util::future::join_all(
        streams
            .into_iter()
            .map(|mut stream| async move { stream.receive_ids(written).await }),
    )
    .await
}

/// Many subscribers resuming from different old cursors at once are served one
/// replay page at a time (queued, never refused), every one of them gets everything, and
/// the pool's statements carry the configured `statement_timeout`.
#[tokio::test]
async fn a_replay_storm_is_queued_and_loses_nothing() {
    let app = spawn_app_with(|c| {
        c.max_replays = 1;
        c.max_replays_per_tenant = 1;
        c.statement_timeout = Duration::from_millis(4321);
    })
    .await;
    let acme = token("acme");
    let mut first = app.sse(&acme, "").await;
    // Twelve cursors, one per anchor: replays of different ranges share no reads.
    let mut anchors = HashSet::new();
    let mut cursors = Vec::new();
    for n in 0..12 {
        let (anchor, cursor) = anchor(&app, &mut first, &format!("anchor {n}")).await;
        cursors.push(cursor);
        anchors.insert(anchor);
    }
    // 1,200 changes since the cursors: three replay pages per subscriber.
    let written: HashSet<String> = app.insert_tickets("acme", 1200).await.into_iter().collect();
    let subscribers = futures_util::future::join_all(
        cursors
            .iter()
            .map(|cursor| app.sse_with(&acme, "", Some(cursor))),
    )
    .await;
    let received = receive_all(subscribers, &written).await;
    for got in &received {
        // Anchors after (and at) a cursor come too: its own cursor does not see them.
        assert_nothing_lost(&written, got, &anchors);
    }
    assert_eq!(app.metric("changecast_replays_running").await, Some(0.0));
    assert!(
        app.metric("changecast_replay_waits_total").await.unwrap() > 0.0,
        "twelve concurrent replays with a bound of one never waited"
    );
}

/// Subscribers of one tenant that come back with the same cursor
/// (a reconnect storm) read each replay page once between them, not once each.
#[tokio::test]
async fn a_reconnect_storm_with_one_cursor_reads_each_page_once() {
    let app = spawn_app().await;
    let acme = token("acme");
    let mut first = app.sse(&acme, "").await;
    let (anchor, cursor) = anchor(&app, &mut first, "anchor").await;
    let written: HashSet<String> = app.insert_tickets("acme", 1200).await.into_iter().collect();
    // Every subscriber below then starts from the same published boundary.
    first.receive_ids(&written).await;
    let pages_before = app
        .metric("changecast_replay_pages_read_total")
        .await
        .unwrap();
    let subscribers =
        futures_util::future::join_all((0..12).map(|_| app.sse_with(&acme, "", Some(&cursor))))
            .await;
    let received = receive_all(subscribers, &written).await;
    for got in &received {
        assert_nothing_lost(&written, got, &HashSet::from([anchor.clone()]));
    }
    let pages = app
        .metric("changecast_replay_pages_read_total")
        .await
        .unwrap()
        - pages_before;
    // 1,201 rows are three pages of 500; unshared, twelve subscribers would read 36.
    assert!(
        (3.0..=6.0).contains(&pages),
        "{pages} replay pages read for 12 subscribers of one range"
    );
}

/// A snapshot read that would wait or run long is cancelled by
/// `statement_timeout` and answered with a clear 503, instead of holding a pooled
/// connection for as long as the database makes it wait.
#[tokio::test]
async fn a_runaway_snapshot_query_is_cancelled_by_the_statement_timeout() {
    let app = spawn_app_with(|c| c.statement_timeout = Duration::from_millis(300)).await;
    // A migration holds an exclusive lock on the tickets table: a snapshot read would
    // wait for it as long as it lasts.
    let mut migration = app.connect_db().await;
    let lock = migration.transaction().await.unwrap();
    lock.batch_execute("lock table public.tickets in access exclusive mode")
        .await
        .unwrap();
    let (status, body) = app
        .get("/v1/snapshot?types=ticket", Some(&token("acme")))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    // The pool is not left broken: once the lock is gone, snapshots work again.
    lock.rollback().await.unwrap();
    assert_eq!(
        app.get("/v1/snapshot?types=ticket", Some(&token("acme")))
            .await
            .0,
        200
    );
}

/// Memory is bounded in bytes, not rows. A replay across rows of
/// 1 MiB each comes in pages of a few MiB (and loses nothing); a snapshot of them stops at
/// its byte bound and says `truncated`.
#[tokio::test]
async fn huge_rows_replay_in_short_pages_and_snapshots_stop_at_their_byte_bound() {
    let app = spawn_app().await;
    let acme = token("acme");
    let mut first = app.sse(&acme, "types=ticket").await;
    let (anchor, cursor) = anchor(&app, &mut first, "anchor").await;
    drop(first);
    // 40 tickets whose bodies (random hex, 1 MiB each) do not compress: 40 MiB.
    let written: HashSet<String> = app
        .db
        .query(
            "insert into tickets (tenant_id, title, body)
             select 'acme', 'big ' || g,
                    (select string_agg(md5(random()::text), '') from generate_series(1, 32768))
             from generate_series(1, 40) g
             returning id::text",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Published before the subscriber comes back, so it reads them all from the journal.
    app.until_counted(&acme, "ticket", 41).await;
    let pages_before = app
        .metric("changecast_replay_pages_read_total")
        .await
        .unwrap();
    let mut resumed = app.sse_with(&acme, "types=ticket", Some(&cursor)).await;
    let received = resumed.receive_ids(&written).await;
    assert_nothing_lost(&written, &received, &HashSet::from([anchor.clone()]));
    let pages = app
        .metric("changecast_replay_pages_read_total")
        .await
        .unwrap()
        - pages_before;
    assert!(
        pages >= 8.0,
        "40 MiB replayed in {pages} pages: not bounded by bytes"
    );

    let (status, snapshot) = app
        .get("/v1/snapshot?types=ticket&limit=10000", Some(&acme))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        snapshot["truncated"], true,
        "41 rows of 40 MiB fit no byte bound"
    );
    let rows = snapshot["resources"]["ticket"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() < 41, "{} rows", rows.len());
    let bytes: usize = rows.iter().map(|row| row.to_string().len()).sum();
    assert!(bytes <= 32 << 20, "{bytes} bytes in one snapshot");
}

/// An entry too large to keep in the fan-out's ring buffers reaches
/// live subscribers through the journal, in order and with the changes around it.
#[tokio::test]
async fn a_huge_row_reaches_live_subscribers_through_the_journal() {
    let app = spawn_app().await;
    let acme = token("acme");
    let mut sse = app.sse(&acme, "types=ticket").await;
    let mut ws = app.ws(&acme).await;
    ws.expect("connection_established").await;
    ws.subscribe(serde_json::json!({"resource_types": ["ticket"]}))
        .await;
    let mut agents = app.sse(&acme, "types=agent").await;
    let replays_before = app.metric("changecast_replays_total").await.unwrap();
    let before = app.insert_ticket("acme", "before").await;
    let huge: String = app
        .db
        .query_one(
            "insert into tickets (tenant_id, title, body)
             values ('acme', 'huge', (select string_agg(md5(random()::text), '') from generate_series(1, 32768)))
             returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let after = app.insert_ticket("acme", "after").await;
    let agent = app.insert_agent("acme", "unconcerned").await;
    let order = [before, huge.clone(), after];
    let events = sse.changes_until(3).await;
    let got: Vec<&str> = events
        .iter()
        .map(|e| e.data["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, order, "SSE, in commit order");
    assert_eq!(
        events[1].data["resource"]["body"].as_str().unwrap().len(),
        1 << 20
    );
    let over_ws = ws.changes_until_ids(&order.iter().cloned().collect()).await;
    let got: Vec<String> = over_ws.iter().map(change_id).collect();
    assert_eq!(got, order, "WebSocket, in commit order");
    // A subscriber the huge row does not concern is not sent to the journal for it.
    let replays = app.metric("changecast_replays_total").await.unwrap() - replays_before;
    assert_eq!(replays, 2.0, "one catch-up per concerned subscriber");
    assert_eq!(
        agents.receive_ids(&HashSet::from([agent.clone()])).await,
        HashSet::from([agent])
    );
}
