//! Operator endpoints: liveness, readiness, Prometheus metrics.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::services::Services;

pub fn healthz() -> Response {
    warp::reply::json(&serde_json::json!({"status": "ok"})).into_response()
}

/// 200 only while the listener is connected and caught up (so not while the tailer is
/// being restarted after a failure).
pub fn readyz(services: &Arc<Services>) -> Response {
    if *services.ready.borrow() {
        warp::reply::json(&serde_json::json!({"status": "ready"})).into_response()
    } else {
        let body = warp::reply::json(&serde_json::json!({
            "status": "not_ready",
            "message": "the database listener is disconnected, catching up, or restarting"
        }));
        warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
    }
}

pub fn metrics(services: &Arc<Services>) -> Response {
    warp::reply::with_header(
        services.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}
