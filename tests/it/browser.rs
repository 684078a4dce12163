//! The browser side in a real browser (headless Chromium via playwright-core): the
//! dashboard, the client library on both transports, the React hooks and the TanStack Query
//! helper of clients/js, and the TypeScript declarations. One Chromium, many pages.
//!
//! `tests/browser/suite.mjs` runs the scenarios and asks this test, line by line on its
//! stdout, for what only the server side can do (write rows, mint tokens, restart the
//! service); answers go back on its stdin. Each scenario reports `PASS` or `FAIL`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHANGECAST_CHROMIUM`) and `npm install` in
//! `tests/browser`. Without them the test says so and passes, unless
//! `CHANGECAST_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs them) demands it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use changecast::tenant::TenantId;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio_postgres::types::ToSql;

use crate::helpers::*;

/// The whole suite, Chromium start to last scenario.
const SUITE_DEADLINE: Duration = Duration::from_secs(180);

/// Every scenario the suite must report as passed (a skipped one fails the test).
const SCENARIOS: &[&str] = &[
    "typescript: the .d.ts type-checks the examples with tsc --strict",
    "client: plain <script> with the old options, and ES module import",
    "client: on('ticket') over SSE",
    "client: on('ticket') over WebSocket",
    "client: auto falls back to SSE when WebSocket is blocked",
    "client: subscribe() switches filters over SSE without losing a row written meanwhile",
    "client: subscribe() switches filters over WebSocket without losing a row",
    "client: an expiring token is refreshed through getToken (SSE), nothing lost",
    "client: an expiring token is refreshed through getToken (WebSocket), nothing lost",
    "client: an expired token without getToken stops with a clear error",
    "client: after a resync whose snapshot fails, it retries before streaming on",
    "react: useChangecast reports isLive and delivers changes",
    "react: useLiveSnapshot keeps a list from the snapshot and its stream",
    "tanstack: syncQueries invalidates the right keys and patches lists",
    "dashboard: a failed first snapshot is retried",
    "dashboard: snapshot, ticket moves between state columns, deletes",
    "dashboard: an expired token says so and asks for a new one",
    "dashboard: agent heartbeat ages live and stale agents are marked",
    "dashboard: copy-id puts the id on the clipboard and says Copied!",
    "dashboard: pause holds changes back, resume applies them",
    "dashboard: readable at phone width; screenshot of the demo tenant",
    "dashboard: Reconnecting… and back across a service restart, nothing lost",
];

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn browser_available() -> Result<(), String> {
    let chromium =
        std::env::var("CHANGECAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("no Chromium at {chromium}"));
    }
    for module in ["playwright-core", "react", "esbuild", "typescript"] {
        if !browser_dir().join("node_modules").join(module).exists() {
            return Err("run `npm install` in tests/browser".into());
        }
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("no node on PATH".into());
    }
    Ok(())
}

/// What the suite may ask for; runs one request against the service or its database.
struct Backstage {
    app: Option<TestApp>,
}

impl Backstage {
    fn app(&self) -> &TestApp {
        self.app
            .as_ref()
            .expect("BUG: the service is running between requests")
    }

    async fn handle(&mut self, request: Value) -> Result<Value, String> {
        let op = request["op"].as_str().unwrap_or_default();
        match op {
            "token" => {
                let tenant = TenantId::new(request["tenant"].as_str().unwrap_or("acme")).unwrap();
                let ttl = Duration::from_secs(request["ttl_s"].as_u64().unwrap_or(3600));
                Ok(json!(authenticator().mint(&tenant, ttl)))
            }
            "exec" => execute(&self.app().db, &request).await,
            "query" => query(&self.app().db, &request).await,
            "kill_listener" => Ok(json!(self.app().kill_listener().await)),
            "restart" => {
                let app = self.app.take().expect("BUG: running");
                let addr = app.addr;
                let db_url = app.stop().await;
                let (writer, connection) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                // Written while nothing serves: must reach the page after the restart.
                let while_down = query(&writer, &request).await;
                self.app = Some(start_on(db_url, |c| c.listen = addr).await);
                while_down
            }
            "demo" => {
                let (client, connection) =
                    tokio_postgres::connect(&self.app().db_url, tokio_postgres::NoTls)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let tenant = request["tenant"].as_str().unwrap_or("demo");
                let mut demo = changecast::demo::Demo::new(client, tenant)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                demo.seed().await.map_err(|e| format!("{e:#}"))?;
                for _ in 0..request["steps"].as_u64().unwrap_or(0) {
                    demo.step().await.map_err(|e| format!("{e:#}"))?;
                }
                Ok(json!(true))
            }
            other => Err(format!("unknown request {other:?}")),
        }
    }
}

