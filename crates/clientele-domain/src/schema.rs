//! The customer schema (`GET/PUT /v1/schema`): which top-level fields a create must carry
//! (`required_on_create`) and the typed custom fields (`custom_fields`). Pure: parsing and
//! checking a schema document, and checking a customer write against a schema.
//!
//! Rules:
//! - Once a schema declares any custom field, `custom` may hold only declared fields; a
//!   declared field may be `null` (unset). Without declared fields `custom` is free-form.
//! - A write is checked when it writes `custom` (the whole map it writes) and, on create, for
//!   the required fields. Customers stored before a schema change are not revalidated: the
//!   schema applies to writes from then on.
//! - `required_on_create` names top-level customer fields, or `custom.<declared field>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::validation::is_date;
use crate::{Customer, ValidationErrors};

/// The schema customers are written against; the default declares nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schema {
    /// Fields a create must set.
    pub required_on_create: Vec<String>,
    /// The declared custom fields by name.
    pub custom_fields: BTreeMap<String, FieldType>,
}

/// The type of a custom field, with its constraints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldType {
    String {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1)]
        max_length: Option<u64>,
    },
    Integer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// Bounds are kept as given (`1` stays `1`, not `1.0`).
    Number {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<f64>)]
        min: Option<serde_json::Number>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<f64>)]
        max: Option<serde_json::Number>,
    },
    Boolean,
    Date,
    Enum {
        values: Vec<String>,
    },
}

/// The schema of a hub where none was set: nothing required, `custom` free-form.
pub static NO_SCHEMA: Schema = Schema {
    required_on_create: Vec::new(),
    custom_fields: BTreeMap::new(),
};

/// The top-level customer fields `required_on_create` may name.
pub const REQUIRABLE: &[&str] = &[
    "external_id",
    "email",
    "username",
    "first_name",
    "last_name",
    "company",
    "name",
    "phone",
    "phone_alt",
    "currency",
    "discount_percent",
    "payment_terms",
    "note",
    "birthday",
    "addresses",
    "tags",
    "groups",
    "teams",
    "password",
];

pub(crate) const MAX_CUSTOM_FIELDS: usize = 200;
const MAX_ENUM_VALUES: usize = 1000;

impl Schema {
    /// Parses and checks a schema document, naming every fault by its path.
    pub fn parse(document: &Value) -> Result<Schema, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let Some(object) = document.as_object() else {
            return Err(ValidationErrors::single(
                "body",
                "invalid_type",
                "the schema must be a JSON object",
            ));
        };
        for key in object.keys() {
            if key != "required_on_create" && key != "custom_fields" {
                errors.push(key.as_str(), "unknown_field", "this field does not exist");
            }
        }
        let mut custom_fields = BTreeMap::new();
        match object.get("custom_fields") {
            None | Some(Value::Null) => {}
            Some(Value::Object(fields)) => {
                if fields.len() > MAX_CUSTOM_FIELDS {
                    errors.push(
                        "custom_fields",
                        "too_many",
                        format!("at most {MAX_CUSTOM_FIELDS} custom fields"),
                    );
                }
                for (name, spec) in fields {
                    let path = format!("custom_fields.{name}");
                    if !is_field_name(name) {
                        errors.push(
                            path.clone(),
                            "invalid_name",
                            "1 to 64 characters of a-z, A-Z, 0-9 and _",
                        );
                    }
                    if let Some(field) = parse_field(&path, spec, &mut errors) {
                        custom_fields.insert(name.clone(), field);
                    }
                }
            }
            Some(_) => errors.push("custom_fields", "invalid_type", "must be an object"),
        }
        let mut required_on_create = Vec::new();
        match object.get("required_on_create") {
            None | Some(Value::Null) => {}
            Some(Value::Array(names)) => {
                for (i, name) in names.iter().enumerate() {
                    let path = format!("required_on_create[{i}]");
                    match name.as_str() {
                        Some(name) if is_requirable(name, &custom_fields) => {
                            if !required_on_create.iter().any(|n| n == name) {
                                required_on_create.push(name.to_owned());
                            }
                        }
                        Some(_) => errors.push(
                            path,
                            "unknown_field",
                            "not a customer field (or custom.<declared field>)",
                        ),
                        None => errors.push(path, "invalid_type", "must be a field name"),
                    }
                }
            }
            Some(_) => errors.push(
                "required_on_create",
                "invalid_type",
                "must be an array of field names",
            ),
        }
        errors.into_result()?;
        Ok(Schema {
            required_on_create,
            custom_fields,
        })
    }

    /// Checks a written `custom` map: declared fields only (once any is declared), each of its
    /// type. A field sent as `stored` holds it is not checked: a schema tightened since it was
    /// stored does not make re-sending an unchanged customer fail (the write changes nothing).
    pub fn check_custom(
        &self,
        custom: &Map<String, Value>,
        stored: &Map<String, Value>,
        errors: &mut ValidationErrors,
    ) {
        if self.custom_fields.is_empty() {
            return;
        }
        for (name, value) in custom {
            if stored.get(name) == Some(value) {
                continue;
            }
            let path = format!("custom.{name}");
            match self.custom_fields.get(name) {
                None => errors.push(
                    path,
                    "unknown_custom_field",
                    "the schema declares no such custom field",
                ),
                Some(_) if value.is_null() => {}
                Some(field) => field.check(&path, value, errors),
            }
        }
    }

    /// Checks that a customer about to be created sets every required field.
    pub fn check_required(&self, created: &Customer, errors: &mut ValidationErrors) {
        if self.required_on_create.is_empty() {
            return;
        }
        let Ok(Value::Object(document)) = serde_json::to_value(created) else {
            return;
        };
        for name in &self.required_on_create {
            let set = match name.strip_prefix("custom.") {
                Some(custom) => created.custom.get(custom).is_some_and(is_set),
                None if name == "password" => created.has_password,
                None => document.get(name).is_some_and(is_set),
            };
            if !set {
                errors.push(
                    name.as_str(),
                    "required",
                    "the schema requires this field when a customer is created",
                );
            }
        }
    }
}

