//! The embedded default database: a PostgreSQL of the service's own, started from the
//! machine's server binaries when no `DATABASE_URL` is given.
//!
//! It owns the server process from `initdb` to shutdown: a data folder that persists
//! between runs, a free port on 127.0.0.1 (plus a unix socket in the data folder),
//! readiness read from `postmaster.pid` as `pg_ctl -w` does, a fast shutdown (SIGINT,
//! then SIGKILL after [`STOP_GRACE`]) when stopped, and `PR_SET_PDEATHSIG` so the server
//! goes down with the service even when the service is killed. As root, the server runs
//! as the `postgres` user (PostgreSQL refuses root). It knows nothing about changecast's
//! schema: the URL it yields is used exactly like `DATABASE_URL`.
//!
//! The test harness starts its throwaway cluster with this module as well.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::secret::Secret;

/// Overrides the search for the server binaries (a folder holding `initdb` and `postgres`).
pub const BINDIR_ENV: &str = "CHANGECAST_PG_BINDIR";
/// How long a fast shutdown may take before the server is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the server may take to accept connections (crash recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at starting on a fresh free port when another process took the last one.
const PORT_ATTEMPTS: usize = 5;
/// Poll interval while waiting for the server to come up or go down.
const POLL: Duration = Duration::from_millis(20);
/// The server log is started afresh at startup beyond this size.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// The unix socket path must fit `sun_path` (108 bytes) with `/.s.PGSQL.NNNNN`.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// Why the embedded database could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found ({searched}).\n\
         Install them (Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install postgresql`),\n\
         point {BINDIR_ENV} at the folder holding `initdb` and `postgres`,\n\
         or set DATABASE_URL (or --database-url) to use a PostgreSQL server of your own"
    )]
    NoBinaries { searched: String },
    #[error(
        "running as root, the embedded database runs as the `postgres` user, and there is none \
         (`apt-get install postgresql` creates it); or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "{0} is not reachable by the `postgres` user the embedded database runs as (we are root); \
         choose a --data-dir under a folder others may enter, e.g. /var/lib/changecast/pgdata"
    )]
    Unreachable(PathBuf),
    #[error(
        "{0} exists but is not a PostgreSQL data folder (no PG_VERSION); choose another --data-dir"
    )]
    NotADataDir(PathBuf),
    #[error(
        "{0} holds a cluster but no changecast.password (an interrupted first start?): \
         remove the folder to start over, or set DATABASE_URL"
    )]
    NoPassword(PathBuf),
    #[error("initdb failed in {dir}:\n{output}")]
    Initdb { dir: PathBuf, output: String },
    #[error("{0} no longer holds the PostgreSQL cluster (was the folder removed?)")]
    Vanished(PathBuf),
    #[error("PostgreSQL did not start in {dir}:\n{log}")]
    Start { dir: PathBuf, log: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data folder (`PGDATA`); created and `initdb`-ed on first use.
    pub data_dir: PathBuf,
    /// Where `initdb` and `postgres` are; `None` searches with [`find_bindir`].
    pub bindir: Option<PathBuf>,
    /// Extra `-c name=value` settings (the tests trade durability for speed here).
    pub settings: Vec<(String, String)>,
    /// The TCP port; `None` picks a free one. A restart keeps the port, so URLs handed
    /// out before stay valid.
    pub port: Option<u16>,
    /// Refuse to `initdb`: the folder must hold the cluster already (a restart must not
    /// make a fresh, empty cluster where the old one was removed).
    pub existing_only: bool,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            bindir: None,
            settings: Vec::new(),
            port: None,
            existing_only: false,
        }
    }
}

/// A running server. Dropping it stops it (bounded by [`STOP_GRACE`]).
#[derive(Debug)]
pub struct Embedded {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    /// The `postgres` role's password over TCP.
    password: Secret,
}

impl Embedded {
    /// Finds the binaries, runs `initdb` on first use, and starts the server on a free
    /// port; returns once it accepts connections. Blocking (a few seconds at most on a
    /// healthy machine): call it from `spawn_blocking` or a plain thread.
    pub fn start(options: &Options) -> Result<Embedded, EmbeddedError> {
        let bindir = match &options.bindir {
            Some(dir) => dir.clone(),
            None => find_bindir()?,
        };
        let data_dir = std::path::absolute(&options.data_dir).map_err(io_error(format!(
            "resolving {}",
            options.data_dir.display()
        )))?;
        let owner = unprivileged_owner()?;
        if options.existing_only && !data_dir.join("PG_VERSION").is_file() {
            return Err(EmbeddedError::Vanished(data_dir));
        }
        let password = prepare_data_dir(&bindir, &data_dir, owner)?;
        let log_path = data_dir.join("postgresql.log");
        let mut last_log = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let port = match options.port {
                Some(port) => {
                    if attempt > 0 {
                        // Our own port, taken meanwhile (or not yet released): wait a bit.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    port
                }
                None => free_port()?,
            };
            let log = open_log(&log_path)?;
            let mut postgres = Command::new(bindir.join("postgres"));
            postgres
                .arg("-D")
                .arg(&data_dir)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(socket_setting(&data_dir));
            for (name, value) in &options.settings {
                postgres.arg("-c").arg(format!("{name}={value}"));
            }
            postgres
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            as_owner(&mut postgres, owner);
            let mut child = spawn_owned(postgres).map_err(io_error(format!(
                "starting {}",
                bindir.join("postgres").display()
            )))?;
            match wait_ready(&mut child, &data_dir) {
                Ok(()) => {
                    return Ok(Embedded {
                        child,
                        port,
                        data_dir,
                        password: Secret::new(password),
                    });
                }
                Err(exited) => {
                    last_log = read_log(&log_path);
                    // Another process may have taken the port between our probe and the
                    // server's bind: try another one. Anything else will not get better.
                    let port_taken = last_log.contains("could not bind")
                        || last_log.contains("could not create any TCP/IP sockets");
                    if !exited || !port_taken {
                        break;
                    }
                    tracing::warn!(
                        port,
                        "embedded PostgreSQL could not bind its port; retrying"
                    );
                }
            }
        }
        Err(EmbeddedError::Start {
            dir: data_dir,
            log: tail(&last_log, 20),
        })
    }

    /// A superuser URL of the server's `postgres` database (127.0.0.1 only).
    pub fn url(&self) -> String {
        format!("{}/postgres", self.base_url())
    }

    /// The same server, without a database name: append `/dbname`.
    pub fn base_url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}",
            self.password.expose(),
            self.port
        )
    }

    /// [`Embedded::url`] with the password replaced by `***`, for printing.
    pub fn redacted_url(&self) -> String {
        format!("postgres://postgres:***@127.0.0.1:{}/postgres", self.port)
    }

    /// The file holding the `postgres` role's password.
    pub fn password_file(&self) -> PathBuf {
        self.data_dir.join(PASSWORD_FILE)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The options that start this same server again: same folder, binaries, settings
    /// and port, and never a fresh cluster.
    pub fn restart_options(&self, options: &Options) -> Options {
        Options {
            data_dir: self.data_dir.clone(),
            port: Some(self.port),
            existing_only: true,
            ..options.clone()
        }
    }

    /// The server's exit status, if it has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        match self.child.try_wait() {
            Ok(status) => status,
            // Not our child any more (cannot happen while we own it): count it as gone.
            Err(_) => Some(std::process::ExitStatus::default()),
        }
    }

    /// Fast shutdown (SIGINT: rolls back open transactions, checkpoints, exits); SIGKILL
    /// when that takes longer than [`STOP_GRACE`]. Blocking.
    pub fn stop(mut self) {
        self.stop_in_place();
    }

    /// Stops the server as `pg_ctl stop -m <mode>` would; SIGKILL when that takes longer
    /// than [`STOP_GRACE`]. Blocking. (`Immediate` is a crash as far as the data goes:
    /// the next start runs crash recovery.)
    pub fn stop_with(mut self, mode: StopMode) {
        self.signal_and_wait(match mode {
            StopMode::Smart => libc::SIGTERM,
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        });
    }

    fn stop_in_place(&mut self) {
        self.signal_and_wait(libc::SIGINT);
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: plain syscall on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!("embedded PostgreSQL did not stop within {STOP_GRACE:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to stop the server, as `pg_ctl stop -m` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: wait for every session to end.
    Smart,
    /// SIGINT: end sessions, roll back their transactions, checkpoint.
    Fast,
    /// SIGQUIT: every process exits at once; the next start recovers from the WAL.
    Immediate,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

/// The folder holding `initdb` and `postgres`, in this order: `$CHANGECAST_PG_BINDIR`
/// (authoritative when set), `pg_config --bindir`, `PATH`, the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, EmbeddedError> {
    let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        return if has_binaries(&dir) {
            Ok(dir)
        } else {
            Err(EmbeddedError::NoBinaries {
                searched: format!(
                    "{BINDIR_ENV}={} holds no `initdb` and `postgres`",
                    dir.display()
                ),
            })
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_binaries(&dir) {
            return Ok(dir);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if has_binaries(&dir) {
            // A folder of symlinks (e.g. /usr/local/bin): use the real one, where
            // `postgres` finds its share/ and lib/ files.
            let real = dir
                .join("postgres")
                .canonicalize()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|real| has_binaries(real));
            return Ok(real.unwrap_or(dir));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| has_binaries(bin))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| EmbeddedError::NoBinaries {
            searched: format!(
                "looked in {BINDIR_ENV}, `pg_config --bindir`, PATH and /usr/lib/postgresql/*/bin"
            ),
        })
}

/// Creates the data folder and runs `initdb` unless it holds a cluster already;
/// returns the `postgres` role's password.
fn prepare_data_dir(
    bindir: &Path,
    data_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<String, EmbeddedError> {
    if data_dir.join("PG_VERSION").is_file() {
        return std::fs::read_to_string(data_dir.join(PASSWORD_FILE))
            .map(|password| password.trim().to_owned())
            .map_err(|_| EmbeddedError::NoPassword(data_dir.to_owned()));
    }
    let empty = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => true,
        Err(error) => return Err(io_error(format!("reading {}", data_dir.display()))(error)),
    };
    if !empty {
        return Err(EmbeddedError::NotADataDir(data_dir.to_owned()));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(io_error(format!("creating {}", data_dir.display())))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error(format!("restricting {}", data_dir.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(data_dir, Some(uid), Some(gid)).map_err(io_error(format!(
            "handing {} to `postgres`",
            data_dir.display()
        )))?;
        reachable_by_others(data_dir)?;
    }
    // TCP connections need a password (any local user can reach 127.0.0.1); the unix
    // socket sits in the 0700 data folder and may trust its few possible users.
    // The password reaches initdb through a file in a fresh folder only we (and the
    // database's user) can enter: nobody can have planted or opened it beforehand.
    let password = random_password();
    let scratch = data_dir.with_extension(format!("initdb-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(io_error(format!("creating {}", scratch.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&scratch, Some(uid), Some(gid)).map_err(io_error(format!(
            "handing {} to `postgres`",
            scratch.display()
        )))?;
    }
    let pwfile = scratch.join("password");
    write_private(&pwfile, &password, owner)?;
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(data_dir)
        .stdin(Stdio::null());
    as_owner(&mut initdb, owner);
    let out = initdb.output().map_err(io_error(format!(
        "running {}",
        bindir.join("initdb").display()
    )));
    let _ = std::fs::remove_dir_all(&scratch);
    let out = out?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = write!(output, "{}", String::from_utf8_lossy(&out.stderr));
        return Err(EmbeddedError::Initdb {
            dir: data_dir.to_owned(),
            output: tail(&output, 20),
        });
    }
    write_private(&data_dir.join(PASSWORD_FILE), &password, owner)?;
    Ok(password)
}

/// Where the `postgres` role's password is kept, inside the (0700) data folder.
const PASSWORD_FILE: &str = "changecast.password";

fn random_password() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner (the database's user, when we are root) may read.
fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), EmbeddedError> {
    let write = || -> io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    };
    write().map_err(io_error(format!("writing {}", path.display())))
}

/// Every ancestor of `dir` must be enterable by the unprivileged server user.
fn reachable_by_others(dir: &Path) -> Result<(), EmbeddedError> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable(dir.to_owned()));
        }
    }
    Ok(())
}

/// Waits until `postmaster.pid` names our child and says `ready`, as `pg_ctl start -w`
/// does. `Err(true)` when the server exited, `Err(false)` on timeout (it is killed).
fn wait_ready(child: &mut Child, data_dir: &Path) -> Result<(), bool> {
    let pid_file = data_dir.join("postmaster.pid");
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(true);
        }
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            let lines: Vec<&str> = text.lines().collect();
            // Line 1: the postmaster's pid; line 8: its status (PostgreSQL 10 and newer).
            let ours = lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(child.id());
            if ours && lines.get(7).is_some_and(|status| status.trim() == "ready") {
                return Ok(());
            }
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(false)
}

/// `unix_socket_directories` = the data folder, or none when its path is too long for a
/// socket address (TCP on 127.0.0.1 still works).
fn socket_setting(data_dir: &Path) -> OsString {
    let mut setting = OsString::from("unix_socket_directories=");
    if data_dir.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        // Double-quoted: the value is a comma-separated list of folders.
        setting.push("\"");
        setting.push(data_dir.as_os_str());
        setting.push("\"");
    }
    setting
}

/// `Some((uid, gid))` of the `postgres` user when we are root; `None` otherwise.
fn unprivileged_owner() -> Result<Option<(u32, u32)>, EmbeddedError> {
    // SAFETY: geteuid cannot fail; getpwnam's result points into static storage and is
    // read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        let user = libc::getpwnam(c"postgres".as_ptr());
        if user.is_null() {
            return Err(EmbeddedError::NoPostgresUser);
        }
        Ok(Some(((*user).pw_uid, (*user).pw_gid)))
    }
}

/// std drops root's supplementary groups itself when it switches the uid.
fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// The server's log, appended to (a second instance failing on a data folder in use must
/// not wipe the running one's log), started afresh once it passes [`MAX_LOG_BYTES`].
fn open_log(path: &Path) -> Result<std::fs::File, EmbeddedError> {
    let too_big = std::fs::metadata(path).is_ok_and(|meta| meta.len() > MAX_LOG_BYTES);
    std::fs::OpenOptions::new()
        .create(true)
        .append(!too_big)
        .write(true)
        .truncate(too_big)
        .open(path)
        .map_err(io_error(format!("opening {}", path.display())))
}

/// The log's last part: enough for the lines of the attempt that just failed.
fn read_log(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(16 * 1024);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn free_port() -> Result<u16, EmbeddedError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_error("finding a free port on 127.0.0.1"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` so that it receives SIGINT (a fast shutdown) when this process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits, not the
/// process: a child spawned from a tokio blocking thread would be stopped when tokio
/// retires that thread. So every server is spawned by one thread that lives as long as
/// the process.
fn spawn_owned(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: prctl, getppid and _exit are async-signal-safe. This runs after std's
    // uid/gid switch, which would otherwise clear the death signal.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal will never come.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("changecast-pg-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this loop never ends while the process runs.
            })
            .expect("BUG: cannot start the PostgreSQL spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .expect("BUG: spawner lock poisoned")
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the PostgreSQL spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the PostgreSQL spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_too_long_falls_back_to_tcp_only() {
        let short = socket_setting(Path::new("/tmp/x/pgdata"));
        assert_eq!(short, "unix_socket_directories=\"/tmp/x/pgdata\"");
        let long = socket_setting(&PathBuf::from(format!("/{}", "d".repeat(120))));
        assert_eq!(long, "unix_socket_directories=");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
