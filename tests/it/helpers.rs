//! `spawn_app()` and friends: the service in-process on a free port over a fresh
//! database, with methods named after what a user does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use changecast::auth::{Authenticator, TokenRules};
use changecast::secret::Secret;
use changecast::tenant::TenantId;
use changecast::{App, ServeConfig};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

pub use crate::database::server;

pub const SECRET: &str = "test-secret-test-secret-test-secret";
/// Upper bound for anything a test waits for; generous for slow CI machines.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when configured apart (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub db_url: String,
    pub db: tokio_postgres::Client,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let db_url = server().fresh_database().await;
    start_on(db_url, configure).await
}

/// Starts the service on an existing database (e.g. to restart it, or a second instance).
pub async fn start_on(db_url: String, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    init_logs();
    let mut config = ServeConfig::new(&db_url);
    config.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let app = App::build(config, &Secret::new(SECRET), shutdown.clone())
        .await
        .expect("building the app");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let handle = tokio::spawn(app.run());
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls)
        .await
        .expect("connecting the test client");
    tokio::spawn(connection);
    let app = TestApp {
        addr,
        metrics_addr,
        db_url,
        db,
        http: reqwest::Client::new(),
        shutdown,
        handle,
    };
    app.wait_ready().await;
    app
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        changecast::telemetry::init("text");
    }
}

/// Polls `check` (every 20 ms, up to [`WAIT`]) until it holds; panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a GET of `url` answers `status`.
pub async fn wait_for_status(http: &reqwest::Client, url: &str, status: u16) {
    eventually(&format!("GET {url} answers {status}"), || async {
        http.get(url)
            .send()
            .await
            .is_ok_and(|response| response.status() == status)
    })
    .await;
}

/// Verifies and mints with the tests' [`SECRET`].
pub fn authenticator() -> Authenticator {
    Authenticator::new(&Secret::new(SECRET), TokenRules::default()).unwrap()
}

pub fn token(tenant: &str) -> String {
    authenticator().mint(&TenantId::new(tenant).unwrap(), Duration::from_secs(3600))
}

impl TestApp {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Waits until `/readyz` says the listener is connected and caught up.
    pub async fn wait_ready(&self) {
        wait_for_status(&self.http, &self.url("/readyz"), 200).await;
    }

    /// Stops the service gracefully and waits for it (bounded).
    pub async fn stop(self) -> String {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("service did not stop")
            .unwrap()
            .unwrap();
        self.db_url
    }

