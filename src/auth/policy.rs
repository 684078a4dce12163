//! `CHANGECAST_POLICY`: scopes (API.md §3c) derived from the claims of tokens the
//! application does not mint, such as an identity provider's.
//!
//! A policy is a JSON file of ordered rules; the first whose `when` holds gives the
//! token's scope, with `{claim.path}` placeholders filled from the token:
//!
//! ```json
//! { "rules": [
//!     { "name": "agents", "when": { "realm_access.roles": "agent" },
//!       "scope": { "filter": { "ticket": ["assignee=eq.{preferred_username}"] } } },
//!     { "name": "customers", "when": { "role": ["customer", "guest"] },
//!       "scope": { "types": ["ticket"], "filter": { "ticket": ["requester=eq.{sub}"] },
//!                  "omit": { "ticket": ["internal_note"] }, "stats": false } } ] }
//! ```
//!
//! - `when`: every listed claim path must hold one of the accepted values (a value or a
//!   list of them); a claim that is an array holds a value when it contains it. An empty
//!   or absent `when` matches every token (a catch-all, last).
//! - `scope`: the §3c claim shape; `{}` is the whole tenant. Or `"refuse": true`.
//! - No rule matching refuses the token: a policy grants, it never falls open.
//!
//! A placeholder may stand only in a filter's value or in a topic. What it brings from
//! the token must not change the filter's or topic's structure: a value with `,`, `(`,
//! `)`, `"`, `\`, `&` or a control character in a filter, or anything outside
//! `[a-z0-9_.:-]` in a topic (a `*` would widen it), refuses the token, as does a
//! placeholder whose claim is missing, empty, an array or an object. `{{` and `}}` are
//! literal braces. This module only derives the claim's JSON; parsing and enforcing the
//! scope is the authenticator's.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ClaimPath;
use crate::selection::{Op, RowFilter, TopicPattern, MAX_ROW_FILTERS};

/// Largest policy file read: a policy is a few rules, not a user database.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// Most rules in one policy.
pub const MAX_RULES: usize = 1000;
/// What stands in for a placeholder when a template is checked at load.
const SAMPLE: &str = "x";

/// Why a policy gave a token no scope; shown to its holder (it names claim paths,
/// never claim values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("no rule of the access policy grants this token anything")]
    NoRuleMatched,
    #[error("the access policy refuses this token (rule {0})")]
    Refused(String),
    #[error("the access policy needs the token's `{0}` claim (a non-empty string or number)")]
    MissingClaim(String),
    #[error(
        "the token's `{0}` claim holds characters the access policy cannot put into a {1} \
         without changing its meaning"
    )]
    UnsafeValue(String, &'static str),
    #[error("the scope the access policy gives this token is not valid: {0}")]
    Unusable(String),
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `rules[3]` or `rules[3] ("customers")`, for messages.
    label: String,
    conditions: Vec<(ClaimPath, Vec<Value>)>,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Refuse,
    Grant(ScopeTemplate),
}

/// A rule's scope: everything fixed but topics and filter values, which may hold
/// placeholders.
#[derive(Debug, Clone, Default)]
struct ScopeTemplate {
    types: Option<Value>,
    topics: Option<Vec<Template>>,
    filter: Option<Vec<(String, Vec<FilterTemplate>)>>,
    omit: Option<Value>,
    stats: Option<Value>,
}

#[derive(Debug, Clone)]
struct FilterTemplate {
    template: Template,
    /// The filter as parsed with [`SAMPLE`] in its placeholders: a filled-in one must
    /// have the same column, operator and number of `in` values.
    shape: (String, Shape),
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Single(std::mem::Discriminant<Op>),
    In(usize),
}

fn shape_of(filter: &RowFilter) -> (String, Shape) {
    let shape = match &filter.op {
        Op::In(values) => Shape::In(values.len()),
        op => Shape::Single(std::mem::discriminant(op)),
    };
    (filter.column.clone(), shape)
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Claim(ClaimPath),
}

