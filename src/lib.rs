//! changecast: PostgreSQL row changes, streamed per tenant over SSE and WebSocket.
//!
//! Data flows one way, from the database to the socket; the modules in that order:

/// PostgreSQL connections: pool, migrations, the embedded server.
pub mod db;
/// The journal: commit order, positions and cursors, its reads, retention.
pub mod journal;
/// Capture: the tailer, its LISTEN connection, doorbell and pace; publishes into the hub.
pub mod capture;
/// Per-tenant fan-out of changes to subscribers.
pub mod hub;
/// A row's column values as row filters compare them.
pub mod row;
/// What each subscriber receives: types, topics, row filters, ids, view transitions.
pub mod selection;
/// The JSON and SSE forms of events, rendered once and shared.
pub mod wire;
/// Recent activity per tenant (`/v1/stats`).
pub mod stats;
/// One subscriber's replay-then-live stream, shared by both transports, and the
/// subscriber places counted against the limits.
pub mod subscription;
/// The watched tables: resource types and `/v1/snapshot` reads.
pub mod resources;
/// Bounds on snapshots in progress.
pub mod snapshot_limits;
/// HTTP: the accept loop (connection cap, header deadline), SSE and WebSocket
/// transports, snapshot, operations, dashboard.
pub mod http;
/// Token verification and minting.
pub mod auth;
/// The tenant id: whose changes a subscriber may see.
pub mod tenant;
/// Prometheus series.
pub mod metrics;
/// Command line and environment.
pub mod config;
/// What the HTTP surface is built from.
pub mod services;
/// Building and running the whole service.
pub mod app;
/// Waiting between attempts, cut short by shutdown.
pub mod backoff;
/// Locks that outlive a panic.
pub mod sync;
/// Restarting background tasks that panic or end unexpectedly.
pub mod supervise;
/// Values that must never be printed (secrets, URLs with passwords).
pub mod secret;
/// Logging setup.
pub mod telemetry;
/// OpenTelemetry traces of changes, snapshots and replays, exported over OTLP/HTTP.
pub mod otel;
/// The open-file limit (a socket per subscriber).
pub mod open_files;
/// `changecast healthcheck`: a tiny HTTP client for container healthchecks.
pub mod healthcheck;
/// `serve --demo`: a writer of plausible activity for the demo tenant.
pub mod demo;
/// Entry points for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing;

pub use app::App;
pub use config::ServeConfig;
