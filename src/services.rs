//! What the HTTP surface is built from: configuration, authentication, the watched
//! types, subscriptions, statistics, snapshot limits, metrics and readiness. Built by
//! `app`; `http` hands each handler only its part.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::resources::Catalog;
use crate::snapshot_limits::SnapshotLimits;
use crate::stats::Activity;
use crate::subscription::Subscriptions;

/// What the HTTP surface is built from.
pub struct Services {
    pub config: ServeConfig,
    pub auth: Arc<Authenticator>,
    /// The watched resource types.
    pub catalog: Arc<Catalog>,
    /// Opening subscriptions, and counting them against the limits; also the journal,
    /// the pool, shutdown and the task tracker they use.
    pub subscriptions: Arc<Subscriptions>,
    /// Recent events per tenant (`/v1/stats`).
    pub activity: Arc<Activity>,
    /// Counting snapshots in progress against their limits.
    pub snapshots: Arc<SnapshotLimits>,
    pub metrics: Arc<Metrics>,
    /// Whether the listener is connected and caught up.
    pub ready: watch::Receiver<bool>,
}
