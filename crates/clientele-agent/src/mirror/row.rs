//! A customer as one mirror row: a cell per column of `CUSTOMER_FIELDS`, in column order. Pull
//! decodes the change feed straight into these (no JSON object per customer to build, look
//! fields up in and free), and every upsert binds them the same way, whatever they came from.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sqlx::Arguments;
use sqlx::any::AnyArguments;

use crate::fields::{CUSTOMER_FIELDS, Kind};

/// One field's value as the hub sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// An array or object, as compact JSON text.
    Json(String),
}

/// A customer's fields in the mirror's column order; fields the hub did not send are `Null`.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorRow {
    pub cells: Vec<Cell>,
}

impl MirrorRow {
    /// The row of a customer object (fields the mirror has no column for are left out).
    pub fn from_customer(customer: &Value) -> MirrorRow {
        let cells = CUSTOMER_FIELDS
            .iter()
            .map(|(name, _)| customer.get(*name).map(Cell::of).unwrap_or(Cell::Null))
            .collect();
        MirrorRow { cells }
    }

    /// The `id` column.
    pub fn id(&self) -> Option<&str> {
        match self.cells.first() {
            Some(Cell::Str(id)) => Some(id),
            _ => None,
        }
    }

    /// Binds every column, each as its kind's SQL type (what does not fit the kind is NULL).
    pub fn bind<'q>(&'q self, args: &mut AnyArguments<'q>) -> anyhow::Result<()> {
        for ((_, kind), cell) in CUSTOMER_FIELDS.iter().zip(&self.cells) {
            cell.bind(*kind, args)?;
        }
        Ok(())
    }
}

