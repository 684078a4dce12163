//! A token's scope in a selection's terms (API.md §3c): the types and topics it allows
//! ([`Bounds`]), what it adds per resource type ([`TypeRules`]) — row filters and
//! omitted columns ([`OmitSet`]) — and how a request fits within it
//! ([`Selection::within`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::{RowFilter, Selection, TopicPattern};
use crate::sync::lock;

/// What a token's scope adds for one resource type (API.md §3c).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeRules {
    /// Row filters that must hold beside the request's own: rows enter and leave the
    /// holder's view by them exactly as by the request's.
    pub filters: Vec<RowFilter>,
    /// Columns the holder never receives.
    pub omit: Option<Arc<OmitSet>>,
}

impl TypeRules {
    /// Both must hold: filters of each, columns left out by either.
    fn and(&self, other: &TypeRules) -> TypeRules {
        let mut filters = self.filters.clone();
        for filter in &other.filters {
            if !filters.contains(filter) {
                filters.push(filter.clone());
            }
        }
        let omit = match (&self.omit, &other.omit) {
            (Some(a), Some(b)) => {
                OmitSet::interned(a.columns().chain(b.columns()).map(String::from))
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        TypeRules { filters, omit }
    }
}

/// What a token lets its holder receive (API.md §3c), in a selection's terms; `None`
/// means all. As in a request, a scope naming only types allows no topic and one naming
/// only topics no type: `types` and `topics` are both `None` or both `Some`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bounds {
    types: Option<BTreeSet<String>>,
    topics: Option<Vec<TopicPattern>>,
    per_type: BTreeMap<String, TypeRules>,
}

/// Why a request does not fit its token's scope.
#[derive(Debug, PartialEq)]
pub enum OutOfScope {
    /// It names a resource type or topic the scope does not allow.
    Forbidden(String),
    /// A request filter names a column the scope omits: what matches would tell its
    /// values.
    OmittedColumn(String),
}

impl Bounds {
    /// Bounds allowing `types` and `topics` (`None`: all — unless the other is named),
    /// with `per_type`'s filters and omitted columns.
    pub fn new(
        types: Option<Vec<String>>,
        topics: Option<Vec<TopicPattern>>,
        per_type: BTreeMap<String, TypeRules>,
    ) -> Bounds {
        let (types, topics) = match (types, topics) {
            (None, None) => (None, None),
            (types, topics) => (
                Some(types.unwrap_or_default().into_iter().collect()),
                Some(dedup(topics.unwrap_or_default())),
            ),
        };
        Bounds {
            types,
            topics,
            per_type,
        }
    }

    pub fn types(&self) -> Option<&BTreeSet<String>> {
        self.types.as_ref()
    }

    pub fn topics(&self) -> Option<&[TopicPattern]> {
        self.topics.as_deref()
    }

    pub fn per_type(&self) -> &BTreeMap<String, TypeRules> {
        &self.per_type
    }

    /// Whether row changes of `resource_type` are within these bounds (its row filters
    /// aside).
    pub fn allows_type(&self, resource_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(resource_type))
    }

    /// Whether app events of `topic` are within these bounds.
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(topic)))
    }

    /// What both allow: the types both name, the topics both match (exactly: each pair
    /// of patterns meets in a pattern, or not at all), every filter of either, the
    /// columns either omits.
    pub fn narrowed_by(&self, other: &Bounds) -> Bounds {
        let types = match (&self.types, &other.types) {
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let topics = match (&self.topics, &other.topics) {
            (Some(a), Some(b)) => Some(dedup(
                a.iter()
                    .flat_map(|p| b.iter().filter_map(|q| p.meet(q)))
                    .collect(),
            )),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let mut per_type = self.per_type.clone();
        for (resource_type, rules) in &other.per_type {
            let both = match per_type.get(resource_type) {
                Some(mine) => mine.and(rules),
                None => rules.clone(),
            };
            per_type.insert(resource_type.clone(), both);
        }
        Bounds {
            types,
            topics,
            per_type,
        }
    }
}

/// `patterns` without repeats, in order.
fn dedup(patterns: Vec<TopicPattern>) -> Vec<TopicPattern> {
    let mut kept: Vec<TopicPattern> = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        if !kept.contains(&pattern) {
            kept.push(pattern);
        }
    }
    kept
}

