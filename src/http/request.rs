//! What every subscriber request carries, parsed and checked once for all endpoints:
//! the token (header or `access_token`), the selection, the cursor, the snapshot limit.

use warp::http::HeaderMap;

use super::error::ApiError;
use crate::auth::{Authenticator, Identity, Scope};
use crate::journal::EventKind;
use crate::resources::Catalog;
use crate::selection::{OutOfScope, RowFilter, Selection, TopicPattern, MAX_ROW_FILTERS};

/// Longest query string accepted; a URL past this is abuse or a mistake.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Most entries in one `types`, `events`, `topics` or `ids` list.
pub const MAX_FILTER_ENTRIES: usize = 64;
/// Largest `max_txn_events`: a subscriber withholds up to this many events while it
/// waits to learn whether their transaction exceeds its bound, so this bounds its memory.
pub const MAX_TXN_EVENTS: usize = 10_000;

/// The query parameters each endpoint understands; any other is refused (a client
/// written for another API must not silently get everything).
pub const EVENTS_PARAMS: &[&str] = &[
    "types",
    "events",
    "topics",
    "filter",
    "ids",
    "last_event_id",
    "max_txn_events",
    "access_token",
];
pub const SNAPSHOT_PARAMS: &[&str] = &["types", "filter", "ids", "limit", "access_token"];
pub const WS_PARAMS: &[&str] = &["access_token"];
pub const STATS_PARAMS: &[&str] = &["interval", "access_token"];

/// The raw query parameters of a subscriber request.
#[derive(Debug, Default)]
pub struct Params {
    pub types: Option<String>,
    pub events: Option<String>,
    pub topics: Option<String>,
    /// Repeatable: every condition must hold.
    pub filter: Vec<String>,
    pub ids: Option<String>,
    pub last_event_id: Option<String>,
    pub access_token: Option<String>,
    pub limit: Option<String>,
    pub interval: Option<String>,
    pub max_txn_events: Option<String>,
}

impl Params {
    /// Every parameter any endpoint understands (for tests and fuzzing).
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let all = [EVENTS_PARAMS, SNAPSHOT_PARAMS, STATS_PARAMS].concat();
        Params::parse_for(raw, &all)
    }

    /// The parameters of an endpoint that understands `allowed`.
    pub fn parse_for(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let Some(raw) = raw else {
            return Ok(Params::default());
        };
        if raw.len() > MAX_QUERY_BYTES {
            return Err(ApiError::new(
                warp::http::StatusCode::URI_TOO_LONG,
                "query_too_long",
                format!("the query string is longer than {MAX_QUERY_BYTES} bytes"),
            ));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                "the query string is not valid URL encoding",
            )
        })?;
        let mut params = Params::default();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown query parameter {key:?}; this endpoint takes: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            let slot = match key.as_str() {
                "filter" => {
                    params.filter.push(value);
                    continue;
                }
                "types" => &mut params.types,
                "events" => &mut params.events,
                "topics" => &mut params.topics,
                "ids" => &mut params.ids,
                "last_event_id" => &mut params.last_event_id,
                "access_token" => &mut params.access_token,
                "limit" => &mut params.limit,
                "interval" => &mut params.interval,
                "max_txn_events" => &mut params.max_txn_events,
                _ => unreachable!("every allowed parameter has a slot"),
            };
            // Repeated list parameters add up: `types=a&types=b` is `types=a,b`.
            let is_list = matches!(key.as_str(), "types" | "events" | "topics" | "ids");
            *slot = Some(match slot.take() {
                Some(previous) if is_list => format!("{previous},{value}"),
                _ => value,
            });
        }
        Ok(params)
    }

    /// The selection's raw lists, as the query spells them.
    pub fn selection(&self) -> RawSelection<'_> {
        fn split(raw: &Option<String>) -> Option<Vec<&str>> {
            raw.as_deref().map(|r| commas(r).collect())
        }
        RawSelection {
            types: split(&self.types),
            events: split(&self.events),
            topics: split(&self.topics),
            filter: (!self.filter.is_empty())
                .then(|| self.filter.iter().map(String::as_str).collect()),
            ids: split(&self.ids),
            max_txn_events: self.max_txn_events.clone(),
        }
    }
}

/// A subscriber's selection as it arrived (a query's comma lists, a WebSocket
/// message's arrays), before any check.
#[derive(Default)]
pub struct RawSelection<'a> {
    pub types: Option<Vec<&'a str>>,
    pub events: Option<Vec<&'a str>>,
    pub topics: Option<Vec<&'a str>>,
    pub filter: Option<Vec<&'a str>>,
    pub ids: Option<Vec<&'a str>>,
    /// As the query spells it, or a WebSocket message's JSON value as text.
    pub max_txn_events: Option<String>,
}