impl Cell {
    fn of(value: &Value) -> Cell {
        match value {
            Value::Null => Cell::Null,
            Value::Bool(flag) => Cell::Bool(*flag),
            Value::Number(number) => match (number.as_i64(), number.as_u64()) {
                (Some(int), _) => Cell::Int(int),
                (None, Some(uint)) => Cell::UInt(uint),
                _ => Cell::Float(number.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(text) => Cell::Str(text.clone()),
            other => Cell::Json(other.to_string()),
        }
    }

    /// The cell as JSON text (for a text column holding a non-string, and for JSON columns).
    fn json_text(&self) -> String {
        match self {
            Cell::Null => "null".into(),
            Cell::Bool(flag) => flag.to_string(),
            Cell::Int(int) => int.to_string(),
            Cell::UInt(uint) => uint.to_string(),
            Cell::Float(float) => serde_json::Number::from_f64(*float)
                .map(|number| number.to_string())
                .unwrap_or_else(|| "null".into()),
            Cell::Str(text) => Value::String(text.clone()).to_string(),
            Cell::Json(text) => text.clone(),
        }
    }

    fn bind<'q>(&'q self, kind: Kind, args: &mut AnyArguments<'q>) -> anyhow::Result<()> {
        let added = match (kind, self) {
            (Kind::Text | Kind::Json, Cell::Null) => args.add(None::<String>),
            (Kind::Text, Cell::Str(text)) => args.add(text.as_str()),
            (Kind::Text | Kind::Json, cell) => args.add(cell.json_text()),
            (Kind::Bool, Cell::Bool(flag)) => args.add(*flag),
            (Kind::Bool, _) => args.add(None::<bool>),
            (Kind::Number, Cell::Int(int)) => args.add(*int as f64),
            (Kind::Number, Cell::UInt(uint)) => args.add(*uint as f64),
            (Kind::Number, Cell::Float(float)) => args.add(*float),
            (Kind::Number, _) => args.add(None::<f64>),
            (Kind::Integer, Cell::Int(int)) => args.add(*int),
            (Kind::Integer, Cell::UInt(uint)) => args.add(i64::try_from(*uint).ok()),
            (Kind::Integer, _) => args.add(None::<i64>),
        };
        added.map_err(anyhow::Error::msg)
    }
}

impl<'de> Deserialize<'de> for MirrorRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MirrorRow, D::Error> {
        deserializer.deserialize_map(RowVisitor)
    }
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = MirrorRow;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a customer object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MirrorRow, A::Error> {
        let mut cells = vec![Cell::Null; CUSTOMER_FIELDS.len()];
        while let Some(name) = map.next_key::<FieldName>()? {
            match CUSTOMER_FIELDS
                .iter()
                .position(|(field, _)| *field == name.0)
            {
                Some(index) => cells[index] = map.next_value_seed(CellSeed)?,
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(MirrorRow { cells })
    }
}

/// A field name, borrowed from the input when it has no escapes.
struct FieldName(std::borrow::Cow<'static, str>);

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldName, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<FieldName, E> {
                // The mirror's own names are static; any other name is dropped right after.
                Ok(FieldName(
                    match CUSTOMER_FIELDS.iter().find(|(field, _)| *field == name) {
                        Some((field, _)) => std::borrow::Cow::Borrowed(*field),
                        None => std::borrow::Cow::Owned(name.to_owned()),
                    },
                ))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Decodes one field's value: scalars as they are, arrays and objects as JSON text.
struct CellSeed;

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cell, D::Error> {
        deserializer.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_bool<E>(self, flag: bool) -> Result<Cell, E> {
        Ok(Cell::Bool(flag))
    }
    fn visit_i64<E>(self, int: i64) -> Result<Cell, E> {
        Ok(Cell::Int(int))
    }
    fn visit_u64<E>(self, uint: u64) -> Result<Cell, E> {
        Ok(i64::try_from(uint).map_or(Cell::UInt(uint), Cell::Int))
    }
    fn visit_f64<E>(self, float: f64) -> Result<Cell, E> {
        Ok(Cell::Float(float))
    }
    fn visit_str<E>(self, text: &str) -> Result<Cell, E> {
        Ok(Cell::Str(text.to_owned()))
    }
    fn visit_string<E>(self, text: String) -> Result<Cell, E> {
        Ok(Cell::Str(text))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Cell::Json(value.to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Cell::Json(value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_feed_decoding_and_the_object_path_give_the_same_row() {
        let customer = json!({
            "id": "cus_1", "external_id": "7", "first_name": "Ann", "email_verified": true,
            "discount_percent": 12, "version": 3, "tags": ["b", "a"],
            "custom": {"z": 1, "a": [true, null]}, "addresses": [], "unknown": {"x": 1},
            "note": null
        });
        let decoded: MirrorRow = serde_json::from_str(&customer.to_string()).expect("decodes");
        assert_eq!(decoded, MirrorRow::from_customer(&customer));
        let through_value: MirrorRow = serde_json::from_value(customer.clone()).expect("decodes");
        assert_eq!(decoded, through_value);
        assert_eq!(decoded.id(), Some("cus_1"));
        let cell = |name: &str| {
            let index = CUSTOMER_FIELDS.iter().position(|(field, _)| *field == name);
            decoded.cells[index.expect("a field")].clone()
        };
        assert_eq!(cell("tags"), Cell::Json("[\"b\",\"a\"]".into()));
        assert_eq!(
            cell("custom"),
            Cell::Json("{\"a\":[true,null],\"z\":1}".into())
        );
        assert_eq!(cell("version"), Cell::Int(3));
        assert_eq!(cell("note"), Cell::Null);
        assert_eq!(cell("phone"), Cell::Null);
    }

    #[test]
    fn cells_that_do_not_fit_their_kind_are_bound_as_text_or_null() {
        assert_eq!(Cell::Int(5).json_text(), "5");
        assert_eq!(Cell::Str("a\"b".into()).json_text(), "\"a\\\"b\"");
        assert_eq!(Cell::Float(1.5).json_text(), "1.5");
        let row = MirrorRow::from_customer(&json!({"id": "cus_1", "archived": "yes"}));
        let mut args = AnyArguments::default();
        row.bind(&mut args).expect("binds");
        assert_eq!(args.len(), CUSTOMER_FIELDS.len());
    }
}
