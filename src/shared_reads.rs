//! Journal reads shared by subscribers that need the same rows at about the same time.
//!
//! After a restart or a network blip, many subscribers of one tenant come back with the
//! same cursor and replay the same range page by page. Reading each page once for all
//! of them, instead of once per subscriber, is what keeps a reconnect storm from costing
//! PostgreSQL subscribers × rows. A page is identified by everything its query depends
//! on (the caller's key); the first caller reads it while the others wait for that
//! read; the result stays for a short while for latecomers. Bounded in bytes: past the
//! budget, callers read for themselves.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// A value that knows its size (the budget's unit).
pub trait Weighed {
    fn bytes(&self) -> usize;
}

pub struct SharedReads<V> {
    slots: Mutex<HashMap<String, Slot<V>>>,
    /// How long a finished read is kept for latecomers.
    keep_for: Duration,
    /// Most bytes of finished reads kept at once.
    max_bytes: usize,
}

struct Slot<V> {
    value: Arc<OnceCell<V>>,
    created: Instant,
}

impl<V: Clone + Weighed> SharedReads<V> {
    pub fn new(keep_for: Duration, max_bytes: usize) -> Self {
        SharedReads {
            slots: Mutex::new(HashMap::new()),
            keep_for,
            max_bytes,
        }
    }

    /// The value under `key`: read by `read` unless another caller read it or is reading
    /// it (then its result, once there). A failed read is not kept: the next caller
    /// tries again.
    pub async fn get_or_read<E, Fut>(&self, key: String, read: impl FnOnce() -> Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(cell) = self.slot(key) else {
            return read().await;
        };
        cell.get_or_try_init(read).await.cloned()
    }

    /// The slot for `key`, made if needed; `None` when the budget is spent.
    fn slot(&self, key: String) -> Option<Arc<OnceCell<V>>> {
        let now = Instant::now();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Reads still in progress stay whatever their age: their waiters need them.
        slots.retain(|_, slot| {
            !slot.value.initialized() || now.duration_since(slot.created) < self.keep_for
        });
        if let Some(slot) = slots.get(&key) {
            return Some(slot.value.clone());
        }
        let kept: usize = slots
            .values()
            .filter_map(|slot| slot.value.get())
            .map(Weighed::bytes)
            .sum();
        if kept >= self.max_bytes {
            return None;
        }
        let value = Arc::new(OnceCell::new());
        slots.insert(
            key,
            Slot {
                value: value.clone(),
                created: now,
            },
        );
        Some(value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone)]
    struct Blob(usize);

    impl Weighed for Blob {
        fn bytes(&self) -> usize {
            self.0
        }
    }

    #[tokio::test]
    async fn concurrent_callers_of_one_key_share_one_read() {
        let shared = SharedReads::new(Duration::from_secs(60), 1000);
        let reads = AtomicUsize::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, ()>(Blob(10))
        };
        let results = futures_util::future::join_all(
            (0..20).map(|_| shared.get_or_read("page".into(), read)),
        )
        .await;
        assert!(results.iter().all(|r| matches!(r, Ok(Blob(10)))));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Another key is another read.
        shared.get_or_read("other".into(), read).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_the_budget_bounds_what_is() {
        let shared = SharedReads::new(Duration::from_secs(60), 100);
        let failed: Result<Blob, &str> = shared
            .get_or_read("a".into(), || async { Err("down") })
            .await;
        assert!(failed.is_err());
        let retried = shared.get_or_read("a".into(), || async { Ok::<_, ()>(Blob(100)) });
        assert_eq!(retried.await.unwrap().0, 100);
        // The budget is spent: a new key is read but not kept.
        let reads = AtomicUsize::new(0);
        for _ in 0..2 {
            shared
                .get_or_read("b".into(), || async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Blob(1))
                })
                .await
                .unwrap();
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(shared.len(), 1);
    }

    #[tokio::test]
    async fn finished_reads_expire() {
        let shared = SharedReads::new(Duration::ZERO, 1000);
        shared
            .get_or_read("a".into(), || async { Ok::<_, ()>(Blob(1)) })
            .await
            .unwrap();
        shared
            .get_or_read("b".into(), || async { Ok::<_, ()>(Blob(1)) })
            .await
            .unwrap();
        assert_eq!(
            shared.len(),
            1,
            "only the newest, made after the sweep, remains"
        );
    }
}
