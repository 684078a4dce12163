//! The system under test: the bench database (created, migrated, emptied between runs)
//! and the changecast service, started as a child process or targeted where it runs.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio_postgres::{Client, NoTls};

use changecast::auth::{random_secret, Authenticator, ClaimPath, TokenRules};
use changecast::secret::Secret;
use changecast::tenant::TenantId;

const SETUP_SQL: &str = include_str!("../../../sql/bench/setup.sql");
const RESET_SQL: &str = include_str!("../../../sql/bench/reset.sql");
const JOURNAL_PARTITIONS_SQL: &str = include_str!("../../../sql/bench/journal_partitions.sql");
/// Validity of the subscriber tokens the bench mints.
const TOKEN_TTL: Duration = Duration::from_secs(3 * 3600);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Connects one plain session (its driver spawned: no notifications needed).
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Creates the database if missing, applies changecast's migrations and the bench
/// tables. Returns `select version()`.
pub async fn prepare_database(url: &str) -> anyhow::Result<String> {
    let config: tokio_postgres::Config = url.parse().context("--database-url does not parse")?;
    let name = config
        .get_dbname()
        .context("--database-url names no database")?
        .to_owned();
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (admin, connection) = maintenance
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to database `postgres` of {}", redact(url)))?;
    tokio::spawn(connection);
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        admin
            .batch_execute(&format!("create database {quoted}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        eprintln!("created database {name}");
    }
    changecast::db::migrate(url)
        .await
        .context("migrating the bench database")?;
    let client = connect(url).await?;
    client
        .batch_execute(SETUP_SQL)
        .await
        .map_err(|e| anyhow::anyhow!("applying sql/bench/setup.sql: {e:?}"))?;
    let version: String = client.query_one("select version()", &[]).await?.get(0);
    Ok(version)
}

/// Empties the benchmark tables and the journal (no service may be attached), and
/// gives the journal `partitions` partitions as in the steady state, when set.
pub async fn reset(url: &str, partitions: Option<u32>) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(RESET_SQL)
        .await
        .map_err(|e| anyhow::anyhow!("applying sql/bench/reset.sql: {e:?}"))?;
    if let Some(partitions) = partitions {
        client
            .batch_execute(&JOURNAL_PARTITIONS_SQL.replace("%PARTITIONS%", &partitions.to_string()))
            .await
            .map_err(|e| anyhow::anyhow!("applying sql/bench/journal_partitions.sql: {e:?}"))?;
    }
    Ok(())
}

/// The PostgreSQL processes that serve `url`'s database: the postmaster, its auxiliary
/// processes (WAL writer, checkpointer, autovacuum ...) and this database's backends.
/// Other databases' backends on a shared cluster are left out.
pub async fn postgres_pids(client: &Client) -> anyhow::Result<Vec<u32>> {
    let rows = client
        .query(
            "select pid from pg_stat_activity
              where datname = current_database() or backend_type <> 'client backend'
             union select pg_backend_pid()",
            &[],
        )
        .await?;
    let mut pids: Vec<u32> = rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
    if let Some(postmaster) = pids.first().and_then(|pid| crate::procfs::parent_pid(*pid)) {
        pids.push(postmaster);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// A running changecast service.
pub struct Service {
    pub addr: SocketAddr,
    /// Its process, when known (started here, or `--target-pid`).
    pub pid: Option<u32>,
    child: Option<Child>,
    auth: Authenticator,
}

/// How to start the service.
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub database_url: &'a str,
    pub log: &'a Path,
    /// More environment for the service (e.g. CHANGECAST_RETENTION), over the defaults.
    pub env: &'a [(&'a str, String)],
}

impl Service {
    /// Starts `changecast serve` on a free port and waits until `/readyz` answers 200.
    pub async fn start(launch: &Launch<'_>) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let secret = random_secret();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.log)
            .with_context(|| format!("opening {}", launch.log.display()))?;
        let mut command = Command::new(launch.bin);
        command
            .arg("serve")
            .env("DATABASE_URL", launch.database_url)
            .env("CHANGECAST_JWT_SECRET", secret.expose())
            .env("CHANGECAST_LISTEN", addr.to_string())
            .env("CHANGECAST_MAX_SUBSCRIBERS", "1000000")
            .env("CHANGECAST_MAX_SUBSCRIBERS_PER_TENANT", "1000000")
            .env(
                "RUST_LOG",
                std::env::var("CHANGECAST_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(launch.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The service goes when the bench goes (the
        // signal follows the spawning thread: this runs on the main thread).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let mut service = Service {
            addr,
            pid: Some(child.id()),
            child: Some(child),
            auth: Authenticator::new(&secret, TokenRules::default())
                .expect("BUG: a generated secret is long enough"),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut service.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the service exited ({status}) before it was ready; see {}",
                        launch.log.display()
                    );
                }
            }
            if crate::client::http_status(addr, "/readyz").await == Some(200) {
                return Ok(service);
            }
            if Instant::now() > deadline {
                service.stop().await;
                bail!("the service was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A service started elsewhere (`--target`).
    pub fn targeted(addr: SocketAddr, pid: Option<u32>, secret: &str) -> anyhow::Result<Service> {
        Ok(Service {
            addr,
            pid,
            child: None,
            auth: Authenticator::new(&Secret::new(secret), TokenRules::default())?,
        })
    }

    pub fn token(&self, tenant: &str) -> String {
        let tenant = TenantId::new(tenant).expect("BUG: bench tenant ids are valid");
        self.auth.mint(&tenant, TOKEN_TTL)
    }

    /// A token whose `changecast` claim (the default scope claim) is `scope`.
    pub fn scoped_token(&self, tenant: &str, scope: serde_json::Value) -> String {
        let tenant = TenantId::new(tenant).expect("BUG: bench tenant ids are valid");
        let claim = ClaimPath::parse("changecast").expect("BUG: a valid claim path");
        self.auth
            .mint_with_claims(&tenant, TOKEN_TTL, &[(claim, scope)])
    }

    /// SIGTERM, then SIGKILL after a grace period. A targeted service is left running.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("the service did not stop within {STOP_GRACE:?}: killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `changecast` next to this binary (both land in target/release).
pub fn default_service_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("changecast")))
        .unwrap_or_else(|| PathBuf::from("target/release/changecast"))
}
