//! Waiting between attempts: doubling delays, cut short by shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A delay that doubles after each failed attempt, up to a ceiling, and starts over
/// after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// How long the next wait will be.
    pub fn next_delay(&self) -> Duration {
        self.next
    }

    /// Starts over from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Waits the next delay and doubles it; true when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        sleep_or_shutdown(delay, shutdown).await
    }
}

/// Sleeps for `duration`; true when `shutdown` came first.
pub async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(30));
        let mut waited = Vec::new();
        for _ in 0..4 {
            waited.push(backoff.next_delay());
            assert!(!backoff.wait(&shutdown).await);
        }
        assert_eq!(waited, [10, 20, 30, 30].map(Duration::from_millis));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
        shutdown.cancel();
        assert!(
            backoff.wait(&shutdown).await,
            "shutdown cuts the wait short"
        );
    }
}
