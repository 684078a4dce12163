//! What every subscriber transport does alike, so that a transport only frames: taking
//! a connection's place under the limits, counting the connection and what it writes
//! (with its delivery latency) in its transport's series, the keepalive timer, opening
//! subscriptions, and the service's shutdown. A new transport is a [`Transport`], a file
//! that frames, and a route.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Identity;
use crate::metrics::{Metrics, TransportSeries};
use crate::otel::Traces;
use crate::selection::Selection;
use crate::subscription::{self, Opened, PerTransport, Place, Refused, Subscriptions, Transport};
use crate::tenant::TenantId;
use crate::wire::Delivery;

/// What subscriber transports share.
pub struct Streams {
    subscriptions: Arc<Subscriptions>,
    /// How often an idle stream shows it is alive.
    keepalive: Duration,
    /// The series of each transport that delivers subscriptions.
    series: PerTransport<Option<TransportSeries>>,
}

impl Streams {
    /// Streams opening `subscriptions`; every delivering transport's series appear now.
    pub fn new(subscriptions: Arc<Subscriptions>, metrics: &Metrics, keepalive: Duration) -> Self {
        let series = PerTransport::from_fn(|transport| {
            transport
                .delivers()
                .then(|| metrics.transport(transport.label()))
        });
        Streams {
            subscriptions,
            keepalive,
            series,
        }
    }

    /// Accepts a connection of `transport` for `tenant`, unless that would exceed the
    /// subscriber limits.
    pub fn connect(&self, tenant: &TenantId, transport: Transport) -> Result<Connection, Refused> {
        let place = Place::take(&self.subscriptions.places, tenant, transport)?;
        let series = self.series[transport].clone();
        if let Some(series) = &series {
            series.subscribers.inc();
        }
        Ok(Connection {
            series,
            traces: self.subscriptions.traces.clone(),
            span: tracing::info_span!("subscriber", transport = transport.label(), tenant = %tenant),
            _place: place,
        })
    }

    /// Starts a subscription for a connection (see [`subscription::open`]); the current
    /// span (the connection's) follows it into its logs.
    pub fn open(
        &self,
        identity: &Identity,
        selection: Selection,
        resume: Option<String>,
    ) -> Opened {
        subscription::open(&self.subscriptions, identity, selection, resume)
    }

    /// Open connections of `tenant`, per transport.
    pub fn connected(&self, tenant: &TenantId) -> PerTransport<usize> {
        self.subscriptions.places.connected(tenant)
    }

    /// Ticks once per keepalive interval, the first a whole interval from now; ticks
    /// missed while the stream was busy are not made up.
    pub fn keepalive(&self) -> Interval {
        let mut tick = interval_at(Instant::now() + self.keepalive, self.keepalive);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick
    }

    /// Cancelled when the service shuts down: streams say so and end.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.subscriptions.shutdown
    }

    /// Where a transport tracks the tasks it spawns, so shutdown waits for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.subscriptions.tracker
    }
}

/// One accepted subscriber connection, until dropped: its place under the limits, and
/// counted as connected in its transport's series.
pub struct Connection {
    series: Option<TransportSeries>,
    traces: Traces,
    /// Its logs' span: transport and tenant.
    span: tracing::Span,
    _place: Place,
}

impl Connection {
    /// Counts `delivery` as written, and the time since its change was known.
    pub fn delivered(&self, delivery: &Delivery) {
        if let Some(series) = &self.series {
            series.delivered.inc();
            series
                .delivery_latency
                .observe(delivery.known_since().elapsed().as_secs_f64());
        }
        if self.traces.is_on() {
            let id = match delivery {
                Delivery::Change { change, .. } => change.id,
                Delivery::AppEvent(event) => event.id,
            };
            self.traces.delivered(id, delivery.known_since());
        }
    }

    /// The span its logs (and its subscriptions' logs) belong to.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(series) = &self.series {
            series.subscribers.dec();
        }
    }
}
