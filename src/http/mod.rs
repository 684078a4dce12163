//! The HTTP surface: one function per route, `.or()`-ed, one JSON `recover`.
//! Transports here only format; `subscription` decides what a subscriber gets.

mod dashboard;
mod error;
mod ops;
pub(crate) mod request;
pub mod server;
mod snapshot;
mod sse;
mod stats;
mod upgrade;
pub(crate) mod ws;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::Filter;

use crate::services::Services;

pub use error::ApiError;
pub use request::{EVENTS_PARAMS, SNAPSHOT_PARAMS, STATS_PARAMS, WS_PARAMS};

pub fn routes(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    let routes = events(services.clone())
        .or(ws(services.clone()))
        .unify()
        .or(snapshot(services.clone()))
        .unify()
        .or(stats(services.clone()))
        .unify()
        .or(ops(services.clone()))
        .unify()
        .or(dashboard())
        .unify()
        .boxed();
    let origins = &services.config.cors_origins;
    let routes = if origins.is_empty() {
        routes
    } else {
        // Only browser pages on these origins may subscribe; same-origin always works.
        let cors = warp::cors()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET"])
            .allow_headers(["authorization", "last-event-id", "content-type", "accept"]);
        routes
            .with(cors)
            .map(warp::reply::Reply::into_response)
            .boxed()
    };
    routes.recover(error::handle_rejection).unify().boxed()
}

/// What a subscriber endpoint needs from the request: its headers and raw query.
fn request_parts(
) -> impl Filter<Extract = (HeaderMap, Option<String>), Error = std::convert::Infallible> + Clone {
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    warp::header::headers_cloned().and(query)
}

fn with(
    services: Arc<Services>,
) -> impl Filter<Extract = (Arc<Services>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || services.clone())
}

fn events(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "events")
        .and(warp::get())
        .and(with(services))
        .and(request_parts())
        .then(sse::handle)
        .boxed()
}

fn ws(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    // Not an upgrade request: still authenticated first, then refused with 426.
    let upgrade = upgrade::upgrade_request();
    warp::path!("v1" / "ws")
        .and(warp::get())
        .and(with(services))
        .and(upgrade)
        .and(request_parts())
        .map(ws::handle)
        .boxed()
}

fn snapshot(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "snapshot")
        .and(warp::get())
        .and(with(services))
        .and(request_parts())
        .then(snapshot::handle)
        .boxed()
}

fn stats(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stats")
        .and(warp::get())
        .and(with(services))
        .and(request_parts())
        .map(stats::handle)
        .boxed()
}

/// The routes of `CHANGECAST_METRICS_LISTEN`: what a monitoring system and an
/// orchestrator's probes ask, and nothing a subscriber uses.
pub fn monitoring_routes(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    warp::get()
        .and(health(services.clone()).or(metrics(services)).unify())
        .recover(error::handle_rejection)
        .unify()
        .boxed()
}

fn ops(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    let openapi = warp::path!("openapi.json")
        .and(with(services.clone()))
        .and(request_parts())
        .map(
            |s: Arc<Services>, headers: HeaderMap, query: Option<String>| {
                ops::openapi(&s, &headers, query.as_deref())
            },
        );
    let routes = health(services.clone()).or(openapi).unify();
    // With a monitoring address of its own, `/metrics` is not served here at all.
    let routes = if services.config.metrics_listen.is_none() {
        routes.or(metrics(services)).unify().boxed()
    } else {
        routes.boxed()
    };
    warp::get().and(routes).boxed()
}

fn health(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz").map(ops::healthz);
    let readyz = warp::path!("readyz")
        .and(with(services))
        .map(|s: Arc<Services>| ops::readyz(&s));
    healthz.or(readyz).unify().boxed()
}

fn metrics(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(with(services))
        .map(|s: Arc<Services>| ops::metrics(&s))
        .boxed()
}

fn dashboard() -> BoxedFilter<(Response,)> {
    let index = warp::path::end().map(dashboard::index);
    let client = warp::path!("changecast.js")
        .and(request_parts())
        .map(dashboard::client_js);
    let types = warp::path!("changecast.d.ts").map(dashboard::client_dts);
    warp::get()
        .and(index.or(client).unify().or(types).unify())
        .boxed()
}
