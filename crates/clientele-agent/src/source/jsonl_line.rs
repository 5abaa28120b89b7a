//! One line of a JSONL source, parsed in one pass: an object whose fields are each named once,
//! or what the line is instead. `serde_json::Value` keeps the last of two fields of one name, so
//! a line naming a field twice would lose one of its values without a word. A field's number
//! keeps every digit ([`ExactValue`]).

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::exact_number::ExactValue;

/// What a JSONL line holds.
#[derive(Debug, PartialEq)]
pub enum JsonlLine {
    /// The fields of an object, each named once.
    Object(Map<String, Value>),
    /// A line that is valid JSON but no object: what it is ("a number", "an array", ...).
    NotAnObject(&'static str),
    /// An object that names a field more than once: the first such name, and the fields with
    /// the first value of each (so the row still has its key, and its customer is not taken
    /// for one that left the source).
    RepeatedField {
        name: String,
        fields: Map<String, Value>,
    },
}

impl JsonlLine {
    /// Parses a line; the error is serde_json's message for a line that is not JSON.
    pub fn parse(line: &str) -> Result<JsonlLine, String> {
        serde_json::from_str(line).map_err(|error| error.to_string())
    }
}

impl<'de> Deserialize<'de> for JsonlLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = JsonlLine;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<JsonlLine, A::Error> {
        let mut fields = Map::new();
        let mut repeated = None;
        while let Some(name) = access.next_key::<String>()? {
            if fields.contains_key(&name) {
                access.next_value::<IgnoredAny>()?;
                repeated.get_or_insert(name);
            } else {
                let ExactValue(value) = access.next_value()?;
                fields.insert(name, value);
            }
        }
        Ok(match repeated {
            None => JsonlLine::Object(fields),
            Some(name) => JsonlLine::RepeatedField { name, fields },
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<JsonlLine, A::Error> {
        while access.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonlLine::NotAnObject("an array"))
    }

    fn visit_unit<E>(self) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<JsonlLine, E> {
        Ok(JsonlLine::NotAnObject("a string"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_object_keeps_every_field() {
        let JsonlLine::Object(fields) =
            JsonlLine::parse(r#"{"id": 1, "name": "Ada", "tags": ["a", {"b": null}]}"#)
                .expect("an object")
        else {
            panic!("not an object");
        };
        assert_eq!(
            Value::Object(fields),
            json!({"id": 1, "name": "Ada", "tags": ["a", {"b": null}]})
        );
    }

    #[test]
    fn a_field_named_twice_is_an_error_naming_it() {
        let Ok(JsonlLine::RepeatedField { name, fields }) = JsonlLine::parse(
            r#"{"id": 1, "email": "a@x.fi", "email": "b@x.fi", "x": [1], "id": 2}"#,
        ) else {
            panic!("not refused");
        };
        assert_eq!(name, "email");
        assert_eq!(
            Value::Object(fields),
            json!({"id": 1, "email": "a@x.fi", "x": [1]})
        );
        assert!(JsonlLine::parse(r#"{"email": 1, "email": 2, "x": }"#).is_err());
        // Inside a value, JSON's usual rule: the last one is kept.
        assert!(matches!(
            JsonlLine::parse(r#"{"id": 1, "x": {"a": 1, "a": 2}}"#),
            Ok(JsonlLine::Object(_))
        ));
    }

    #[test]
    fn other_values_say_what_they_are() {
        for (line, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("-3", "a number"),
            ("3", "a number"),
            ("2.5", "a number"),
            (r#""text""#, "a string"),
            (r#"[1, [2], {"a": 3}]"#, "an array"),
        ] {
            assert_eq!(
                JsonlLine::parse(line),
                Ok(JsonlLine::NotAnObject(kind)),
                "{line}"
            );
        }
        assert!(JsonlLine::parse("{\"id\": 1").is_err());
        assert!(JsonlLine::parse("{} {}").is_err());
    }
}
