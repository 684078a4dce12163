//! `GET /v1/snapshot`: the tenant's current rows plus the cursor to stream on from.

use std::sync::Arc;

use warp::http::HeaderMap;
use warp::reply::Response;

use super::error::ApiError;
use super::request::{self, Params};
use crate::services::Services;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

pub async fn handle(
    services: Arc<Services>,
    headers: HeaderMap,
    query: Option<String>,
) -> Response {
    super::error::respond(read(services, headers, query).await)
}

async fn read(
    services: Arc<Services>,
    headers: HeaderMap,
    query: Option<String>,
) -> Result<warp::reply::Json, ApiError> {
    let params = Params::parse_for(query.as_deref(), request::SNAPSHOT_PARAMS)?;
    let identity = request::authenticate(&services, &headers, &params)?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let mut selection = request::selection(&services, params.selection()).await?;
    let types = match selection.types.take() {
        Some(types) => types,
        None => request::known_types(&services).await?,
    };
    let mut client = services.pool.get().await.map_err(ApiError::unavailable)?;
    let snapshot = crate::resources::snapshot(
        &mut client,
        &services.journal,
        &identity.tenant,
        &types,
        &selection,
        limit,
    )
    .await
    .map_err(ApiError::unavailable)?;
    Ok(warp::reply::json(&snapshot))
}
