//! How many snapshots are in progress: in all, and per tenant.
//!
//! A snapshot holds a pooled connection (and its transaction) until its client has read
//! the whole answer. Without a bound, clients that ask for snapshots and read slowly — or
//! never — could take every connection the tailer and replays need. Beyond the bound a
//! snapshot is refused at once (the client retries), never queued behind slow readers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::tenant::TenantId;

pub struct SnapshotLimits {
    max: usize,
    max_per_tenant: usize,
    counts: Mutex<Counts>,
    /// Told whenever a place comes back, for snapshots waiting for one.
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_tenant: HashMap<TenantId, usize>,
}

/// Why a snapshot was not started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotsRefused {
    #[error("this tenant already has {0} snapshots in progress, the most allowed; retry shortly")]
    TenantFull(usize),
    #[error("the service is answering {0} snapshots, the most it allows; retry shortly")]
    ServiceFull(usize),
}

/// One snapshot's place under the limits, from before its transaction starts until its
/// answer is written or abandoned; given back when dropped.
pub struct SnapshotPermit {
    limits: Arc<SnapshotLimits>,
    tenant: TenantId,
}

impl SnapshotLimits {
    pub fn new(max: usize, max_per_tenant: usize) -> Self {
        SnapshotLimits {
            max,
            max_per_tenant,
            counts: Mutex::default(),
            released: tokio::sync::Notify::new(),
        }
    }

    /// A place for one more snapshot of `tenant`, if both bounds allow it. The tenant's
    /// bound is checked first: a tenant at its own limit gains nothing by waiting for
    /// others.
    pub fn admit(self: &Arc<Self>, tenant: &TenantId) -> Result<SnapshotPermit, SnapshotsRefused> {
        let mut counts = lock(&self.counts);
        let of_tenant = counts.per_tenant.get(tenant).copied().unwrap_or(0);
        if of_tenant >= self.max_per_tenant {
            return Err(SnapshotsRefused::TenantFull(self.max_per_tenant));
        }
        if counts.total >= self.max {
            return Err(SnapshotsRefused::ServiceFull(self.max));
        }
        counts.total += 1;
        counts.per_tenant.insert(tenant.clone(), of_tenant + 1);
        Ok(SnapshotPermit {
            limits: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Snapshots in progress: (overall, of `tenant`).
    /// [`SnapshotLimits::admit`], waiting up to `wait` for a place to come back: a burst
    /// of snapshots (page loads after a deploy, say) queues briefly instead of being
    /// refused, while one that would wait longer is refused at once after it.
    pub async fn admit_within(
        self: &Arc<Self>,
        tenant: &TenantId,
        wait: std::time::Duration,
    ) -> Result<SnapshotPermit, SnapshotsRefused> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            let refused = match self.admit(tenant) {
                Ok(permit) => return Ok(permit),
                Err(refused) => refused,
            };
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(refused);
            }
        }
    }

    pub fn in_progress(&self, tenant: &TenantId) -> (usize, usize) {
        let counts = lock(&self.counts);
        (
            counts.total,
            counts.per_tenant.get(tenant).copied().unwrap_or(0),
        )
    }
}

impl Drop for SnapshotPermit {
    fn drop(&mut self) {
        {
            let mut counts = lock(&self.limits.counts);
            counts.total -= 1;
            if let Some(of_tenant) = counts.per_tenant.get_mut(&self.tenant) {
                *of_tenant -= 1;
                if *of_tenant == 0 {
                    counts.per_tenant.remove(&self.tenant);
                }
            }
        }
        self.limits.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_per_tenant_and_overall_and_places_come_back() {
        let limits = Arc::new(SnapshotLimits::new(3, 2));
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        let a1 = limits.admit(&a).unwrap();
        let _a2 = limits.admit(&a).unwrap();
        assert_eq!(
            limits.admit(&a).err(),
            Some(SnapshotsRefused::TenantFull(2))
        );
        let _b1 = limits.admit(&b).unwrap();
        assert_eq!(
            limits.admit(&b).err(),
            Some(SnapshotsRefused::ServiceFull(3))
        );
        drop(a1);
        assert_eq!(limits.in_progress(&a), (2, 1));
        let _b2 = limits.admit(&b).unwrap();
        assert_eq!(limits.in_progress(&b), (3, 2));
    }
}