#[derive(Debug, Clone, PartialEq)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Copy)]
enum Place {
    Filter,
    Topic,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Filter => "filter",
            Place::Topic => "topic",
        }
    }

    fn accepts(self, value: &str) -> bool {
        match self {
            Place::Filter => !value
                .chars()
                .any(|c| c.is_control() || matches!(c, ',' | '(' | ')' | '"' | '\\' | '&')),
            Place::Topic => value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b)),
        }
    }
}

impl Template {
    /// `text` with its placeholders, or (without `templates`) as it is.
    fn new(text: &str, templates: bool) -> Result<Template, String> {
        if templates {
            Template::parse(text)
        } else {
            Ok(Template {
                parts: vec![Part::Text(text.to_owned())],
            })
        }
    }

    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!(
                            "unclosed `{{` in {text:?} (`{{{{` is a literal `{{`)"
                        ));
                    }
                    let path = ClaimPath::parse(&name)
                        .map_err(|why| format!("placeholder {{{name}}} in {text:?}: {why}"))?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Claim(path));
                }
                '}' => return Err(format!("lone `}}` in {text:?} (`}}}}` is a literal `}}`)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    fn has_placeholders(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Claim(_)))
    }

    /// The text before the first placeholder (all of it when there is none).
    fn leading_text(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(text)) => text,
            _ => "",
        }
    }

    fn fill(
        &self,
        mut value: impl FnMut(&ClaimPath) -> Result<String, PolicyRefusal>,
    ) -> Result<String, PolicyRefusal> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Claim(path) => out.push_str(&value(path)?),
            }
        }
        Ok(out)
    }

    fn sample(&self) -> String {
        self.fill(|_| Ok(SAMPLE.to_owned()))
            .expect("BUG: a sample fill cannot fail")
    }

    fn fill_from(
        &self,
        claims: &Map<String, Value>,
        place: Place,
    ) -> Result<String, PolicyRefusal> {
        self.fill(|path| {
            let text = claim_text(claims, path)?;
            if place.accepts(&text) {
                Ok(text)
            } else {
                Err(PolicyRefusal::UnsafeValue(path.to_string(), place.name()))
            }
        })
    }
}

/// A claim as placeholder text: strings as they are, numbers and booleans as JSON
/// writes them; anything else (absent, null, empty, array, object) is missing.
fn claim_text(claims: &Map<String, Value>, path: &ClaimPath) -> Result<String, PolicyRefusal> {
    match path.find(claims) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(Value::Bool(flag)) => Ok(flag.to_string()),
        _ => Err(PolicyRefusal::MissingClaim(path.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    // Read from the raw rule before this is parsed, so that its errors are labelled.
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    when: Map<String, Value>,
    scope: Option<Value>,
    #[serde(default)]
    refuse: bool,
}

/// Checks a scope claim's JSON (the §3c shape, no placeholders) as a policy checks its
/// rules' scopes: for `changecast token --scope`, so that a typo is an error rather than
/// a token that grants something else.
pub fn check_scope(scope: &Value) -> Result<(), String> {
    ScopeTemplate::parse(scope.clone(), false).map(drop)
}

impl Policy {
    /// Reads and checks the policy at `path`. Errors name the file and, for a bad rule,
    /// the rule: `serve` refuses to start on them rather than run with a policy that
    /// does not say what its author meant.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let shown = path.display();
        let file = std::fs::File::open(path)
            .map_err(|error| format!("access policy {shown}: cannot open it: {error}"))?;
        let mut text = String::new();
        use std::io::Read as _;
        file.take(MAX_POLICY_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|error| format!("access policy {shown}: cannot read it: {error}"))?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(format!(
                "access policy {shown}: larger than {MAX_POLICY_BYTES} bytes"
            ));
        }
        Policy::parse(&text).map_err(|why| format!("access policy {shown}: {why}"))
    }

    /// Checks a policy's JSON text; errors name the bad rule.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = serde_json::from_str(text)
            .map_err(|error| format!("not a policy (`{{\"rules\": [...]}}`): {error}"))?;
        if file.rules.is_empty() {
            return Err("`rules` is empty: it would refuse every token".into());
        }
        if file.rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule::parse(index, rule))
            .collect::<Result<_, _>>()?;
        Ok(Policy { rules })
    }

    /// The scope claim (§3c shape) the first matching rule gives a verified token with
    /// these `claims`.
    pub fn scope_for(&self, claims: &Map<String, Value>) -> Result<Value, PolicyRefusal> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(claims))
            .ok_or(PolicyRefusal::NoRuleMatched)?;
        match &rule.outcome {
            Outcome::Refuse => Err(PolicyRefusal::Refused(rule.label.clone())),
            Outcome::Grant(scope) => scope.fill(claims),
        }
    }
}

