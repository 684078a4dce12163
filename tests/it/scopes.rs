//! Scopes beneath the tenant (API.md §3c), black-box: HS256 tokens signed by the test
//! carrying a scope claim; real PostgreSQL, real SSE and WebSocket clients. Requests
//! outside the scope are refused, scope filters hold live, on replay and in snapshots
//! (rows entering and leaving the holder's view), omitted columns never leave, `stats:
//! false` refuses statistics (and statistics list only what the scope allows), and a
//! malformed scope refuses the token.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use changecast::secret::Secret;
use changecast::{App, ServeConfig};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::rng::Rng;
use crate::helpers::*;

/// Long enough for an event that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(400);

fn signed(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

/// A token of `tenant` whose `changecast` claim is `scope`.
fn scoped(tenant: &str, scope: Value) -> String {
    signed(json!({"tenant_id": tenant, "exp": in_an_hour(), "changecast": scope}))
}

async fn insert(
    app: &TestApp,
    title: &str,
    assignee: Option<&str>,
    state: &str,
    body: &str,
) -> String {
    app.db
        .query_one(
            "insert into tickets (tenant_id, title, assignee, state, body)
             values ('acme', $1, $2, $3, $4) returning id::text",
            &[&title, &assignee, &state, &body],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs `sql` with `$1` the ticket's id.
async fn on_ticket(app: &TestApp, sql: &str, id: &str) {
    app.db.execute(sql, &[&id]).await.unwrap();
}

async fn publish(app: &TestApp, topic: &str, n: i64) {
    app.db
        .execute(
            "select changecast.publish('acme', $1, jsonb_build_object('n', $2::bigint))",
            &[&topic, &n],
        )
        .await
        .unwrap();
}

/// The next `n` events of a WebSocket (changes, app events, resyncs), bounded.
async fn ws_events(ws: &mut WsClient, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = ws
            .next_json_within(left)
            .await
            .unwrap_or_else(|| panic!("got {} of {n} events: {events:?}", events.len()));
        if matches!(
            message["type"].as_str(),
            Some("resource_change" | "app_event" | "resync")
        ) {
            events.push(message);
        }
    }
    events
}

async fn assert_sse_quiet(stream: &mut SseStream) {
    if let Some(event) = stream.next_within(QUIET).await {
        panic!("unexpected event: {event:?}");
    }
}

async fn assert_refused(app: &TestApp, path: &str, token: &str, status: u16, code: &str) -> Value {
    let (got, body) = app.get(path, Some(token)).await;
    assert_eq!(got, status, "{path}: {body}");
    assert_eq!(body["error"], code, "{path}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn ws_subscribed(app: &TestApp, token: &str) -> WsClient {
    let mut ws = app.ws(token).await;
    ws.expect("connection_established").await;
    ws
}

#[tokio::test]
async fn types_and_topics_outside_the_scope_are_forbidden_on_every_transport() {
    let app = spawn_app().await;
    let t = scoped(
        "acme",
        json!({"types": ["ticket"], "topics": ["user.42.*"]}),
    );
    for path in [
        "/v1/events?types=agent",
        "/v1/events?types=ticket,agent",
        "/v1/events?topics=config_update",
        "/v1/events?types=ticket&topics=user.42.*,other",
        "/v1/snapshot?types=agent",
        "/v1/snapshot?types=ticket,profile",
    ] {
        let body = assert_refused(&app, path, &t, 403, "forbidden").await;
        assert!(
            body["message"].as_str().unwrap().contains("scope"),
            "{body}"
        );
    }
    // Naming nothing gets the whole scope: a snapshot of tickets alone.
    let (status, snapshot) = app.get("/v1/snapshot", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let types: Vec<&String> = snapshot["resources"].as_object().unwrap().keys().collect();
    assert_eq!(types, ["ticket"]);

    let mut whole = app.sse(&t, "").await;
    // A pattern the scope allows in part is narrowed to that part.
    let mut users = app.sse(&t, "topics=user.*").await;
    let mut ws = ws_subscribed(&app, &t).await;
    for refused in [
        json!({"type": "subscribe", "resource_types": ["agent"]}),
        json!({"type": "subscribe", "topics": ["config_update"]}),
    ] {
        ws.send_json(refused).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], "forbidden", "{error}");
    }
    ws.assert_usable().await;
    let confirmed = ws.subscribe(json!({})).await;
    assert_eq!(confirmed["resource_types"], json!(["ticket"]));
    assert_eq!(confirmed["topics"], json!(["user.42.*"]));

    app.insert_agent("acme", "not in scope").await;
    publish(&app, "config_update", 1).await;
    publish(&app, "user.43.note", 2).await;
    publish(&app, "user.42.note", 3).await;
    let ticket = app.insert_ticket("acme", "in scope").await;
    let expected = ["user.42.note:3".to_owned(), format!("created:{ticket}")];

    let got: Vec<String> = next_events(&mut whole, 2)
        .await
        .iter()
        .map(|e| event_key(&e.data))
        .collect();
    assert_eq!(got, expected, "SSE naming nothing");
    let got: Vec<String> = ws_events(&mut ws, 2).await.iter().map(event_key).collect();
    assert_eq!(got, expected, "WebSocket naming nothing");
    let first = next_events(&mut users, 1).await;
    assert_eq!(
        event_key(&first[0].data),
        "user.42.note:3",
        "narrowed topics"
    );
    assert_sse_quiet(&mut users).await;

    // After the refusals, a subscription in scope on the same socket works.
    let mut ws = ws_subscribed(&app, &t).await;
    ws.send_json(json!({"type": "subscribe", "resource_types": ["agent"]}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    ws.subscribe(json!({"resource_types": ["ticket"]})).await;
    let later = app.insert_ticket("acme", "later").await;
    let got: Vec<String> = ws_events(&mut ws, 1).await.iter().map(event_key).collect();
    assert_eq!(got, [format!("created:{later}")]);
}

#[tokio::test]
async fn scope_filters_hold_live_on_replay_and_in_snapshots_through_reassignments() {
    let app = spawn_app().await;
    let t = scoped(
        "acme",
        json!({"types": ["ticket"], "filter": {"ticket": ["assignee=eq.dara"]}}),
    );
    let a = insert(&app, "a", Some("dara"), "open", "").await;
    let b = insert(&app, "b", Some("kim"), "open", "").await;
    let (status, snapshot) = app.get("/v1/snapshot", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let ids: Vec<&str> = snapshot["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str()]);
    let start = snapshot["cursor"].as_str().unwrap().to_owned();
    let mut live = app.sse(&t, "").await;
    let mut ws = ws_subscribed(&app, &t).await;
    ws.subscribe(json!({})).await;

    on_ticket(
        &app,
        "update tickets set assignee = 'dara' where id = $1::text::uuid",
        &b,
    )
    .await;
    on_ticket(
        &app,
        "update tickets set assignee = 'kim' where id = $1::text::uuid",
        &a,
    )
    .await;
    on_ticket(
        &app,
        "update tickets set title = 'x' where id = $1::text::uuid",
        &a,
    )
    .await;
    on_ticket(
        &app,
        "update tickets set title = 'y' where id = $1::text::uuid",
        &b,
    )
    .await;
    let c = insert(&app, "c", Some("dara"), "open", "").await;
    on_ticket(&app, "delete from tickets where id = $1::text::uuid", &b).await;
    let d = insert(&app, "d", Some("kim"), "open", "").await;
    on_ticket(&app, "delete from tickets where id = $1::text::uuid", &d).await;
    on_ticket(
        &app,
        "update tickets set assignee = null where id = $1::text::uuid",
        &c,
    )
    .await;
    let e = insert(&app, "e", Some("dara"), "open", "").await;
    let expected = [
        format!("created:{b}"),
        format!("deleted:{a}"),
        format!("updated:{b}"),
        format!("created:{c}"),
        format!("deleted:{b}"),
        format!("deleted:{c}"),
        format!("created:{e}"),
    ];

    let events = next_events(&mut live, expected.len()).await;
    let got: Vec<String> = events.iter().map(|e| event_key(&e.data)).collect();
    assert_eq!(got, expected, "live");
    assert_eq!(
        events[1].data["resource"]["assignee"], "kim",
        "a row leaving the view comes with its new row"
    );
    assert_sse_quiet(&mut live).await;
    let got: Vec<String> = ws_events(&mut ws, expected.len())
        .await
        .iter()
        .map(event_key)
        .collect();
    assert_eq!(got, expected, "WebSocket");

    // The same from the journal: a replay from the snapshot's cursor.
    let mut replayed = app.sse_with(&t, "", Some(&start)).await;
    let got: Vec<String> = next_events(&mut replayed, expected.len())
        .await
        .iter()
        .map(|e| event_key(&e.data))
        .collect();
    assert_eq!(got, expected, "replayed");
    let mut ws = ws_subscribed(&app, &t).await;
    ws.subscribe(json!({"last_event_id": start})).await;
    let got: Vec<String> = ws_events(&mut ws, expected.len())
        .await
        .iter()
        .map(event_key)
        .collect();
    assert_eq!(got, expected, "replayed over WebSocket");

    // Scope and request filters both hold.
    on_ticket(
        &app,
        "update tickets set state = 'closed' where id = $1::text::uuid",
        &e,
    )
    .await;
    let (_, now) = app.get("/v1/snapshot?filter=state=eq.open", Some(&t)).await;
    assert_eq!(now["resources"]["ticket"], json!([]));
    let (_, now) = app.get("/v1/snapshot", Some(&t)).await;
    let ids: Vec<&str> = now["resources"]["ticket"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [e.as_str()]);
}

#[tokio::test]
async fn omitted_columns_reach_the_holder_in_nothing_it_receives() {
    let app = spawn_app().await;
    let t = scoped("acme", json!({"omit": {"ticket": ["body", "assignee"]}}));
    let plain = token("acme");
    let x = insert(&app, "x", Some("dara-secret"), "open", "body-secret").await;

    let (status, snapshot) = app.get("/v1/snapshot?types=ticket", Some(&t)).await;
    assert_eq!(status, 200, "{snapshot}");
    let row = &snapshot["resources"]["ticket"][0];
    assert_eq!(row["title"], "x");
    assert!(!snapshot.to_string().contains("secret"), "{snapshot}");
    assert!(row.get("body").is_none() && row.get("assignee").is_none());
    let (_, full) = app.get("/v1/snapshot?types=ticket", Some(&plain)).await;
    assert_eq!(full["resources"]["ticket"][0]["body"], "body-secret");

    let mut scoped_sse = app.sse(&t, "types=ticket").await;
    let mut plain_sse = app.sse(&plain, "types=ticket").await;
    let mut ws = ws_subscribed(&app, &t).await;
    ws.subscribe(json!({"resource_types": ["ticket"]})).await;

    on_ticket(
        &app,
        "update tickets set body = 'body-secret-2' where id = $1::text::uuid",
        &x,
    )
    .await;
    on_ticket(
        &app,
        "update tickets set assignee = 'kim-secret', state = 'review' where id = $1::text::uuid",
        &x,
    )
    .await;
    let y = insert(&app, "y", None, "open", "body-secret-3").await;
    on_ticket(&app, "delete from tickets where id = $1::text::uuid", &x).await;
    let expected = [
        format!("updated:{x}"),
        format!("created:{y}"),
        format!("deleted:{x}"),
    ];

    let scoped_events: Vec<Value> = next_events(&mut scoped_sse, 3)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let ws_events = ws_events(&mut ws, 3).await;
    for (transport, events) in [("SSE", &scoped_events), ("WebSocket", &ws_events)] {
        let got: Vec<String> = events.iter().map(event_key).collect();
        assert_eq!(
            got, expected,
            "{transport}: an update of omitted columns only is not sent"
        );
        for event in events {
            assert!(
                !event.to_string().contains("secret"),
                "{transport}: {event}"
            );
            assert!(event["resource"].get("body").is_none());
        }
        assert_eq!(events[0]["changed"], json!(["state"]), "{transport}");
        assert_eq!(events[0]["old"], json!({"state": "open"}), "{transport}");
        assert_eq!(events[0]["resource"]["state"], "review");
    }
    assert_sse_quiet(&mut scoped_sse).await;
    // A holder without the scope, served from the same changes, still gets everything.
    let plain_events = next_events(&mut plain_sse, 4).await;
    assert_eq!(plain_events[0].data["changed"], json!(["body"]));
    assert_eq!(
        plain_events[1].data["changed"],
        json!(["assignee", "state"])
    );
    assert_eq!(plain_events[2].data["resource"]["body"], "body-secret-3");

    // Filtering on an omitted column would reveal its values.
    for path in [
        "/v1/events?filter=body=eq.x",
        "/v1/events?types=ticket&filter=assignee=is.null",
        "/v1/snapshot?filter=body=eq.x",
    ] {
        assert_refused(&app, path, &t, 400, "invalid_filter").await;
    }
    ws.send_json(json!({"type": "subscribe", "filter": ["assignee=eq.kim"]}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "invalid_filter");
    ws.assert_usable().await;
    // Over a type whose columns are not omitted, the same filter is fine.
    let (status, _) = app
        .get("/v1/snapshot?types=agent&filter=body=eq.x", Some(&t))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/v1/snapshot?filter=state=eq.open", Some(&t)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn stats_false_refuses_statistics_and_nothing_else() {
    let app = spawn_app().await;
    let t = scoped("acme", json!({"stats": false}));
    assert_refused(&app, "/v1/stats", &t, 403, "forbidden").await;
    let streamed = app
        .http
        .get(app.url("/v1/stats"))
        .bearer_auth(&t)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 403);
    let mut ws = ws_subscribed(&app, &t).await;
    ws.send_json(json!({"type": "get_stats"})).await;
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "forbidden", "{error}");
    ws.assert_usable().await;
    ws.subscribe(json!({})).await;
    let (status, _) = app.get("/v1/snapshot", Some(&t)).await;
    assert_eq!(status, 200);
    // Allowed explicitly or by default.
    for allowed in [scoped("acme", json!({"stats": true})), token("acme")] {
        let (status, body) = app.get("/v1/stats", Some(&allowed)).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn stats_list_only_the_types_and_topics_the_scope_allows() {
    let app = spawn_app().await;
    app.insert_ticket("acme", "t").await;
    app.insert_agent("acme", "a").await;
    publish(&app, "user.42.inbox", 1).await;
    publish(&app, "user.43.inbox", 2).await;
    publish(&app, "config_update", 3).await;
    let everything = token("acme");
    for name in [
        "ticket",
        "agent",
        "user.42.inbox",
        "user.43.inbox",
        "config_update",
    ] {
        app.until_counted(&everything, name, 1).await;
    }
    let names = |report: &Value| -> Vec<String> {
        let counts = report["events_per_minute"].as_object().unwrap();
        counts.keys().cloned().collect()
    };
    let (_, report) = app.get("/v1/stats", Some(&everything)).await;
    assert_eq!(names(&report).len(), 5, "unrestricted: every name {report}");

    // Named types and topic patterns; only types (no topic); only topics (no type).
    for (scope, allowed) in [
        (
            json!({"types": ["ticket"], "topics": ["user.42.*"]}),
            vec!["ticket", "user.42.inbox"],
        ),
        (json!({"types": ["agent"]}), vec!["agent"]),
        (json!({"topics": ["config_update"]}), vec!["config_update"]),
        (
            json!({"stats": true}),
            vec![
                "agent",
                "config_update",
                "ticket",
                "user.42.inbox",
                "user.43.inbox",
            ],
        ),
    ] {
        let t = scoped("acme", scope.clone());
        let (status, report) = app.get("/v1/stats", Some(&t)).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(names(&report), allowed, "HTTP, scope {scope}");

        let mut ws = ws_subscribed(&app, &t).await;
        ws.send_json(json!({"type": "get_stats"})).await;
        let over_ws = ws.expect("stats").await;
        assert_eq!(names(&over_ws), allowed, "WebSocket, scope {scope}");

        let response = app
            .http
            .get(app.url("/v1/stats"))
            .bearer_auth(&t)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let mut stream = SseStream::new(response);
        let event = stream.next_within(WAIT).await.unwrap();
        assert_eq!(event.event, "stats");
        assert_eq!(names(&event.data), allowed, "streamed, scope {scope}");
    }
}

#[tokio::test]
async fn a_malformed_scope_refuses_the_token() {
    let app = spawn_app().await;
    for claim in [
        json!("ticket"),
        json!(null),
        json!({"types": "ticket"}),
        json!({"filter": {"ticket": ["state=like.x"]}}),
        json!({"filters": {"ticket": ["state=eq.x"]}}),
        json!({"omit": {"ticket": "body"}}),
        json!({"stats": "no"}),
    ] {
        let t = scoped("acme", claim.clone());
        for path in ["/v1/events", "/v1/snapshot", "/v1/stats"] {
            let body = assert_refused(&app, path, &t, 401, "invalid_scope").await;
            assert!(
                body["message"].as_str().unwrap().contains("`changecast`"),
                "{claim} {path}: {body}"
            );
        }
        let Err((status, body)) = app.ws_connect(Some(&t), "").await else {
            panic!("{claim}: a WebSocket with a malformed scope was accepted");
        };
        assert_eq!((status, &body["error"]), (401, &json!("invalid_scope")));
    }
}

#[tokio::test]
async fn the_scope_claim_is_where_changecast_scope_claim_says() {
    let app = spawn_app_with(|config| {
        config.token_rules.scope_claim = "app_metadata.changecast".parse().unwrap();
    })
    .await;
    let nested = signed(json!({
        "tenant_id": "acme", "exp": in_an_hour(),
        "app_metadata": {"changecast": {"types": ["agent"]}}
    }));
    assert_refused(&app, "/v1/events?types=ticket", &nested, 403, "forbidden").await;
    let (status, snapshot) = app.get("/v1/snapshot", Some(&nested)).await;
    assert_eq!(status, 200);
    let types: Vec<&String> = snapshot["resources"].as_object().unwrap().keys().collect();
    assert_eq!(types, ["agent"]);
    // A claim elsewhere is not the scope.
    let elsewhere = scoped("acme", json!({"types": ["agent"]}));
    let (status, _) = app.get("/v1/snapshot?types=ticket", Some(&elsewhere)).await;
    assert_eq!(status, 200);
    let malformed = signed(json!({
        "tenant_id": "acme", "exp": in_an_hour(),
        "app_metadata": {"changecast": {"types": [1]}}
    }));
    let body = assert_refused(&app, "/v1/events", &malformed, 401, "invalid_scope").await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("`app_metadata.changecast`"));
}

/// One scoped subscriber of the model test: its scope, its request, its transport, and
/// its copy of its view.
struct Holder {
    scope: Value,
    /// Request filters (SSE query and WebSocket `filter` alike).
    filters: &'static [&'static str],
    omit: &'static [&'static str],
    over_ws: bool,
    /// Drops its connection midway and resumes from its last event later.
    resumes: bool,
    token: String,
    feed: Option<Feed>,
    copy: BTreeMap<String, Value>,
    /// Event ids applied (a resume may repeat a few).
    applied: HashSet<String>,
    /// Where it resumes from.
    cursor: String,
}

enum Feed {
    Sse(SseStream),
    Ws(Box<WsClient>),
}

impl Feed {
    /// The next change, app event or resync, if one comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        match self {
            Feed::Sse(stream) => stream.next_within(wait).await.map(|e| e.data),
            Feed::Ws(ws) => {
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let message = ws.next_json_within(left).await?;
                    if matches!(
                        message["type"].as_str(),
                        Some("resource_change" | "app_event" | "resync")
                    ) {
                        return Some(message);
                    }
                }
            }
        }
    }
}

impl Holder {
    fn query(&self) -> String {
        self.filters
            .iter()
            .map(|f| format!("filter={f}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Its view now, as a fresh scoped snapshot shows it (every type's rows by id).
    async fn snapshot(&self, app: &TestApp) -> (String, BTreeMap<String, Value>) {
        let (status, snapshot) = app
            .get(&format!("/v1/snapshot?{}", self.query()), Some(&self.token))
            .await;
        assert_eq!(status, 200, "{snapshot}");
        assert_eq!(snapshot["truncated"], false);
        let rows = snapshot["resources"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|rows| rows.as_array().unwrap().clone())
            .map(|row| (row["id"].as_str().unwrap().to_owned(), row))
            .collect();
        (snapshot["cursor"].as_str().unwrap().to_owned(), rows)
    }

    async fn connect(&mut self, app: &TestApp) {
        self.feed = Some(if self.over_ws {
            let mut ws = ws_subscribed(app, &self.token).await;
            ws.subscribe(json!({"filter": self.filters, "last_event_id": self.cursor}))
                .await;
            Feed::Ws(Box::new(ws))
        } else {
            Feed::Sse(
                app.sse_with(&self.token, &self.query(), Some(&self.cursor))
                    .await,
            )
        });
    }

    /// Applies one event to the copy, as a client does; answers whether it was the
    /// final marker.
    fn apply(&mut self, who: usize, event: &Value) -> bool {
        let id = event["id"].as_str().unwrap().to_owned();
        assert_ne!(event["type"], "resync", "holder {who}: {event}");
        if !self.applied.insert(id.clone()) {
            return false;
        }
        self.cursor = id;
        if event["type"] == "app_event" {
            return event["topic"] == "done";
        }
        let text = event.to_string();
        for column in self.omit {
            assert!(
                !text.contains(&format!("\"{column}\"")),
                "holder {who} got omitted column {column}: {event}"
            );
        }
        let row = event["resource"].clone();
        let rid = event["resource_id"].as_str().unwrap().to_owned();
        let had = match event["event"].as_str().unwrap() {
            "created" => self.copy.insert(rid.clone(), row).is_some(),
            "updated" => {
                assert!(
                    !event["changed"].as_array().unwrap().is_empty(),
                    "holder {who}: {event}"
                );
                self.copy.insert(rid.clone(), row).is_none()
            }
            _ => self.copy.remove(&rid).is_none(),
        };
        assert!(!had, "holder {who}: {event} does not fit its copy");
        false
    }

    /// Reads and applies until nothing comes within `quiet` (or the marker).
    async fn drain(&mut self, who: usize, quiet: Duration) -> bool {
        while let Some(event) = self.feed.as_mut().unwrap().next(quiet).await {
            if self.apply(who, &event) {
                return true;
            }
        }
        false
    }
}

/// Random tickets, random reassignments, state changes, edits and deletes, watched by
/// subscribers of several scopes (filters, omitted columns, request filters on top, SSE
/// and WebSocket, some resuming midway): each one's copy of its view, applied from what
/// it received, equals a fresh scoped snapshot at the end.
#[tokio::test]
async fn scoped_copies_stay_exact_through_random_reassignments() {
    let seed = std::env::var("SCOPES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("scoped model seed: {seed} (SCOPES_SEED={seed} repeats it)");
    let mut rng = Rng::new(seed);
    let app = spawn_app().await;
    let people = ["dara", "kim", "lee"];
    let states = ["open", "review", "closed"];
    let holder = |scope: Value,
                  filters: &'static [&'static str],
                  omit: &'static [&'static str],
                  over_ws: bool,
                  resumes: bool| Holder {
        token: scoped("acme", scope.clone()),
        scope,
        filters,
        omit,
        over_ws,
        resumes,
        feed: None,
        copy: BTreeMap::new(),
        applied: HashSet::new(),
        cursor: String::new(),
    };
    let mut holders = vec![
        holder(
            json!({"filter": {"ticket": ["assignee=eq.dara"]}}),
            &[],
            &[],
            false,
            false,
        ),
        holder(
            json!({"filter": {"ticket": ["assignee=eq.kim"]}, "omit": {"ticket": ["body"]}}),
            &[],
            &["body"],
            true,
            false,
        ),
        holder(
            json!({"filter": {"ticket": ["state=in.(open,review)"]},
                   "omit": {"ticket": ["body", "assignee"]}}),
            &[],
            &["body", "assignee"],
            false,
            true,
        ),
        holder(
            json!({"omit": {"ticket": ["state"]}}),
            &[],
            &["state"],
            true,
            true,
        ),
        holder(
            json!({"filter": {"ticket": ["assignee=eq.dara"]}}),
            &["state=neq.closed"],
            &[],
            false,
            false,
        ),
        holder(
            json!({"types": ["ticket"], "topics": ["done"],
                   "filter": {"ticket": ["assignee=in.(kim,lee)", "state=neq.open"]},
                   "omit": {"ticket": ["title"]}}),
            &[],
            &["title"],
            false,
            true,
        ),
    ];

    let mut tickets: Vec<String> = Vec::new();
    let mut n = 0;
    for _ in 0..10 {
        n += 1;
        let assignee = rng.chance(80).then(|| *rng.pick(&people));
        let state = *rng.pick(&states);
        tickets.push(insert(&app, &format!("t{n}"), assignee, state, &format!("b{n}")).await);
    }
    for holder in &mut holders {
        let (cursor, rows) = holder.snapshot(&app).await;
        for row in rows.values() {
            for column in holder.omit {
                assert!(row.get(*column).is_none(), "{}: {row}", holder.scope);
            }
        }
        holder.copy = rows;
        holder.cursor = cursor;
        holder.connect(&app).await;
    }

    const STEPS: usize = 150;
    for step in 0..STEPS {
        if step == STEPS / 3 {
            for (who, holder) in holders.iter_mut().enumerate().filter(|(_, h)| h.resumes) {
                holder.drain(who, Duration::from_millis(200)).await;
                holder.feed = None;
            }
        }
        if step == 2 * STEPS / 3 {
            for holder in holders.iter_mut().filter(|h| h.resumes) {
                holder.connect(&app).await;
            }
        }
        let id = rng.pick(&tickets).clone();
        let person = *rng.pick(&people);
        let state = *rng.pick(&states);
        match rng.below(10) {
            0 | 1 => {
                n += 1;
                let assignee = rng.chance(80).then_some(person);
                tickets
                    .push(insert(&app, &format!("t{n}"), assignee, state, &format!("b{n}")).await);
            }
            2 | 3 => {
                app.db
                    .execute(
                        "update tickets set assignee = $2 where id = $1::text::uuid",
                        &[&id, &person],
                    )
                    .await
                    .unwrap();
            }
            4 => {
                on_ticket(
                    &app,
                    "update tickets set assignee = null where id = $1::text::uuid",
                    &id,
                )
                .await
            }
            5 | 6 => {
                app.db
                    .execute(
                        "update tickets set state = $2 where id = $1::text::uuid",
                        &[&id, &state],
                    )
                    .await
                    .unwrap();
            }
            7 => {
                n += 1;
                app.db
                    .execute(
                        "update tickets set body = $2 where id = $1::text::uuid",
                        &[&id, &format!("b{n}")],
                    )
                    .await
                    .unwrap();
            }
            8 => {
                // Several rows in one transaction: reassigned and moved together.
                let other = rng.pick(&tickets).clone();
                app.db
                    .execute(
                        "update tickets set assignee = $3, state = $4
                         where id in ($1::text::uuid, $2::text::uuid)",
                        &[&id, &other, &person, &state],
                    )
                    .await
                    .unwrap();
            }
            _ => {
                on_ticket(&app, "delete from tickets where id = $1::text::uuid", &id).await;
                tickets.retain(|t| *t != id);
                if tickets.is_empty() {
                    n += 1;
                    tickets.push(insert(&app, &format!("t{n}"), None, "open", "").await);
                }
            }
        }
    }
    publish(&app, "done", 0).await;

    for (who, holder) in holders.iter_mut().enumerate() {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = holder
                .feed
                .as_mut()
                .unwrap()
                .next(left)
                .await
                .unwrap_or_else(|| panic!("holder {who} (seed {seed}): no `done` in time"));
            if holder.apply(who, &event) {
                break;
            }
        }
        let (_, now) = holder.snapshot(&app).await;
        println!(
            "holder {who}: {} events applied, {} rows in its view",
            holder.applied.len(),
            now.len()
        );
        assert_eq!(
            holder.copy, now,
            "holder {who} ({}, filters {:?}; seed {seed}): its copy is not its view",
            holder.scope, holder.filters
        );
    }
}

/// A policy file of the customer-portal kind: customers see the tickets assigned to
/// them, without `body` and without statistics; agents see the whole tenant; every
/// other token is refused.
const PORTAL_POLICY: &str = r#"{ "rules": [
    { "name": "customers", "when": { "role": "customer" },
      "scope": { "types": ["ticket"], "filter": { "ticket": ["assignee=eq.{sub}"] },
                 "omit": { "ticket": ["body"] }, "stats": false } },
    { "name": "agents", "when": { "roles": "agent" }, "scope": {} }
] }"#;

