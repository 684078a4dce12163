//! Through a real PgBouncer in transaction mode (Debian's `pgbouncer`): the pool works
//! through it with the LISTEN connection direct, and a LISTEN through it is refused at
//! start. Skipped with a message when `pgbouncer` is not installed, unless
//! `CHANGECAST_REQUIRE_PGBOUNCER` is set (as in CI).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use changecast::app::App;
use changecast::config::ServeConfig;
use changecast::secret::Secret;
use tokio_util::sync::CancellationToken;

use crate::helpers::cluster::postgres_user;
use crate::helpers::*;

/// A PgBouncer of the test's own, in transaction mode, in front of the test server.
struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `None` (with a message) when `pgbouncer` is not installed and CI does not require it.
    /// `statement_timeout`: what its server connections set at connect (`connect_query`).
    fn start(statement_timeout: Option<Duration>) -> Option<PgBouncer> {
        let Some(binary) = pgbouncer_binary() else {
            assert!(
                std::env::var_os("CHANGECAST_REQUIRE_PGBOUNCER").is_none(),
                "CHANGECAST_REQUIRE_PGBOUNCER is set, but no pgbouncer is installed"
            );
            eprintln!("skipping: no pgbouncer installed (apt-get install pgbouncer)");
            return None;
        };
        let server: tokio_postgres::Config = server().url("postgres").parse().unwrap();
        let host = match &server.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        };
        let user = server.get_user().unwrap_or("postgres").to_owned();
        let password = server
            .get_password()
            .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix("changecast-pgbouncer-")
            .tempdir()
            .unwrap();
        let port = free_port();
        // Named prepared statements (the pool's) are carried across server connections
        // from PgBouncer 1.21 on; an older one keeps them right only with one server
        // connection per pool (what docs/operations.md says for it).
        let statements = if version_at_least(&binary, (1, 21)) {
            "max_prepared_statements = 100\ndefault_pool_size = 4"
        } else {
            "default_pool_size = 1"
        };
        let connect_query = statement_timeout
            .map(|t| format!(" connect_query='SET statement_timeout = {}'", t.as_millis()))
            .unwrap_or_default();
        let config = format!(
            "[databases]\n\
             * = host={host} port={port_db} user={user}{password}{connect_query}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             {statements}\n\
             logfile = {dir}/pgbouncer.log\n",
            port_db = server.get_ports().first().copied().unwrap_or(5432),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let mut command = Command::new(&binary);
        command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // PgBouncer refuses to run as root.
        if let Some((uid, gid)) = postgres_user() {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().expect("starting pgbouncer");
        let bouncer = PgBouncer { child, port, dir };
        bouncer.wait_listening();
        Some(bouncer)
    }

    /// The URL of `database` through the bouncer.
    fn url(&self, database: &str) -> String {
        let direct: tokio_postgres::Config = database.parse().unwrap();
        let user = direct.get_user().unwrap_or("postgres");
        let name = direct.get_dbname().unwrap();
        format!("postgres://{user}@127.0.0.1:{}/{name}", self.port)
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 20 s: {}",
                std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|binary| binary.is_file())
}

/// Whether `pgbouncer --version` ("PgBouncer 1.18.0") is at least `wanted`.
fn version_at_least(binary: &Path, wanted: (u32, u32)) -> bool {
    let out = Command::new(binary).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((0, 0));
    version >= wanted
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_pool_works_through_pgbouncer_in_transaction_mode() {
    let Some(bouncer) = PgBouncer::start(Some(Duration::from_secs(30))) else {
        return;
    };
    let direct = server().fresh_database().await;
    let pooled = bouncer.url(&direct);
    let app = start_on(direct.clone(), |config| {
        config.database_url = Some(Secret::new(pooled));
        config.listen_database_url = Some(Secret::new(direct));
    })
    .await;
    let t = token("acme");
    let mut live = app.sse(&t, "").await;
    let first = HashSet::from([app.insert_ticket("acme", "first").await]);
    let cursor = live.changes_until(1).await[0].id.clone().unwrap();

    // Live delivery (the LISTEN connection, direct) ...
    let mut written = HashSet::new();
    for _ in 0..20 {
        written.extend(app.insert_tickets("acme", 10).await);
    }
    assert_nothing_lost(&written, &live.receive_ids(&written).await, &first);
    // ... and replays, several at once (the pool, through the bouncer).
    let mut resumed = Vec::new();
    for _ in 0..4 {
        resumed.push(app.sse_with(&t, "", Some(&cursor)).await);
    }
    for stream in &mut resumed {
        assert_nothing_lost(&written, &stream.receive_ids(&written).await, &first);
    }
    app.stop().await;
}

#[tokio::test]
async fn listen_through_a_transaction_mode_pgbouncer_is_refused_at_start() {
    let Some(bouncer) = PgBouncer::start(Some(Duration::from_secs(30))) else {
        return;
    };
    let direct = server().fresh_database().await;
    let message = refusal(ServeConfig::new(bouncer.url(&direct))).await;
    for named in [
        "LISTEN",
        "pooler",
        "transaction",
        "CHANGECAST_LISTEN_DATABASE_URL",
    ] {
        assert!(message.contains(named), "{named} not in: {message}");
    }
}

#[tokio::test]
async fn a_pool_without_a_statement_timeout_through_pgbouncer_is_refused_at_start() {
    let Some(bouncer) = PgBouncer::start(None) else {
        return;
    };
    let direct = server().fresh_database().await;
    let mut config = ServeConfig::new(bouncer.url(&direct));
    config.listen_database_url = Some(Secret::new(direct));
    let message = refusal(config).await;
    for named in [
        "statement timeout",
        "options",
        "connect_query",
        "ALTER ROLE",
    ] {
        assert!(message.contains(named), "{named} not in: {message}");
    }
}

#[test]
fn help_documents_the_listen_database_url_and_hides_its_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_changecast"))
        .args(["serve", "--help"])
        .env(
            "CHANGECAST_LISTEN_DATABASE_URL",
            "postgres://u:hunter2@db/x",
        )
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("CHANGECAST_LISTEN_DATABASE_URL"), "{help}");
    assert!(help.contains("transaction mode"), "{help}");
    assert!(!help.contains("hunter2"), "--help leaks a secret:\n{help}");
}

/// The error `App::build` refuses `config` with (bounded by [`WAIT`]).
async fn refusal(mut config: ServeConfig) -> String {
    config.listen = "127.0.0.1:0".parse().unwrap();
    let started = tokio::time::timeout(
        WAIT,
        App::build(config, &Secret::new(SECRET), CancellationToken::new()),
    )
    .await
    .expect("App::build neither started nor failed");
    match started {
        Ok(_) => panic!("started through a transaction-mode pooler"),
        Err(error) => format!("{error:#}"),
    }
}