/// The identity of the request's bearer token. A token signed by an identity provider's
/// key this service has not fetched yet waits for one bounded refetch of the key set, so a
/// key rotation costs the client a moment, never a refusal (a browser's EventSource does
/// not retry after a 401).
pub async fn authenticate(
    auth: &Authenticator,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Identity, ApiError> {
    let token = bearer_token(headers, params)?;
    Ok(auth.verify_fresh(&token).await?)
}

/// The bearer token: the `Authorization` header wins over `access_token`.
pub fn bearer_token(headers: &HeaderMap, params: &Params) -> Result<String, ApiError> {
    let from_header = match headers.get("authorization") {
        Some(value) => {
            let value = value.to_str().unwrap_or_default();
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.trim().to_owned())
                }
                _ => {
                    return Err(ApiError::new(
                        warp::http::StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "the Authorization header must be `Bearer <token>`",
                    ))
                }
            }
        }
        None => None,
    };
    let token = from_header
        .or_else(|| params.access_token.clone())
        .filter(|t| !t.is_empty());
    Ok(token.ok_or(crate::auth::AuthError::Missing)?)
}

/// The items of a query parameter's comma-separated list (`types=ticket,agent`).
pub fn commas(raw: &str) -> std::str::Split<'_, char> {
    raw.split(',')
}

/// A filter list, from a query parameter ([`commas`]) or a WebSocket message's array:
/// trimmed, blanks and repeats dropped, bounded. Empty means "no filter" (all).
fn list<'a>(
    raw: Option<impl IntoIterator<Item = &'a str>>,
    what: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    // (Empty lists mean "no filter", as they always have: `types=` is every type.)
    let Some(raw) = raw else { return Ok(None) };
    let mut items: Vec<String> = Vec::new();
    for item in raw.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        // PostgreSQL text cannot hold NUL: no type, id or topic has one.
        if item.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`{what}` entries cannot contain NUL characters"),
            ));
        }
        if !items.iter().any(|known| known == item) {
            if items.len() == MAX_FILTER_ENTRIES {
                return Err(ApiError::bad_request(
                    "too_many_filters",
                    format!("`{what}` lists more than {MAX_FILTER_ENTRIES} entries"),
                ));
            }
            items.push(item.to_owned());
        }
    }
    Ok(if items.is_empty() { None } else { Some(items) })
}

/// Resource types, each checked against the watched tables.
#[cfg(test)]
pub fn resource_types<'a>(
    raw: Option<impl IntoIterator<Item = &'a str>>,
    known: &[String],
) -> Result<Option<Vec<String>>, ApiError> {
    known_only(list(raw, "types")?, known)
}

fn known_only(
    types: Option<Vec<String>>,
    known: &[String],
) -> Result<Option<Vec<String>>, ApiError> {
    // Names no other type: which tables are watched is none of a tenant's business.
    if let Some(unknown) = types.iter().flatten().find(|t| !known.contains(t)) {
        return Err(ApiError::bad_request(
            "unknown_resource_type",
            format!("unknown resource type {unknown:?}"),
        ));
    }
    Ok(types)
}

