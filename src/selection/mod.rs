//! What one subscriber receives (API.md §5, §8, §9): resource types, event kinds,
//! topics, row filters and ids — and the view transitions row filters imply. The one
//! implementation, used live, on replay and for snapshots alike, so a client's copy of
//! its view stays exact whichever way a row reached it.
//!
//! A token's scope (API.md §3c) reaches a subscriber here too, as [`Bounds`]: the
//! effective selection is the request within them ([`Selection::within`]), and the
//! scope's per-type row filters and omitted columns ([`TypeRules`]) take part in every
//! decision exactly as the request's own filters do.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::journal::{Change, Entry, EventKind, ResyncReason};
pub use crate::row::{Comparable, Row};
use crate::wire::{without_columns, Delivery};

mod scope;
pub use scope::{Bounds, OmitSet, OutOfScope, TypeRules};

/// Most `filter` conditions in one subscription.
pub const MAX_ROW_FILTERS: usize = 16;
/// Most values in one `in.(...)` list.
pub const MAX_IN_VALUES: usize = 100;
/// Longest topic (and column name).
const MAX_NAME_BYTES: usize = 63;

/// A subscriber's selection; `None` lists mean "all". With neither `types` nor `topics`
/// it gets every resource type and every topic; naming one selects only what it names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub types: Option<Vec<String>>,
    pub events: Option<Vec<EventKind>>,
    pub topics: Option<Vec<TopicPattern>>,
    /// All must hold (row changes only).
    pub rows: Vec<RowFilter>,
    /// Only these resources, by `resource_id` (row changes only).
    pub ids: Option<Vec<String>>,
    /// What the token's scope adds per resource type: filters that hold beside `rows`,
    /// columns left out (empty without a scope).
    pub per_type: BTreeMap<String, TypeRules>,
    /// A transaction bringing more events than this (of this selection) is replaced by
    /// one `resync` (`bulk_change`); `None`: every event is delivered (API.md §5).
    pub max_txn_events: Option<usize>,
}

/// What becomes of one journal entry for one subscriber.
pub enum Decision {
    Skip,
    Send(Delivery),
    /// A marker of a followed type ([`Entry::Resync`]): the subscriber resyncs for
    /// `reason`; `cursor` is the marker's own.
    Resync {
        reason: ResyncReason,
        cursor: String,
    },
}

