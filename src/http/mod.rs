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

fn ops(services: Arc<Services>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz").map(ops::healthz);
    let readyz = warp::path!("readyz")
        .and(with(services.clone()))
        .map(|s: Arc<Services>| ops::readyz(&s));
    let metrics = warp::path!("metrics")
        .and(with(services.clone()))
        .map(|s: Arc<Services>| ops::metrics(&s));
    let openapi = warp::path!("openapi.json")
        .and(with(services))
        .map(|s: Arc<Services>| ops::openapi(&s));
    warp::get()
        .and(
            healthz
                .or(readyz)
                .unify()
                .or(metrics)
                .unify()
                .or(openapi)
                .unify(),
        )
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