fn params(request: &Value) -> Vec<String> {
    request["params"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn execute(db: &tokio_postgres::Client, request: &Value) -> Result<Value, String> {
    let params = params(request);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let sql = request["sql"].as_str().unwrap_or_default();
    db.execute(sql, &refs)
        .await
        .map(|n| json!(n))
        .map_err(|e| format!("{sql}: {e}"))
}

/// Runs a statement with `returning` (or a select) and answers its rows as JSON objects.
async fn query(db: &tokio_postgres::Client, request: &Value) -> Result<Value, String> {
    let params = params(request);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let sql = request["sql"].as_str().unwrap_or_default();
    let wrapped = format!("with t as ({sql}) select coalesce(json_agg(t), '[]')::text from t");
    let row = db
        .query_one(&wrapped, &refs)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_browser_side_works_in_chromium() {
    if let Err(missing) = browser_available() {
        assert!(
            std::env::var_os("CHANGECAST_REQUIRE_BROWSER").is_none(),
            "browser test required: {missing}"
        );
        eprintln!("skipping the browser test: {missing}");
        return;
    }
    let _turn = crate::clients::NODE_SUITE.lock().await;
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    // The README's picture is only replaced on request, so a test run leaves the tree clean.
    let screenshot = if std::env::var_os("CHANGECAST_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };
    let mut child = Command::new("node")
        .arg("suite.mjs")
        .arg(&base)
        .env("CHANGECAST_SCREENSHOT", &screenshot)
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut backstage = Backstage { app: Some(app) };
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match tag {
                "REQ" => {
                    let (id, body) = rest.split_once(' ').expect("REQ <id> <json>");
                    let request: Value = serde_json::from_str(body).expect("REQ json");
                    let answer = match backstage.handle(request).await {
                        Ok(value) => json!({ "ok": true, "value": value }),
                        Err(error) => json!({ "ok": false, "error": error }),
                    };
                    stdin
                        .write_all(format!("RES {id} {answer}\n").as_bytes())
                        .await
                        .unwrap();
                }
                "PASS" => {
                    eprintln!("  ok   {rest}");
                    passed.push(
                        rest.rsplit_once(" (")
                            .map_or(rest, |(name, _)| name)
                            .to_owned(),
                    );
                }
                "FAIL" | "PAGEERROR" => {
                    eprintln!("  FAIL {line}");
                    failed.push(line.clone());
                }
                "SKIP" => eprintln!("  skip {rest}"),
                "DONE" => break,
                _ => eprintln!("  {line}"),
            }
        }
    };
    tokio::time::timeout(SUITE_DEADLINE, run)
        .await
        .expect("the browser suite did not finish in time");
    let _ = child.wait().await;
    assert!(
        failed.is_empty(),
        "browser scenarios failed:\n{}",
        failed.join("\n")
    );
    let missing: Vec<_> = SCENARIOS
        .iter()
        .filter(|name| !passed.iter().any(|p| p == *name))
        .collect();
    assert!(
        missing.is_empty(),
        "scenarios that did not pass: {missing:#?}"
    );
}

/// `serve --demo`'s writer: a fresh tenant gets a board, agents and profiles, and each
/// step writes changes a subscriber sees, of every example type over time.
#[tokio::test]
async fn the_demo_writer_seeds_and_keeps_the_tenant_moving() {
    let app = spawn_app().await;
    let mut stream = app.sse(&token("demo"), "").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let pg: tokio_postgres::Config = app.db_url.parse().unwrap();
    let writer = tokio::spawn(changecast::demo::run(
        pg,
        "demo".into(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let mut types = std::collections::HashSet::new();
    let mut events = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(types.len() == 3 && events.len() == 3) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = stream.next_within(left).await else {
            panic!("the demo wrote only {types:?} / {events:?} within {WAIT:?}");
        };
        if event.event != "resource_change" {
            continue;
        }
        let change = event.data;
        types.insert(change["resource_type"].as_str().unwrap().to_owned());
        events.insert(change["event"].as_str().unwrap().to_owned());
        assert_eq!(change["tenant_id"], "demo");
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the demo writer stops on shutdown")
        .unwrap();
    let (status, body) = app
        .get(
            "/v1/snapshot?types=ticket,agent,profile",
            Some(&token("demo")),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["resources"]["agent"].as_array().unwrap().len() >= 5);
    assert!(body["resources"]["profile"].as_array().unwrap().len() >= 4);
}

/// `changecast serve --demo` with a configured secret: it prints where the dashboard is
/// but no token (one signed with the real secret would be a credential in its output),
/// and the demo tenant's stream moves at once for a token minted with that secret.
#[tokio::test]
async fn serve_demo_prints_a_dashboard_url_whose_stream_moves() {
    let db_url = server().fresh_database().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_changecast"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db_url)
        .env("CHANGECAST_JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting changecast");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (printed, url) = tokio::time::timeout(WAIT, async {
        let mut printed = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(url) = line.trim().strip_prefix("dashboard: ") {
                return (printed, url.to_owned());
            }
        }
        panic!("serve ended without printing a dashboard URL");
    })
    .await
    .expect("no dashboard URL printed");
    assert!(
        !printed.contains("eyJ"),
        "a token signed with the configured secret was printed:\n{printed}"
    );
    assert!(
        printed.contains("changecast token --tenant demo"),
        "{printed}"
    );
    let origin = url
        .strip_suffix("/?access_token=<token>")
        .expect("a URL with a token placeholder");
    let token = token("demo");
    let page = reqwest::get(format!("{origin}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let response = reqwest::Client::new()
        .get(format!("{origin}/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::new(response);
    let change = loop {
        let event = stream
            .next_within(WAIT)
            .await
            .expect("no demo activity within the bound");
        if event.event == "resource_change" {
            break event.data;
        }
    };
    assert_eq!(change["tenant_id"], "demo");
    unsafe { libc::kill(child.id().expect("running") as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("serve --demo did not stop after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
