//! Per-tenant fan-out of committed changes. Knows nothing about PostgreSQL.
//!
//! Each tenant with subscribers has one bounded broadcast channel, so publishing a
//! change costs one send to its own tenant's channel, whatever other tenants do, and a
//! subscriber that stops reading cannot grow memory: it lags, and recovers from the
//! journal (see `subscription`). Publishing a page and advancing the `Published`
//! boundary happen under one lock, so a new subscriber learns exactly which changes it
//! will receive live and which it must read from the journal. A tenant's channel is
//! dropped with its last subscriber (see [`Live`]), so tenants that come and go leave
//! nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use tokio::sync::broadcast;

use crate::auth::TenantId;
use crate::journal::{Entry, Published};
use crate::stats::Activity;

/// Entries larger than this (roughly, in bytes of JSON) are not fanned out themselves:
/// every tenant channel keeps its last `capacity` items whether read or not, and a few
/// multi-MB rows there would pin gigabytes. Subscribers read them from the journal.
pub const FAN_OUT_MAX_BYTES: usize = 64 * 1024;

/// What a tenant's fan-out carries.
#[derive(Clone, Debug)]
pub enum Fanned {
    Entry(Entry),
    /// An entry too large to fan out ([`FAN_OUT_MAX_BYTES`]): it is in the journal, and
    /// a subscriber it concerns catches up from there (as after a lag).
    InJournal(InJournal),
}

/// What a subscriber needs to know of an entry it must read from the journal.
#[derive(Clone, Debug)]
pub struct InJournal {
    pub xid: u64,
    /// The resource type of a row change or truncation, the topic of an application event.
    pub name: String,
    pub app_event: bool,
    /// The row's id, for a row change (subscribers of other `ids` need not catch up).
    pub resource_id: Option<String>,
}

impl Fanned {
    fn of(entry: Entry) -> Fanned {
        if entry.size_hint() <= FAN_OUT_MAX_BYTES {
            return Fanned::Entry(entry);
        }
        let (name, app_event, resource_id) = match &entry {
            Entry::Change(change) => (
                change.resource_type.clone(),
                false,
                Some(change.resource_id.clone()),
            ),
            Entry::AppEvent(event) => (event.topic.clone(), true, None),
            Entry::Truncated(marker) => (marker.resource_type.clone(), false, None),
        };
        Fanned::InJournal(InJournal {
            xid: entry.xid(),
            name,
            app_event,
            resource_id,
        })
    }
}

pub struct Hub {
    state: Mutex<State>,
    /// Every published entry is counted here, subscribers or not (`/v1/stats`).
    activity: Arc<Activity>,
    /// Changes a subscriber may fall behind its tenant's newest before it lags.
    capacity: usize,
    /// How many tenants have a channel (`changecast_tenant_channels`).
    channels: IntGauge,
}

struct State {
    tenants: HashMap<TenantId, broadcast::Sender<Fanned>>,
    published: Published,
}

/// One subscriber's end of its tenant's fan-out; dropping it leaves the fan-out.
pub struct Live {
    // Field order matters: the receiver is dropped before `_member` looks whether it
    // was the tenant's last one.
    receiver: broadcast::Receiver<Fanned>,
    _member: Member,
}

impl Live {
    pub async fn recv(&mut self) -> Result<Fanned, broadcast::error::RecvError> {
        self.receiver.recv().await
    }
}

/// Removes its tenant's channel, when dropped after the tenant's last receiver.
struct Member {
    hub: Arc<Hub>,
    tenant: TenantId,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Under the lock, as `subscribe` counts: a subscriber joining meanwhile either
        // came first (a receiver remains) or finds no channel and makes a new one.
        let mut state = self.hub.lock();
        if state
            .tenants
            .get(&self.tenant)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            state.tenants.remove(&self.tenant);
            self.hub.channels.set(state.tenants.len() as i64);
        }
    }
}

impl Hub {
    pub fn new(
        published: Published,
        capacity: usize,
        channels: IntGauge,
        activity: Arc<Activity>,
    ) -> Self {
        channels.set(0);
        Hub {
            activity,
            state: Mutex::new(State {
                tenants: HashMap::new(),
                published,
            }),
            capacity,
            channels,
        }
    }

