//! Snapshots and values a client or a table can make costly: snapshots held open by
//! clients that do not read are bounded per tenant and overall, an answer is streamed
//! yet reads exactly as a whole one, and a number beyond `f64` is a value like any other.

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{eventually, parse_block, spawn_app_with, token, TestApp, WAIT};

/// A watched table of large rows: enough that no snapshot of it fits in socket buffers.
async fn large_rows(app: &TestApp, tenants: &[&str]) {
    app.db
        .batch_execute(
            "create table public.blobs (id int primary key, tenant_id text not null, body text);
             select changecast.watch('public.blobs', 'blob');",
        )
        .await
        .unwrap();
    for tenant in tenants {
        app.db
            .execute(
                "insert into public.blobs
                 select n + 100000 * (select count(*) from public.blobs), $1, repeat(md5(n::text), 250)
                 from generate_series(1, 2000) n",
                &[tenant],
            )
            .await
            .unwrap();
    }
}

/// A snapshot request on a socket with a small receive buffer that reads the response's
/// head and then nothing more: the snapshot stays in progress while the socket is open.
async fn stalled_snapshot(app: &TestApp, tenant: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /v1/snapshot?types=blob&limit=10000 HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\r\n",
        app.addr,
        token(tenant)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("no response head")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// `/v1/snapshot?{query}` as status, `Retry-After` and body.
async fn snapshot(app: &TestApp, tenant: &str, query: &str) -> (u16, Option<String>, String) {
    let response = tokio::time::timeout(
        WAIT,
        app.http
            .get(app.url(&format!("/v1/snapshot?{query}")))
            .bearer_auth(token(tenant))
            .send(),
    )
    .await
    .expect("snapshot timed out")
    .expect("the snapshot request failed");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

#[tokio::test]
async fn snapshots_held_open_by_clients_that_do_not_read_are_bounded() {
    let app = spawn_app_with(|c| {
        c.max_tenant_snapshots = Some(1);
        c.max_snapshots = Some(2);
    })
    .await;
    large_rows(&app, &["acme", "globex", "initech"]).await;
    let held = stalled_snapshot(&app, "acme").await;

    let (status, retry_after, body) = snapshot(&app, "acme", "types=blob&limit=1").await;
    assert_eq!(status, 429, "{body:.300}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "too_many_snapshots", "{body}");

    let (status, _, body) = snapshot(&app, "globex", "types=blob&limit=3").await;
    assert_eq!(status, 200, "another tenant is served: {body:.300}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["resources"]["blob"].as_array().unwrap().len(), 3);

    // The overall bound: two held open, a third tenant is refused too.
    let also_held = stalled_snapshot(&app, "globex").await;
    let (status, retry_after, body) = snapshot(&app, "initech", "types=blob&limit=1").await;
    assert_eq!(status, 503, "{body:.300}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "snapshots_full"
    );

    // A client that goes away gives its place back.
    drop(held);
    drop(also_held);
    eventually("acme's place is given back", || async {
        snapshot(&app, "acme", "types=blob&limit=1").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn a_streamed_snapshot_reads_exactly_as_the_whole_answer() {
    let app = spawn_app_with(|_| {}).await;
    large_rows(&app, &["acme"]).await;
    app.insert_tickets("acme", 5).await;
    app.insert_ticket("acme", "with \"quotes\" and \\ and \u{e9}")
        .await;
    for (query, truncated) in [
        ("types=ticket,blob,agent&limit=10000", false),
        ("types=blob,ticket&limit=1500", true),
        ("types=ticket&filter=title=neq.x&limit=3", true),
    ] {
        let (status, _, body) = snapshot(&app, "acme", query).await;
        assert_eq!(status, 200, "{query}: {body:.300}");
        let parsed: Value = serde_json::from_str(&body).expect("the body is valid JSON");
        let cursor = parsed["cursor"].as_str().unwrap();
        let limit: i64 = query.rsplit("limit=").next().unwrap().parse().unwrap();
        let mut types: Vec<&str> = query
            .split('&')
            .next()
            .unwrap()
            .trim_start_matches("types=")
            .split(',')
            .collect();
        types.sort();
        let mut expected = format!("{{\"cursor\":{},\"resources\":{{", json!(cursor));
        for (i, resource_type) in types.iter().enumerate() {
            let table = match *resource_type {
                "ticket" => "tickets",
                "blob" => "blobs",
                _ => "agents",
            };
            let rows: Vec<String> = app
                .db
                .query(
                    &format!(
                        "select to_jsonb(t)::text from public.{table} t
                         where tenant_id = 'acme' order by id limit $1"
                    ),
                    &[&limit],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            if i > 0 {
                expected.push(',');
            }
            expected.push_str(&format!("\"{resource_type}\":[{}]", rows.join(",")));
        }
        expected.push_str(&format!("}},\"truncated\":{truncated}}}"));
        assert!(
            body == expected,
            "{query}: the answer differs from the whole one"
        );
    }
}

/// Reads SSE events until a `resource_change` whose data contains `needle`; that data as
/// text (a number beyond `f64` is not a `serde_json::Value`).
async fn sse_text_until(response: reqwest::Response, needle: &str) -> String {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut parsed = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = text[parsed..].find("\n\n") {
                let block = parse_block(&text[parsed..parsed + end]);
                parsed += end + 2;
                if block.event != "resource_change" {
                    continue;
                }
                if let Some(data) = block.data.filter(|data| data.contains(needle)) {
                    return data;
                }
            }
        }
        panic!("the stream ended: {text}");
    })
    .await
    .unwrap_or_else(|_| panic!("no event with {needle}: {text}"))
}

#[tokio::test]
async fn a_number_beyond_f64_is_filtered_like_any_value_and_never_lost() {
    let app = spawn_app_with(|_| {}).await;
    app.db
        .batch_execute(
            "create table public.readings (id text primary key, tenant_id text not null,
                                           value numeric, state text);
             select changecast.watch('public.readings', 'reading');
             insert into public.readings values ('r1', 'acme', 1e400, 'open'),
                                                ('r2', 'acme', 1, 'open'),
                                                ('r3', 'acme', -1e400, 'open');",
        )
        .await
        .unwrap();
    let huge = format!("1{}", "0".repeat(400));

    for (filter, expected) in [
        ("state=eq.open", vec!["r1", "r2", "r3"]),
        ("value=gt.5", vec!["r1"]),
        ("value=lt.0", vec!["r3"]),
        ("value=eq.1", vec!["r2"]),
    ] {
        let (status, _, body) =
            snapshot(&app, "acme", &format!("types=reading&filter={filter}")).await;
        assert_eq!(status, 200, "{filter}: {body:.300}");
        let ids: Vec<&str> = expected.clone();
        for id in ["r1", "r2", "r3"] {
            assert_eq!(
                body.contains(&format!("\"id\": \"{id}\"")),
                ids.contains(&id),
                "{filter}: {id} in {body:.200}"
            );
        }
    }

    let t = token("acme");
    let sse = tokio::time::timeout(
        WAIT,
        app.http
            .get(app.url("/v1/events?types=reading&filter=state=eq.open&filter=value=gt.5"))
            .bearer_auth(&t)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sse.status(), 200);
    let mut ws = app.ws(&t).await;
    ws.expect("connection_established").await;
    ws.subscribe(json!({"type": "subscribe", "resource_types": ["reading"],
                        "filter": ["state=eq.open", "value=gt.5"]}))
        .await;

    app.db
        .execute(
            "update public.readings set state = 'open ' where id = 'r2'",
            &[],
        )
        .await
        .unwrap();
    app.db
        .execute(
            "update public.readings set value = 2e400 where id = 'r1'",
            &[],
        )
        .await
        .unwrap();
    let huger = format!("2{}", "0".repeat(400));

    let event = sse_text_until(sse, &huger).await;
    assert!(event.contains("\"event\":\"updated\""), "{event:.300}");
    assert!(event.contains(&huge), "the old value is sent as is");

    let frame = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next_frame_within(WAIT).await {
                Some(Message::Text(text)) if text.contains("resource_change") => return text,
                Some(_) => continue,
                None => panic!("the WebSocket closed: {:?}", ws.close),
            }
        }
    })
    .await
    .expect("no resource_change on the WebSocket");
    assert!(frame.contains(&huger), "{frame:.300}");
    assert!(frame.contains("\"event\":\"updated\""), "{frame:.300}");
}

/// A client that keeps its socket open without reading holds its snapshot only until
/// `CHANGECAST_SNAPSHOT_TIMEOUT`: then the read is cancelled, its database transaction
/// ends and its place comes back, although the client never left.
#[tokio::test]
async fn a_snapshot_its_client_does_not_read_ends_at_the_snapshot_timeout() {
    let app = spawn_app_with(|c| {
        c.max_tenant_snapshots = Some(1);
        c.max_snapshots = Some(1);
        c.snapshot_timeout = std::time::Duration::from_secs(1);
        c.write_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    large_rows(&app, &["acme"]).await;
    let _held = stalled_snapshot(&app, "acme").await;
    assert_eq!(snapshot(&app, "acme", "types=blob&limit=1").await.0, 429);
    eventually("the stalled snapshot's place is given back", || async {
        snapshot(&app, "acme", "types=blob&limit=1").await.0 == 200
    })
    .await;
    eventually(
        "no pool connection is left inside a snapshot's transaction",
        || async {
            let open: i64 = app
                .db
                .query_one(
                    "select count(*) from pg_stat_activity
                 where application_name = 'changecast:pool' and state like 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            open == 0
        },
    )
    .await;
}
