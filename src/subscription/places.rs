//! Subscriber places: how many subscriber connections are open, in all and per tenant,
//! against the limits, and which transport holds each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::tenant::TenantId;

/// How many subscriber connections may be open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_subscribers: usize,
    pub max_subscribers_per_tenant: usize,
}

/// What holds a subscriber place: the two transports (counted per tenant for
/// `/v1/stats`), and `/v1/stats` streams, which are open connections fed on a timer, as
/// costly to hold as a subscriber (counted against the limits, not reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    Stats,
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

    /// Open subscriber connections of `tenant`: (SSE, WebSocket).
    pub fn connected(&self, tenant: &TenantId) -> (usize, usize) {
        let counts = lock(&self.counts);
        counts
            .per_tenant
            .get(tenant)
            .map_or((0, 0), |of| (of.sse, of.ws))
    }
}

/// How many subscriptions are open, in all and per tenant (against the limits).
#[derive(Default)]
struct SubscriberCounts {
    total: usize,
    per_tenant: HashMap<TenantId, TenantCounts>,
}

#[derive(Default)]
struct TenantCounts {
    sse: usize,
    ws: usize,
    stats: usize,
}

impl TenantCounts {
    fn total(&self) -> usize {
        self.sse + self.ws + self.stats
    }

    fn of(&mut self, transport: Transport) -> &mut usize {
        match transport {
            Transport::Sse => &mut self.sse,
            Transport::Ws => &mut self.ws,
            Transport::Stats => &mut self.stats,
        }
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
        let of_tenant = counts.per_tenant.entry(tenant.clone()).or_default();
        if of_tenant.total() >= limits.max_subscribers_per_tenant {
            return Err(Refused::TenantFull(limits.max_subscribers_per_tenant));
        }
        *of_tenant.of(transport) += 1;
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
            *of_tenant.of(self.transport) -= 1;
            if of_tenant.total() == 0 {
                counts.per_tenant.remove(&self.tenant);
            }
        }
    }
}
