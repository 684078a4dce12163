//! OpenTelemetry traces: a collector of the test's own (a tiny OTLP/HTTP server)
//! receives well-formed OTLP JSON for a change's way to a subscriber, a snapshot and a
//! replay; the standard variables configure it (empty ones leave it off); a collector
//! that never answers holds up neither delivery nor shutdown.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::helpers::{spawn_app_with, token, SECRET, WAIT};

/// One export request as the collector received it.
struct Export {
    path: String,
    content_type: String,
    body: Value,
}

/// A minimal OTLP/HTTP collector: answers every POST with `200 {}`, hands on what it got.
struct Collector {
    url: String,
    exports: mpsc::UnboundedReceiver<Export>,
    spans: Vec<Value>,
    raw: String,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, exports) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, tx.clone()));
            }
        });
        Collector {
            url,
            exports,
            spans: Vec::new(),
            raw: String::new(),
        }
    }

    /// Receives exports until `done` holds of the spans so far (bounded by [`WAIT`]).
    async fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.spans) {
            let export = tokio::time::timeout_at(deadline, self.exports.recv())
                .await
                .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}; spans: {:#?}", self.spans))
                .expect("the collector stopped");
            self.take(export);
        }
    }

    fn take(&mut self, export: Export) {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/json");
        self.raw.push_str(&export.body.to_string());
        for resource in export.body["resourceSpans"]
            .as_array()
            .expect("resourceSpans")
        {
            let service = attribute(&resource["resource"], "service.name");
            assert!(service.is_some(), "service.name in {resource}");
            for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                assert_eq!(scope["scope"]["name"], "changecast");
                for span in scope["spans"].as_array().expect("spans") {
                    assert_well_formed(span);
                    let mut span = span.clone();
                    span["service"] = service.clone().unwrap();
                    self.spans.push(span);
                }
            }
        }
    }
}

async fn answer(mut socket: TcpStream, tx: mpsc::UnboundedSender<Export>) {
    let mut buffer = Vec::new();
    loop {
        let Some(end) = find(&buffer, b"\r\n\r\n") else {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().expect("a content-length");
        while buffer.len() < end + 4 + length {
            let mut chunk = [0u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..end + 4 + length).skip(end + 4).collect();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let _ = tx.send(Export {
            path,
            content_type: header("content-type"),
            body: serde_json::from_slice(&body).expect("an export is JSON"),
        });
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if socket.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn assert_well_formed(span: &Value) {
    let hex = |field: &str, len: usize| {
        let text = span[field].as_str().unwrap_or_default();
        assert!(
            text.len() == len
                && text.chars().all(|c| c.is_ascii_hexdigit())
                && text != "0".repeat(len),
            "{field} of {span}"
        );
    };
    hex("traceId", 32);
    hex("spanId", 16);
    if span.get("parentSpanId").is_some() {
        hex("parentSpanId", 16);
    }
    let nanos = |field: &str| -> u64 {
        span[field]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{field} of {span}"))
    };
    let (start, end) = (nanos("startTimeUnixNano"), nanos("endTimeUnixNano"));
    assert!(
        start > 1_600_000_000_000_000_000 && start <= end,
        "times of {span}"
    );
    assert!(span["name"].is_string());
    for attribute in span["attributes"].as_array().expect("attributes") {
        assert!(attribute["key"].is_string());
        let value = attribute["value"].as_object().expect("a value");
        assert_eq!(value.len(), 1, "{attribute}");
        assert!(["stringValue", "intValue", "boolValue"]
            .iter()
            .any(|kind| value.contains_key(*kind)));
    }
}

fn attribute(of: &Value, key: &str) -> Option<Value> {
    of["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let value = &a["value"];
            if let Some(n) = value.get("intValue") {
                Value::from(
                    n.as_str()
                        .and_then(|t| t.parse::<i64>().ok())
                        .expect("intValue"),
                )
            } else if let Some(text) = value.get("stringValue") {
                text.clone()
            } else {
                value["boolValue"].clone()
            }
        })
}

fn int(span: &Value, key: &str) -> i64 {
    attribute(span, key)
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("{key} of {span}"))
}

fn named<'a>(spans: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    spans.iter().filter(move |span| span["name"] == name)
}

/// The `change.deliver` span of ticket `id`'s creation, once it counts a write.
fn delivered<'a>(spans: &'a [Value], tenant: &str) -> Option<&'a Value> {
    named(spans, "change.deliver").find(|span| {
        attribute(span, "changecast.tenant") == Some(Value::from(tenant))
            && attribute(span, "changecast.subscribers").and_then(|n| n.as_i64()) >= Some(1)
    })
}

