//! The embedded default database, black-box: the real binary with no `DATABASE_URL`
//! starts its own PostgreSQL, serves changes from it, stops it on SIGTERM (and when the
//! service is killed outright), ignores a stale lock file, and finds
//! its data again on the next start.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::helpers::{
    assert_nothing_lost, token, wait_for_status, ws_connect, SseStream, SECRET, WAIT,
};

/// SIGTERM must end the service (and its database) within this.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// A running `changecast serve`; killed (and so its database stopped through the
/// parent-death signal) if a test fails before stopping it.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    db_url: String,
    addr: String,
}

impl Service {
    /// Starts `serve` on `data_dir` with no `DATABASE_URL`; returns once it printed where
    /// its database lives and where it listens.
    fn start(data_dir: &Path) -> Service {
        Service::start_with(data_dir, |_| {})
    }

    /// [`Service::start`], with the command adjusted by `configure` first.
    fn start_with(data_dir: &Path, configure: impl FnOnce(&mut Command)) -> Service {
        let mut command = serve_command(data_dir);
        command
            .env("CHANGECAST_JWT_SECRET", SECRET)
            .stdout(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("starting changecast");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            child,
            lines,
            db_url: String::new(),
            addr: String::new(),
        };
        let line = service.line_starting("embedded PostgreSQL: ");
        let url = line
            .split_whitespace()
            .nth(2)
            .expect("a URL after the label");
        let password_file = data_dir.join("changecast.password");
        assert!(
            line.contains(&format!(
                "(data in {}, password in {})",
                data_dir.display(),
                password_file.display()
            )),
            "{line}"
        );
        // The printed URL hides the password; it is in the data folder.
        assert!(
            url.starts_with("postgres://postgres:***@127.0.0.1:"),
            "{url}"
        );
        let password = std::fs::read_to_string(&password_file).expect("the password file");
        service.db_url = url.replace("***", password.trim());
        let line = service.line_starting("changecast listening on http://");
        service.addr = line.rsplit("http://").next().unwrap().to_owned();
        service
    }

    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {WAIT:?}; exit status: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        wait_for_status(http, &self.url("/readyz"), 200).await;
    }

    /// SIGTERM, then the exit status (bounded by [`STOP_BOUND`]).
    async fn terminate(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut self.child, STOP_BOUND)
            .await
            .expect("changecast did not exit within the bound after SIGTERM")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve_command(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_changecast"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env_remove("CHANGECAST_DATA_DIR")
        .env_remove("CHANGECAST_LISTEN")
        .stdin(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    command
}

/// The child's exit status once it exits, or `None` after `bound`.
async fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A temp folder the unprivileged `postgres` user can enter (we may be root).
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("changecast-embedded-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The postmaster's pid, from its lock file.
fn postmaster_pid(data_dir: &Path) -> i32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

fn process_exists(pid: i32) -> bool {
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn serve_without_database_url_runs_its_own_postgres_persists_and_stops_it() {
    let work = work_dir();
    let data_dir: PathBuf = work.path().join("pgdata");
    let http = reqwest::Client::new();

    // First run: initdb, start, migrate, serve (its log kept for the shutdown's checks).
    let mut service = Service::start_with(&data_dir, |c| {
        c.stderr(Stdio::piped());
    });
    let log = capture_stderr(&mut service.child);
    let password = std::fs::read_to_string(data_dir.join("changecast.password")).unwrap();
    let without_password = service.db_url.replace(&format!(":{password}@"), "@");
    assert!(
        connect(&without_password).await.is_err(),
        "no password, no connection"
    );
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "initdb ran in --data-dir"
    );
    service.wait_ready(&http).await;
    let pid = postmaster_pid(&data_dir);

    let response = http
        .get(service.url("/v1/events"))
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = SseStream::new(response);
    let db = connect(&service.db_url)
        .await
        .expect("the embedded URL works");
    let id: String = db
        .query_one(
            "insert into tickets (tenant_id, title) values ('acme', 'kept') returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let expected = HashSet::from([id.clone()]);
    assert_eq!(events.receive_ids(&expected).await, expected);
    drop(db);
    let mut ws = ws_connect(&service.addr, Some(&token("acme")), "")
        .await
        .expect("WebSocket connects");
    ws.expect("connection_established").await;
    ws.subscribe(serde_json::json!({})).await;

    // SIGTERM with live SSE and WS subscribers: exit 0 in time, WS closed with 1012,
    // the SSE stream ended, the database gone.
    let status = service.terminate().await;
    assert!(status.success(), "exit status {status}");
    let (code, _) = ws.close_within(WAIT).await.expect("a close frame");
    assert_eq!(
        code,
        1012,
        "WS subscribers are told the service restarts; the service's log:\n{}",
        log.lock().unwrap()
    );
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next_event().await {
            assert_ne!(event.event, "resource_change", "{:?}", event.data);
        }
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream did not end");
    assert!(!process_exists(pid), "embedded postgres {pid} still runs");
    assert!(
        connect(&service.db_url).await.is_err(),
        "the embedded database still accepts connections"
    );
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "postgres was stopped cleanly"
    );
    drop(service);

    // A crashed run leaves a stale lock file behind; it must not block the next start.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = { dead }.wait();
    std::fs::write(
        data_dir.join("postmaster.pid"),
        format!("{dead_pid}\n{}\n", data_dir.display()),
    )
    .unwrap();

    // Second run on the same folder: the row is still there.
    let mut service = Service::start(&data_dir);
    service.wait_ready(&http).await;
    let db = connect(&service.db_url).await.unwrap();
    let kept: i64 = db
        .query_one("select count(*) from tickets where id::text = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the row written in the first run persisted");
    drop(db);

    // The service killed outright: its database still shuts down (parent-death signal).
    let _ = service.child.kill();
    let _ = service.child.wait();
    let deadline = tokio::time::Instant::now() + STOP_BOUND;
    while data_dir.join("postmaster.pid").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "embedded postgres outlived its killed service by {STOP_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        connect(&service.db_url).await.is_err(),
        "the database of a killed service still accepts connections"
    );
}

#[tokio::test]
async fn serve_without_database_url_or_binaries_explains_what_to_do() {
    let work = work_dir();
    let empty_path = work.path().join("empty-bin");
    std::fs::create_dir(&empty_path).unwrap();
    let data_dir = work.path().join("pgdata");
    let mut child = serve_command(&data_dir)
        .env("CHANGECAST_PG_BINDIR", "/nonexistent")
        .env("PATH", &empty_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, WAIT)
        .await
        .expect("changecast did not give up in time");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}");
    for hint in [
        "no PostgreSQL server binaries found",
        "apt-get install postgresql",
        "brew install postgresql",
        "DATABASE_URL",
        "/nonexistent",
    ] {
        assert!(stderr.contains(hint), "{hint:?} missing from: {stderr}");
    }
    assert!(!data_dir.exists(), "nothing is created without binaries");
}

