//! Column values read from JSON text (a JSONL line, PostgreSQL's `row_to_json`) without losing
//! digits. serde_json reads a number that is no 64-bit integer as an `f64`: a `NUMERIC` key such
//! as 123456789012345678901234 would become 1.2345678901234568e23, and its neighbour ...235 the
//! same, so two source rows would fill one customer. A column's number that an `f64` does not
//! hold exactly is therefore kept as the text of its digits, which is what a text field (a key
//! among them) is sent as anyway; every other value is read as usual.

use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// One column's value, read exactly (see the module's doc). The text must be borrowed
/// (`serde_json::from_str`), as a [`RawValue`] is.
pub struct ExactValue(pub Value);

impl<'de> Deserialize<'de> for ExactValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <&'de RawValue>::deserialize(deserializer)?.get();
        match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => Ok(ExactValue(exact_number(text))),
            _ => serde_json::from_str(text)
                .map(ExactValue)
                .map_err(D::Error::custom),
        }
    }
}

/// A JSON object of columns, each read as an [`ExactValue`]; a name given twice keeps its last
/// value, as `serde_json::Map` does (PostgreSQL's `row_to_json` names each column once).
pub struct ExactColumns(pub Map<String, Value>);

impl<'de> Deserialize<'de> for ExactColumns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = ExactColumns;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<ExactColumns, A::Error> {
                let mut columns = Map::new();
                while let Some((name, ExactValue(value))) = access.next_entry::<String, _>()? {
                    columns.insert(name, value);
                }
                Ok(ExactColumns(columns))
            }
        }
        deserializer.deserialize_map(ColumnsVisitor)
    }
}

/// A JSON number literal as a JSON number when an integer of 64 bits or an `f64` holds it
/// exactly, and as its text otherwise.
pub fn exact_number(literal: &str) -> Value {
    if let Ok(integer) = literal.parse::<i64>() {
        return integer.into();
    }
    if let Ok(integer) = literal.parse::<u64>() {
        return integer.into();
    }
    literal
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .filter(|number| Decimal::of(literal) == Decimal::of(&number.to_string()))
        .map_or_else(|| Value::String(literal.to_owned()), Value::Number)
}

/// A decimal number as sign, significant digits and power of ten, so that two spellings of one
/// value (`100.50`, `1.005e2`) compare equal.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// The value of a JSON number literal; an exponent beyond `i64` reads as no value at all
    /// (such a literal is no finite `f64` either).
    fn of(literal: &str) -> Option<Decimal> {
        let (negative, unsigned) = match literal.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, literal),
        };
        let (mantissa, exponent) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, "0"));
        let exponent: i64 = exponent.parse().ok()?;
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = format!("{whole}{fraction}");
        let significant = all.trim_start_matches('0');
        let digits = significant.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: String::new(),
                exponent: 0,
            });
        }
        let fraction_len = i64::try_from(fraction.len()).ok()?;
        let trailing_zeros = i64::try_from(significant.len() - digits.len()).ok()?;
        Some(Decimal {
            negative,
            digits: digits.to_owned(),
            exponent: exponent
                .checked_sub(fraction_len)?
                .checked_add(trailing_zeros)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_a_double_holds_stay_numbers() {
        for (literal, value) in [
            ("0", json!(0)),
            ("-0", json!(0)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("18446744073709551615", json!(u64::MAX)),
            ("12.50", json!(12.5)),
            ("100.50", json!(100.5)),
            ("0.1", json!(0.1)),
            ("1E2", json!(100.0)),
            ("0.30000000000000004", json!(0.30000000000000004)),
            ("-0.0", json!(-0.0)),
            ("1e22", json!(1e22)),
            ("1.5e-7", json!(1.5e-7)),
        ] {
            assert_eq!(exact_number(literal), value, "{literal}");
        }
    }

    #[test]
    fn numbers_a_double_would_round_keep_their_digits() {
        for literal in [
            "123456789012345678901234",
            "18446744073709551616",
            "-9223372036854775809",
            "3.14159265358979323846",
            "1e400",
            "1e-400",
            "0.1000000000000000000000001",
            "123456789012345678901234567890e-10",
        ] {
            assert_eq!(
                exact_number(literal),
                Value::String(literal.to_owned()),
                "{literal}"
            );
        }
    }

    #[test]
    fn columns_are_read_exactly_and_the_rest_as_usual() {
        let ExactColumns(columns) = serde_json::from_str(
            r#"{"id": 123456789012345678901234, "n": 2, "f": 2.5, "s": "x",
                "a": [1, {"b": null}], "t": true, "z": null}"#,
        )
        .expect("columns");
        assert_eq!(
            Value::Object(columns),
            json!({"id": "123456789012345678901234", "n": 2, "f": 2.5, "s": "x",
                   "a": [1, {"b": null}], "t": true, "z": null})
        );
        assert!(serde_json::from_str::<ExactColumns>(r#"{"id": 1"#).is_err());
        assert!(serde_json::from_str::<ExactColumns>("[1]").is_err());
    }

    proptest! {
        #[test]
        fn every_finite_double_is_kept_as_a_number(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let number = Number::from_f64(x).expect("finite");
            prop_assert_eq!(exact_number(&number.to_string()), Value::Number(number));
        }

        #[test]
        fn integers_beyond_64_bits_keep_every_digit(x in any::<i128>()) {
            let literal = x.to_string();
            let exact = exact_number(&literal);
            let double = x as f64;
            let a_double_holds_it = double.abs() < 2f64.powi(127) && double as i128 == x;
            match (i64::try_from(x), u64::try_from(x)) {
                (Ok(small), _) => prop_assert_eq!(exact, json!(small)),
                (_, Ok(small)) => prop_assert_eq!(exact, json!(small)),
                _ if a_double_holds_it => prop_assert_eq!(exact, json!(double)),
                _ => prop_assert_eq!(exact, Value::String(literal)),
            }
        }
    }
}