impl FieldType {
    fn check(&self, path: &str, value: &Value, errors: &mut ValidationErrors) {
        let wrong_type = |errors: &mut ValidationErrors, what: &str| {
            errors.push(path, "invalid_type", format!("must be {what}"));
        };
        match self {
            FieldType::String { max_length } => match value.as_str() {
                Some(text) => {
                    if let Some(max) = max_length
                        && text.chars().count() as u64 > *max
                    {
                        errors.push(path, "too_long", format!("at most {max} characters"));
                    }
                }
                None => wrong_type(errors, "a string"),
            },
            // Compared as integers: a double would take 2^53 + 1 for 2^53.
            FieldType::Integer { min, max } => match value.as_i64() {
                Some(n) => check_range(path, n, *min, *max, errors),
                None => wrong_type(errors, "an integer"),
            },
            FieldType::Number { min, max } => match value.as_f64() {
                Some(n) => {
                    let (min, max) = (min.as_ref(), max.as_ref());
                    check_range(
                        path,
                        n,
                        min.and_then(|m| m.as_f64()),
                        max.and_then(|m| m.as_f64()),
                        errors,
                    )
                }
                None => wrong_type(errors, "a number"),
            },
            FieldType::Boolean => {
                if !value.is_boolean() {
                    wrong_type(errors, "true or false");
                }
            }
            FieldType::Date => match value.as_str() {
                Some(text) if is_date(text) => {}
                Some(_) => errors.push(path, "invalid_date", "must be a real date as YYYY-MM-DD"),
                None => wrong_type(errors, "a date string YYYY-MM-DD"),
            },
            FieldType::Enum { values } => match value.as_str() {
                Some(text) if values.iter().any(|v| v == text) => {}
                _ => errors.push(path, "invalid_value", enum_message(values)),
            },
        }
    }
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    path: &str,
    n: T,
    min: Option<T>,
    max: Option<T>,
    errors: &mut ValidationErrors,
) {
    if min.is_some_and(|min| n < min) || max.is_some_and(|max| n > max) {
        let bounds = match (min, max) {
            (Some(min), Some(max)) => format!("between {min} and {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => String::new(),
        };
        errors.push(path, "out_of_range", format!("must be {bounds}"));
    }
}

/// The values an enum field takes, for its error: all of a short list; of a long one, the first
/// few and where to find the rest (every item of a 1,000-item sync may carry one).
fn enum_message(values: &[String]) -> String {
    const SHOWN: usize = 10;
    if values.len() <= SHOWN {
        return format!("must be one of {}", values.join(", "));
    }
    format!(
        "must be one of the {} values GET /v1/schema lists ({}, ...)",
        values.len(),
        values[..SHOWN].join(", ")
    )
}

/// Whether a field of a customer counts as set: not null, not an empty list or object.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::String(text) => !text.is_empty(),
        _ => true,
    }
}

fn is_field_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_requirable(name: &str, custom_fields: &BTreeMap<String, FieldType>) -> bool {
    match name.strip_prefix("custom.") {
        Some(custom) => custom_fields.contains_key(custom),
        None => REQUIRABLE.contains(&name),
    }
}

