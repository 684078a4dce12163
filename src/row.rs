//! A row's column values as row filters compare them (API.md §9): the model that journal
//! entries, snapshot rows and filters share. What the filters do with them is
//! `crate::selection`'s.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::value::RawValue;
use serde_json::Value;

/// A row's JSON object as row filters read it. Each column keeps its JSON text and is
/// decoded for comparison only when a filter reads it, then once for every filter and
/// subscriber: a large object column is not re-serialised per comparison, and a column no
/// filter names is never decoded.
#[derive(Debug, Default)]
pub struct Row(HashMap<String, Column>);

#[derive(Debug)]
struct Column {
    json: Box<RawValue>,
    comparable: OnceLock<Comparable>,
}

impl Row {
    /// The row of a JSON object; `None` for anything else. Numbers are not decoded here,
    /// so a number beyond `f64` (PostgreSQL's `numeric` has no such bound) cannot make
    /// the row unreadable.
    pub fn parse(json: &str) -> Option<Row> {
        let columns: HashMap<String, Box<RawValue>> = serde_json::from_str(json).ok()?;
        Some(Row(columns
            .into_iter()
            .map(|(name, json)| {
                let column = Column {
                    json,
                    comparable: OnceLock::new(),
                };
                (name, column)
            })
            .collect()))
    }

    /// The row's column names, in no particular order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `column`'s value as filters compare it; `None` when the row has no such column.
    pub fn get(&self, column: &str) -> Option<&Comparable> {
        self.0.get(column).map(|column| {
            column
                .comparable
                .get_or_init(|| Comparable::decode(column.json.get()))
        })
    }
}

/// A column's JSON value as filters compare it (API.md §9): numbers as numbers when the
/// operand is a number too, everything else as text — strings as themselves, `true`,
/// `false`, objects and arrays as their JSON.
#[derive(Debug, PartialEq)]
pub enum Comparable {
    Null,
    /// Its value, ±infinity beyond `f64`'s range, and its text.
    Number(f64, String),
    Text(String),
}

impl Comparable {
    pub(crate) fn decode(json: &str) -> Comparable {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Null) => Comparable::Null,
            Ok(Value::Number(number)) => {
                Comparable::Number(number.as_f64().unwrap_or(f64::NAN), number.to_string())
            }
            Ok(Value::String(text)) => Comparable::Text(text),
            Ok(other) => Comparable::Text(other.to_string()),
            // serde_json refuses numbers beyond f64's range, which Rust reads as
            // infinities; an object or array holding one compares as its JSON as is.
            Err(_) => match json.parse::<f64>() {
                Ok(number) => Comparable::Number(number, json.to_owned()),
                Err(_) => Comparable::Text(json.to_owned()),
            },
        }
    }
}
