//! Supervision of the background tasks the service cannot live without (the tailer, the
//! pruner): one that panics, or returns while the service is not shutting down, is
//! logged, counted in `changecast_task_restarts_total{task}` and started again after a
//! backoff. What the task's absence means to the rest of the service (e.g. `/readyz`)
//! is the caller's `on_failure`; this module knows nothing of the tasks themselves.

use std::future::Future;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// Wait before the first restart: long enough that a task failing at once does not spin,
/// short enough that a one-off failure costs about a second of live delivery.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `start()` on `tracker` until `shutdown`, starting it again whenever it ends
/// before shutdown (panic or return). After each such end `on_failure` runs at once,
/// before the backoff, and `restarts` counts one.
pub async fn supervise<F, Fut>(
    task: &'static str,
    start: F,
    on_failure: impl Fn(),
    restarts: IntCounter,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let started = Instant::now();
        // A task of its own, so a panic unwinds that task only and shows up here.
        let ended = tracker.spawn(start()).await;
        if shutdown.is_cancelled() {
            return;
        }
        on_failure();
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        match ended {
            Err(error) if error.is_panic() => {
                let panic = panic_message(error.into_panic());
                tracing::error!(task, %panic, restart_in = ?backoff.next_delay(), "background task panicked; restarting it");
            }
            Err(error) => {
                tracing::error!(task, %error, restart_in = ?backoff.next_delay(), "background task was cancelled; restarting it");
            }
            Ok(()) => {
                tracing::error!(task, restart_in = ?backoff.next_delay(), "background task ended before shutdown; restarting it");
            }
        }
        restarts.inc();
        if backoff.wait(&shutdown).await {
            return;
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "(not a string)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A task that fails `failures` times (panicking, or returning when `panics` is false),
    /// then runs until shutdown; returns (restarts counted, on_failure calls, starts).
    async fn run(failures: usize, panics: bool) -> (u64, usize, usize) {
        let restarts = IntCounter::new("restarts", "test").unwrap();
        let (starts, failed) = (Arc::new(AtomicUsize::new(0)), AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let start = {
            let (starts, shutdown) = (starts.clone(), shutdown.clone());
            move || {
                let (starts, shutdown) = (starts.clone(), shutdown.clone());
                async move {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    if n < failures {
                        assert!(!panics, "injected failure {n}");
                        return;
                    }
                    shutdown.cancel();
                }
            }
        };
        let supervised = supervise(
            "test",
            start,
            || {
                failed.fetch_add(1, Ordering::SeqCst);
            },
            restarts.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), supervised)
            .await
            .expect("supervise returns at shutdown");
        tracker.close();
        tracker.wait().await;
        (
            restarts.get(),
            failed.load(Ordering::SeqCst),
            starts.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        assert_eq!(run(1, true).await, (1, 1, 2));
    }

    #[tokio::test]
    async fn a_task_returning_early_is_restarted_with_backoff() {
        let started = Instant::now();
        assert_eq!(run(2, false).await, (2, 2, 3));
        assert!(started.elapsed() >= BACKOFF_MIN * 3, "backoff doubles");
    }

    #[tokio::test]
    async fn a_task_ending_at_shutdown_is_not_restarted() {
        assert_eq!(run(0, false).await, (0, 0, 1));
    }
}