    /// Joins `tenant`'s fan-out. Every change beyond the returned boundary will arrive on
    /// the receiver; every change within it is in the journal.
    pub fn subscribe(self: &Arc<Self>, tenant: &TenantId) -> (Live, Published) {
        let mut state = self.lock();
        let receiver = match state.tenants.get(tenant) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(self.capacity);
                state.tenants.insert(tenant.clone(), sender);
                self.channels.set(state.tenants.len() as i64);
                receiver
            }
        };
        let live = Live {
            receiver,
            _member: Member {
                hub: self.clone(),
                tenant: tenant.clone(),
            },
        };
        (live, state.published.clone())
    }

    /// Hands one page of changes, in journal order, to their tenants' subscribers and
    /// moves the boundary to `published`. Returns how many subscriber deliveries it queued.
    pub fn publish(&self, changes: Vec<Entry>, published: Published) -> usize {
        self.activity.record(&changes);
        let mut state = self.lock();
        let mut queued = 0;
        for change in changes {
            let Some(sender) = state.tenants.get(change.tenant()) else {
                continue;
            };
            match sender.send(Fanned::of(change)) {
                Ok(receivers) => queued += receivers,
                // Unreachable while `Member` removes the channel with its last
                // receiver; harmless if a receiver ever escapes a `Live`.
                Err(broadcast::error::SendError(_)) => {
                    state
                        .tenants
                        .retain(|_, sender| sender.receiver_count() > 0);
                    self.channels.set(state.tenants.len() as i64);
                }
            }
        }
        state.published = published;
        queued
    }

    /// Ends every tenant's channel: each receiver gets `Closed` once it has read what
    /// was sent before, and its subscription catches up from the journal (see
    /// `subscription`). For when live delivery can no longer vouch for completeness.
    pub fn cut_off_everyone(&self) {
        let mut state = self.lock();
        state.tenants.clear();
        self.channels.set(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::PgSnapshot;

    fn hub() -> Arc<Hub> {
        let start: PgSnapshot = "10:10:".parse().unwrap();
        let gauge = IntGauge::new("channels", "test").unwrap();
        Arc::new(Hub::new(
            Published::complete(start),
            8,
            gauge,
            Arc::default(),
        ))
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn channels(hub: &Hub) -> usize {
        let count = hub.lock().tenants.len();
        assert_eq!(hub.channels.get(), count as i64, "gauge follows the map");
        count
    }

    #[test]
    fn a_tenant_channel_goes_with_its_last_subscriber() {
        let hub = hub();
        let (first, _) = hub.subscribe(&tenant("acme"));
        let (second, _) = hub.subscribe(&tenant("acme"));
        let (other, _) = hub.subscribe(&tenant("globex"));
        assert_eq!(channels(&hub), 2);
        drop(first);
        assert_eq!(channels(&hub), 2, "acme still has a subscriber");
        drop(second);
        assert_eq!(channels(&hub), 1);
        drop(other);
        assert_eq!(channels(&hub), 0);
    }

    #[test]
    fn a_replaced_subscription_keeps_the_channel() {
        // As after a lag: the new receiver is taken before the old one is dropped.
        let hub = hub();
        let (old, _) = hub.subscribe(&tenant("acme"));
        let (new, _) = hub.subscribe(&tenant("acme"));
        drop(old);
        assert_eq!(channels(&hub), 1);
        drop(new);
        assert_eq!(channels(&hub), 0);
    }

    #[test]
    fn many_tenants_coming_and_going_concurrently_leave_nothing() {
        let hub = hub();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let hub = &hub;
                scope.spawn(move || {
                    for i in 0..500 {
                        let name = format!("t{}", (i + thread) % 7);
                        let (a, _) = hub.subscribe(&tenant(&name));
                        let (b, _) = hub.subscribe(&tenant(&name));
                        // Every receiver alive has its tenant's channel.
                        assert!(hub.lock().tenants.contains_key(&tenant(&name)));
                        drop(a);
                        drop(b);
                    }
                });
            }
        });
        assert_eq!(channels(&hub), 0);
    }
}
