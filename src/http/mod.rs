//! The HTTP surface: one function per route, `.or()`-ed, one JSON `recover`; each
//! handler is given only what it uses. Transports here only frame (`stream` does what
//! they all do alike); `subscription` decides what a subscriber gets.

mod dashboard;
mod error;
mod ops;
pub(crate) mod request;
pub mod server;
mod snapshot;
mod sse;
mod stats;
mod stream;
mod upgrade;
pub(crate) mod ws;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::Filter;

use crate::auth::Authenticator;
use crate::resources::Catalog;
use crate::services::Services;
use crate::stats::Activity;
use snapshot::Snapshots;
use stream::Streams;

pub use error::ApiError;
pub use request::{EVENTS_PARAMS, SNAPSHOT_PARAMS, STATS_PARAMS, WS_PARAMS};

/// The service's routes.
pub fn routes(services: &Services) -> BoxedFilter<(Response,)> {
    let (auth, catalog, activity) = (&services.auth, &services.catalog, &services.activity);
    let subscriptions = &services.subscriptions;
    let streams = Arc::new(Streams::new(
        subscriptions.clone(),
        &services.metrics,
        services.config.keepalive,
    ));
    let snapshots = Arc::new(Snapshots {
        limits: services.snapshots.clone(),
        journal: subscriptions.journal.clone(),
        pool: subscriptions.pool.clone(),
        timeout: services.config.snapshot_timeout,
        shutdown: subscriptions.shutdown.clone(),
        traces: subscriptions.traces.clone(),
    });
    let routes = events(auth, catalog, &streams)
        .or(ws(auth, catalog, &streams, activity))
        .unify()
        .or(snapshot(auth, catalog, &snapshots))
        .unify()
        .or(stats(auth, activity, &streams))
        .unify()
        .or(ops(services))
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

/// Hands a handler its share of `value`.
fn with<T: Send + Sync + ?Sized>(
    value: &Arc<T>,
) -> impl Filter<Extract = (Arc<T>,), Error = std::convert::Infallible> + Clone {
    let value = value.clone();
    warp::any().map(move || value.clone())
}

fn events(
    auth: &Arc<Authenticator>,
    catalog: &Arc<Catalog>,
    streams: &Arc<Streams>,
) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "events")
        .and(warp::get())
        .and(with(auth))
        .and(with(catalog))
        .and(with(streams))
        .and(request_parts())
        .then(sse::handle)
        .boxed()
}

fn ws(
    auth: &Arc<Authenticator>,
    catalog: &Arc<Catalog>,
    streams: &Arc<Streams>,
    activity: &Arc<Activity>,
) -> BoxedFilter<(Response,)> {
    // Not an upgrade request: still authenticated first, then refused with 426.
    let upgrade = upgrade::upgrade_request();
    warp::path!("v1" / "ws")
        .and(warp::get())
        .and(with(auth))
        .and(with(catalog))
        .and(with(streams))
        .and(with(activity))
        .and(upgrade)
        .and(request_parts())
        .then(ws::handle)
        .boxed()
}

fn snapshot(
    auth: &Arc<Authenticator>,
    catalog: &Arc<Catalog>,
    snapshots: &Arc<Snapshots>,
) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "snapshot")
        .and(warp::get())
        .and(with(auth))
        .and(with(catalog))
        .and(with(snapshots))
        .and(request_parts())
        .then(snapshot::handle)
        .boxed()
}

fn stats(
    auth: &Arc<Authenticator>,
    activity: &Arc<Activity>,
    streams: &Arc<Streams>,
) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stats")
        .and(warp::get())
        .and(with(auth))
        .and(with(activity))
        .and(with(streams))
        .and(request_parts())
        .then(stats::handle)
        .boxed()
}

/// The routes of `CHANGECAST_METRICS_LISTEN`: what a monitoring system and an
/// orchestrator's probes ask, and nothing a subscriber uses.
pub fn monitoring_routes(services: &Services) -> BoxedFilter<(Response,)> {
    warp::get()
        .and(health(services).or(metrics(services)).unify())
        .recover(error::handle_rejection)
        .unify()
        .boxed()
}

fn ops(services: &Services) -> BoxedFilter<(Response,)> {
    let openapi = warp::path!("openapi.json")
        .and(with(&services.auth))
        .and(with(&services.catalog))
        .and(request_parts())
        .map(
            |auth: Arc<Authenticator>,
             catalog: Arc<Catalog>,
             headers: HeaderMap,
             query: Option<String>| {
                ops::openapi(&auth, &catalog, &headers, query.as_deref())
            },
        );
    let routes = health(services).or(openapi).unify();
    // With a monitoring address of its own, `/metrics` is not served here at all.
    let routes = if services.config.metrics_listen.is_none() {
        routes.or(metrics(services)).unify().boxed()
    } else {
        routes.boxed()
    };
    warp::get().and(routes).boxed()
}

fn health(services: &Services) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz").map(ops::healthz);
    let ready = services.ready.clone();
    let readyz = warp::path!("readyz").map(move || ops::readyz(&ready));
    healthz.or(readyz).unify().boxed()
}

fn metrics(services: &Services) -> BoxedFilter<(Response,)> {
    let metrics = services.metrics.clone();
    warp::path!("metrics")
        .map(move || ops::metrics(&metrics))
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