/// One custom field's declaration, checked option by option.
fn parse_field(path: &str, spec: &Value, errors: &mut ValidationErrors) -> Option<FieldType> {
    let Some(spec) = spec.as_object() else {
        errors.push(path, "invalid_type", "must be an object with a type");
        return None;
    };
    let kind = spec.get("type").and_then(Value::as_str);
    let options: &[&str] = match kind {
        Some("string") => &["max_length"],
        Some("integer") | Some("number") => &["min", "max"],
        Some("boolean") | Some("date") => &[],
        Some("enum") => &["values"],
        _ => {
            errors.push(
                format!("{path}.type"),
                "invalid_type",
                "one of string, integer, number, boolean, date, enum",
            );
            return None;
        }
    };
    let before = errors.0.len();
    for key in spec.keys() {
        if key != "type" && !options.contains(&key.as_str()) {
            errors.push(
                format!("{path}.{key}"),
                "unknown_field",
                "this option does not exist for this type",
            );
        }
    }
    let option = |key: &str| spec.get(key).filter(|v| !v.is_null());
    let field = match kind {
        Some("string") => FieldType::String {
            max_length: match option("max_length") {
                None => None,
                Some(v) => match v.as_u64().filter(|n| *n >= 1) {
                    Some(n) => Some(n),
                    None => {
                        errors.push(
                            format!("{path}.max_length"),
                            "invalid_type",
                            "must be a positive integer",
                        );
                        None
                    }
                },
            },
        },
        Some("integer") => {
            let bound = |key: &str, errors: &mut ValidationErrors| match option(key) {
                None => None,
                Some(v) => v.as_i64().or_else(|| {
                    errors.push(
                        format!("{path}.{key}"),
                        "invalid_type",
                        "must be an integer",
                    );
                    None
                }),
            };
            let (min, max) = (bound("min", errors), bound("max", errors));
            check_bounds(path, min, max, errors);
            FieldType::Integer { min, max }
        }
        Some("number") => {
            let bound = |key: &str, errors: &mut ValidationErrors| match option(key) {
                None => None,
                Some(Value::Number(n)) => Some(n.clone()),
                Some(_) => {
                    errors.push(format!("{path}.{key}"), "invalid_type", "must be a number");
                    None
                }
            };
            let (min, max) = (bound("min", errors), bound("max", errors));
            let as_f64 = |n: &Option<serde_json::Number>| n.as_ref().and_then(|n| n.as_f64());
            check_bounds(path, as_f64(&min), as_f64(&max), errors);
            FieldType::Number { min, max }
        }
        Some("boolean") => FieldType::Boolean,
        Some("date") => FieldType::Date,
        _ => {
            let values: Option<Vec<String>> =
                option("values")
                    .and_then(Value::as_array)
                    .and_then(|values| {
                        values
                            .iter()
                            .map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    });
            match values {
                Some(values) if values.len() > MAX_ENUM_VALUES => {
                    errors.push(
                        format!("{path}.values"),
                        "too_many",
                        format!("at most {MAX_ENUM_VALUES} values"),
                    );
                    return None;
                }
                Some(values)
                    if !values.is_empty()
                        && values
                            .iter()
                            .enumerate()
                            .all(|(i, v)| !values[..i].contains(v)) =>
                {
                    FieldType::Enum { values }
                }
                _ => {
                    errors.push(
                        format!("{path}.values"),
                        "invalid_values",
                        "must be a non-empty array of distinct strings",
                    );
                    return None;
                }
            }
        }
    };
    (errors.0.len() == before).then_some(field)
}

