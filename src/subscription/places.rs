//! Subscriber places: how many subscriber connections are open, in all and per tenant
//! and transport, against the limits.

use std::collections::HashMap;
use std::ops::{Index, IndexMut};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::tenant::TenantId;

/// How many subscriber connections may be open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_subscribers: usize,
    pub max_subscribers_per_tenant: usize,
}

/// What holds a subscriber place: a transport delivering subscriptions (counted per
/// tenant for `/v1/stats` and in the metrics, under its [`label`](Transport::label)), or
/// a `/v1/stats` stream, an open connection fed on a timer, as costly to hold as a
/// subscriber (counted against the limits, not reported). A new transport is a variant
/// here, in [`Transport::ALL`], with its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    Stats,
}

impl Transport {
    /// Every transport, each at its own position (see [`PerTransport`]).
    pub const ALL: [Transport; 3] = [Transport::Sse, Transport::Ws, Transport::Stats];

    /// Its name on the wire: the metrics' `transport` label, a key of `/v1/stats`'
    /// `subscribers`.
    pub const fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Stats => "stats",
        }
    }

    /// Whether it delivers subscriptions, so is reported as a subscriber transport.
    pub const fn delivers(self) -> bool {
        !matches!(self, Transport::Stats)
    }

    /// The transports that deliver subscriptions.
    pub fn delivering() -> impl Iterator<Item = Transport> {
        Transport::ALL.into_iter().filter(|t| t.delivers())
    }
}

/// One `T` per transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerTransport<T>([T; Transport::ALL.len()]);

impl<T> PerTransport<T> {
    pub fn from_fn(mut of: impl FnMut(Transport) -> T) -> Self {
        PerTransport(Transport::ALL.map(&mut of))
    }
}

impl<T> Index<Transport> for PerTransport<T> {
    type Output = T;

    fn index(&self, transport: Transport) -> &T {
        &self.0[transport as usize]
    }
}

impl<T> IndexMut<Transport> for PerTransport<T> {
    fn index_mut(&mut self, transport: Transport) -> &mut T {
        &mut self.0[transport as usize]
    }
}

/// Why a subscription was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("this tenant already has {0} subscribers, the most allowed")]
    TenantFull(usize),
    #[error(
        "the service is serving {0} subscribers, the most it allows; retry later or elsewhere"
    )]
    ServiceFull(usize),
}

/// Open subscriber connections, counted against [`Limits`].
pub struct Places {
    limits: Limits,
    counts: Mutex<SubscriberCounts>,
}

impl Places {
    pub fn new(limits: Limits) -> Self {
        Places {
            limits,
            counts: Mutex::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Open connections of `tenant`, per transport.
    pub fn connected(&self, tenant: &TenantId) -> PerTransport<usize> {
        let counts = lock(&self.counts);
        counts.per_tenant.get(tenant).cloned().unwrap_or_default()
    }
}

/// How many subscriptions are open, in all and per tenant (against the limits).
#[derive(Default)]
struct SubscriberCounts {
    total: usize,
    per_tenant: HashMap<TenantId, PerTransport<usize>>,
}

impl PerTransport<usize> {
    fn total(&self) -> usize {
        self.0.iter().sum()
    }
}

/// One subscriber connection's place under `max_subscribers` and
/// `max_subscribers_per_tenant`: an SSE stream, a `/v1/stats` stream, or a WebSocket
/// from its upgrade on (subscribed or not, so idle sockets cannot bypass the limits, and
/// a `subscribe` that changes the filter never needs a second place). Given back when
/// dropped.
pub struct Place {
    places: Arc<Places>,
    tenant: TenantId,
    transport: Transport,
}

impl Place {
    pub fn take(
        places: &Arc<Places>,
        tenant: &TenantId,
        transport: Transport,
    ) -> Result<Place, Refused> {
        let limits = &places.limits;
        let mut counts = lock(&places.counts);
        if counts.total >= limits.max_subscribers {
            return Err(Refused::ServiceFull(limits.max_subscribers));
        }
        // Checked before an entry is made: a refused tenant leaves nothing behind.
        let held = counts.per_tenant.get(tenant).map_or(0, |of| of.total());
        if held >= limits.max_subscribers_per_tenant {
            return Err(Refused::TenantFull(limits.max_subscribers_per_tenant));
        }
        counts.per_tenant.entry(tenant.clone()).or_default()[transport] += 1;
        counts.total += 1;
        Ok(Place {
            places: places.clone(),
            tenant: tenant.clone(),
            transport,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = lock(&self.places.counts);
        counts.total -= 1;
        if let Some(of_tenant) = counts.per_tenant.get_mut(&self.tenant) {
            of_tenant[self.transport] -= 1;
            if of_tenant.total() == 0 {
                counts.per_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transport_has_its_own_position() {
        for (position, transport) in Transport::ALL.into_iter().enumerate() {
            assert_eq!(transport as usize, position, "{transport:?}");
        }
    }

    #[test]
    fn places_are_counted_per_transport_and_given_back() {
        let places = Arc::new(Places::new(Limits {
            max_subscribers: 3,
            max_subscribers_per_tenant: 2,
        }));
        let acme = TenantId::new("acme").unwrap();
        let sse = Place::take(&places, &acme, Transport::Sse).unwrap();
        let stats = Place::take(&places, &acme, Transport::Stats).unwrap();
        let connected = places.connected(&acme);
        assert_eq!(
            Transport::ALL.map(|t| connected[t]),
            [1, 0, 1],
            "sse, ws, stats"
        );
        assert_eq!(
            Place::take(&places, &acme, Transport::Ws).err(),
            Some(Refused::TenantFull(2))
        );
        drop((sse, stats));
        assert_eq!(places.connected(&acme), PerTransport::default());
    }
}
