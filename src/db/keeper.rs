//! Keeps the embedded PostgreSQL running under `serve`: the service owns it, so when it
//! dies (killed, crashed, out of memory) nobody else will start it again.
//!
//! The keeper looks at the server every [`CHECK_EVERY`]. A server that exited is started
//! again on the same folder and port (so every URL the service holds stays valid) after
//! a backoff, each attempt logged and counted. It gives up — and the service exits
//! non-zero with the reason — when the data folder is gone (a fresh `initdb` there would
//! silently replace every row and every cursor's journal), or after
//! [`MAX_ATTEMPTS`] starts in a row that failed or did not stay up for [`HEALTHY_RUN`].

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::embedded::{Embedded, EmbeddedError, Options, StopMode};

/// How often the keeper looks whether the server still runs and its folder is there.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Wait before the first restart (a killed postmaster's backends need a moment to exit
/// and release the shared memory); doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Starts in a row that fail (or die within [`HEALTHY_RUN`]) before giving up: with the
/// backoff, about 12 s of trying.
pub const MAX_ATTEMPTS: u32 = 5;
/// A server up this long counts as healthy: the next death starts the count over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Why the service cannot go on with its embedded database.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp {
    #[error(
        "the embedded PostgreSQL's data folder {0} was removed while the service ran; \
         stopping rather than starting an empty database in its place \
         (restore the folder, or start again to begin with an empty one)"
    )]
    Removed(PathBuf),
    #[error(
        "the embedded PostgreSQL in {dir} died and could not be kept running \
         ({attempts} restarts in a row failed); last error: {last}"
    )]
    Exhausted {
        dir: PathBuf,
        attempts: u32,
        last: String,
    },
}

/// Watches `database` until `shutdown`, restarting it whenever it exits. Returns the
/// running server at shutdown (`None` if it was down then), or why it gave up — after
/// cancelling `shutdown`, so the service stops too. `on_restart` runs once per restart
/// attempt (a metric).
pub async fn keep_running(
    mut database: Embedded,
    options: Options,
    on_restart: impl Fn(),
    shutdown: CancellationToken,
) -> Result<Option<Embedded>, GaveUp> {
    let restart = database.restart_options(&options);
    let dir = restart.data_dir.clone();
    let mut failures = 0;
    let mut backoff = BACKOFF_MIN;
    let mut up_since = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Some(database)),
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if !dir.join("PG_VERSION").is_file() {
            tracing::error!(dir = %dir.display(), "the embedded PostgreSQL's data folder was removed; stopping");
            // Nothing left to save: stop it at once, off the runtime's threads.
            let _ =
                tokio::task::spawn_blocking(move || database.stop_with(StopMode::Immediate)).await;
            shutdown.cancel();
            return Err(GaveUp::Removed(dir));
        }
        let Some(status) = database.exited() else {
            continue;
        };
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        if up_since.elapsed() >= HEALTHY_RUN {
            failures = 0;
            backoff = BACKOFF_MIN;
        }
        tracing::error!(%status, retry_in = ?backoff, "the embedded PostgreSQL exited unexpectedly; restarting it");
        // Start it again, until it comes up or we give up.
        let mut last: String;
        database = loop {
            failures += 1;
            if failures > MAX_ATTEMPTS {
                shutdown.cancel();
                return Err(GaveUp::Exhausted {
                    dir,
                    attempts: MAX_ATTEMPTS,
                    last: "it kept exiting".into(),
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            on_restart();
            let options = restart.clone();
            let started = tokio::task::spawn_blocking(move || Embedded::start(&options)).await;
            match started {
                Ok(Ok(database)) => break database,
                Ok(Err(EmbeddedError::Vanished(dir))) => {
                    tracing::error!(dir = %dir.display(), "the embedded PostgreSQL's data folder was removed; stopping");
                    shutdown.cancel();
                    return Err(GaveUp::Removed(dir));
                }
                Ok(Err(error)) => last = error.to_string(),
                Err(error) => last = format!("the start panicked: {error}"),
            }
            if failures >= MAX_ATTEMPTS {
                shutdown.cancel();
                return Err(GaveUp::Exhausted {
                    dir,
                    attempts: MAX_ATTEMPTS,
                    last,
                });
            }
            tracing::warn!(attempt = failures, retry_in = ?backoff, error = %last, "the embedded PostgreSQL did not start again; retrying");
        };
        tracing::info!(port = database.port(), "the embedded PostgreSQL runs again");
        up_since = Instant::now();
    }
}