impl Selection {
    /// Whether row changes of `resource_type` (and its resync markers) concern this
    /// subscriber at all.
    pub fn follows_type(&self, resource_type: &str) -> bool {
        match (&self.types, &self.topics) {
            (Some(types), _) => types.iter().any(|t| t == resource_type),
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    pub fn follows_topic(&self, topic: &str) -> bool {
        match (&self.topics, &self.types) {
            (Some(patterns), _) => patterns.iter().any(|p| p.matches(topic)),
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    /// The resource types a journal read may be cut to (`None`: all); no type at all
    /// when only topics are followed.
    pub fn journal_types(&self) -> Option<Vec<String>> {
        match (&self.types, &self.topics) {
            (None, Some(_)) => Some(Vec::new()),
            (types, _) => types.clone(),
        }
    }

    pub fn wants_app_events(&self) -> bool {
        match &self.topics {
            Some(patterns) => !patterns.is_empty(),
            None => self.types.is_none(),
        }
    }

    pub fn decide(&self, entry: &Entry) -> Decision {
        match entry {
            Entry::Change(change) => match self.change_as(change) {
                Some((as_event, omit)) => Decision::Send(Delivery::Change {
                    change: change.clone(),
                    as_event,
                    omit: omit.cloned(),
                }),
                None => Decision::Skip,
            },
            Entry::AppEvent(event) if self.follows_topic(&event.topic) => {
                Decision::Send(Delivery::AppEvent(event.clone()))
            }
            Entry::AppEvent(_) => Decision::Skip,
            // Every row of the type is concerned: `events`, filters and ids do not apply.
            Entry::Resync(marker) if self.follows_type(&marker.resource_type) => Decision::Resync {
                reason: marker.reason,
                cursor: marker.cursor_text.clone(),
            },
            Entry::Resync(_) => Decision::Skip,
        }
    }

    /// The kind `change` reaches this subscriber as, if at all, and the columns left out
    /// of it: an `updated` row that enters the view is `created`, one that leaves it
    /// `deleted`; an `updated` of only columns left out is not sent.
    fn change_as(&self, change: &Change) -> Option<(EventKind, Option<&Arc<OmitSet>>)> {
        if !self.follows_type(&change.resource_type) {
            return None;
        }
        if let Some(ids) = &self.ids {
            if !ids.contains(&change.resource_id) {
                return None;
            }
        }
        let rules = self.per_type.get(&change.resource_type);
        let scope_filters = rules.map_or(&[][..], |rules| &rules.filters);
        let as_event = if self.rows.is_empty() && scope_filters.is_empty() {
            change.event
        } else {
            let values = change.values();
            let now = self.view_holds(scope_filters, |column| values.new.get(column));
            match change.event {
                EventKind::Updated => {
                    // Before the change: the old value where it changed, else the new one.
                    let before = self.view_holds(scope_filters, |column| {
                        values.old.get(column).or_else(|| values.new.get(column))
                    });
                    match (before, now) {
                        (true, true) => EventKind::Updated,
                        (false, true) => EventKind::Created,
                        (true, false) => EventKind::Deleted,
                        (false, false) => return None,
                    }
                }
                kind => {
                    if !now {
                        return None;
                    }
                    kind
                }
            }
        };
        let omit = rules.and_then(|rules| rules.omit.as_ref());
        if let (EventKind::Updated, Some(omit)) = (as_event, omit) {
            // Nothing this subscriber may see has moved (a row without known changed
            // columns is sent, as it would be without a scope).
            let mut changed = change.values().old.columns().peekable();
            if changed.peek().is_some() && changed.all(|column| omit.contains(column)) {
                return None;
            }
        }
        self.events
            .as_ref()
            .is_none_or(|events| events.contains(&as_event))
            .then_some((as_event, omit))
    }

    /// Whether the request's row filters and `scope_filters` all hold.
    fn view_holds<'a>(
        &self,
        scope_filters: &[RowFilter],
        value_of: impl Fn(&str) -> Option<&'a Comparable>,
    ) -> bool {
        self.rows
            .iter()
            .chain(scope_filters)
            .all(|filter| filter.op.holds(value_of(&filter.column)))
    }

    /// Whether a row change of `resource_id` may concern this subscriber as far as `ids`
    /// tell (`None`: unknown, so it may).
    pub fn may_include_id(&self, resource_id: Option<&str>) -> bool {
        match (&self.ids, resource_id) {
            (Some(ids), Some(id)) => ids.iter().any(|i| i == id),
            _ => true,
        }
    }

    /// Whether a snapshot row of `resource_type` is in this subscriber's view.
    pub fn includes_row(&self, resource_type: &str, row: &Row, resource_id: &str) -> bool {
        let scope_filters = self
            .per_type
            .get(resource_type)
            .map_or(&[][..], |rules| &rules.filters);
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == resource_id))
            && self.view_holds(scope_filters, |column| row.get(column))
    }

    /// A snapshot row (its JSON) as this subscriber sees it: `None` outside its view,
    /// else without the columns its scope omits.
    pub fn snapshot_row(
        &self,
        resource_type: &str,
        json: String,
        resource_id: Option<&str>,
    ) -> Option<String> {
        let rules = self.per_type.get(resource_type);
        if !self.rows.is_empty() || rules.is_some_and(|rules| !rules.filters.is_empty()) {
            let values = Row::parse(&json).unwrap_or_default();
            if !self.includes_row(resource_type, &values, resource_id.unwrap_or_default()) {
                return None;
            }
        }
        match rules
            .and_then(|rules| rules.omit.as_ref())
            .and_then(|omit| without_columns(&json, omit))
        {
            Some(without) => Some(String::from(Box::<str>::from(without))),
            None => Some(json),
        }
    }
}

/// A `topics` entry: an exact topic, or a prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    Exact(String),
    Prefix(String),
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
        // A prefix may be empty (`*`: every topic); a name starts with a letter.
        let valid_start = match name.bytes().next() {
            Some(first) => first.is_ascii_lowercase(),
            None => prefix,
        };
        if !valid_chars || !valid_start || name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "invalid topic {text:?}: a topic matches [a-z][a-z0-9_.:-]* (at most \
                 {MAX_NAME_BYTES} characters), a prefix ends in `*`"
            ));
        }
        Ok(if prefix {
            TopicPattern::Prefix(name.to_owned())
        } else {
            TopicPattern::Exact(name.to_owned())
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(name) => name == topic,
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }

    /// The pattern matching exactly the topics both match, if any does.
    pub fn meet(&self, other: &TopicPattern) -> Option<TopicPattern> {
        use TopicPattern::*;
        match (self, other) {
            (Exact(a), b) | (b, Exact(a)) => b.matches(a).then(|| Exact(a.clone())),
            (Prefix(a), Prefix(b)) if a.starts_with(b.as_str()) => Some(Prefix(a.clone())),
            (Prefix(a), Prefix(b)) if b.starts_with(a.as_str()) => Some(Prefix(b.clone())),
            (Prefix(_), Prefix(_)) => None,
        }
    }
}

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicPattern::Exact(name) => f.write_str(name),
            TopicPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One `filter=<column>=<op>.<value>` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct RowFilter {
    pub column: String,
    pub op: Op,
    /// As the client wrote it (echoed in `subscription_confirmed`).
    pub text: String,
}