pub fn event_kinds<'a>(
    raw: Option<impl IntoIterator<Item = &'a str>>,
) -> Result<Option<Vec<EventKind>>, ApiError> {
    let Some(events) = list(raw, "events")? else {
        return Ok(None);
    };
    events
        .iter()
        .map(|e| {
            EventKind::parse(e).ok_or_else(|| {
                ApiError::bad_request(
                    "unknown_event",
                    format!("unknown event {e:?}; events are: created, updated, deleted"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The subscriber's selection, whichever transport it came in: the one validation
/// SSE's query, the snapshot's and WebSocket's `subscribe` share. Resource types are
/// checked against the watched types, after everything that needs no round trip; then
/// the request is taken within its token's `scope` (403 outside it).
pub async fn selection(
    catalog: &Catalog,
    raw: RawSelection<'_>,
    scope: &Scope,
) -> Result<Selection, ApiError> {
    let events = event_kinds(raw.events)?;
    let topics = list(raw.topics, "topics")?
        .map(|topics| {
            topics
                .iter()
                .map(|t| TopicPattern::parse(t))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|message| ApiError::bad_request("invalid_topic", message))?;
    let rows = row_filters(raw.filter.unwrap_or_default())?;
    let ids = list(raw.ids, "ids")?;
    let max_txn_events = max_txn_events(raw.max_txn_events.as_deref())?;
    let types = list(raw.types, "types")?;
    let types = if types.is_some() {
        known_only(types, &catalog.types().await)?
    } else {
        None
    };
    let requested = Selection {
        types,
        events,
        topics,
        rows,
        ids,
        max_txn_events,
        ..Selection::default()
    };
    requested
        .within(scope.bounds())
        .map_err(|refused| match refused {
            OutOfScope::Forbidden(message) => ApiError::forbidden(message),
            OutOfScope::OmittedColumn(message) => ApiError::bad_request("invalid_filter", message),
        })
}

/// `max_txn_events`: a whole number from 1 to [`MAX_TXN_EVENTS`], digits only.
pub fn max_txn_events(raw: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    raw.parse::<usize>()
        .ok()
        .filter(|n| raw.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_TXN_EVENTS).contains(n))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_max_txn_events",
                format!("`max_txn_events` must be a whole number from 1 to {MAX_TXN_EVENTS}"),
            )
        })
}

pub fn row_filters(raw: Vec<&str>) -> Result<Vec<crate::selection::RowFilter>, ApiError> {
    if raw.len() > MAX_ROW_FILTERS {
        return Err(ApiError::bad_request(
            "too_many_filters",
            format!("at most {MAX_ROW_FILTERS} `filter` conditions"),
        ));
    }
    raw.into_iter()
        .map(RowFilter::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ApiError::bad_request("invalid_filter", message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_trimmed_deduplicated_and_checked() {
        let known = vec!["agent".to_owned(), "ticket".to_owned()];
        assert_eq!(
            resource_types(Some(commas(" ticket,,agent,ticket ")), &known).unwrap(),
            Some(vec!["ticket".into(), "agent".into()])
        );
        assert_eq!(resource_types(Some(commas("")), &known).unwrap(), None);
        assert_eq!(
            resource_types(Some(commas("ticket,invoice")), &known)
                .unwrap_err()
                .code,
            "unknown_resource_type"
        );
        assert_eq!(
            event_kinds(Some(commas("created,deleted"))).unwrap(),
            Some(vec![EventKind::Created, EventKind::Deleted])
        );
        assert_eq!(
            event_kinds(Some(commas("created,exploded")))
                .unwrap_err()
                .code,
            "unknown_event"
        );
        assert_eq!(
            list(Some(["a\0b"]), "ids").unwrap_err().code,
            "invalid_query"
        );
        let many = (0..65)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            event_kinds(Some(commas(&many))).unwrap_err().code,
            "too_many_filters"
        );
    }

    #[test]
    fn arrays_get_the_same_checks_as_comma_lists() {
        let known = vec!["agent".to_owned(), "ticket".to_owned()];
        let array = [
            " ticket".to_owned(),
            String::new(),
            "agent".into(),
            "ticket".into(),
        ];
        assert_eq!(
            resource_types(Some(array.iter().map(String::as_str)), &known).unwrap(),
            resource_types(Some(commas(" ticket,,agent,ticket")), &known).unwrap(),
        );
        assert_eq!(
            resource_types(Some(std::iter::empty()), &known).unwrap(),
            None
        );
        assert_eq!(
            event_kinds(Some(["updated", "exploded"])).unwrap_err().code,
            "unknown_event"
        );
    }

    #[test]
    fn max_txn_events_is_a_bounded_whole_number() {
        assert_eq!(max_txn_events(None).unwrap(), None);
        assert_eq!(max_txn_events(Some("1")).unwrap(), Some(1));
        assert_eq!(max_txn_events(Some("10000")).unwrap(), Some(MAX_TXN_EVENTS));
        for bad in [
            "",
            "0",
            "-1",
            "+5",
            "1.0",
            "1e3",
            " 5",
            "10001",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(
                max_txn_events(Some(bad)).unwrap_err().code,
                "invalid_max_txn_events",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn query_strings_are_bounded_and_repeated_lists_merge() {
        let params = Params::parse(Some(
            "types=ticket&types=agent&events=created&filter=a=eq.1&filter=b=is.null",
        ))
        .unwrap();
        assert_eq!(params.types.as_deref(), Some("ticket,agent"));
        assert_eq!(params.events.as_deref(), Some("created"));
        assert_eq!(params.filter, ["a=eq.1", "b=is.null"]);
        assert_eq!(
            Params::parse(Some("types=ticket&x=1")).unwrap_err().code,
            "unknown_parameter"
        );
        assert_eq!(
            Params::parse_for(Some("limit=5"), EVENTS_PARAMS)
                .unwrap_err()
                .code,
            "unknown_parameter"
        );
        let long = format!("types={}", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(
            Params::parse(Some(&long)).unwrap_err().code,
            "query_too_long"
        );
    }
}