fn policy_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// A token of tenant `acme` with these further claims, as an identity provider's would
/// carry them (no `changecast` claim unless given).
fn with_claims(extra: Value) -> String {
    let mut claims = json!({"tenant_id": "acme", "exp": in_an_hour()});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    signed(claims)
}

#[tokio::test]
async fn a_policy_derives_each_tokens_scope_from_its_claims() {
    let policy = policy_file(PORTAL_POLICY);
    let path = policy.path().to_owned();
    let app = spawn_app_with(|config| config.policy = Some(path)).await;
    let customer = with_claims(json!({"sub": "dara", "role": "customer"}));
    let agent = with_claims(json!({"sub": "kim", "roles": ["viewer", "agent"]}));
    let nobody = with_claims(json!({"sub": "lee", "role": "guest"}));

    let mine = insert(&app, "mine", Some("dara"), "open", "secret body").await;
    let theirs = insert(&app, "theirs", Some("kim"), "open", "").await;
    let (status, snapshot) = app.get("/v1/snapshot", Some(&customer)).await;
    assert_eq!(status, 200, "{snapshot}");
    let rows = snapshot["resources"]["ticket"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{snapshot}");
    assert_eq!(rows[0]["id"], mine.as_str());
    assert!(
        rows[0].get("body").is_none(),
        "omitted column in {snapshot}"
    );
    let (status, snapshot) = app.get("/v1/snapshot", Some(&agent)).await;
    assert_eq!(status, 200, "{snapshot}");
    assert_eq!(snapshot["resources"]["ticket"].as_array().unwrap().len(), 2);

    let mut customer_stream = app.sse(&customer, "").await;
    let mut agent_stream = app.sse(&agent, "types=ticket").await;
    on_ticket(
        &app,
        "update tickets set assignee = 'dara' where id = $1::text::uuid",
        &theirs,
    )
    .await;
    let entered = customer_stream.next_within(WAIT).await.expect("an event");
    assert_eq!(entered.data["event"], "created", "{:?}", entered.data);
    assert_eq!(entered.data["resource_id"], theirs.as_str());
    let seen = agent_stream.next_within(WAIT).await.expect("an event");
    assert_eq!(seen.data["event"], "updated", "{:?}", seen.data);

    assert_refused(&app, "/v1/stats", &customer, 403, "forbidden").await;
    assert_refused(&app, "/v1/events?types=agent", &customer, 403, "forbidden").await;
    let body = assert_refused(&app, "/v1/events", &nobody, 403, "forbidden").await;
    assert!(
        !body["message"].as_str().unwrap().contains("lee"),
        "claim values stay out of refusals: {body}"
    );
    assert_refused(&app, "/v1/snapshot", &nobody, 403, "forbidden").await;
    assert_sse_quiet(&mut customer_stream).await;
}

#[tokio::test]
async fn a_tokens_own_scope_narrows_what_the_policy_grants() {
    let policy = policy_file(PORTAL_POLICY);
    let path = policy.path().to_owned();
    let app = spawn_app_with(|config| config.policy = Some(path)).await;
    let narrowed = with_claims(json!({
        "roles": ["agent"], "changecast": {"types": ["agent"]}
    }));
    assert_refused(&app, "/v1/events?types=ticket", &narrowed, 403, "forbidden").await;
    let mut stream = app.sse(&narrowed, "").await;
    insert(&app, "not followed", None, "open", "").await;
    let agent = app.insert_agent("acme", "a1").await;
    let event = stream.next_within(WAIT).await.expect("an event");
    assert_eq!(event.data["resource_type"], "agent", "{:?}", event.data);
    assert_eq!(event.data["resource_id"], agent.as_str());
}

#[tokio::test]
async fn a_policy_that_does_not_check_out_stops_the_start() {
    let db_url = server().fresh_database().await;
    for (text, expected) in [
        (r#"{"rules": []}"#, "empty"),
        (
            r#"{"rules": [{"when": {"role": "x"}, "scope": {"filter": {"ticket": ["{sub}=eq.1"]}}}]}"#,
            "rules[0]",
        ),
        ("not json", "not a policy"),
    ] {
        let policy = policy_file(text);
        let mut config = ServeConfig::new(&db_url);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.policy = Some(policy.path().to_owned());
        let refused = App::build(config, &Secret::new(SECRET), CancellationToken::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("started with the policy {text}"));
        let message = format!("{refused:#}");
        assert!(
            message.contains(expected) && message.contains("access policy"),
            "{text}: {message}"
        );
    }
}