/// Comparisons are on the row's JSON value: numbers as numbers (when the operand is a
/// number too), everything else as text. A null or missing column satisfies `is.null`
/// only, as in SQL.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Eq(Operand),
    Neq(Operand),
    Lt(Operand),
    Lte(Operand),
    Gt(Operand),
    Gte(Operand),
    In(Vec<Operand>),
    IsNull,
}

/// A filter's value, with its reading as a number worked out once, when the filter is
/// parsed, rather than for every row.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    text: String,
    number: Option<f64>,
}

impl Operand {
    fn new(text: String) -> Operand {
        let number = text.trim().parse::<f64>().ok();
        Operand { text, number }
    }
}

impl RowFilter {
    pub fn parse(text: &str) -> Result<RowFilter, String> {
        let invalid = |why: &str| format!("invalid filter {text:?}: {why}");
        let (column, condition) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected <column>=<op>.<value>, e.g. state=eq.open"))?;
        if column.is_empty() || column.len() > MAX_NAME_BYTES {
            return Err(invalid(&format!(
                "the column name must have 1 to {MAX_NAME_BYTES} characters"
            )));
        }
        let (op, operand) = condition
            .split_once('.')
            .ok_or_else(|| invalid("expected <op>.<value> after the column"))?;
        let operand = Operand::new(operand.to_owned());
        let op = match op {
            "eq" => Op::Eq(operand),
            "neq" => Op::Neq(operand),
            "lt" => Op::Lt(operand),
            "lte" => Op::Lte(operand),
            "gt" => Op::Gt(operand),
            "gte" => Op::Gte(operand),
            "in" => Op::In(
                parse_in_list(&operand.text)
                    .map_err(|why| invalid(&why))?
                    .into_iter()
                    .map(Operand::new)
                    .collect(),
            ),
            "is" if operand.text == "null" => Op::IsNull,
            "is" => return Err(invalid("`is` takes only `null` (is.null)")),
            other => {
                return Err(invalid(&format!(
                    "unknown operator {other:?}; operators are eq, neq, lt, lte, gt, gte, in, is"
                )))
            }
        };
        Ok(RowFilter {
            column: column.to_owned(),
            op,
            text: text.to_owned(),
        })
    }
}

/// `(a,b,"c,d")`: comma-separated, values with commas, parentheses or quotes in double
/// quotes (`\"` and `\\` inside).
fn parse_in_list(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or("`in` takes a list in parentheses: in.(a,b,c)")?;
    let mut values = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err("a quoted value must be followed by `,` or `)`".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' || c == '(' || c == ')' {
                    return Err(format!("unexpected {c:?} in an unquoted value"));
                }
                value.push(c);
                chars.next();
            }
        }
        values.push(value);
        if values.len() > MAX_IN_VALUES {
            return Err(format!("`in` takes at most {MAX_IN_VALUES} values"));
        }
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(_) => unreachable!("values end at a comma or the end"),
        }
    }
    Ok(values)
}

impl Op {
    fn holds(&self, value: Option<&Comparable>) -> bool {
        let value = match value {
            None | Some(Comparable::Null) => return matches!(self, Op::IsNull),
            Some(value) => value,
        };
        use std::cmp::Ordering::*;
        match self {
            Op::IsNull => false,
            Op::Eq(operand) => value.compare(operand) == Equal,
            Op::Neq(operand) => value.compare(operand) != Equal,
            Op::Lt(operand) => value.compare(operand) == Less,
            Op::Lte(operand) => value.compare(operand) != Greater,
            Op::Gt(operand) => value.compare(operand) == Greater,
            Op::Gte(operand) => value.compare(operand) != Less,
            Op::In(operands) => operands.iter().any(|o| value.compare(o) == Equal),
        }
    }
}

