//! How many journal replays run at once: in all, and per tenant.
//!
//! A replay page is a journal scan on a pooled connection. Without a bound, one client
//! with an old cursor and many connections (or a WebSocket `subscribe` storm) could keep
//! every pool connection scanning. Replays beyond the bound wait their turn — a resuming
//! subscriber is slowed, never refused — while live delivery does not wait at all.
//! A turn is owned (`'static`), so a replay dropped mid-read can keep it until its
//! statement has stopped on the server (see `subscription::ReadInProgress`): the bound
//! is on statements running, not on replays still listening for their answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sync::lock;
use crate::tenant::TenantId;

pub struct ReplayGate(Arc<Gate>);

struct Gate {
    overall: Arc<Semaphore>,
    per_tenant_limit: usize,
    running: IntGauge,
    waits: IntCounter,
    /// One semaphore per tenant with a replay running or waiting; removed when idle.
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
}

/// A turn to read one replay page; gives it back when dropped.
pub struct Turn {
    gate: Arc<Gate>,
    tenant: TenantId,
    // Field order: the tenant's permit is returned before the gate looks at its semaphore.
    _overall: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
}

impl ReplayGate {
    /// `running` and `waits` are the metrics it keeps up to date.
    pub fn new(overall: usize, per_tenant: usize, running: IntGauge, waits: IntCounter) -> Self {
        ReplayGate(Arc::new(Gate {
            overall: Arc::new(Semaphore::new(overall)),
            per_tenant_limit: per_tenant,
            running,
            waits,
            tenants: Mutex::new(HashMap::new()),
        }))
    }

    /// Waits for a turn of `tenant` (first within the tenant, then overall, so a tenant
    /// with many waiting replays holds at most its share of overall turns).
    pub async fn turn(&self, tenant: &TenantId) -> Turn {
        let gate = &self.0;
        let of_tenant = lock(&gate.tenants)
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(gate.per_tenant_limit)))
            .clone();
        // The tenant's permit first, then the overall one, both awaited in that order:
        // holding an overall permit while waiting within a tenant would deadlock.
        let mut waited = false;
        let tenant_permit = match of_tenant.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waited = true;
                gate.waits.inc();
                of_tenant.acquire_owned().await.expect(NEVER_CLOSED)
            }
        };
        let overall = match gate.overall.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !waited {
                    gate.waits.inc();
                }
                gate.overall
                    .clone()
                    .acquire_owned()
                    .await
                    .expect(NEVER_CLOSED)
            }
        };
        gate.running.inc();
        Turn {
            gate: gate.clone(),
            tenant: tenant.clone(),
            _overall: overall,
            _tenant: Some(tenant_permit),
        }
    }
}

impl Gate {}

const NEVER_CLOSED: &str = "BUG: replay semaphores are never closed";

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.running.dec();
        self._tenant = None;
        let mut tenants = lock(&self.gate.tenants);
        // Nobody else holds or awaits this tenant's semaphore: forget it.
        if let Some(semaphore) = tenants.get(&self.tenant) {
            if Arc::strong_count(semaphore) == 1
                && semaphore.available_permits() == self.gate.per_tenant_limit
            {
                tenants.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounds_turns_per_tenant_and_overall_and_forgets_idle_tenants() {
        let running = IntGauge::new("running", "running").unwrap();
        let waits = IntCounter::new("waits", "waits").unwrap();
        let gate = ReplayGate::new(2, 1, running.clone(), waits.clone());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let initech = TenantId::new("initech").unwrap();
        let first = gate.turn(&acme).await;
        // A second turn of the same tenant waits, although overall turns are free.
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.turn(&acme)).await;
        assert!(waiting.is_err(), "a tenant got more than its share");
        let second = gate.turn(&globex).await;
        assert_eq!(running.get(), 2);
        // Overall bound reached: a third tenant waits too.
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.turn(&initech)).await;
        assert!(waiting.is_err(), "more turns than the overall bound");
        drop(first);
        let third = gate.turn(&initech).await;
        drop((second, third));
        assert_eq!(running.get(), 0);
        assert_eq!(waits.get(), 2, "each turn that waited is counted");
        assert!(
            lock(&gate.0.tenants).is_empty(),
            "idle tenants are remembered"
        );
    }

    /// Polls `future` once.
    async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) {
        let _ = tokio::time::timeout(Duration::ZERO, future).await;
    }

    #[tokio::test]
    async fn a_turn_waiting_within_its_tenant_holds_no_overall_turn() {
        let running = IntGauge::new("running", "running").unwrap();
        let waits = IntCounter::new("waits", "waits").unwrap();
        let gate = ReplayGate::new(1, 1, running, waits);
        let acme = TenantId::new("acme").unwrap();
        let a = gate.turn(&acme).await;
        let mut b = Box::pin(gate.turn(&acme));
        poll_once(&mut b).await;
        // A's tenant permit passes to B; before B runs, C arrives. Were C to take the
        // free overall permit while waiting for the tenant's, B and C would wait forever.
        drop(a);
        let mut c = Box::pin(gate.turn(&acme));
        poll_once(&mut c).await;
        let b = tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .expect("deadlock");
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(1), c)
            .await
            .expect("deadlock");
        drop(c);
    }
}