fn check_bounds<T: PartialOrd>(
    path: &str,
    min: Option<T>,
    max: Option<T>,
    errors: &mut ValidationErrors,
) {
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        errors.push(
            format!("{path}.min"),
            "out_of_range",
            "min must not exceed max",
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn faults(result: Result<Schema, ValidationErrors>) -> Vec<(String, &'static str)> {
        match result {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.into_iter().map(|e| (e.field, e.code)).collect(),
        }
    }

    fn example() -> Schema {
        Schema::parse(&json!({
            "required_on_create": ["currency", "custom.loyalty_tier"],
            "custom_fields": {
                "loyalty_tier": {"type": "enum", "values": ["gold", "silver"]},
                "points": {"type": "integer", "min": 0},
                "ratio": {"type": "number", "min": 0.5, "max": 1.5},
                "nick": {"type": "string", "max_length": 3},
                "vip": {"type": "boolean"},
                "since": {"type": "date"}
            }
        }))
        .expect("valid schema")
    }

    #[test]
    fn integer_bounds_are_exact_and_enum_errors_are_bounded() {
        // Found in a review: integer bounds were compared as doubles.
        let big = 9_007_199_254_740_993_i64; // 2^53 + 1
        let schema = Schema::parse(&json!({"custom_fields": {
            "n": {"type": "integer", "min": big},
            "tier": {"type": "enum", "values": (0..1000).map(|i| format!("v{i}")).collect::<Vec<_>>()},
        }}))
        .expect("valid schema");
        let check = |custom: Value| {
            let mut errors = ValidationErrors::default();
            schema.check_custom(
                custom.as_object().expect("object"),
                &Map::new(),
                &mut errors,
            );
            errors.0
        };
        let refused = check(json!({"n": big - 1}));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].code, "out_of_range");
        assert!(check(json!({"n": big})).is_empty());
        let refused = check(json!({"tier": "gold"}));
        assert_eq!(refused[0].code, "invalid_value");
        assert!(refused[0].message.len() < 200, "{}", refused[0].message);
        assert!(
            refused[0].message.contains("1000 values"),
            "{}",
            refused[0].message
        );
        assert_eq!(
            faults(Schema::parse(&json!({"custom_fields": {
                "n": {"type": "integer", "min": big, "max": big - 1},
            }}))),
            [("custom_fields.n.min".to_owned(), "out_of_range")]
        );
    }

    #[test]
    fn a_schema_round_trips_through_its_json() {
        let schema = example();
        let json = serde_json::to_value(&schema).expect("json");
        assert_eq!(
            json["custom_fields"]["points"],
            json!({"type": "integer", "min": 0})
        );
        assert_eq!(Schema::parse(&json).expect("parses again"), schema);
        assert_eq!(Schema::parse(&json!({})).expect("empty"), Schema::default());
    }

    #[test]
    fn schema_faults_are_named_by_path() {
        assert_eq!(
            faults(Schema::parse(&json!({
                "required_on_create": ["currency", "nickname", 3, "custom.undeclared"],
                "custom_fields": {
                    "a": {"type": "text"},
                    "b": {"type": "integer", "min": 5, "max": 1},
                    "c": {"type": "string", "max_length": -1, "pattern": "x"},
                    "d": {"type": "enum", "values": ["x", "x"]},
                    "bad name": {"type": "boolean"},
                    "e": "string"
                },
                "extra": true
            }))),
            vec![
                ("extra".into(), "unknown_field"),
                ("custom_fields.a.type".into(), "invalid_type"),
                ("custom_fields.b.min".into(), "out_of_range"),
                ("custom_fields.bad name".into(), "invalid_name"),
                ("custom_fields.c.pattern".into(), "unknown_field"),
                ("custom_fields.c.max_length".into(), "invalid_type"),
                ("custom_fields.d.values".into(), "invalid_values"),
                ("custom_fields.e".into(), "invalid_type"),
                ("required_on_create[1]".into(), "unknown_field"),
                ("required_on_create[2]".into(), "invalid_type"),
                ("required_on_create[3]".into(), "unknown_field"),
            ]
        );
    }

    #[test]
    fn custom_values_are_checked_by_type() {
        let schema = example();
        let mut errors = ValidationErrors::default();
        let custom = json!({
            "loyalty_tier": "bronze", "points": -1, "ratio": 2, "nick": "toolong",
            "vip": "yes", "since": "2026-02-30", "other": 1
        });
        schema.check_custom(custom.as_object().expect("map"), &Map::new(), &mut errors);
        let found: Vec<_> = errors
            .0
            .iter()
            .map(|e| (e.field.as_str(), e.code))
            .collect();
        assert_eq!(
            found,
            vec![
                ("custom.loyalty_tier", "invalid_value"),
                ("custom.nick", "too_long"),
                ("custom.other", "unknown_custom_field"),
                ("custom.points", "out_of_range"),
                ("custom.ratio", "out_of_range"),
                ("custom.since", "invalid_date"),
                ("custom.vip", "invalid_type"),
            ]
        );
        let mut errors = ValidationErrors::default();
        let good = json!({"loyalty_tier": "gold", "points": 3, "ratio": 1, "nick": "abc",
                          "vip": false, "since": "2024-02-29", "vip": null});
        schema.check_custom(good.as_object().expect("map"), &Map::new(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let mut errors = ValidationErrors::default();
        Schema::default().check_custom(custom.as_object().expect("map"), &Map::new(), &mut errors);
        assert!(errors.is_empty(), "no declared fields: custom is free-form");
    }
}