#[tokio::test]
async fn a_change_a_snapshot_and_a_replay_are_traced() {
    let mut collector = Collector::start().await;
    let endpoint = collector.url.clone();
    let app = spawn_app_with(|config| {
        config.traces.otlp_endpoint = Some(endpoint);
        config.traces.trace_sample = 1.0;
    })
    .await;
    let t = token("acme");
    let (status, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let before = snapshot["cursor"].as_str().unwrap().to_owned();
    let mut live = app.sse(&t, "").await;
    app.insert_ticket("acme", "title-that-must-not-be-traced")
        .await;
    let event = live.next_within(WAIT).await.expect("the change, live");
    assert_eq!(event.event, "resource_change");
    // A second subscriber resumes from before the change: a replay.
    let mut resumed = app.sse_with(&t, "", Some(&before)).await;
    let replayed = resumed
        .next_within(WAIT)
        .await
        .expect("the change, replayed");
    assert_eq!(replayed.id, event.id);
    let (status, snapshot) = app.get("/v1/snapshot?types=ticket,agent", Some(&t)).await;
    assert_eq!(status, 200);
    let rows = snapshot["resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|rows| rows.as_array().unwrap().len() as i64)
        .sum::<i64>();

    collector
        .until("a delivered change, two snapshots and a replay", |spans| {
            delivered(spans, "acme").is_some()
                && named(spans, "snapshot").count() >= 2
                && named(spans, "replay").any(|s| int(s, "changecast.entries") >= 1)
        })
        .await;
    let spans = &collector.spans;

    // change.deliver: a child of the journal read that found the change, in its trace.
    let deliver = delivered(spans, "acme").unwrap();
    let read = named(spans, "journal.read")
        .find(|read| read["spanId"] == deliver["parentSpanId"])
        .unwrap_or_else(|| panic!("the journal.read parent of {deliver}"));
    assert_eq!(read["traceId"], deliver["traceId"]);
    assert!(
        read.get("parentSpanId").is_none(),
        "journal.read is a root: {read}"
    );
    assert!(int(read, "changecast.entries") >= 1);
    assert!(attribute(read, "changecast.resource_types")
        .and_then(|v| v.as_str().map(|s| s.split(',').any(|t| t == "ticket")))
        .unwrap_or(false));
    assert_eq!(
        attribute(deliver, "changecast.resource_type"),
        Some(Value::from("ticket"))
    );
    assert_eq!(
        attribute(deliver, "changecast.event"),
        Some(Value::from("created"))
    );
    assert!(int(deliver, "changecast.latency_max_us") > 0);
    assert!(int(deliver, "changecast.entry_id") > 0);
    let start = |s: &Value| {
        s["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let end = |s: &Value| {
        s["endTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(start(deliver) >= end(read), "delivery starts once read");
    assert!(end(deliver) > start(deliver), "it ends at the socket write");

    // snapshot: types, rows written, not truncated; the second counts the new ticket.
    let last = named(spans, "snapshot")
        .find(|s| attribute(s, "changecast.resource_types") == Some(Value::from("ticket,agent")))
        .expect("the second snapshot's span");
    assert_eq!(int(last, "changecast.rows"), rows);
    assert!(rows >= 1);
    assert_eq!(
        attribute(last, "changecast.truncated"),
        Some(Value::Bool(false))
    );
    assert_eq!(
        attribute(last, "changecast.tenant"),
        Some(Value::from("acme"))
    );
    assert!(last.get("status").is_none(), "{last}");

    let replay = named(spans, "replay")
        .find(|s| int(s, "changecast.entries") >= 1)
        .unwrap();
    assert!(int(replay, "changecast.pages") >= 1);
    assert_eq!(
        attribute(replay, "changecast.tenant"),
        Some(Value::from("acme"))
    );

    assert!(spans.iter().all(|s| s["service"] == "changecast"));
    // Nothing secret and no row values travel.
    assert!(!collector.raw.contains("title-that-must-not-be-traced"));
    assert!(!collector.raw.contains(&t));
    assert!(!collector.raw.contains(&before));
    app.stop().await;
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_hold_up_delivery() {
    // Accepts connections and reads nothing, answers nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let app = spawn_app_with(|config| {
        config.traces.otlp_endpoint = Some(endpoint);
        config.traces.trace_sample = 1.0;
    })
    .await;
    let t = token("acme");
    let mut stream = app.sse(&t, "").await;
    // Rounds spread over several export periods, more spans than the queue holds.
    let mut expected = HashSet::new();
    for _ in 0..4 {
        for id in app.insert_tickets("acme", 1500).await {
            expected.insert(id);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let got = stream.receive_ids(&expected).await;
    assert!(
        expected.is_subset(&got),
        "{} of {} changes delivered",
        expected.intersection(&got).count(),
        expected.len()
    );
    let stopped = tokio::time::Instant::now();
    app.stop().await;
    assert!(
        // Below the service's own grace period for its tasks (5 s): the exporter gave up.
        stopped.elapsed() < Duration::from_millis(4500),
        "shutdown waited {:?} for a dead collector",
        stopped.elapsed()
    );
    held.abort();
}

/// `changecast serve` as a child process, configured by `env` only.
fn serve(db_url: &str, env: &[(&str, &str)]) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_changecast"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", db_url)
        .env("CHANGECAST_JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("starting changecast")
}

/// The address a child `serve` listens on.
fn listening(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("changecast listening on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("changecast did not listen")
}

/// One change delivered live, a snapshot and a replay, against a child `serve`.
async fn exercise(addr: &str, db: &tokio_postgres::Client) {
    let http = reqwest::Client::new();
    let t = token("acme");
    let get = |path: &str| {
        http.get(format!("http://{addr}{path}"))
            .bearer_auth(&t)
            .send()
    };
    crate::helpers::wait_for_status(&http, &format!("http://{addr}/readyz"), 200).await;
    let snapshot: Value = get("/v1/snapshot").await.unwrap().json().await.unwrap();
    let cursor = snapshot["cursor"].as_str().unwrap().to_owned();
    db.execute(
        "insert into tickets (tenant_id, title) values ('acme', 'x')",
        &[],
    )
    .await
    .unwrap();
    let response = get(&format!("/v1/events?last_event_id={cursor}"))
        .await
        .unwrap();
    let mut stream = crate::helpers::SseStream::new(response);
    let event = stream
        .next_within(WAIT)
        .await
        .expect("the change, replayed");
    assert_eq!(event.event, "resource_change");
}

#[tokio::test]
async fn the_standard_variables_configure_it_and_empty_ones_leave_it_off() {
    let mut collector = Collector::start().await;
    let db_url = crate::helpers::server().fresh_database().await;
    let (db, connection) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);

    // Empty, as compose files leave unset variables: off.
    let mut off = serve(
        &db_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("CHANGECAST_TRACE_SAMPLE", "1"),
        ],
    );
    let addr = listening(&mut off);
    exercise(&addr, &db).await;
    unsafe_sigterm(&off);
    let exited = tokio::task::spawn_blocking(move || off.wait())
        .await
        .unwrap();
    assert!(exited.unwrap().success());

    let traces = format!("{}/v1/traces", collector.url);
    let mut on = serve(
        &db_url,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
            ("OTEL_SERVICE_NAME", "changecast-child"),
            ("CHANGECAST_TRACE_SAMPLE", "1"),
        ],
    );
    let addr = listening(&mut on);
    exercise(&addr, &db).await;
    // Stopped at once: the last export at shutdown sends what is left.
    unsafe_sigterm(&on);
    collector
        .until("a snapshot and a replay from the child", |spans| {
            named(spans, "snapshot").count() >= 1 && named(spans, "replay").count() >= 1
        })
        .await;
    assert!(collector
        .spans
        .iter()
        .all(|s| s["service"] == "changecast-child"));
    let exited = tokio::task::spawn_blocking(move || on.wait())
        .await
        .unwrap();
    assert!(exited.unwrap().success());
    // Whatever the collector received came from the second service only.
    while let Ok(export) = collector.exports.try_recv() {
        collector.take(export);
    }
    assert!(collector
        .spans
        .iter()
        .all(|s| s["service"] == "changecast-child"));
}

fn unsafe_sigterm(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling a child process we own and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