/// Collects a child's stderr on a thread (so a chatty child never blocks on the pipe).
fn capture_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("stderr piped");
    let sink = captured.clone();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    captured
}

/// The embedded PostgreSQL killed under a running `serve` is started
/// again (same folder, same port, same password): `/readyz` goes 503, then 200; a
/// subscriber resuming with its cursor gets what was written before and after; the
/// restart is counted.
#[tokio::test]
async fn serve_restarts_its_embedded_postgres_when_it_dies() {
    let work = work_dir();
    let data_dir = work.path().join("pgdata");
    let http = reqwest::Client::new();
    let mut service = Service::start(&data_dir);
    service.wait_ready(&http).await;
    let db = connect(&service.db_url).await.unwrap();
    let insert = |db: tokio_postgres::Client, title: &'static str| async move {
        let id: String = db
            .query_one(
                "insert into tickets (tenant_id, title) values ('acme', $1) returning id::text",
                &[&title],
            )
            .await
            .unwrap()
            .get(0);
        id
    };
    let events_url = service.url("/v1/events");
    let subscribe = |cursor: Option<String>| {
        let (http, url) = (http.clone(), events_url.clone());
        async move {
            let mut request = http.get(url).bearer_auth(token("acme"));
            if let Some(cursor) = cursor {
                request = request.header("last-event-id", cursor);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            SseStream::new(response)
        }
    };
    let mut events = subscribe(None).await;
    let before = insert(db, "before").await;
    let expected = HashSet::from([before.clone()]);
    assert_eq!(events.receive_ids(&expected).await, expected);
    let cursor = events.last_event_id.clone().expect("the change's cursor");
    drop(events);

    let pid = postmaster_pid(&data_dir);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for_status(&http, &service.url("/readyz"), 503).await;
    service.wait_ready(&http).await;
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service kept running"
    );
    assert_ne!(postmaster_pid(&data_dir), pid, "a new server runs");
    let db = connect(&service.db_url)
        .await
        .expect("the same URL works for the restarted server");
    let after = insert(db, "after").await;
    let mut events = subscribe(Some(cursor)).await;
    let expected = HashSet::from([after]);
    let received = events.receive_ids(&expected).await;
    // A resume may repeat the change it had; it must bring the one after the restart.
    assert_nothing_lost(&expected, &received, &HashSet::from([before]));
    let metrics = http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let restarts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("changecast_embedded_postgres_restarts_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(restarts >= Some(1.0), "restarts counted: {restarts:?}");
    let status = service.terminate().await;
    assert!(status.success(), "exit status {status}");
}

