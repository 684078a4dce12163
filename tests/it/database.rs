//! Finds a PostgreSQL server for the tests, in this order:
//! 1. `CHANGECAST_TEST_DATABASE_URL` (a role that may create databases);
//! 2. a Docker engine, via testcontainers (`postgres:16-alpine`);
//! 3. a throwaway cluster from the machine's own PostgreSQL binaries
//!    (`CHANGECAST_PG_BINDIR`, `pg_config --bindir`, or `/usr/lib/postgresql/*/bin`).
//!
//! One server per test binary; migrations run once into a template database, and every
//! test gets `CREATE DATABASE … TEMPLATE` of it.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

struct Cluster {
    child: Child,
    dir: PathBuf,
}

static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// Stops the cluster and removes its folder when the test binary exits.
extern "C" fn stop_cluster() {
    if let Some(mut cluster) = CLUSTER.lock().ok().and_then(|mut c| c.take()) {
        unsafe { libc::kill(cluster.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(cluster.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = cluster.child.kill();
        let _ = cluster.child.wait();
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}

pub fn pg_bindir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("CHANGECAST_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no PostgreSQL server binaries: install `postgresql` or set CHANGECAST_TEST_DATABASE_URL")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server binaries found".to_owned())
}

/// initdb + postgres on a free port, as the `postgres` user when we are root.
fn local_cluster() -> Result<String, String> {
    let bindir = pg_bindir()?;
    let dir = tempfile::Builder::new()
        .prefix("changecast-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let owner = unprivileged_owner();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(&data);
    as_owner(&mut initdb, owner);
    let out = initdb
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for _attempt in 0..5 {
        let port = free_port();
        // Started from a thread that lives as long as the process: PDEATHSIG fires when
        // the *spawning thread* exits, and must stop the server only with the process.
        let (tx, rx) = std::sync::mpsc::channel();
        let (bindir, data, socket_dir) = (bindir.clone(), data.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut postgres = Command::new(bindir.join("postgres"));
            postgres
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&socket_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                ])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(socket_dir.join("postgres.log"))
                        .map(Stdio::from)
                        .unwrap_or(Stdio::null()),
                );
            as_owner(&mut postgres, owner);
            unsafe {
                postgres.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let _ = tx.send(postgres.spawn());
            loop {
                std::thread::park();
            }
        });
        let mut child = rx
            .recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting postgres: {e}"))?;
        let url = format!("postgres://postgres@127.0.0.1:{port}");
        match wait_until_ready_or_exit(&url, &mut child) {
            Ok(()) => {
                *CLUSTER.lock().unwrap() = Some(Cluster { child, dir });
                unsafe { libc::atexit(stop_cluster) };
                return Ok(url);
            }
            Err(error) => eprintln!("postgres on port {port} did not start ({error}); retrying"),
        }
    }
    Err(format!(
        "postgres did not start; see {}",
        dir.join("postgres.log").display()
    ))
}

fn unprivileged_owner() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let user = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !user.is_null(),
        "running as root needs a `postgres` user to run the test cluster"
    );
    Some(unsafe { ((*user).pw_uid, (*user).pw_gid) })
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn wait_until_ready_or_exit(url: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if can_connect(url) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err("not ready within 30 s".into())
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
