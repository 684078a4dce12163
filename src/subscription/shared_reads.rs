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

use crate::sync::lock;
use tokio::sync::OnceCell;

/// A value that knows its size (the budget's unit).
pub trait Weighed {
    fn bytes(&self) -> usize;
}

/// What a slot weighs at least (its key, its bookkeeping): a budget of bytes then also
/// bounds how many slots of empty results are kept.
const SLOT_OVERHEAD: usize = 256;
/// How often the slots are swept and weighed (not on every call: a reconnect storm
/// calls thousands of times a second).
const SWEEP_EVERY: Duration = Duration::from_millis(50);

pub struct SharedReads<V> {
    state: Mutex<State<V>>,
    /// How long a finished read is kept for latecomers.
    keep_for: Duration,
    /// Most bytes of finished reads kept at once.
    max_bytes: usize,
    /// How often slots are swept: [`SWEEP_EVERY`], or more often when kept for less.
    sweep_every: Duration,
}

struct State<V> {
    slots: HashMap<String, Slot<V>>,
    /// What the slots weighed at the last sweep, plus those made since.
    kept: usize,
    last_sweep: Option<Instant>,
}

struct Slot<V> {
    value: Arc<OnceCell<V>>,
    created: Instant,
}

impl<V: Clone + Weighed> SharedReads<V> {
    pub fn new(keep_for: Duration, max_bytes: usize) -> Self {
        SharedReads {
            state: Mutex::new(State {
                slots: HashMap::new(),
                kept: 0,
                last_sweep: None,
            }),
            keep_for,
            max_bytes,
            sweep_every: keep_for.min(SWEEP_EVERY),
        }
    }

    /// The value under `key`: read by `read` unless another caller read it or is reading
    /// it (then its result, once there). A failed or abandoned read leaves nothing
    /// behind: the next caller tries again.
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
        let mut state = lock(&self.state);
        if state
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= self.sweep_every)
        {
            state.last_sweep = Some(now);
            // A finished read stays for `keep_for`; an unfinished one while a caller still
            // waits on it (one that failed, or whose callers all left, goes).
            state.slots.retain(|_, slot| match slot.value.get() {
                Some(_) => now.duration_since(slot.created) < self.keep_for,
                None => Arc::strong_count(&slot.value) > 1,
            });
            state.kept = state
                .slots
                .iter()
                .map(|(key, slot)| {
                    key.len() + SLOT_OVERHEAD + slot.value.get().map_or(0, Weighed::bytes)
                })
                .sum();
        }
        if let Some(slot) = state.slots.get(&key) {
            return Some(slot.value.clone());
        }
        if state.kept >= self.max_bytes {
            return None;
        }
        state.kept += key.len() + SLOT_OVERHEAD;
        let value = Arc::new(OnceCell::new());
        state.slots.insert(
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
        self.state.lock().unwrap().slots.len()
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
        let shared = SharedReads::new(Duration::from_secs(60), 1 << 20);
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
        // Room for one slot: its key and overhead (257 bytes) spend the budget.
        let shared = SharedReads::new(Duration::from_secs(60), 200);
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
    async fn finished_reads_expire_and_abandoned_ones_go() {
        let shared = SharedReads::new(Duration::ZERO, 1 << 20);
        shared
            .get_or_read("a".into(), || async { Ok::<_, ()>(Blob(1)) })
            .await
            .unwrap();
        // A read whose only caller gave up (a subscriber that left mid-read).
        let abandoned = shared.get_or_read("b".into(), std::future::pending::<Result<Blob, ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(1), abandoned)
            .await
            .is_err());
        shared
            .get_or_read("c".into(), || async { Ok::<_, ()>(Blob(1)) })
            .await
            .unwrap();
        assert_eq!(
            shared.len(),
            1,
            "only the newest, made after the sweep, remains"
        );
    }
}