impl Rule {
    fn parse(index: usize, rule: Value) -> Result<Rule, String> {
        let mut label = format!("rules[{index}]");
        if let Some(name) = rule.get("name").and_then(Value::as_str) {
            label = format!("{label} ({name:?})");
        }
        let bad = |why: String| format!("{label}: {why}");
        let rule: RuleFile = serde_json::from_value(rule).map_err(|e| bad(e.to_string()))?;
        let mut conditions = Vec::new();
        for (path, accepted) in rule.when {
            let claim = ClaimPath::parse(&path).map_err(|why| bad(format!("`when`: {why}")))?;
            let accepted = match accepted {
                Value::Array(values) => values,
                value => vec![value],
            };
            if accepted.is_empty() {
                return Err(bad(format!("`when` {path:?}: an empty list never matches")));
            }
            if let Some(odd) = accepted
                .iter()
                .find(|v| v.is_array() || v.is_object() || v.is_null())
            {
                return Err(bad(format!(
                    "`when` {path:?}: accepted values are strings, numbers or booleans, not {odd}"
                )));
            }
            conditions.push((claim, accepted));
        }
        let outcome = match (rule.scope, rule.refuse) {
            (Some(_), true) => return Err(bad("has both `scope` and `refuse: true`".into())),
            (None, true) => Outcome::Refuse,
            (None, false) => {
                return Err(bad(
                    "needs a `scope` (`{}` for the whole tenant) or `refuse: true`".into(),
                ))
            }
            (Some(scope), false) => Outcome::Grant(ScopeTemplate::parse(scope, true).map_err(bad)?),
        };
        Ok(Rule {
            label,
            conditions,
            outcome,
        })
    }

    fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.conditions
            .iter()
            .all(|(path, accepted)| match path.find(claims) {
                Some(Value::Array(held)) => held.iter().any(|v| accepted.contains(v)),
                Some(value) => accepted.contains(value),
                None => false,
            })
    }
}

/// A list of strings, or an error naming `what`.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what} must be a list of strings"))?;
    list.iter()
        .map(|item| {
            item.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{what} must be a list of non-empty strings, not {item}"))
        })
        .collect()
}

/// An object of resource type → list of strings.
fn per_type(
    value: &Value,
    what: &str,
    templates: bool,
) -> Result<Vec<(String, Vec<String>)>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("`{what}` must be an object of resource type → list"))?;
    object
        .iter()
        .map(|(resource_type, list)| {
            if templates {
                no_placeholder(resource_type, what)?;
            }
            Ok((
                resource_type.clone(),
                strings(list, &format!("`{what}.{resource_type}`"))?,
            ))
        })
        .collect()
}

fn no_placeholder(text: &str, what: &str) -> Result<(), String> {
    if text.contains('{') || text.contains('}') {
        Err(format!(
            "{text:?} in `{what}`: placeholders stand only in filter values and topics"
        ))
    } else {
        Ok(())
    }
}