/// How a value orders against a filter's operand: as numbers when both are numbers,
/// else as text.
impl Comparable {
    fn compare(&self, operand: &Operand) -> std::cmp::Ordering {
        let text = match self {
            Comparable::Number(number, text) => {
                if let Some(order) = operand.number.and_then(|o| number.partial_cmp(&o)) {
                    return order;
                }
                text.as_str()
            }
            Comparable::Text(text) => text.as_str(),
            // `Op::holds` answers for null before comparing.
            Comparable::Null => "null",
        };
        text.cmp(operand.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn holds(filter: &str, value: Value) -> bool {
        let value = Comparable::decode(&value.to_string());
        RowFilter::parse(filter).unwrap().op.holds(Some(&value))
    }

    /// A row as the journal or a snapshot has it.
    pub(super) fn row_of(values: &Map<String, Value>) -> Row {
        Row::parse(&Value::Object(values.clone()).to_string()).expect("an object")
    }

    #[test]
    fn operators_compare_numbers_as_numbers_and_the_rest_as_text() {
        assert!(holds("n=eq.5", json!(5)));
        assert!(holds("n=eq.5", json!(5.0)));
        assert!(holds("n=gt.9", json!(10)));
        assert!(!holds("n=gt.9", json!("10")), "a string compares as text");
        assert!(holds("n=lte.10", json!(10)));
        assert!(holds("n=lt.10.5", json!(10)));
        assert!(holds("n=gte.-1", json!(0)));
        assert!(holds("s=eq.open", json!("open")));
        assert!(holds("s=neq.open", json!("closed")));
        assert!(holds("s=in.(open,\"a,b\")", json!("a,b")));
        assert!(!holds("s=in.(open,closed)", json!("done")));
        assert!(holds("b=eq.true", json!(true)));
        assert!(holds("s=eq.", json!("")));
        let null = RowFilter::parse("s=is.null").unwrap().op;
        assert!(null.holds(None) && null.holds(Some(&Comparable::Null)));
        assert!(!null.holds(Some(&Comparable::Text(String::new()))));
        let neq = RowFilter::parse("s=neq.open").unwrap().op;
        assert!(!neq.holds(None), "null satisfies nothing but is.null");
    }

    /// Comparisons read each value as the straightforward rule does: the value as a
    /// `serde_json::Value`, against the operand as written, for every operator.
    #[test]
    fn decoded_columns_compare_as_json_values_do() {
        fn reference(value: &Value, operand: &str) -> std::cmp::Ordering {
            if let (Value::Number(number), Ok(operand)) = (value, operand.trim().parse::<f64>()) {
                if let Some(order) = number.as_f64().and_then(|n| n.partial_cmp(&operand)) {
                    return order;
                }
            }
            match value {
                Value::String(text) => text.as_str().cmp(operand),
                other => other.to_string().as_str().cmp(operand),
            }
        }
        let values = [
            json!(5),
            json!(-5),
            json!(0.5),
            json!(1e300),
            json!(18446744073709551615u64),
            json!("5"),
            json!("open"),
            json!(""),
            json!(true),
            json!(false),
            json!({"b": 1, "a": [1, 2.5, "x"]}),
            json!([1, {"k": null}]),
            json!({}),
        ];
        let operands = [
            "5",
            " 5 ",
            "-5",
            "0.5",
            "1e300",
            "1e400",
            "inf",
            "NaN",
            "open",
            "",
            "true",
            "{\"a\":[1,2.5,\"x\"],\"b\":1}",
            "[1,{\"k\":null}]",
            "{}",
            "~",
        ];
        use std::cmp::Ordering::*;
        for value in &values {
            // As the journal prints it: jsonb's own spacing and key order.
            let comparable = Comparable::decode(&serde_json::to_string_pretty(value).unwrap());
            for operand in operands {
                let order = reference(value, operand);
                for (op, expected) in [
                    ("eq", order == Equal),
                    ("neq", order != Equal),
                    ("lt", order == Less),
                    ("lte", order != Greater),
                    ("gt", order == Greater),
                    ("gte", order != Less),
                ] {
                    let filter = RowFilter::parse(&format!("c={op}.{operand}")).unwrap();
                    assert_eq!(
                        filter.op.holds(Some(&comparable)),
                        expected,
                        "{value} {op} {operand:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn numbers_beyond_f64_compare_as_infinities_and_print_as_written() {
        let huge = format!("1{}", "0".repeat(400));
        let row = Row::parse(&format!(
            "{{\"n\": {huge}, \"m\": -1e400, \"o\": {{\"x\": 1e400}}, \"s\": \"open\"}}"
        ))
        .expect("a row with huge numbers still reads");
        let holds = |filter: &str| {
            let filter = RowFilter::parse(filter).unwrap();
            filter.op.holds(row.get(&filter.column))
        };
        assert!(holds("n=gt.1e300") && holds("m=lt.-1e300") && holds("s=eq.open"));
        assert!(holds(&format!("n=eq.{huge}")), "as written, as text too");
        assert!(!holds("n=lt.0") && !holds("n=is.null"));
        assert!(
            holds("o=eq.{\"x\": 1e400}"),
            "an object holding one: its JSON as is"
        );
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for bad in [
            "state",
            "state=open",
            "=eq.open",
            "state=like.open",
            "state=is.true",
            "state=in.open",
            "state=in.(a,\"b)",
            "state=in.(a\"b)",
        ] {
            assert!(RowFilter::parse(bad).is_err(), "{bad} should be refused");
        }
        let many = format!("s=in.({})", vec!["x"; MAX_IN_VALUES + 1].join(","));
        assert!(RowFilter::parse(&many).is_err());
    }

    #[test]
    fn topics_are_exact_or_prefixes() {
        let exact = TopicPattern::parse("config_update").unwrap();
        assert!(exact.matches("config_update") && !exact.matches("config_update2"));
        let prefix = TopicPattern::parse("agent:*").unwrap();
        assert!(prefix.matches("agent:stats") && !prefix.matches("agents"));
        assert!(TopicPattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "Config", "1abc", "a b", "a*b", "a**"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    /// A client that applies what it receives (`created` adds, `updated` replaces,
    /// `deleted` removes) holds exactly the rows in its view after every change, for
    /// random rows, filters and changes (seeded, reproducible).
    #[test]
    fn a_client_copy_of_a_filtered_view_stays_exact() {
        use crate::journal::Change;
        use crate::wire::Delivery;
        use std::collections::BTreeMap;
        use std::sync::Arc;

        let filters: [&[&str]; 6] = [
            &["state=eq.open"],
            &["state=in.(open,review)"],
            &["n=gt.2"],
            &["state=is.null"],
            &["n=lte.1", "state=neq.closed"],
            &["state=neq.open"],
        ];
        let states = [json!("open"), json!("review"), json!("closed"), Value::Null];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for filter in filters {
            let selection = Selection {
                rows: filter
                    .iter()
                    .map(|f| RowFilter::parse(f).unwrap())
                    .collect(),
                ..Selection::default()
            };
            let mut table: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            let mut copy: BTreeMap<String, Value> = BTreeMap::new();
            for step in 0..2000 {
                let id = format!("r{}", next(12));
                let mut row = Map::new();
                row.insert("id".into(), json!(id));
                row.insert("state".into(), states[next(4) as usize].clone());
                row.insert("n".into(), json!(next(5)));
                let change = match (table.get(&id).cloned(), next(4)) {
                    (None, _) => {
                        table.insert(id.clone(), row.clone());
                        Change::for_test(
                            EventKind::Created,
                            &id,
                            &Value::Object(row).to_string(),
                            None,
                        )
                    }
                    (Some(previous), 0) => {
                        table.remove(&id);
                        Change::for_test(
                            EventKind::Deleted,
                            &id,
                            &Value::Object(previous).to_string(),
                            None,
                        )
                    }
                    (Some(previous), _) => {
                        let old: Map<String, Value> = previous
                            .iter()
                            .filter(|(k, v)| row.get(*k) != Some(*v))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        if old.is_empty() {
                            continue; // the trigger journals nothing
                        }
                        table.insert(id.clone(), row.clone());
                        Change::for_test(
                            EventKind::Updated,
                            &id,
                            &Value::Object(row).to_string(),
                            Some(&Value::Object(old).to_string()),
                        )
                    }
                };
                let entry = Entry::Change(Arc::new(change));
                if let Decision::Send(Delivery::Change {
                    change, as_event, ..
                }) = selection.decide(&entry)
                {
                    let resource: Value = serde_json::from_str(change.resource.get()).unwrap();
                    let had = match as_event {
                        EventKind::Created => copy.insert(id.clone(), resource).is_some(),
                        EventKind::Updated => copy.insert(id.clone(), resource).is_none(),
                        EventKind::Deleted => copy.remove(&id).is_none(),
                    };
                    assert!(
                        !had,
                        "{filter:?} step {step}: {as_event:?} of {id} did not fit the copy"
                    );
                }
                let view: BTreeMap<String, Value> = table
                    .iter()
                    .filter(|(id, row)| selection.includes_row("ticket", &row_of(row), id))
                    .map(|(id, row)| (id.clone(), Value::Object(row.clone())))
                    .collect();
                assert_eq!(copy, view, "{filter:?} after step {step}");
            }
        }
    }

    #[test]
    fn types_and_topics_select_only_what_they_name() {
        let all = Selection::default();
        assert!(all.follows_type("ticket") && all.follows_topic("x"));
        let types = Selection {
            types: Some(vec!["ticket".into()]),
            ..Selection::default()
        };
        assert!(types.follows_type("ticket") && !types.follows_topic("x"));
        assert!(!types.wants_app_events());
        let topics = Selection {
            topics: Some(vec![TopicPattern::parse("x").unwrap()]),
            ..Selection::default()
        };
        assert!(!topics.follows_type("ticket") && topics.follows_topic("x"));
        assert_eq!(topics.journal_types(), Some(vec![]));
    }

    /// Property tests: what a selection decides about an entry, against the other ways
    /// the same selection is read — the view a snapshot shows (row filters), the plain
    /// restrictions (types, ids, events), and the coarse cuts that decide whether an
    /// entry is read at all (a replay's `journal_types`, a large entry's marker test).
    mod properties {
        use super::*;
        use crate::journal::{AppEvent, Change, Cursor, Frames};
        use crate::tenant::TenantId;
        use proptest::prelude::*;
        use serde_json::json;
        use std::sync::Arc;

        const TYPES: [&str; 2] = ["ticket", "agent"];
        const IDS: [&str; 4] = ["r0", "r1", "r2", "r3"];
        const PATTERNS: [&str; 4] = ["x", "agent:*", "*", "config"];
        const TOPICS: [&str; 4] = ["x", "agent:stats", "agent", "config"];
        const FILTERS: [&str; 7] = [
            "state=eq.open",
            "state=neq.open",
            "state=in.(open,review)",
            "state=is.null",
            "n=gt.2",
            "n=lte.1",
            "n=eq.2",
        ];
        const STATES: [&str; 4] = ["open", "review", "closed", ""];
        /// Columns a scope may omit (of tickets only, so agents show the unscoped case).
        const COLUMNS: [&str; 2] = ["state", "n"];

        fn some_of<T: Clone + std::fmt::Debug>(
            items: &'static [T],
        ) -> impl Strategy<Value = Option<Vec<T>>> {
            prop::option::of(prop::sample::subsequence(items.to_vec(), 0..=items.len()))
        }

        fn selection() -> impl Strategy<Value = Selection> {
            (
                some_of(&TYPES),
                some_of(&EventKind::ALL),
                some_of(&PATTERNS),
                some_of(&IDS),
                prop::sample::subsequence(FILTERS.to_vec(), 0..=2),
                prop::sample::subsequence(FILTERS.to_vec(), 0..=2),
                prop::sample::subsequence(COLUMNS.to_vec(), 0..=2),
            )
                .prop_map(|(types, events, topics, ids, rows, scope_rows, omit)| {
                    Selection {
                        types: types.map(|t| t.into_iter().map(String::from).collect()),
                        events,
                        topics: topics.map(|patterns| {
                            patterns
                                .into_iter()
                                .map(|p| TopicPattern::parse(p).unwrap())
                                .collect()
                        }),
                        rows: rows
                            .into_iter()
                            .map(|f| RowFilter::parse(f).unwrap())
                            .collect(),
                        ids: ids.map(|ids| ids.into_iter().map(String::from).collect()),
                        per_type: [(
                            "ticket".to_owned(),
                            TypeRules {
                                filters: scope_rows
                                    .into_iter()
                                    .map(|f| RowFilter::parse(f).unwrap())
                                    .collect(),
                                omit: OmitSet::interned(omit.into_iter().map(String::from)),
                            },
                        )]
                        .into(),
                        max_txn_events: None,
                    }
                })
        }

        /// The columns left out of `change` for `selection`.
        fn omitted<'a>(selection: &'a Selection, change: &Change) -> Option<&'a Arc<OmitSet>> {
            selection
                .per_type
                .get(&change.resource_type)
                .and_then(|rules| rules.omit.as_ref())
        }

        /// A row of `id` (state "" stands for SQL NULL).
        fn row(id: &str, state: usize, n: u8) -> Map<String, Value> {
            let state = match STATES[state] {
                "" => Value::Null,
                state => json!(state),
            };
            let mut row = Map::new();
            row.insert("id".into(), json!(id));
            row.insert("state".into(), state);
            row.insert("n".into(), json!(n));
            row
        }

        /// A row change as the journal has it, with the row before and after (`None`
        /// where there is none).
        #[derive(Debug)]
        struct RowChange {
            change: Arc<Change>,
            before: Option<Map<String, Value>>,
            after: Option<Map<String, Value>>,
        }

        fn row_change() -> impl Strategy<Value = RowChange> {
            (
                0..2usize,
                0..3usize,
                0..4usize,
                0..4usize,
                0..5u8,
                0..4usize,
                0..5u8,
            )
                .prop_map(|(kind, event, id, state, n, old_state, old_n)| {
                    let id = IDS[id];
                    let event = EventKind::ALL[event];
                    let mut new = row(id, state, n);
                    let old = row(id, old_state, old_n);
                    if event == EventKind::Updated && new == old {
                        // An update that changes nothing is not journalled.
                        new.insert("n".into(), json!(n + 1));
                    }
                    let text = |row: &Map<String, Value>| Value::Object(row.clone()).to_string();
                    let (resource, changed, before, after) = match event {
                        EventKind::Created => (text(&new), None, None, Some(new)),
                        EventKind::Deleted => (text(&old), None, Some(old), None),
                        EventKind::Updated => {
                            let changed: Map<String, Value> = old
                                .iter()
                                .filter(|(column, value)| new.get(*column) != Some(*value))
                                .map(|(column, value)| (column.clone(), value.clone()))
                                .collect();
                            let changed = Value::Object(changed).to_string();
                            (text(&new), Some(changed), Some(old), Some(new))
                        }
                    };
                    let mut change = Change::for_test(event, id, &resource, changed.as_deref());
                    change.resource_type = TYPES[kind].into();
                    RowChange {
                        change: Arc::new(change),
                        before,
                        after,
                    }
                })
        }

        fn app_event(topic: &str) -> Entry {
            Entry::AppEvent(Arc::new(AppEvent {
                id: 1,
                xid: 1,
                tenant: TenantId::new("t").unwrap(),
                topic: topic.into(),
                payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                occurred_at: "2026-11-29T00:00:00.000000Z".into(),
                cursor: Cursor::of_snapshot("1:1:".parse().unwrap()),
                cursor_text: String::new(),
                known_since: std::time::Instant::now(),
                frames: Frames::default(),
            }))
        }

        /// The kind a row change is sent as, if it is sent.
        fn sent_as(selection: &Selection, change: &Arc<Change>) -> Option<EventKind> {
            match selection.decide(&Entry::Change(change.clone())) {
                Decision::Send(Delivery::Change { as_event, .. }) => Some(as_event),
                Decision::Send(Delivery::AppEvent(_)) => {
                    panic!("a row change sent as an app event")
                }
                Decision::Skip => None,
                Decision::Resync { .. } => panic!("a row change is no truncation"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Types, ids and events only restrict: what a selection sends is what its
            /// row filters alone send, of its types and ids, of its event kinds — the
            /// kind after a view transition.
            #[test]
            fn types_ids_and_events_only_restrict(selection in selection(), c in row_change()) {
                let rows_only = Selection {
                    rows: selection.rows.clone(),
                    per_type: selection.per_type.clone(),
                    ..Selection::default()
                };
                let change = &c.change;
                let expected = sent_as(&rows_only, change).filter(|kind| {
                    selection.follows_type(&change.resource_type)
                        && selection.ids.as_ref().is_none_or(|ids| ids.contains(&change.resource_id))
                        && selection.events.as_ref().is_none_or(|events| events.contains(kind))
                });
                prop_assert_eq!(sent_as(&selection, change), expected);
            }

            /// Row filters — the request's and the scope's alike — follow the view a
            /// snapshot shows (`includes_row`): a change that puts a row into the view is
            /// `created`, one that takes it out `deleted`, one within it `updated` (unless
            /// only columns the scope omits changed), and one outside it is not sent.
            #[test]
            fn row_filters_send_exactly_the_views_transitions(
                selection in selection(), c in row_change()
            ) {
                let selection = Selection {
                    rows: selection.rows,
                    per_type: selection.per_type,
                    ..Selection::default()
                };
                let id = &c.change.resource_id;
                let before = c.before.as_ref().is_some_and(|row| selection.includes_row(&c.change.resource_type, &row_of(row), id));
                let after = c.after.as_ref().is_some_and(|row| selection.includes_row(&c.change.resource_type, &row_of(row), id));
                let expected = match (before, after) {
                    (false, true) => Some(EventKind::Created),
                    (true, false) => Some(EventKind::Deleted),
                    (true, true) => Some(EventKind::Updated),
                    (false, false) => None,
                };
                let expected = expected.filter(|kind| {
                    let (Some(before), Some(after), Some(omit)) =
                        (&c.before, &c.after, omitted(&selection, &c.change))
                    else {
                        return true;
                    };
                    *kind != EventKind::Updated
                        || before
                            .iter()
                            .any(|(column, value)| after.get(column) != Some(value) && !omit.contains(column))
                });
                prop_assert_eq!(sent_as(&selection, &c.change), expected);
            }

            /// A column the scope omits is in no form a subscriber gets: not in
            /// `resource`, `changed` or `old`, nor in a snapshot row.
            #[test]
            fn omitted_columns_are_in_nothing_sent(selection in selection(), c in row_change()) {
                let Some(omit) = omitted(&selection, &c.change) else { return Ok(()) };
                if let Decision::Send(delivery) = selection.decide(&Entry::Change(c.change.clone())) {
                    let event: Value = serde_json::from_str(delivery.frame().json.as_str()).unwrap();
                    let resource = event["resource"].as_object().unwrap();
                    prop_assert!(resource.keys().all(|column| !omit.contains(column)));
                    prop_assert!(resource.contains_key("id"));
                    if let Some(old) = event.get("old") {
                        prop_assert!(old.as_object().unwrap().keys().all(|column| !omit.contains(column)));
                        prop_assert!(!event["changed"].as_array().unwrap().is_empty());
                    }
                }
                if let Some(row) = &c.after {
                    let json = Value::Object(row.clone()).to_string();
                    if let Some(seen) = selection.snapshot_row(&c.change.resource_type, json, Some(&c.change.resource_id)) {
                        let seen: Map<String, Value> = serde_json::from_str(&seen).unwrap();
                        prop_assert!(seen.keys().all(|column| !omit.contains(column)));
                    }
                }
            }

            /// What would be sent is never cut before the decision: not by a replay's
            /// journal read (`journal_types`, `wants_app_events`), nor by the test a
            /// large entry's fan-out marker gets (`follows_type`, `may_include_id`,
            /// `follows_topic`).
            #[test]
            fn coarse_cuts_never_drop_what_would_be_sent(
                selection in selection(), c in row_change(), topic in 0..TOPICS.len()
            ) {
                let change = &c.change;
                if sent_as(&selection, change).is_some() {
                    prop_assert!(selection
                        .journal_types()
                        .is_none_or(|types| types.contains(&change.resource_type)));
                    prop_assert!(selection.follows_type(&change.resource_type));
                    prop_assert!(selection.may_include_id(Some(&change.resource_id)));
                    prop_assert!(selection.may_include_id(None));
                }
                let topic = TOPICS[topic];
                let sent = matches!(
                    selection.decide(&app_event(topic)),
                    Decision::Send(Delivery::AppEvent(_))
                );
                prop_assert_eq!(sent, selection.follows_topic(topic));
                if sent {
                    prop_assert!(selection.wants_app_events());
                }
            }
        }
    }
}

/// What row filters cost per change on a large object column: run with
/// `cargo test --release --lib filter_cost -- --ignored --nocapture`. A measurement to
/// read, not a test with a time limit.
#[cfg(test)]
mod filter_cost {
    use super::*;
    use crate::journal::{Change, Entry};
    use serde_json::{Map, Value};
    use std::sync::Arc;
    use std::time::Instant;

    fn config_object(seed: &str) -> Value {
        let mut config = Map::new();
        for i in 0..10_000 {
            config.insert(
                format!("key{i:05}"),
                Value::String(format!("{seed}-value-{i:08}-padding-padding")),
            );
        }
        Value::Object(config)
    }

    #[test]
    #[ignore = "a measurement, run on demand with --release: it prints figures and asserts nothing about time"]
    fn filter_cost_on_a_500_kb_object() {
        let new = serde_json::json!({"id": "r1", "state": "open", "config": config_object("new")});
        let old = serde_json::json!({"config": config_object("old")});
        let (new, old) = (new.to_string(), old.to_string());
        println!("row: {} bytes, old: {} bytes", new.len(), old.len());
        let filters = [
            "config=neq.x",
            "config=neq.y",
            "config=neq.z",
            "config=neq.w",
            "config=gt.a",
            "config=gt.b",
            "config=gt.c",
            "config=gt.d",
            "config=lt.~",
            "config=lt.~~",
            "config=lt.~~~",
            "config=lt.~~~~",
            "config=gte.a",
            "config=lte.~",
            "config=neq.v",
            "config=neq.u",
        ];
        let selection = Selection {
            rows: filters
                .iter()
                .map(|f| RowFilter::parse(f).unwrap())
                .collect(),
            ..Selection::default()
        };
        for subscribers in [1usize, 1, 10] {
            let changes = 20;
            let started = Instant::now();
            for _ in 0..changes {
                let entry = Entry::Change(Arc::new(Change::for_test(
                    EventKind::Updated,
                    "r1",
                    &new,
                    Some(&old),
                )));
                for _ in 0..subscribers {
                    assert!(matches!(selection.decide(&entry), Decision::Send(_)));
                }
            }
            let per_change = started.elapsed() / changes;
            println!("16 filters, {subscribers} subscriber(s): {per_change:?} per change");
        }
    }
}
