//! Entry points for the fuzz targets under `fuzz/` (cargo-fuzz), for what the service
//! parses that is private to it. Not an API: hidden from the docs, may change any time.

/// Parses a subscriber request's query string, as every endpoint does first; the error
/// must be a client error (4xx), never a server error.
pub fn parse_query(raw: &str) {
    if let Err(error) = crate::http::request::Params::parse(Some(raw)) {
        assert!(
            error.status.is_client_error(),
            "a query string got {}: {}",
            error.status,
            error.message
        );
    }
}