impl ScopeTemplate {
    /// With `templates`, topics and filter values may hold placeholders; without, every
    /// string is taken as it is.
    fn parse(scope: Value, templates: bool) -> Result<ScopeTemplate, String> {
        let Value::Object(fields) = scope else {
            return Err(
                "`scope` must be an object (§3c: types, topics, filter, omit, stats)".into(),
            );
        };
        let mut template = ScopeTemplate::default();
        for (field, value) in fields {
            match field.as_str() {
                "types" => {
                    for name in strings(&value, "`scope.types`")? {
                        if templates {
                            no_placeholder(&name, "scope.types")?;
                        }
                    }
                    template.types = Some(value);
                }
                "topics" => {
                    let topics = strings(&value, "`scope.topics`")?
                        .iter()
                        .map(|text| {
                            let template = Template::new(text, templates)?;
                            TopicPattern::parse(&template.sample())?;
                            Ok(template)
                        })
                        .collect::<Result<_, String>>()
                        .map_err(|why| format!("`scope.topics`: {why}"))?;
                    template.topics = Some(topics);
                }
                "filter" => {
                    let mut filters = Vec::new();
                    for (resource_type, texts) in per_type(&value, "scope.filter", templates)? {
                        if texts.len() > MAX_ROW_FILTERS {
                            return Err(format!(
                                "`scope.filter.{resource_type}` has more than \
                                 {MAX_ROW_FILTERS} conditions"
                            ));
                        }
                        let parsed = texts
                            .iter()
                            .map(|text| FilterTemplate::parse(text, templates))
                            .collect::<Result<_, String>>()
                            .map_err(|why| format!("`scope.filter.{resource_type}`: {why}"))?;
                        filters.push((resource_type, parsed));
                    }
                    template.filter = Some(filters);
                }
                "omit" => {
                    for (_, columns) in per_type(&value, "scope.omit", templates)? {
                        for column in columns.iter().filter(|_| templates) {
                            no_placeholder(column, "scope.omit")?;
                        }
                    }
                    template.omit = Some(value);
                }
                "stats" => {
                    if !value.is_boolean() {
                        return Err(format!("`scope.stats` must be true or false, not {value}"));
                    }
                    template.stats = Some(value);
                }
                other => {
                    return Err(format!(
                        "unknown field `scope.{other}` (fields: types, topics, filter, omit, stats)"
                    ))
                }
            }
        }
        Ok(template)
    }

    fn fill(&self, claims: &Map<String, Value>) -> Result<Value, PolicyRefusal> {
        let mut scope = Map::new();
        if let Some(types) = &self.types {
            scope.insert("types".into(), types.clone());
        }
        if let Some(topics) = &self.topics {
            let filled = topics
                .iter()
                .map(|topic| {
                    let text = topic.fill_from(claims, Place::Topic)?;
                    // The characters allowed keep it a topic; a length beyond the
                    // limit would not parse.
                    match TopicPattern::parse(&text) {
                        Ok(_) => Ok(Value::String(text)),
                        Err(_) => Err(unsafe_in(topic, Place::Topic)),
                    }
                })
                .collect::<Result<_, _>>()?;
            scope.insert("topics".into(), Value::Array(filled));
        }
        if let Some(filter) = &self.filter {
            let mut by_type = Map::new();
            for (resource_type, filters) in filter {
                let filled = filters
                    .iter()
                    .map(|filter| filter.fill(claims).map(Value::String))
                    .collect::<Result<_, _>>()?;
                by_type.insert(resource_type.clone(), Value::Array(filled));
            }
            scope.insert("filter".into(), Value::Object(by_type));
        }
        if let Some(omit) = &self.omit {
            scope.insert("omit".into(), omit.clone());
        }
        if let Some(stats) = &self.stats {
            scope.insert("stats".into(), stats.clone());
        }
        Ok(Value::Object(scope))
    }
}

/// A refusal naming the template's first placeholder.
fn unsafe_in(template: &Template, place: Place) -> PolicyRefusal {
    let path = template
        .parts
        .iter()
        .find_map(|part| match part {
            Part::Claim(path) => Some(path.to_string()),
            Part::Text(_) => None,
        })
        .unwrap_or_default();
    PolicyRefusal::UnsafeValue(path, place.name())
}

impl FilterTemplate {
    fn parse(text: &str, templates: bool) -> Result<FilterTemplate, String> {
        let template = Template::new(text, templates)?;
        if template.has_placeholders() {
            // `<column>=<op>.` must be written out before any placeholder.
            let fixed = template
                .leading_text()
                .split_once('=')
                .is_some_and(|(_, condition)| condition.contains('.'));
            if !fixed {
                return Err(format!(
                    "{text:?}: a placeholder may stand only in the value, after `<column>=<op>.`"
                ));
            }
        }
        let sample = RowFilter::parse(&template.sample())?;
        if matches!(sample.op, Op::IsNull) && template.has_placeholders() {
            return Err(format!("{text:?}: `is.null` takes no placeholder"));
        }
        Ok(FilterTemplate {
            shape: shape_of(&sample),
            template,
        })
    }

