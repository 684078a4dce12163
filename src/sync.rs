//! Locks that outlive a panic.
//!
//! The service's mutexes guard counters and small maps, each updated in a few
//! statements that cannot leave them half-changed. A panic elsewhere while one is held
//! must not take every later request down with it, so a poisoned lock is used as is.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