/// The data folder removed under a running `serve`: starting an empty cluster in its
/// place would silently lose every row; the service stops its server and exits
/// non-zero, saying why.
#[tokio::test]
async fn serve_exits_with_a_message_when_its_data_folder_is_removed() {
    let work = work_dir();
    let data_dir = work.path().join("pgdata");
    let http = reqwest::Client::new();
    let mut service = Service::start_with(&data_dir, |c| {
        c.stderr(Stdio::piped());
    });
    let stderr = capture_stderr(&mut service.child);
    service.wait_ready(&http).await;
    let pid = postmaster_pid(&data_dir);

    std::fs::remove_dir_all(&data_dir).unwrap();
    let status = wait_exit(&mut service.child, STOP_BOUND)
        .await
        .expect("the service did not exit after its data folder was removed");
    assert!(!status.success(), "exit status {status}");
    let message = exit_message(&stderr).await;
    for hint in [
        "changecast: ",
        "data folder",
        "was removed",
        &data_dir.display().to_string(),
    ] {
        assert!(message.contains(hint), "{hint:?} missing from: {message}");
    }
    assert!(!process_exists(pid), "embedded postgres {pid} still runs");
    assert!(!data_dir.exists(), "no fresh cluster was made in its place");
}

/// What the exited service wrote to stderr, once its closing `changecast: ` message is
/// there (bounded by [`WAIT`]: the reader thread may lag the exit).
async fn exit_message(stderr: &std::sync::Mutex<String>) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = stderr.lock().unwrap().clone();
        if text.contains("changecast: ") || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An embedded PostgreSQL that dies and cannot start again (here: a setting it refuses,
/// written while it ran) is retried a few times with backoff; then the service exits
/// non-zero with the server's own complaint.
#[tokio::test]
async fn serve_gives_up_on_an_embedded_postgres_that_cannot_start_again() {
    let work = work_dir();
    let data_dir = work.path().join("pgdata");
    let http = reqwest::Client::new();
    let mut service = Service::start_with(&data_dir, |c| {
        c.stderr(Stdio::piped());
    });
    let stderr = capture_stderr(&mut service.child);
    service.wait_ready(&http).await;
    let pid = postmaster_pid(&data_dir);
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, b"\nnot_a_setting = 'x'\n").unwrap();
    drop(conf);
    unsafe { libc::kill(pid, libc::SIGKILL) };

    // Five attempts over about 12 s of backoff.
    let status = wait_exit(&mut service.child, Duration::from_secs(40))
        .await
        .expect("the service did not give up");
    assert!(!status.success(), "exit status {status}");
    let message = exit_message(&stderr).await;
    for hint in [
        "changecast: ",
        "could not be kept running",
        "not_a_setting",
        &data_dir.display().to_string(),
    ] {
        assert!(message.contains(hint), "{hint:?} missing from: {message}");
    }
}
