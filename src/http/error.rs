//! `ApiError`: every refusal the API makes, as a status and a `{"error","message"}` body.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::AuthError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds a refused client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The token's scope does not allow what was asked (API.md §3c).
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The database could not answer; details go to the log, not to the client.
    pub fn unavailable(error: impl std::fmt::Debug) -> Self {
        tracing::warn!(?error, "database unavailable while serving a request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; retry shortly",
        )
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let status = match error {
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<crate::subscription::Refused> for ApiError {
    fn from(refused: crate::subscription::Refused) -> Self {
        use crate::subscription::Refused;
        let (status, code) = match refused {
            Refused::TenantFull(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_subscribers"),
            Refused::ServiceFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_full"),
        };
        ApiError::new(status, code, refused.to_string())
    }
}

/// Seconds a client refused for a full snapshot bound waits: snapshots are short, so a
/// place is usually free again within a second.
const RETRY_SNAPSHOT_AFTER_SECONDS: u32 = 1;

impl From<crate::snapshot_limits::SnapshotsRefused> for ApiError {
    fn from(refused: crate::snapshot_limits::SnapshotsRefused) -> Self {
        use crate::snapshot_limits::SnapshotsRefused;
        let (status, code) = match refused {
            SnapshotsRefused::TenantFull(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_snapshots")
            }
            SnapshotsRefused::ServiceFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "snapshots_full"),
        };
        ApiError {
            retry_after: Some(RETRY_SNAPSHOT_AFTER_SECONDS),
            ..ApiError::new(status, code, refused.to_string())
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = warp::reply::json(&Body {
            error: self.code,
            message: &self.message,
        });
        let mut response = warp::reply::with_status(body, self.status).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert("retry-after", warp::http::HeaderValue::from(seconds));
        }
        // RFC 9110: a 405 lists the methods the resource supports.
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert("allow", warp::http::HeaderValue::from_static("GET"));
        }
        response
    }
}

/// Turns a handler's `Result` into a response.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(error) => error.into_response(),
    }
}

/// Requests no route matched: JSON too, never warp's plain-text defaults.
pub async fn handle_rejection(
    rejection: warp::Rejection,
) -> Result<Response, std::convert::Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see API.md",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint only answers GET",
        )
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::bad_request("bad_request", "the request could not be understood")
    };
    Ok(error.into_response())
}
