//! What request handlers share: configuration, the database pool, the journal and the
//! fan-out, authentication, subscriptions, statistics, readiness and shutdown. Built
//! by `app`, read by `http`.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::snapshot_limits::SnapshotLimits;
use crate::stats::Activity;
use crate::subscription::Subscriptions;

/// What request handlers share.
pub struct Services {
    pub config: ServeConfig,
    pub pool: deadpool_postgres::Pool,
    pub journal: Arc<Journal>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Whether the listener is connected and caught up.
    pub ready: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
    /// Every task the service spawns, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The watched resource types as last read (see `http::request::known_types`).
    pub resource_types: std::sync::Mutex<Vec<String>>,
    /// Opening subscriptions, and counting them against the limits.
    pub subscriptions: Arc<Subscriptions>,
    /// Recent events per tenant (`/v1/stats`).
    pub activity: Arc<Activity>,
    /// Counting snapshots in progress against their limits.
    pub snapshots: Arc<SnapshotLimits>,
}
