//! The Grafana dashboard in docs/grafana/ queries only series the service exports, so a
//! renamed or removed metric fails here instead of leaving an empty panel behind.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::helpers::*;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/changecast.json");

/// PromQL words that are written like a metric name but are operators or modifiers. Function
/// and aggregation names need no list: they are always followed by `(` (or by `by`/`without`
/// and then `(`), which is how [`metric_names`] tells them apart.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Keywords whose parenthesised list that follows holds label names, not metrics.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects.
///
/// A small scanner rather than a PromQL parser, enough for dashboard queries:
/// - quoted strings (label values, regular expressions) are skipped, quotes included;
/// - `{…}` holds label matchers and `[…]` range durations or subqueries' steps: neither holds
///   a metric name, so both are skipped whole (strings inside them handled as above);
/// - `$name` and `${name}` are Grafana variables (`$job`, `$__rate_interval`), skipped;
/// - a token starting with a digit or `.` is a number or duration (`0.99`, `5m`, `1e3`);
/// - an identifier (`[a-zA-Z_:][a-zA-Z0-9_:]*`) followed, after optional blanks, by `(` is a
///   function or aggregation, and so is one followed by `by` or `without`; `by`, `without`, `on`, `ignoring`, `group_left` and
///   `group_right` are followed by a list of label names, skipped up to its `)`; the other
///   [`KEYWORDS`] are operators; any other identifier is a metric name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_string = |i: usize| -> usize {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' && quote != '`' {
                2
            } else {
                1
            };
        }
        j + 1
    };
    let skip_until = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            i = if matches!(chars[i], '"' | '\'' | '`') {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_until(i + 1, '}');
        } else if c == '[' {
            i = skip_until(i + 1, ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_until(i + 1, '}');
            } else {
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens_list = chars.get(next) == Some(&'(');
            let next_word: String = chars[next..].iter().take_while(|&&c| is_word(c)).collect();
            let aggregates = matches!(next_word.to_ascii_lowercase().as_str(), "by" | "without");
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if opens_list {
                    i = skip_until(next + 1, ')');
                }
            } else if !opens_list && !aggregates && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every string under a key `key`, anywhere in `value` (panels nest in collapsed rows).
fn strings_under(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => found.push(s.clone()),
                    _ => strings_under(v, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, found)),
        _ => {}
    }
}

#[test]
fn the_metric_name_scanner_skips_functions_labels_strings_and_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (le, transport) (rate(a_bucket{job=~"$job",x="b{c}"}[$__rate_interval] offset 5m))) / on(instance) group_left(task) (b:recorded or sum without(le) (c_total[1h:5m]) > bool 1e3)"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["a_bucket", "b:recorded", "c_total"].map(String::from))
    );
    assert_eq!(
        metric_names("sum(changecast_subscribers) + ${DS} * changecast_replays_running"),
        BTreeSet::from(["changecast_replays_running", "changecast_subscribers"].map(String::from))
    );
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(DASHBOARD).expect("docs/grafana/changecast.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["title"], "changecast");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");

    let mut exprs = Vec::new();
    strings_under(&dashboard["panels"], "expr", &mut exprs);
    let mut referenced: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // The variables' `label_values(metric{…}, label)`: the metric is the first argument.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = variable["query"]["query"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        let metric = inner.split(['{', ',']).next().unwrap().trim();
        referenced.insert(metric.to_string());
    }
    assert!(
        exprs.len() >= 10 && referenced.contains("changecast_delivery_latency_seconds_bucket"),
        "the scan found the panels' queries: {referenced:?}"
    );

    let app = spawn_app().await;
    let (_, body) = app.get("/metrics", None).await;
    let exposition = body.as_str().expect("/metrics is text");
    let families: HashMap<&str, &str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();

    let missing: Vec<&String> = referenced
        .iter()
        .filter(|name| {
            let histogram_part = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = name.strip_suffix(suffix)?;
                matches!(families.get(family), Some(&"histogram")).then_some(family)
            });
            !families.contains_key(name.as_str()) && histogram_part.is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series /metrics does not export: {missing:?}\nexported: {families:?}"
    );
}