    pub async fn get(&self, path_and_query: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path_and_query));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("request timed out")
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// Opens `/v1/events?{query}` with a bearer token; returns once headers arrived.
    pub async fn sse(&self, token: &str, query: &str) -> SseStream {
        self.sse_with(token, query, None).await
    }

    pub async fn sse_with(
        &self,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseStream {
        let mut request = self
            .http
            .get(self.url(&format!("/v1/events?{query}")))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("SSE connect timed out")
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "SSE refused: {:?}",
            response.text().await
        );
        SseStream::new(response)
    }

    pub async fn insert_ticket(&self, tenant: &str, title: &str) -> String {
        let row = self
            .db
            .query_one(
                "insert into tickets (tenant_id, title) values ($1, $2) returning id::text",
                &[&tenant, &title],
            )
            .await
            .unwrap();
        row.get(0)
    }

    /// Inserts `n` tickets in one statement; returns their ids.
    pub async fn insert_tickets(&self, tenant: &str, n: i64) -> Vec<String> {
        insert_tickets(&self.db, tenant, n).await
    }

    /// Waits (bounded by [`WAIT`]) until the tailer has published `n` events named `name`
    /// (a resource type or topic) for the tenant of `token` in the last minute, as
    /// `/v1/stats` counts them: a subscriber that starts now starts after them.
    pub async fn until_counted(&self, token: &str, name: &str, n: u64) {
        eventually(&format!("{n} {name} events published"), || async {
            let (_, stats) = self.get("/v1/stats", Some(token)).await;
            stats["events_per_minute"][name] == n
        })
        .await;
    }

    /// A connection of its own, e.g. for a transaction kept open across other writes.
    pub async fn connect_db(&self) -> tokio_postgres::Client {
        let (db, connection) = tokio_postgres::connect(&self.db_url, NoTls).await.unwrap();
        tokio::spawn(connection);
        db
    }

    /// Begins a transaction on a connection of its own and inserts a ticket in it; the
    /// caller commits (`batch_execute("commit")`) whenever the test needs it to.
    pub async fn begin_long_transaction(
        &self,
        tenant: &str,
        title: &str,
    ) -> (tokio_postgres::Client, String) {
        let db = self.connect_db().await;
        db.batch_execute("begin").await.unwrap();
        let id = db
            .query_one(
                "insert into tickets (tenant_id, title) values ($1, $2) returning id::text",
                &[&tenant, &title],
            )
            .await
            .unwrap()
            .get(0);
        (db, id)
    }

    /// Writes `transactions` × `per_transaction` tickets on a connection of its own, in
    /// the background; the task returns their ids.
    pub async fn spawn_writer(
        &self,
        tenant: &'static str,
        transactions: usize,
        per_transaction: i64,
    ) -> JoinHandle<HashSet<String>> {
        let db = self.connect_db().await;
        tokio::spawn(async move {
            let mut ids = HashSet::new();
            for _ in 0..transactions {
                ids.extend(insert_tickets(&db, tenant, per_transaction).await);
            }
            ids
        })
    }

    /// Inserts one agent; returns its id.
    pub async fn insert_agent(&self, tenant: &str, name: &str) -> String {
        let row = self
            .db
            .query_one(
                "insert into agents (tenant_id, name) values ($1, $2) returning id::text",
                &[&tenant, &name],
            )
            .await
            .unwrap();
        row.get(0)
    }

    /// Opens `/v1/ws` with a bearer token; panics unless the upgrade succeeds.
    pub async fn ws(&self, token: &str) -> WsClient {
        match self.ws_connect(Some(token), "").await {
            Ok(client) => client,
            Err((status, body)) => panic!("WebSocket refused: {status} {body}"),
        }
    }

    /// A WebSocket handshake on `/v1/ws?{query}`, with a bearer token if given: the
    /// socket, or the refusal's HTTP status and JSON body.
    pub async fn ws_connect(
        &self,
        token: Option<&str>,
        query: &str,
    ) -> Result<WsClient, (u16, Value)> {
        ws_connect(&self.addr.to_string(), token, query).await
    }

    /// The value of one Prometheus series line (`name{labels}`), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics", None).await;
        body.as_str()?.lines().find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
    }

    /// Pretends a pruning tick was taken `hours_ago`, saying that every change journalled
    /// (and committed) so far had ended by then. (The horizon is this database's newest
    /// committed xid + 1, not the cluster's oldest running one: other tests' transactions
    /// on the shared test cluster would hold that one back.)
    pub async fn age_committed_changes(&self, hours_ago: i32) {
        self.db
            .execute(
                "insert into changecast.journal_ticks (taken_at, horizon)
                 select now() - make_interval(hours => $1),
                        coalesce((select xid::text::bigint + 1 from changecast.change_log
                                  order by xid desc limit 1), 0)::text::xid8",
                &[&hours_ago],
            )
            .await
            .unwrap();
    }

    /// Lets (or stops letting) anyone open a new connection to this test's database —
    /// an outage for whoever connects next. Done from another database: PostgreSQL
    /// refuses it for the current one.
    pub async fn allow_new_connections(&self, allow: bool) {
        let (admin, connection) = tokio_postgres::connect(&server().url("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let database: String = self
            .db
            .query_one("select current_database()", &[])
            .await
            .unwrap()
            .get(0);
        admin
            .batch_execute(&format!(
                "alter database {database} allow_connections {allow}"
            ))
            .await
            .unwrap();
    }

    /// Kills the service's LISTEN connection from the database side.
    pub async fn kill_listener(&self) -> u64 {
        let rows = self
            .db
            .query(
                "select pg_terminate_backend(pid) from pg_stat_activity
                 where application_name = 'changecast:listener' and datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        rows.len() as u64
    }
}

/// Inserts `n` tickets in one statement on `db`; returns their ids.
pub async fn insert_tickets(db: &tokio_postgres::Client, tenant: &str, n: i64) -> Vec<String> {
    db.query(
        "insert into tickets (tenant_id, title) select $1, 'bulk ' || g
         from generate_series(1, $2::bigint) g returning id::text",
        &[&tenant, &n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A WebSocket handshake on `ws://{addr}/v1/ws?{query}`, with a bearer token if given:
/// the socket, or the refusal's HTTP status and JSON body.
pub async fn ws_connect(
    addr: &str,
    token: Option<&str>,
    query: &str,
) -> Result<WsClient, (u16, Value)> {
    let mut request = format!("ws://{addr}/v1/ws?{query}")
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WebSocket handshake timed out");
    match connected {
        Ok((socket, _)) => Ok(WsClient {
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
                if let Some(event) = self.parse_block(&block) {
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

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, "message".to_owned(), Vec::new());
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                "retry" => self.retry = value.parse().ok(),
                _ => {}
            }
        }
        if let Some(id) = &id {
            self.last_event_id = Some(id.clone());
        }
        if data.is_empty() {
            return None;
        }
        let data = serde_json::from_str(&data.join("\n")).expect("SSE data is JSON");
        Some(SseEvent { id, event, data })
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

/// A WebSocket client of `/v1/ws`, reading one JSON object per text frame.
pub struct WsClient {
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
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

/// `event:resource_id` — what "a change of a resource" means in set comparisons.
pub fn resource_key(event: &SseEvent) -> String {
    format!(
        "{}:{}",
        event.data["event"].as_str().unwrap_or(""),
        event.data["resource"]["id"].as_str().unwrap_or("")
    )
}

/// "Nothing lost": every written id was received; anything else received must be one of
/// `earlier` (a resume may repeat changes the client already had, never invent others).
pub fn assert_nothing_lost(
    written: &HashSet<String>,
    received: &HashSet<String>,
    earlier: &HashSet<String>,
) {
    let missing: Vec<_> = written.difference(received).collect();
    assert!(
        missing.is_empty(),
        "{} of {} changes lost, e.g. {:?}",
        missing.len(),
        written.len(),
        missing.first()
    );
    let foreign: Vec<_> = received
        .difference(written)
        .filter(|id| !earlier.contains(*id))
        .collect();
    assert!(
        foreign.is_empty(),
        "received {} changes nobody wrote here, e.g. {:?}",
        foreign.len(),
        foreign.first()
    );
}

/// A login role of its own, not a superuser (roles are cluster-wide: the name is unique
/// to this run).
pub struct Role {
    pub name: String,
}

static ROLES: AtomicUsize = AtomicUsize::new(0);

impl Role {
    pub async fn create(app: &TestApp, what: &str) -> Role {
        let name = format!(
            "cc_{what}_{}_{}",
            std::process::id(),
            ROLES.fetch_add(1, Ordering::SeqCst)
        );
        app.db
            .batch_execute(&format!(
                "create role {name} login nosuperuser password 'changecast'"
            ))
            .await
            .unwrap();
        Role { name }
    }

    pub async fn connect(&self, app: &TestApp) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = app.db_url.parse().unwrap();
        config.user(&self.name).password("changecast");
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    pub async fn is_superuser(&self, app: &TestApp) -> bool {
        app.db
            .query_one(
                "select rolsuper from pg_roles where rolname = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Best effort: the cluster may outlive the test run.
    pub async fn drop(self, app: &TestApp) {
        let _ = app
            .db
            .batch_execute(&format!("drop owned by {0}; drop role {0}", self.name))
            .await;
    }
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
