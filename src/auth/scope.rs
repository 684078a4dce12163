//! Scopes (API.md §3c): what one token's holder may receive beneath its tenant — resource
//! types, topics, per-type row filters and omitted columns, and whether it may read
//! `/v1/stats`. Parsed from a token's claim here; what a scope means for each entry is
//! `crate::selection`'s ([`Bounds`]), so it holds live, on replay and in snapshots alike.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::selection::{Bounds, OmitSet, RowFilter, TopicPattern, TypeRules, MAX_ROW_FILTERS};

/// Most entries in a scope's `types` or `topics`, or in one type's `omit`.
const MAX_ENTRIES: usize = 64;
/// Longest resource type or column name (PostgreSQL's identifier limit).
const MAX_NAME_BYTES: usize = 63;

/// What a token lets its holder receive. Without a scope claim it is unrestricted.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    bounds: Bounds,
    stats: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::unrestricted()
    }
}

/// The claim as tokens carry it; every field optional, any other refused (a misspelt
/// `filters` must not silently allow everything).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Claim {
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    omit: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    stats: Option<bool>,
}

impl Scope {
    /// Everything of the tenant, `/v1/stats` included.
    pub fn unrestricted() -> Scope {
        Scope {
            bounds: Bounds::default(),
            stats: true,
        }
    }

    /// The scope a claim describes:
    /// `{"types": [...], "topics": [...], "filter": {"<type>": ["<column>=<op>.<value>", ...]},
    /// "omit": {"<type>": ["<column>", ...]}, "stats": <bool>}`, every field optional.
    /// Naming only `types` allows no topic, naming only `topics` no type (as a request
    /// does); an empty list allows nothing. Unknown fields, wrong types and bad filters
    /// are errors, never ignored.
    pub fn from_claim(claim: &Value) -> Result<Scope, String> {
        if !claim.is_object() {
            return Err("the scope must be a JSON object".into());
        }
        let claim = Claim::deserialize(claim).map_err(|error| error.to_string())?;
        let types = claim.types.map(|types| names(types, "types")).transpose()?;
        let topics = claim
            .topics
            .map(|topics| {
                bounded(&topics, "topics")?;
                topics.iter().map(|t| TopicPattern::parse(t)).collect()
            })
            .transpose()?;
        let mut per_type: BTreeMap<String, TypeRules> = BTreeMap::new();
        for (resource_type, filters) in claim.filter.unwrap_or_default() {
            name(&resource_type, "filter")?;
            if filters.len() > MAX_ROW_FILTERS {
                return Err(format!(
                    "`filter` of {resource_type:?} has more than {MAX_ROW_FILTERS} conditions"
                ));
            }
            let filters = filters
                .iter()
                .map(|f| RowFilter::parse(f))
                .collect::<Result<Vec<_>, _>>()?;
            per_type.entry(resource_type).or_default().filters = filters;
        }
        for (resource_type, columns) in claim.omit.unwrap_or_default() {
            name(&resource_type, "omit")?;
            let columns = names(columns, &format!("omit of {resource_type:?}"))?;
            per_type.entry(resource_type).or_default().omit = OmitSet::interned(columns);
        }
        Ok(Scope {
            bounds: Bounds::new(types, topics, per_type),
            stats: claim.stats.unwrap_or(true),
        })
    }

    /// What both scopes allow: types both name, topics both match, every filter of
    /// either (all must hold), columns either omits, `/v1/stats` if both allow it.
    pub fn narrowed_by(&self, other: &Scope) -> Scope {
        Scope {
            bounds: self.bounds.narrowed_by(&other.bounds),
            stats: self.stats && other.stats,
        }
    }

    /// The scope in a selection's terms: what `Selection::within` takes.
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// Whether `/v1/stats` and WebSocket `get_stats` answer this holder.
    pub fn allows_stats(&self) -> bool {
        self.stats
    }

