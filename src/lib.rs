//! changecast: PostgreSQL row changes, streamed per tenant over SSE and WebSocket.
//!
//! Data flows one way, in this order:

/// Building and running the whole service.
pub mod app;
/// Token verification and minting; the tenant id.
pub mod auth;
/// Command line and environment.
pub mod config;
/// PostgreSQL connections: pool, migrations, the LISTEN connection, the embedded server.
pub mod db;
/// `changecast healthcheck`: a tiny HTTP client for container healthchecks.
pub mod healthcheck;
/// HTTP routes: SSE, snapshot, operations.
pub mod http;
/// Per-tenant fan-out of changes to subscribers.
pub mod hub;
/// The journal: commit-order reads, cursors, the tailer, retention.
pub mod journal;
/// Prometheus series.
pub mod metrics;
/// The watched tables: resource types and `/v1/snapshot` reads.
pub mod resources;
/// One subscriber's replay-then-live stream, shared by both transports.
pub mod subscription;
/// Logging setup.
pub mod telemetry;

pub use app::App;
pub use config::ServeConfig;
