//! A PostgreSQL cluster of the test's own, to restart, crash or restore.

use std::os::unix::fs::PermissionsExt as _;

use changecast::db::embedded::{Embedded, Options, StopMode};
use tokio_postgres::NoTls;

pub struct OwnCluster {
    server: Option<Embedded>,
    options: Options,
    pub dir: tempfile::TempDir,
}

impl OwnCluster {
    /// initdb + start in a temp folder. Durable commits (a crash must not lose what was
    /// acknowledged), no fsync (the machine does not crash, only PostgreSQL).
    pub async fn start() -> OwnCluster {
        Self::start_with(&[("fsync", "off"), ("full_page_writes", "off")]).await
    }

    /// With commits flushed to disk (`fsync`), as a production database: what the NOTIFY
    /// commit lock costs depends on it.
    pub async fn durable() -> OwnCluster {
        Self::start_with(&[("full_page_writes", "off")]).await
    }

    async fn start_with(settings: &[(&str, &str)]) -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("changecast-faults-")
            .tempdir()
            .unwrap();
        // As root the server runs as `postgres`, which must reach the data folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut options = Options::new(dir.path().join("data"));
        options.settings = settings
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let server = start_server(options.clone()).await;
        let options = server.restart_options(&options);
        OwnCluster {
            server: Some(server),
            options,
            dir,
        }
    }

    pub fn url(&self, database: &str) -> String {
        let server = self.server.as_ref().expect("the cluster is running");
        format!("{}/{database}", server.base_url())
    }

    pub async fn create_database(&self, name: &str) -> String {
        let (admin, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap();
        self.url(name)
    }

    /// `pg_ctl stop -m <mode>`, waited for.
    pub async fn stop(&mut self, mode: StopMode) {
        let server = self.server.take().expect("the cluster is running");
        tokio::task::spawn_blocking(move || server.stop_with(mode))
            .await
            .unwrap();
    }

    /// Starts it again on the same folder and port.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the cluster is running");
        self.server = Some(start_server(self.options.clone()).await);
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// How it is started: folder, settings, port.
    pub fn options(&self) -> &Options {
        &self.options
    }
}

pub async fn start_server(options: Options) -> Embedded {
    tokio::task::spawn_blocking(move || Embedded::start(&options))
        .await
        .unwrap()
        .expect("starting a PostgreSQL cluster of the test's own")
}

/// A hot standby of an [`OwnCluster`]: a `pg_basebackup -R` copy streaming its WAL, on a
/// port of its own, in a folder of the primary's temp folder.
pub struct StandbyCluster {
    server: Option<Embedded>,
    options: Options,
    /// Kept while it is stopped: it comes back on the same port.
    base_url: String,
}

impl OwnCluster {
    /// A hot standby of this cluster, or `None` (after saying why) when this machine's
    /// PostgreSQL has no `pg_basebackup` (e.g. the npm binaries of the PG 13/18 CI runs),
    /// unless `CHANGECAST_REQUIRE_STANDBY=1`, which makes that a failure.
    pub async fn standby(&self) -> Option<StandbyCluster> {
        let bindir = changecast::db::embedded::find_bindir().expect("PostgreSQL binaries");
        if !bindir.join("pg_basebackup").is_file() {
            assert!(
                std::env::var("CHANGECAST_REQUIRE_STANDBY").as_deref() != Ok("1"),
                "CHANGECAST_REQUIRE_STANDBY=1 but {} has no pg_basebackup",
                bindir.display()
            );
            eprintln!(
                "SKIPPED: no pg_basebackup in {} to make a standby with (set \
                 CHANGECAST_REQUIRE_STANDBY=1 to make this a failure)",
                bindir.display()
            );
            return None;
        }
        let n = STANDBYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.path().join(format!("standby-{n}"));
        let url = self.url("postgres");
        let copy = dir.clone();
        tokio::task::spawn_blocking(move || pg_basebackup(&bindir, &url, &copy, Copy::Standby))
            .await
            .unwrap();
        let mut options = self.options.clone();
        options.data_dir = dir;
        options.port = None;
        options.existing_only = true;
        // Reconnect to a restarted primary promptly (default: every 5 s).
        options
            .settings
            .push(("wal_retrieve_retry_interval".into(), "100ms".into()));
        let server = start_server(options.clone()).await;
        let options = server.restart_options(&options);
        Some(StandbyCluster {
            base_url: server.base_url(),
            server: Some(server),
            options,
        })
    }
}

static STANDBYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl StandbyCluster {
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.base_url)
    }

    pub fn port(&self) -> u16 {
        self.options.port.expect("a started standby keeps its port")
    }

    /// A superuser session on it (pausing, resuming, promoting).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// `pg_ctl stop -m <mode>`, waited for.
    pub async fn stop(&mut self, mode: StopMode) {
        let server = self.server.take().expect("the standby is running");
        tokio::task::spawn_blocking(move || server.stop_with(mode))
            .await
            .unwrap();
    }

    /// Starts it again on the same folder and port; it resumes streaming.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the standby is running");
        self.server = Some(start_server(self.options.clone()).await);
    }
}

/// How a `pg_basebackup` copy starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// As a standby of the server it was taken from (`-R`).
    Standby,
    /// As a server of its own once recovered (a restore).
    Restore,
}

/// `pg_basebackup` of the server at `url` into `dir` (WAL streamed along), as the
/// `postgres` user when we are root, as the server itself runs.
pub fn pg_basebackup(bindir: &std::path::Path, url: &str, dir: &std::path::Path, copy: Copy) {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let user = postgres_user();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    }
    let mut command = std::process::Command::new(bindir.join("pg_basebackup"));
    command
        .arg(format!("--dbname={url}"))
        .arg("-D")
        .arg(dir)
        .args(["-X", "stream", "-c", "fast"]);
    if copy == Copy::Standby {
        command.arg("-R");
    }
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let out = command.output().expect("running pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `postgres` user's (uid, gid) when we are root (the servers then run as it).
pub fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let user = libc::getpwnam(c"postgres".as_ptr());
        (!user.is_null()).then(|| ((*user).pw_uid, (*user).pw_gid))
    }
}