    pub fn is_unrestricted(&self) -> bool {
        *self == Scope::unrestricted()
    }
}

fn bounded(items: &[String], what: &str) -> Result<(), String> {
    if items.len() > MAX_ENTRIES {
        return Err(format!("`{what}` has more than {MAX_ENTRIES} entries"));
    }
    Ok(())
}

fn name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(format!(
            "`{what}` names {name:?}: a name has 1 to {MAX_NAME_BYTES} bytes and no NUL"
        ));
    }
    Ok(())
}

fn names(items: Vec<String>, what: &str) -> Result<Vec<String>, String> {
    bounded(&items, what)?;
    for item in &items {
        name(item, what)?;
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Change, Entry, EventKind};
    use crate::selection::{Decision, OutOfScope, Selection};
    use serde_json::json;
    use std::sync::Arc;

    fn scope(claim: Value) -> Scope {
        Scope::from_claim(&claim).unwrap()
    }

    fn topics(patterns: &[&str]) -> Vec<TopicPattern> {
        patterns
            .iter()
            .map(|p| TopicPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn parses_every_field_and_defaults_to_everything() {
        let full = scope(json!({
            "types": ["ticket"], "topics": ["user.42.*"],
            "filter": {"ticket": ["assignee=eq.dara"]},
            "omit": {"ticket": ["internal_note"]}, "stats": false
        }));
        assert!(!full.allows_stats());
        let bounds = full.bounds();
        assert_eq!(
            bounds.types().unwrap().iter().collect::<Vec<_>>(),
            ["ticket"]
        );
        assert_eq!(bounds.topics().unwrap(), topics(&["user.42.*"]));
        let ticket = &bounds.per_type()["ticket"];
        assert_eq!(ticket.filters[0].text, "assignee=eq.dara");
        assert!(ticket.omit.as_ref().unwrap().contains("internal_note"));

        let empty = scope(json!({}));
        assert!(empty.is_unrestricted() && empty.allows_stats());
        assert_eq!(scope(json!({"types": null})), Scope::unrestricted());
        // Naming one of types and topics allows none of the other.
        assert_eq!(
            scope(json!({"types": ["a"]})).bounds().topics(),
            Some(&[][..])
        );
        assert!(scope(json!({"topics": ["x"]}))
            .bounds()
            .types()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn malformed_claims_are_refused_with_a_reason() {
        for bad in [
            json!("ticket"),
            json!(null),
            json!(["ticket"]),
            json!({"types": "ticket"}),
            json!({"types": [1]}),
            json!({"types": [""]}),
            json!({"topics": ["Bad Topic"]}),
            json!({"filter": {"ticket": ["state=like.x"]}}),
            json!({"filter": {"ticket": "state=eq.x"}}),
            json!({"filter": ["state=eq.x"]}),
            json!({"omit": {"ticket": "note"}}),
            json!({"omit": {"ticket": [""]}}),
            json!({"stats": "no"}),
            json!({"filters": {}}),
            json!({"types": (0..65).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            json!({"filter": {"ticket": vec!["a=eq.1"; 17]}}),
        ] {
            let refused = Scope::from_claim(&bad);
            assert!(refused.is_err(), "{bad} should be refused");
            assert!(!refused.unwrap_err().is_empty());
        }
    }

    #[test]
    fn narrowing_keeps_only_what_both_allow() {
        let a = scope(json!({
            "types": ["ticket", "agent"], "topics": ["user.*", "config", "agent:*"],
            "filter": {"ticket": ["assignee=eq.dara"]}, "omit": {"ticket": ["note"]}
        }));
        let b = scope(json!({
            "types": ["ticket", "profile"], "topics": ["user.42.*", "config", "agent:stats", "other"],
            "filter": {"ticket": ["state=eq.open"], "agent": ["status=eq.idle"]},
            "omit": {"ticket": ["body"]}, "stats": false
        }));
        let both = a.narrowed_by(&b);
        assert_eq!(
            both.bounds().types().unwrap().iter().collect::<Vec<_>>(),
            ["ticket"]
        );
        assert_eq!(
            both.bounds().topics().unwrap(),
            topics(&["user.42.*", "config", "agent:stats"])
        );
        let ticket = &both.bounds().per_type()["ticket"];
        let texts: Vec<&str> = ticket.filters.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["assignee=eq.dara", "state=eq.open"]);
        let omit = ticket.omit.as_ref().unwrap();
        assert!(omit.contains("note") && omit.contains("body"));
        assert!(!both.allows_stats());
        // Symmetric, and the unrestricted scope is neutral.
        assert_eq!(b.narrowed_by(&a).bounds().types(), both.bounds().types());
        assert_eq!(a.narrowed_by(&Scope::unrestricted()), a);
        assert_eq!(Scope::unrestricted().narrowed_by(&a), a);
    }

    /// Narrowing is exact on topics: a topic is allowed by the narrowed scope exactly
    /// when both allow it.
    #[test]
    fn narrowed_topics_match_exactly_what_both_match() {
        let patterns = ["*", "a", "a*", "ab", "ab*", "abc", "b*", "a.b:c"];
        let samples = ["", "a", "ab", "abc", "abd", "b", "ba", "a.b:c", "c"];
        for i in 0..patterns.len() {
            for j in 0..patterns.len() {
                for k in 0..patterns.len() {
                    let a = scope(json!({"topics": [patterns[i], patterns[j]]}));
                    let b = scope(json!({"topics": [patterns[k]]}));
                    let both = a.narrowed_by(&b);
                    let allows = |s: &Scope, topic: &str| {
                        s.bounds()
                            .topics()
                            .unwrap()
                            .iter()
                            .any(|p| p.matches(topic))
                    };
                    for topic in samples {
                        assert_eq!(
                            allows(&both, topic),
                            allows(&a, topic) && allows(&b, topic),
                            "{:?} and {:?} on {topic:?}",
                            [patterns[i], patterns[j]],
                            patterns[k]
                        );
                    }
                }
            }
        }
    }

    fn request(types: Option<&[&str]>, topic_list: Option<&[&str]>, rows: &[&str]) -> Selection {
        Selection {
            types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            topics: topic_list.map(topics),
            rows: rows.iter().map(|r| RowFilter::parse(r).unwrap()).collect(),
            ..Selection::default()
        }
    }

    #[test]
    fn a_request_is_refused_outside_its_scope_and_gets_the_whole_scope_naming_none() {
        let s = scope(json!({
            "types": ["ticket"], "topics": ["user.42.*"], "omit": {"ticket": ["note"]}
        }));
        let whole = request(None, None, &[]).within(s.bounds()).unwrap();
        assert!(whole.follows_type("ticket") && !whole.follows_type("agent"));
        assert!(whole.follows_topic("user.42.x") && !whole.follows_topic("user.43.x"));
        assert_eq!(whole.journal_types(), Some(vec!["ticket".to_owned()]));

        let forbidden = |r: Selection| match r.within(s.bounds()) {
            Err(OutOfScope::Forbidden(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(forbidden(request(Some(&["ticket", "agent"]), None, &[])).contains("agent"));
        assert!(forbidden(request(None, Some(&["config"]), &[])).contains("config"));
        // A pattern the scope allows in part is narrowed to that part.
        let part = request(None, Some(&["user.*"]), &[])
            .within(s.bounds())
            .unwrap();
        assert!(part.follows_topic("user.42.a") && !part.follows_topic("user.1"));
        assert!(!part.follows_type("ticket"));
        // Types alone: no topic.
        let types = request(Some(&["ticket"]), None, &[])
            .within(s.bounds())
            .unwrap();
        assert!(!types.follows_topic("user.42.a") && !types.wants_app_events());

        assert!(matches!(
            request(None, None, &["note=eq.x"]).within(s.bounds()),
            Err(OutOfScope::OmittedColumn(_))
        ));
        // Over a type that is not followed, an omitted column of another is no secret.
        let agents_only = scope(json!({"omit": {"ticket": ["note"]}}));
        assert!(request(Some(&["agent"]), None, &["note=eq.x"])
            .within(agents_only.bounds())
            .is_ok());
        // Unrestricted: the request as it was.
        let asked = request(Some(&["agent"]), None, &["a=eq.1"]);
        assert_eq!(
            asked
                .clone()
                .within(Scope::unrestricted().bounds())
                .unwrap(),
            asked
        );
    }

    fn change(event: EventKind, row: Value, old: Option<Value>) -> Entry {
        Entry::Change(Arc::new(Change::for_test(
            event,
            "r1",
            &row.to_string(),
            old.map(|o| o.to_string()).as_deref(),
        )))
    }

    fn sent(selection: &Selection, entry: &Entry) -> Option<(EventKind, String)> {
        match selection.decide(entry) {
            Decision::Send(delivery) => {
                let as_event = match &delivery {
                    crate::wire::Delivery::Change { as_event, .. } => *as_event,
                    _ => unreachable!(),
                };
                Some((as_event, delivery.frame().json.to_string()))
            }
            _ => None,
        }
    }

    #[test]
    fn scope_filters_make_view_transitions_and_omitted_columns_never_leave() {
        let s = scope(json!({
            "filter": {"ticket": ["assignee=eq.dara"]}, "omit": {"ticket": ["note"]}
        }));
        let selection = Selection::default().within(s.bounds()).unwrap();
        let row = |assignee: &str, note: &str| json!({"id": "r1", "assignee": assignee, "note": note, "state": "open"});
        let cases = [
            (
                change(EventKind::Created, row("dara", "n"), None),
                Some(EventKind::Created),
            ),
            (change(EventKind::Created, row("kim", "n"), None), None),
            // Reassigned to the holder: created; away: deleted.
            (
                change(
                    EventKind::Updated,
                    row("dara", "n"),
                    Some(json!({"assignee": "kim"})),
                ),
                Some(EventKind::Created),
            ),
            (
                change(
                    EventKind::Updated,
                    row("kim", "n2"),
                    Some(json!({"assignee": "dara", "note": "n"})),
                ),
                Some(EventKind::Deleted),
            ),
            // Only an omitted column moved: nothing to send.
            (
                change(
                    EventKind::Updated,
                    row("dara", "n2"),
                    Some(json!({"note": "n"})),
                ),
                None,
            ),
            (
                change(
                    EventKind::Updated,
                    row("dara", "n2"),
                    Some(json!({"note": "n", "state": "new"})),
                ),
                Some(EventKind::Updated),
            ),
        ];
        for (entry, expected) in cases {
            let got = sent(&selection, &entry);
            assert_eq!(got.as_ref().map(|(kind, _)| *kind), expected, "{entry:?}");
            if let Some((_, json)) = got {
                assert!(!json.contains("note"), "{json}");
            }
        }
        // The same change, unscoped, still carries everything.
        let entry = change(
            EventKind::Updated,
            row("dara", "n2"),
            Some(json!({"note": "n"})),
        );
        assert!(sent(&Selection::default(), &entry)
            .unwrap()
            .1
            .contains("note"));
        // Snapshots agree.
        let in_view = selection.snapshot_row("ticket", row("dara", "n").to_string(), Some("r1"));
        assert!(!in_view.unwrap().contains("note"));
        assert!(selection
            .snapshot_row("ticket", row("kim", "n").to_string(), Some("r1"))
            .is_none());
        assert!(selection
            .snapshot_row("agent", row("kim", "n").to_string(), Some("r1"))
            .unwrap()
            .contains("note"));
    }
}
