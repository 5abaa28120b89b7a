//! The customer's fields as the agent sees them: which ones a source row may fill, which ones a
//! mirror table holds (and as which SQL type), and how raw column values become API values.

use serde_json::{Map, Value};

/// How a mirror column stores its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Number,
    Integer,
    /// Arrays and objects, stored as JSON text.
    Json,
}

/// Every field of a customer response, in the mirror table's column order.
pub const CUSTOMER_FIELDS: &[(&str, Kind)] = &[
    ("id", Kind::Text),
    ("external_id", Kind::Text),
    ("email", Kind::Text),
    ("username", Kind::Text),
    ("first_name", Kind::Text),
    ("last_name", Kind::Text),
    ("company", Kind::Text),
    ("name", Kind::Text),
    ("phone", Kind::Text),
    ("phone_alt", Kind::Text),
    ("email_verified", Kind::Bool),
    ("email_opt_out", Kind::Bool),
    ("archived", Kind::Bool),
    ("currency", Kind::Text),
    ("discount_percent", Kind::Number),
    ("payment_terms", Kind::Text),
    ("note", Kind::Text),
    ("birthday", Kind::Text),
    ("addresses", Kind::Json),
    ("tags", Kind::Json),
    ("groups", Kind::Json),
    ("teams", Kind::Json),
    ("custom", Kind::Json),
    ("has_password", Kind::Bool),
    ("version", Kind::Integer),
    ("created_at", Kind::Text),
    ("updated_at", Kind::Text),
];

/// Fields the hub assigns; a client never writes them.
pub const READ_ONLY: &[&str] = &["id", "has_password", "version", "created_at", "updated_at"];

/// Input-only fields a source may fill besides the response fields.
const INPUT_ONLY: &[&str] = &[
    "password",
    "addresses_mode",
    "addresses_key",
    "add_tags",
    "remove_tags",
    "add_groups",
    "remove_groups",
    "add_teams",
    "remove_teams",
];

pub fn kind_of(field: &str) -> Option<Kind> {
    CUSTOMER_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, kind)| *kind)
}

/// A field a source row may fill (renames in `[fields]` must target one of these).
pub fn is_writable(field: &str) -> bool {
    (kind_of(field).is_some() && !READ_ONLY.contains(&field)) || INPUT_ONLY.contains(&field)
}

/// Brings a raw column value to the API's type for `field`: databases and CSV files have no
/// booleans or arrays, so `1`/`"true"` become `true` and JSON text becomes the array or object.
/// Values that do not fit are passed on unchanged, for the hub to reject with a precise error.
pub fn coerce(field: &str, value: Value) -> Value {
    let Some(kind) = kind_of(field) else {
        return match (field, value) {
            (
                "add_tags" | "remove_tags" | "add_groups" | "remove_groups" | "add_teams"
                | "remove_teams",
                Value::String(text),
            ) => parse_json_text(text),
            (_, value) => value,
        };
    };
    match (kind, value) {
        (Kind::Bool, Value::Number(number)) => match number.as_i64() {
            Some(0) => Value::Bool(false),
            Some(1) => Value::Bool(true),
            _ => Value::Number(number),
        },
        (Kind::Bool, Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "t" | "yes" => Value::Bool(true),
            "false" | "0" | "f" | "no" => Value::Bool(false),
            _ => Value::String(text),
        },
        (Kind::Number, Value::String(text)) => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(text)),
        (Kind::Integer, Value::String(text)) => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::String(text)),
        (Kind::Text, Value::Number(number)) => Value::String(number.to_string()),
        (Kind::Json, Value::String(text)) => parse_json_text(text),
        (_, value) => value,
    }
}

fn parse_json_text(text: String) -> Value {
    match serde_json::from_str::<Value>(&text) {
        Ok(parsed @ (Value::Array(_) | Value::Object(_))) => parsed,
        _ => Value::String(text),
    }
}

/// A customer's writable fields only (what a PATCH or create may carry).
pub fn writable_part(customer: &Map<String, Value>) -> Map<String, Value> {
    customer
        .iter()
        .filter(|(field, _)| is_writable(field))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn database_values_become_api_values() {
        assert_eq!(coerce("email_verified", json!(1)), json!(true));
        assert_eq!(coerce("archived", json!("false")), json!(false));
        assert_eq!(coerce("tags", json!("[\"a\",\"b\"]")), json!(["a", "b"]));
        assert_eq!(coerce("discount_percent", json!("12.5")), json!(12.5));
        assert_eq!(coerce("external_id", json!(42)), json!("42"));
        assert_eq!(coerce("tags", json!("not json")), json!("not json"));
        assert_eq!(coerce("first_name", json!("Ann")), json!("Ann"));
    }

    #[test]
    fn writable_fields_exclude_what_the_hub_assigns() {
        assert!(is_writable("first_name"));
        assert!(is_writable("password"));
        assert!(!is_writable("id"));
        assert!(!is_writable("version"));
        assert!(!is_writable("frist_name"));
    }
}
