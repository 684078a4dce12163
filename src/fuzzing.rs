//! Entry points for the fuzz targets under `fuzz/` (cargo-fuzz), for what the service
//! parses that is private to it. Not an API: hidden from the docs, may change any time.

use crate::http::request::{self, Params};
use crate::selection::{RowFilter, Selection, TopicPattern};

/// Parses a subscriber request's query string, as every endpoint does first, then its
/// selection (row filters, topics, events, ids) and evaluates the row filters against a
/// few rows; every error must be a client error (4xx), never a server error or a panic.
pub fn parse_query(raw: &str) {
    let params = match Params::parse(Some(raw)) {
        Ok(params) => params,
        Err(error) => return assert_client_error(&error),
    };
    check_selection(params.selection());
}

/// Parses one WebSocket text frame as the session does, and a `subscribe`'s selection
/// as far as it needs no database: refused with an `error` code, never a panic.
pub fn parse_ws_message(text: &str) {
    match crate::http::ws::parse_client_message(text) {
        Ok(crate::http::ws::ClientMessage::Subscribe(subscribe)) => {
            check_selection(subscribe.selection())
        }
        Ok(_) => {}
        Err(error) => assert!(!error.code.is_empty() && !error.message.is_empty()),
    }
}

/// The parts of a selection checked without the database, then its row filters
/// evaluated against a few rows.
fn check_selection(selection: request::RawSelection<'_>) {
    if let Err(error) = request::event_kinds(selection.events.clone()) {
        assert_client_error(&error);
    }
    let rows = match request::row_filters(selection.filter.clone().unwrap_or_default()) {
        Ok(rows) => rows,
        Err(error) => return assert_client_error(&error),
    };
    let topics: Vec<TopicPattern> = selection
        .topics
        .iter()
        .flatten()
        .filter_map(|t| TopicPattern::parse(t).ok())
        .collect();
    for topic in &topics {
        topic.matches("config_update");
    }
    let selection = Selection {
        rows: rows
            .into_iter()
            .filter(|r: &RowFilter| !r.column.is_empty())
            .collect(),
        ..Selection::default()
    };
    for row in [
        serde_json::json!({"n": 1, "state": "open", "x": null}),
        serde_json::json!({"n": -1.5e300, "state": "", "x": [1, {"a": "b"}], "b": true}),
    ] {
        let row = crate::selection::Row::parse(&row.to_string()).expect("an object");
        selection.includes_row("ticket", &row, "42");
    }
}

fn assert_client_error(error: &crate::http::ApiError) {
    assert!(
        error.status.is_client_error(),
        "a query string got {}: {}",
        error.status,
        error.message
    );
}
