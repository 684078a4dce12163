//! Test infrastructure, in one place for every test module: the PostgreSQL server the
//! tests share ([`server`]); `spawn_app()` and friends (the service in-process on a free
//! port over a fresh database, with methods named after what a user does); the one SSE
//! client ([`sse`]) and the one WebSocket client ([`ws`]); and for the fault, flood and
//! wake-up tests a cluster of the test's own ([`cluster`]), writers that keep going
//! through outages ([`writers`]), subscribers that resume ([`followers`]), the service as
//! a child process ([`process`]) and a seeded PRNG ([`rng`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use changecast::auth::{Authenticator, TokenRules};
use changecast::secret::Secret;
use changecast::tenant::TenantId;
use changecast::{App, ServeConfig};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

pub mod cluster;
mod database;
pub mod followers;
pub mod process;
pub mod rng;
mod sse;
pub mod writers;
mod ws;

pub use database::server;
pub use sse::*;
pub use ws::*;

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

/// The id the journal's next row will get.
pub async fn next_id(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "select case when is_called then last_value + 1 else last_value end
         from changecast.change_log_id_seq",
        &[],
    )
    .await
    .unwrap()
    .get(0)
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

/// The snapshot a statement on `db` would take now, as the service reads it.
pub async fn current_snapshot(db: &tokio_postgres::Client) -> changecast::journal::PgSnapshot {
    db.query_one("select pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
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

/// `event:resource_id` of a `resource_change`, `topic:payload.n` of an `app_event`: what
/// tests compare received events by.
pub fn event_key(data: &Value) -> String {
    match data["type"].as_str() {
        Some("app_event") => format!(
            "{}:{}",
            data["topic"].as_str().unwrap(),
            data["payload"]["n"]
        ),
        _ => format!(
            "{}:{}",
            data["event"].as_str().unwrap(),
            data["resource_id"].as_str().unwrap()
        ),
    }
}
