//! Finds a PostgreSQL server for the tests, in this order:
//! 1. `CHANGECAST_TEST_DATABASE_URL` (a role that may create databases);
//! 2. a Docker engine, via testcontainers (`postgres:16-alpine`);
//! 3. a throwaway cluster from the machine's own PostgreSQL binaries, started by the
//!    service's own `db::embedded` (binaries via `CHANGECAST_PG_BINDIR`, `pg_config
//!    --bindir`, `PATH`, or `/usr/lib/postgresql/*/bin`).
//!
//! `CHANGECAST_PG_BINDIR` is how the suite runs against another major version
//! (`scripts/pg-major.sh 13` prints such a folder): the tests that start clusters of
//! their own, and the service when it starts its embedded database, find their binaries
//! the same way. The server's version is printed once, so a log says what was tested.
//!
//! One server per test binary; migrations run once into a template database, and every
//! test gets `CREATE DATABASE … TEMPLATE` of it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use changecast::db::embedded::{self, Embedded};
use tokio_postgres::NoTls;

/// The server: an admin URL without a database name (append `/dbname`).
pub struct Server {
    pub base_url: String,
    template: tokio::sync::OnceCell<String>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

pub fn server() -> &'static Server {
    // Set up on a plain thread: the tests call this from inside their tokio runtimes.
    SERVER.get_or_init(|| {
        std::thread::spawn(find_server)
            .join()
            .expect("finding a PostgreSQL server panicked")
    })
}

fn find_server() -> Server {
    {
        let base_url = if let Ok(url) = std::env::var("CHANGECAST_TEST_DATABASE_URL") {
            url.trim_end_matches('/')
                .rsplit_once('/')
                .map_or(url.clone(), |(base, _)| base.to_owned())
        } else if let Some(url) = docker_postgres() {
            url
        } else {
            local_cluster().unwrap_or_else(|error| panic!("no PostgreSQL for the tests: {error}"))
        };
        match server_version(&base_url) {
            Ok(version) => eprintln!("tests use PostgreSQL {version}"),
            Err(error) => panic!("the PostgreSQL for the tests does not answer: {error}"),
        }
        Server {
            base_url,
            template: tokio::sync::OnceCell::new(),
        }
    }
}

impl Server {
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.base_url)
    }

    /// A fresh, migrated database of its own.
    pub async fn fresh_database(&self) -> String {
        let template = self
            .template
            .get_or_init(|| async {
                let name = format!("changecast_template_{}", std::process::id());
                self.admin(&format!("create database {name}")).await;
                changecast::db::migrate(&self.url(&name))
                    .await
                    .expect("migrating the template database");
                name
            })
            .await;
        let name = format!(
            "changecast_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        // CREATE DATABASE … TEMPLATE refuses while another one copies the same template.
        static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = CREATING.lock().await;
        self.admin(&format!("create database {name} template {template}"))
            .await;
        self.url(&name)
    }

    /// An empty database (no migrations).
    pub async fn empty_database(&self) -> String {
        let name = format!(
            "changecast_empty_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        self.admin(&format!("create database {name}")).await;
        self.url(&name)
    }

    async fn admin(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .expect("connecting as admin");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        drop(client);
        let _ = driver.await;
    }
}

/// testcontainers when a Docker engine answers; `None` (at once) when none does.
fn docker_postgres() -> Option<String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    // The container must outlive every test's runtime: start it on a thread of its own
    // and keep that thread (and the container) for the life of the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let started = GenericImage::new("postgres", "16-alpine")
                .with_exposed_port(5432.tcp())
                .with_wait_for(WaitFor::message_on_stderr(
                    "database system is ready to accept connections",
                ))
                .with_env_var("POSTGRES_PASSWORD", "postgres")
                .with_startup_timeout(Duration::from_secs(120))
                .start()
                .await;
            match started {
                Ok(container) => {
                    let port = container.get_host_port_ipv4(5432).await.ok();
                    let _ = tx
                        .send(port.map(|p| format!("postgres://postgres:postgres@127.0.0.1:{p}")));
                    std::future::pending::<()>().await;
                    drop(container);
                }
                Err(_) => {
                    let _ = tx.send(None);
                }
            }
        });
    });
    let url = rx.recv().ok().flatten()?;
    // The image logs "ready" once before its init restart; wait until it really is.
    wait_until_ready(&url).ok()?;
    Some(url)
}

/// The throwaway cluster: started by the service's own embedded-database code, with
/// durability traded for speed, in a temp folder removed at exit.
struct Cluster {
    database: Embedded,
    dir: PathBuf,
}

static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// Stops the cluster and removes its folder when the test binary exits (a crashed run is
/// covered by the server's parent-death signal).
extern "C" fn stop_cluster() {
    if let Some(cluster) = CLUSTER.lock().ok().and_then(|mut c| c.take()) {
        cluster.database.stop();
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}

/// initdb + postgres on a free port, as the `postgres` user when we are root.
fn local_cluster() -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("changecast-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if unsafe { libc::geteuid() } == 0 {
        // The data folder inside must be reachable by the `postgres` user.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let mut options = embedded::Options::new(dir.join("data"));
    options.settings = [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "300"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .into();
    let database = Embedded::start(&options).map_err(|e| e.to_string())?;
    let url = database.base_url();
    *CLUSTER.lock().unwrap() = Some(Cluster { database, dir });
    unsafe { libc::atexit(stop_cluster) };
    Ok(url)
}

fn wait_until_ready(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if can_connect(url) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("not ready within 60 s".into())
}

/// `server_version` of the server at `base_url`, e.g. `13.23`.
fn server_version(base_url: &str) -> Result<String, tokio_postgres::Error> {
    let url = format!("{base_url}/postgres");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let version = client.query_one("show server_version", &[]).await?.get(0);
        drop(client);
        let _ = driver.await;
        Ok(version)
    })
}

fn can_connect(url: &str) -> bool {
    let url = format!("{url}/postgres");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(&url, NoTls))
            .await
        {
            Ok(Ok((client, connection))) => {
                let driver = tokio::spawn(connection);
                let ok = client.simple_query("select 1").await.is_ok();
                drop(client);
                let _ = driver.await;
                ok
            }
            _ => false,
        }
    })
}