impl Selection {
    /// This request as its token's scope lets it be: naming nothing, it gets the whole
    /// scope; naming a type or a topic the scope does not allow, it is refused; a topic
    /// pattern that the scope allows in part is narrowed to that part. The scope's
    /// per-type filters and omitted columns come along.
    pub fn within(mut self, bounds: &Bounds) -> Result<Selection, OutOfScope> {
        if let (Some(allowed_types), Some(allowed_topics)) = (&bounds.types, &bounds.topics) {
            let (types, topics) = match (self.types.take(), self.topics.take()) {
                (None, None) => (
                    allowed_types.iter().cloned().collect(),
                    allowed_topics.clone(),
                ),
                (types, topics) => {
                    let types = types.unwrap_or_default();
                    if let Some(refused) = types.iter().find(|t| !allowed_types.contains(*t)) {
                        return Err(OutOfScope::Forbidden(format!(
                            "the token's scope does not allow resource type {refused:?}"
                        )));
                    }
                    let mut within = Vec::new();
                    for pattern in topics.unwrap_or_default() {
                        let met: Vec<TopicPattern> = allowed_topics
                            .iter()
                            .filter_map(|allowed| pattern.meet(allowed))
                            .collect();
                        if met.is_empty() {
                            return Err(OutOfScope::Forbidden(format!(
                                "the token's scope does not allow topic {:?}",
                                pattern.to_string()
                            )));
                        }
                        within.extend(met);
                    }
                    (types, dedup(within))
                }
            };
            self.types = Some(types);
            self.topics = Some(topics);
        }
        for filter in &self.rows {
            let omitted = bounds.per_type.iter().find(|(resource_type, rules)| {
                rules
                    .omit
                    .as_ref()
                    .is_some_and(|o| o.contains(&filter.column))
                    && self.follows_type(resource_type)
            });
            if let Some((resource_type, _)) = omitted {
                return Err(OutOfScope::OmittedColumn(format!(
                    "invalid filter {:?}: the token's scope omits column {:?} of {resource_type:?}",
                    filter.text, filter.column
                )));
            }
        }
        self.per_type = bounds.per_type.clone();
        Ok(self)
    }
}

/// Columns of one resource type a subscriber never receives (a token scope's `omit`,
/// API.md §3c). Interned: equal sets are one `Arc`, so renderings are keyed by pointer
/// and shared by every subscriber with the same set.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OmitSet(BTreeSet<String>);

/// Interned sets, by their columns; entries of sets nobody holds any more are swept as
/// the table grows.
static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();

#[derive(Default)]
struct Interned {
    sets: HashMap<BTreeSet<String>, Weak<OmitSet>>,
    /// Size at which dead entries are swept next.
    sweep_at: usize,
}

/// Smallest table size at which dead entries are swept.
const SWEEP_FROM: usize = 64;

impl OmitSet {
    /// The one shared set of `columns`; `None` when there are none.
    pub fn interned(columns: impl IntoIterator<Item = String>) -> Option<Arc<OmitSet>> {
        let columns: BTreeSet<String> = columns.into_iter().collect();
        if columns.is_empty() {
            return None;
        }
        let mut interned = lock(INTERNED.get_or_init(Default::default));
        if let Some(set) = interned.sets.get(&columns).and_then(Weak::upgrade) {
            return Some(set);
        }
        let set = Arc::new(OmitSet(columns.clone()));
        interned.sets.insert(columns, Arc::downgrade(&set));
        if interned.sets.len() >= interned.sweep_at.max(SWEEP_FROM) {
            interned.sets.retain(|_, set| set.strong_count() > 0);
            interned.sweep_at = interned.sets.len() * 2;
        }
        Some(set)
    }

    pub fn contains(&self, column: &str) -> bool {
        self.0.contains(column)
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[&str]) -> Option<Arc<OmitSet>> {
        OmitSet::interned(columns.iter().map(|c| c.to_string()))
    }

    #[test]
    fn equal_sets_are_one_value_and_empty_is_none() {
        let a = set(&["b", "a"]).unwrap();
        let b = set(&["a", "b", "a"]).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &set(&["a"]).unwrap()));
        assert!(set(&[]).is_none());
        assert!(a.contains("a") && !a.contains("c"));
    }
}