    fn fill(&self, claims: &Map<String, Value>) -> Result<String, PolicyRefusal> {
        let text = self.template.fill_from(claims, Place::Filter)?;
        match RowFilter::parse(&text) {
            Ok(filter) if shape_of(&filter) == self.shape => Ok(text),
            _ => Err(unsafe_in(&self.template, Place::Filter)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(value: Value) -> Policy {
        Policy::parse(&value.to_string()).unwrap()
    }

    fn refused(value: Value) -> String {
        Policy::parse(&value.to_string()).unwrap_err()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn helpdesk() -> Policy {
        policy(json!({"rules": [
            {"name": "suspended", "when": {"suspended": true}, "refuse": true},
            {"name": "admins", "when": {"realm_access.roles": "admin"}, "scope": {}},
            {"name": "agents", "when": {"realm_access.roles": ["agent", "lead"]},
             "scope": {"types": ["ticket", "agent"],
                       "filter": {"ticket": ["assignee=eq.{preferred_username}"]}}},
            {"name": "customers", "when": {"app_metadata.role": "customer"},
             "scope": {"types": ["ticket"], "topics": ["user.{sub}.*"],
                       "filter": {"ticket": ["requester=eq.{sub}", "state=in.(open,pending)"]},
                       "omit": {"ticket": ["internal_note"]}, "stats": false}}
        ]}))
    }

    #[test]
    fn first_matching_rule_wins_and_fills_placeholders() {
        let policy = helpdesk();
        let agent = claims(json!({"sub": "u1", "preferred_username": "dara",
                                  "realm_access": {"roles": ["offline_access", "agent"]}}));
        assert_eq!(
            policy.scope_for(&agent).unwrap(),
            json!({"types": ["ticket", "agent"], "filter": {"ticket": ["assignee=eq.dara"]}})
        );
        let customer = claims(json!({"sub": "c42", "app_metadata": {"role": "customer"}}));
        assert_eq!(
            policy.scope_for(&customer).unwrap(),
            json!({"types": ["ticket"], "topics": ["user.c42.*"],
                   "filter": {"ticket": ["requester=eq.c42", "state=in.(open,pending)"]},
                   "omit": {"ticket": ["internal_note"]}, "stats": false})
        );
        // An admin who is an agent too: the earlier rule wins.
        let admin = claims(json!({"realm_access": {"roles": ["agent", "admin"]}}));
        assert_eq!(policy.scope_for(&admin).unwrap(), json!({}));
        // A refusing rule stops before a granting one.
        let suspended = claims(json!({"suspended": true, "realm_access": {"roles": ["admin"]}}));
        let refusal = policy.scope_for(&suspended).unwrap_err();
        assert_eq!(
            refusal,
            PolicyRefusal::Refused("rules[0] (\"suspended\")".into())
        );
        // `true` is not `"true"`, and a number claim is compared as a number.
        let string_true = claims(json!({"suspended": "true"}));
        assert_eq!(
            policy.scope_for(&string_true),
            Err(PolicyRefusal::NoRuleMatched)
        );
    }

    #[test]
    fn no_match_refuses() {
        let policy = helpdesk();
        for token in [
            json!({}),
            json!({"realm_access": {"roles": []}}),
            json!({"realm_access": {"roles": ["viewer"]}}),
            json!({"realm_access": "agent"}),
            json!({"app_metadata": {"role": ["customer-ish"]}}),
        ] {
            assert_eq!(
                policy.scope_for(&claims(token.clone())),
                Err(PolicyRefusal::NoRuleMatched),
                "{token}"
            );
        }
        // A catch-all last rule gives everyone else its scope.
        let policy = policy_with_catch_all();
        assert_eq!(
            policy.scope_for(&claims(json!({"sub": "x"}))).unwrap(),
            json!({"types": ["profile"], "stats": false})
        );
    }

    fn policy_with_catch_all() -> Policy {
        policy(json!({"rules": [
            {"when": {"role": "agent"}, "scope": {}},
            {"scope": {"types": ["profile"], "stats": false}}
        ]}))
    }

    #[test]
    fn all_conditions_must_hold_and_arrays_match_by_membership() {
        let policy = policy(json!({"rules": [
            {"when": {"org.id": "acme", "roles": ["agent", "lead"], "level": [2, 3]},
             "scope": {"types": ["ticket"]}}
        ]}));
        let ok = claims(json!({"org": {"id": "acme"}, "roles": ["x", "lead"], "level": 3}));
        assert!(policy.scope_for(&ok).is_ok());
        for miss in [
            json!({"org": {"id": "acme"}, "roles": ["x", "lead"]}),
            json!({"org": {"id": "globex"}, "roles": ["lead"], "level": 3}),
            json!({"org": {"id": "acme"}, "roles": "x", "level": 3}),
            json!({"org": {"id": "acme"}, "roles": ["lead"], "level": "3"}),
            json!({"org": {"id": "acme"}, "roles": [["lead"]], "level": 3}),
        ] {
            assert!(policy.scope_for(&claims(miss.clone())).is_err(), "{miss}");
        }
        // Namespaced (Auth0-style) claim names with dots are found as well.
        let policy = policy_for(json!({"https://example.com/roles": "customer"}), json!({}));
        let token = claims(json!({"https://example.com/roles": ["customer"]}));
        assert!(policy.scope_for(&token).is_ok());
    }

    fn policy_for(when: Value, scope: Value) -> Policy {
        policy(json!({"rules": [{"when": when, "scope": scope}]}))
    }

    #[test]
    fn substituted_values_never_change_a_filter() {
        let policy = policy_for(
            json!({}),
            json!({"filter": {"ticket": ["requester=eq.{sub}", "project_id=in.(p0,{org.project})"]},
                   "topics": ["user.{sub}.*"]}),
        );
        let scope_of = |sub: Value, project: Value| {
            policy.scope_for(&claims(json!({"sub": sub, "org": {"project": project}})))
        };
        let ok = scope_of(json!("c-42"), json!("p1")).unwrap();
        assert_eq!(
            ok["filter"]["ticket"],
            json!(["requester=eq.c-42", "project_id=in.(p0,p1)"])
        );
        assert_eq!(ok["topics"], json!(["user.c-42.*"]));
        // Numbers are written as JSON writes them.
        let numeric = scope_of(json!(42), json!(7)).unwrap();
        assert_eq!(numeric["filter"]["ticket"][0], json!("requester=eq.42"));
        // An `in` list cannot grow, a quote cannot open, nothing can be appended.
        for project in ["p1,p2", "p1)", "(p1", "\"p1", "p1\\", "p1&filter=x", "a\nb"] {
            assert_eq!(
                scope_of(json!("c1"), json!(project)),
                Err(PolicyRefusal::UnsafeValue("org.project".into(), "filter")),
                "{project:?}"
            );
        }
        // A topic cannot widen (`*`) or hold what topics do not.
        for sub in ["*", "a*", "Auth0|abc", "a b", "c1/x"] {
            assert_eq!(
                scope_of(json!(sub), json!("p1")),
                Err(PolicyRefusal::UnsafeValue("sub".into(), "topic")),
                "{sub:?}"
            );
        }
        // Missing, empty, null and structured claims are missing.
        for sub in [json!(""), json!(null), json!(["c1"]), json!({"id": "c1"})] {
            assert_eq!(
                scope_of(sub.clone(), json!("p1")),
                Err(PolicyRefusal::MissingClaim("sub".into())),
                "{sub}"
            );
        }
        assert_eq!(
            policy.scope_for(&claims(json!({"org": {"project": "p1"}}))),
            Err(PolicyRefusal::MissingClaim("sub".into()))
        );
    }

    #[test]
    fn a_value_may_hold_what_does_not_change_the_filter() {
        // `=`, `.` and spaces inside a value are part of the value (the column and the
        // operator come before any placeholder).
        let policy = policy_for(
            json!({}),
            json!({"filter": {"ticket": ["assignee=eq.{email}"]}}),
        );
        let scope = policy
            .scope_for(&claims(json!({"email": "dara.o=k@example.com"})))
            .unwrap();
        assert_eq!(
            scope["filter"]["ticket"][0],
            json!("assignee=eq.dara.o=k@example.com")
        );
        let parsed = RowFilter::parse(scope["filter"]["ticket"][0].as_str().unwrap()).unwrap();
        assert_eq!(parsed.column, "assignee");
    }

    #[test]
    fn braces() {
        let template = Template::parse("a{{b}}{c.d}e").unwrap();
        assert_eq!(
            template.parts,
            vec![
                Part::Text("a{b}".into()),
                Part::Claim(ClaimPath::parse("c.d").unwrap()),
                Part::Text("e".into())
            ]
        );
        for bad in ["a{b", "a}b", "{}", "{a..b}", "{b}x{b"] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_policies_name_the_rule() {
        for (value, says) in [
            (json!([]), "not a policy"),
            (json!({"rules": []}), "empty"),
            (json!({"rule": []}), "unknown field"),
            (
                json!({"rules": [{"when": {}}]}),
                "rules[0]: needs a `scope`",
            ),
            (
                json!({"rules": [{"scope": {}}, {"name": "x", "scope": {}, "refuse": true}]}),
                "rules[1] (\"x\"): has both",
            ),
            (
                json!({"rules": [{"scope": {}, "whn": {}}]}),
                "unknown field `whn`",
            ),
            (
                json!({"rules": [{"when": {"role": []}, "scope": {}}]}),
                "never matches",
            ),
            (
                json!({"rules": [{"when": {"role": {"a": 1}}, "scope": {}}]}),
                "accepted values",
            ),
            (
                json!({"rules": [{"when": {"a..b": 1}, "scope": {}}]}),
                "`when`",
            ),
            (
                json!({"rules": [{"scope": {"type": ["ticket"]}}]}),
                "unknown field `scope.type`",
            ),
            (
                json!({"rules": [{"scope": {"types": "ticket"}}]}),
                "scope.types",
            ),
            (
                json!({"rules": [{"scope": {"types": ["{sub}"]}}]}),
                "placeholders stand only",
            ),
            (
                json!({"rules": [{"scope": {"stats": "no"}}]}),
                "scope.stats",
            ),
            (
                json!({"rules": [{"scope": {"topics": ["User.*"]}}]}),
                "invalid topic",
            ),
            (
                json!({"rules": [{"scope": {"filter": ["a=eq.1"]}}]}),
                "scope.filter",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": ["state=like.x"]}}}]}),
                "unknown operator",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": ["{col}=eq.1"]}}}]}),
                "only in the value",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": ["a={op}.1"]}}}]}),
                "only in the value",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": ["a=is.{x}"]}}}]}),
                "is",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"{t}": ["a=eq.1"]}}}]}),
                "placeholders stand only",
            ),
            (
                json!({"rules": [{"scope": {"omit": {"ticket": ["{col}"]}}}]}),
                "placeholders stand only",
            ),
            (
                json!({"rules": [{"scope": {"omit": {"ticket": "body"}}}]}),
                "scope.omit.ticket",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": ["a=eq.{b"]}}}]}),
                "unclosed",
            ),
            (
                json!({"rules": [{"scope": {"filter": {"ticket": vec!["a=eq.1"; 17]}}}]}),
                "more than 16",
            ),
        ] {
            let error = refused(value.clone());
            assert!(
                error.contains(says),
                "{value}: {error:?} should say {says:?}"
            );
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("changecast-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"rules": [{"scope": {"types": ["ticket"]}}]}"#).unwrap();
        let loaded = Policy::load(&good).unwrap();
        assert_eq!(
            loaded.scope_for(&Map::new()).unwrap(),
            json!({"types": ["ticket"]})
        );
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"rules": [{"scope": {"stats": 1}}]}"#).unwrap();
        let error = Policy::load(&bad).unwrap_err();
        assert!(
            error.contains("bad.json") && error.contains("rules[0]"),
            "{error}"
        );
        let error = Policy::load(&dir.join("missing.json")).unwrap_err();
        assert!(
            error.contains("missing.json") && error.contains("cannot open"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scope_claims_are_checked_without_placeholders() {
        let literal = json!({"types": ["ticket"], "topics": ["user.42.*"],
                             "filter": {"ticket": ["title=eq.{x}"]},
                             "omit": {"ticket": ["internal_note"]}, "stats": false});
        assert_eq!(check_scope(&literal), Ok(()));
        assert_eq!(check_scope(&json!({})), Ok(()));
        for (bad, says) in [
            (json!([]), "must be an object"),
            (json!({"typs": ["ticket"]}), "unknown field `scope.typs`"),
            (
                json!({"filter": {"ticket": ["state=like.x"]}}),
                "unknown operator",
            ),
            (
                json!({"filter": {"ticket": "state=eq.x"}}),
                "scope.filter.ticket",
            ),
            (json!({"topics": ["a**"]}), "invalid topic"),
            (json!({"stats": "false"}), "scope.stats"),
        ] {
            let error = check_scope(&bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error:?} should say {says:?}");
        }
    }

    /// The policies in the docs, each ```json block holding `"rules"`.
    fn documented_policies(markdown: &str) -> Vec<Policy> {
        markdown
            .split("```json")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter_map(|text| serde_json::from_str::<Value>(text).ok())
            .filter(|value| value.get("rules").is_some())
            .map(|value| Policy::parse(&value.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn the_documented_policies_load_and_do_what_the_docs_say() {
        let guide = documented_policies(include_str!("../../docs/authorization.md"));
        assert_eq!(
            guide.len(),
            3,
            "docs/authorization.md: helpdesk, Supabase, Auth0"
        );
        assert_eq!(
            documented_policies(include_str!("../../README.md")).len(),
            1
        );
        let agent = claims(json!({"sub": "f3a1c2d4", "preferred_username": "dara",
                                  "tenant": {"id": "acme"},
                                  "realm_access": {"roles": ["offline_access", "support-agent"]}}));
        assert_eq!(
            guide[0].scope_for(&agent).unwrap(),
            json!({"types": ["ticket", "agent"], "filter": {"ticket": ["assignee=eq.dara"]}})
        );
        let customer = claims(json!({"sub": "c-1187", "realm_access": {"roles": ["customer"]}}));
        assert_eq!(
            guide[0].scope_for(&customer).unwrap()["filter"]["ticket"],
            json!(["requester=eq.c-1187"])
        );
        let nobody = claims(json!({"sub": "x", "realm_access": {"roles": ["viewer"]}}));
        assert_eq!(
            guide[0].scope_for(&nobody),
            Err(PolicyRefusal::NoRuleMatched)
        );
        let supabase = claims(json!({"sub": "5b0c9e1a-7f2d-4c43-9a77-3e1f0b6d2a10",
                                     "role": "authenticated",
                                     "app_metadata": {"tenant_id": "acme"}}));
        assert_eq!(
            guide[1].scope_for(&supabase).unwrap()["topics"],
            json!(["portal.5b0c9e1a-7f2d-4c43-9a77-3e1f0b6d2a10.*"])
        );
        let staff = claims(json!({"sub": "s1", "role": "authenticated",
                                  "app_metadata": {"role": "support"}}));
        assert_eq!(guide[1].scope_for(&staff).unwrap(), json!({}));
        // Auth0's `sub` holds a `|`: fine in a filter value.
        let auth0 = claims(json!({"sub": "auth0|64f1", "https://example.com/roles": ["customer"]}));
        assert_eq!(
            guide[2].scope_for(&auth0).unwrap()["filter"]["ticket"],
            json!(["requester=eq.auth0|64f1"])
        );
    }

    #[test]
    fn refusals_name_claims_not_values() {
        let policy = policy_for(json!({}), json!({"filter": {"ticket": ["a=eq.{secret}"]}}));
        let refusal = policy
            .scope_for(&claims(json!({"secret": "s3cr3t,x"})))
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains("`secret`") && !refusal.contains("s3cr3t"),
            "{refusal}"
        );
    }
}
