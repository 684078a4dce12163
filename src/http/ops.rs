//! Operator endpoints: liveness, readiness, Prometheus metrics.

use tokio::sync::watch;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};

use super::request::{self, Params};
use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::resources::Catalog;

pub fn healthz() -> Response {
    warp::reply::json(&serde_json::json!({"status": "ok"})).into_response()
}

/// 200 only while the listener is connected and caught up (so not while the tailer is
/// being restarted after a failure, nor while the standby the journal is read from lags
/// more than CHANGECAST_READ_MAX_LAG).
pub fn readyz(ready: &watch::Receiver<bool>) -> Response {
    if *ready.borrow() {
        warp::reply::json(&serde_json::json!({"status": "ready"})).into_response()
    } else {
        let body = warp::reply::json(&serde_json::json!({
            "status": "not_ready",
            "message": "the database listener is disconnected, catching up or restarting, or the standby it reads lags behind the primary"
        }));
        warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
    }
}

pub fn metrics(metrics: &Metrics) -> Response {
    warp::reply::with_header(
        metrics.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}

/// The OpenAPI description of the HTTP endpoints (kept true by `tests/it/openapi.rs`).
const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The description. For a request with a valid token, `types` is spelled out as the
/// resource types watched right now (as last read), so a client generated from it sends
/// only types that exist; without one, the names of the watched tables' types are not
/// given away.
pub fn openapi(
    auth: &Authenticator,
    catalog: &Catalog,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    let mut spec: serde_json::Value =
        serde_json::from_str(OPENAPI_JSON).expect("BUG: openapi.json is JSON");
    let authenticated = Params::parse(query)
        .ok()
        .and_then(|params| request::bearer_token(headers, &params).ok())
        .is_some_and(|token| auth.verify(&token).is_ok());
    if authenticated {
        let types = catalog.last_read().join("|");
        let one = format!("({types})");
        spec["components"]["parameters"]["types"]["schema"]["pattern"] =
            format!("^({one}(,{one})*)?$").into();
    }
    warp::reply::json(&spec).into_response()
}
