//! Logging: human-readable by default, JSON with `--log-format json`; levels from
//! `RUST_LOG` (default `info`). Tokens are never logged: requests are not logged
//! with their query strings.

use tracing_subscriber::EnvFilter;

/// hyper reports every client that hangs up mid-stream as an error: routine for SSE.
const DEFAULT_FILTER: &str = "info,warp::server=off,tokio_postgres::connection=warn";

pub fn init(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests embedding the service): keep the first.
    let _ = result;
}
