//! Per-tenant fan-out of committed changes. Knows nothing about PostgreSQL.
//!
//! Each tenant with subscribers has one bounded broadcast channel, so publishing a
//! change costs one send to its own tenant's channel, whatever other tenants do, and a
//! subscriber that stops reading cannot grow memory: it lags, and recovers from the
//! journal (see `subscription`). Publishing a page and advancing the `Published`
//! boundary happen under one lock, so a new subscriber learns exactly which changes it
//! will receive live and which it must read from the journal.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::auth::TenantId;
use crate::journal::{Entry, Published};

pub struct Hub {
    state: Mutex<State>,
    /// Changes a subscriber may fall behind its tenant's newest before it lags.
    capacity: usize,
}

struct State {
    tenants: HashMap<TenantId, broadcast::Sender<Entry>>,
    published: Published,
}

impl Hub {
    pub fn new(published: Published, capacity: usize) -> Self {
        Hub {
            state: Mutex::new(State {
                tenants: HashMap::new(),
                published,
            }),
            capacity,
        }
    }

    /// Joins `tenant`'s fan-out. Every change beyond the returned boundary will arrive on
    /// the receiver; every change within it is in the journal.
    pub fn subscribe(&self, tenant: &TenantId) -> (broadcast::Receiver<Entry>, Published) {
        let mut state = self.lock();
        let receiver = match state.tenants.get(tenant) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(self.capacity);
                state.tenants.insert(tenant.clone(), sender);
                receiver
            }
        };
        (receiver, state.published.clone())
    }

    /// Hands one page of changes, in journal order, to their tenants' subscribers and
    /// moves the boundary to `published`. Returns how many subscriber deliveries it queued.
    pub fn publish(&self, changes: Vec<Entry>, published: Published) -> usize {
        let mut state = self.lock();
        let mut queued = 0;
        for change in changes {
            let Some(sender) = state.tenants.get(change.tenant()) else {
                continue;
            };
            match sender.send(change) {
                Ok(receivers) => queued += receivers,
                // Its last subscriber left: forget the tenant until one returns.
                Err(broadcast::error::SendError(change)) => {
                    state.tenants.remove(change.tenant());
                }
            }
        }
        state.published = published;
        queued
    }

    pub fn published(&self) -> Published {
        self.lock().published.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent: keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
