//! Orders, minimal: what a customer bought, by reference, total, currency, status and time.
//!
//! Decisions the contract leaves open (documented in the OpenAPI document too):
//! - `total` is money: given as a JSON number or a decimal string (`"19.90"`), at least 0 and at
//!   most 10^15, with at most 4 decimals, and refused when a double would not keep it exactly
//!   (15 significant digits always are); returned as a JSON number.
//! - `currency` is an ISO 4217 code (case-insensitive in, upper-case out), required.
//! - `status` is a short code (`[a-z0-9_-]`, up to 32 characters), default `placed`.
//! - `reference` is the source system's order number (1 to 255 characters), required; it is not
//!   unique: retries are made safe by `Idempotency-Key`, not by refusing equal references.
//! - `placed_at` defaults to the time of creation.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::{CustomerId, CustomerKey, Locator, OrderId, Timestamp, ValidationErrors, iso};

/// An order as stored and returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    #[schema(value_type = String, example = "ord_01JD3Y6Q4X8K2M5N7P9R1T3V5W")]
    pub id: OrderId,
    pub reference: String,
    #[schema(value_type = String)]
    pub customer_id: CustomerId,
    /// Money, as a number with at most 4 decimals.
    pub total: f64,
    /// ISO 4217.
    pub currency: String,
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub placed_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A page of a customer's orders.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// The last order of the page, when there may be more.
    pub next: Option<OrderId>,
}

/// The customer an order belongs to, by one of its keys: `{"external_id": "..."}` (or `id`,
/// `email`, `username`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct CustomerRef {
    pub id: Option<String>,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
}

/// The body of `POST /v1/orders`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct OrderWrite {
    #[schema(required = true)]
    pub reference: Option<String>,
    /// `cus_…`; or give `customer` instead.
    pub customer_id: Option<String>,
    pub customer: Option<CustomerRef>,
    /// A number or a decimal string: at least 0, at most 10^15, at most 4 decimals, and at most
    /// as many digits as are kept exactly (15 significant digits always are; 422
    /// `invalid_total` otherwise).
    /// Kept as written: a number's digits, not the double JSON parsers make of it, so that a
    /// number with more decimals than allowed is refused as its string would be, not rounded.
    #[schema(schema_with = total_schema, required = true)]
    pub total: Option<Box<RawValue>>,
    #[schema(required = true)]
    pub currency: Option<String>,
    pub status: Option<String>,
    /// RFC 3339, with any offset; its year in UTC is 0000 to 9999. Default: now.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub placed_at: Option<String>,
}

/// A valid order write: the customer to attach it to (with the body field that named it, for
/// errors) and the order's own fields.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub customer: Locator,
    pub customer_field: &'static str,
    pub draft: OrderDraft,
}

/// An order before it is attached to the customer the store found.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderDraft {
    pub id: OrderId,
    pub reference: String,
    pub total: f64,
    pub currency: String,
    pub status: String,
    pub placed_at: Timestamp,
    pub created_at: Timestamp,
}

impl OrderDraft {
    pub fn attach(self, customer_id: CustomerId) -> Order {
        Order {
            id: self.id,
            reference: self.reference,
            customer_id,
            total: self.total,
            currency: self.currency,
            status: self.status,
            placed_at: self.placed_at,
            created_at: self.created_at,
        }
    }
}

const MAX_REFERENCE: usize = 255;
const MAX_STATUS: usize = 32;
const MAX_TOTAL: f64 = 1e15;
const MAX_DECIMALS: usize = 4;

impl OrderWrite {
    /// Validates every field, reporting all faults at once.
    pub fn validate(self, now: Timestamp) -> Result<NewOrder, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let reference = match self.reference {
            Some(r) if r.chars().any(char::is_control) => {
                // An order number is an identifier; PostgreSQL's text cannot even hold NUL.
                errors.push(
                    "reference",
                    "invalid_characters",
                    "must not contain control characters",
                );
                r
            }
            Some(r) if !r.trim().is_empty() && r.chars().count() <= MAX_REFERENCE => r,
            Some(_) => {
                errors.push("reference", "invalid_length", "must be 1 to 255 characters");
                String::new()
            }
            None => {
                errors.push("reference", "required", "the order's reference is required");
                String::new()
            }
        };
        let customer = customer_locator(self.customer_id, self.customer, &mut errors);
        let total = match self.total.as_deref().map(parse_total) {
            Some(Ok(total)) => total,
            Some(Err(message)) => {
                errors.push("total", "invalid_total", message);
                0.0
            }
            None => {
                errors.push("total", "required", "the order's total is required");
                0.0
            }
        };
        let currency = match self.currency {
            Some(code) if iso::is_currency(&code.to_ascii_uppercase()) => code.to_ascii_uppercase(),
            Some(_) => {
                errors.push(
                    "currency",
                    "invalid_currency",
                    "not an ISO 4217 currency code",
                );
                String::new()
            }
            None => {
                errors.push("currency", "required", "the order's currency is required");
                String::new()
            }
        };
        let status = self.status.unwrap_or_else(|| "placed".to_owned());
        if !is_status(&status) {
            errors.push(
                "status",
                "invalid_status",
                "a short code: 1 to 32 characters of a-z, 0-9, _ and -",
            );
        }
        let placed_at = match self.placed_at.as_deref().map(Timestamp::parse_rfc3339) {
            Some(Some(at)) => at,
            Some(None) => {
                errors.push(
                    "placed_at",
                    "invalid_timestamp",
                    "not an RFC 3339 timestamp whose year in UTC is 0000 to 9999",
                );
                now
            }
            None => now,
        };
        errors.into_result()?;
        let (customer, customer_field) = customer.ok_or_else(ValidationErrors::default)?;
        Ok(NewOrder {
            customer,
            customer_field,
            draft: OrderDraft {
                id: OrderId::new(),
                reference,
                total,
                currency,
                status,
                placed_at,
                created_at: now,
            },
        })
    }
}

/// The customer named by `customer_id` or by `customer` (exactly one of them).
fn customer_locator(
    customer_id: Option<String>,
    customer: Option<CustomerRef>,
    errors: &mut ValidationErrors,
) -> Option<(Locator, &'static str)> {
    let by_id = |text: &str, field: &'static str, errors: &mut ValidationErrors| match text.parse()
    {
        Ok(id) => Some((Locator::Id(id), field)),
        Err(_) => {
            errors.push(field, "invalid_id", "not a customer id (cus_…)");
            None
        }
    };
    match (customer_id, customer) {
        (Some(id), None) => by_id(&id, "customer_id", errors),
        (None, Some(reference)) => {
            let keys = [
                (
                    CustomerKey::ExternalId,
                    reference.external_id,
                    "customer.external_id",
                ),
                (CustomerKey::Email, reference.email, "customer.email"),
                (
                    CustomerKey::Username,
                    reference.username,
                    "customer.username",
                ),
            ];
            let mut given: Vec<_> = keys
                .into_iter()
                .filter_map(|(key, value, field)| Some((key, value?, field)))
                .collect();
            match (reference.id, given.len()) {
                (Some(id), 0) => by_id(&id, "customer.id", errors),
                (None, 1) => {
                    let (key, value, field) = given.remove(0);
                    if crate::validation::is_valid_key(&value) {
                        Some((Locator::Key(key, value), field))
                    } else {
                        crate::validation::check_key(errors, field, &value);
                        None
                    }
                }
                _ => {
                    errors.push(
                        "customer",
                        "invalid_customer",
                        "name the customer by exactly one of id, external_id, email, username",
                    );
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            errors.push(
                "customer",
                "invalid_customer",
                "give customer_id or customer, not both",
            );
            None
        }
        (None, None) => {
            errors.push(
                "customer_id",
                "required",
                "the order's customer is required (customer_id, or customer {\"external_id\"})",
            );
            None
        }
    }
}

/// `total` in the OpenAPI document: a number or a decimal string.
fn total_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0))
                .maximum(Some(MAX_TOTAL)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]+(\.[0-9]{1,4})?$")),
        )
        .build();
    Schema::OneOf(one_of)
}

/// A total given as a number or a decimal string, read from its JSON text.
fn parse_total(raw: &RawValue) -> Result<f64, &'static str> {
    const NOT_A_TOTAL: &str = "must be a number or a decimal string";
    let json = raw.get();
    let text = match json.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(json)
            .map_err(|_| NOT_A_TOTAL)?
            .trim()
            .to_owned(),
        // A number as written, so `19.99999999999999999` is not read as 20.
        Some(b'-' | b'0'..=b'9') => json.to_owned(),
        _ => return Err(NOT_A_TOTAL),
    };
    let (whole, decimals) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(decimals) || text.ends_with('.') {
        return Err("must be a plain non-negative decimal such as 19.90");
    }
    if decimals.len() > MAX_DECIMALS {
        return Err("at most 4 decimals");
    }
    let total = match text.parse::<f64>() {
        Ok(total) if total.is_finite() && total <= MAX_TOTAL => total,
        _ => return Err("must be at most 10^15"),
    };
    // Stored as a double: refused unless it reads back as given (past 15 significant digits it
    // may not, and 999999999999999.9999 would come back as 10^15).
    let whole = whole.trim_start_matches('0');
    let given = format!(
        "{}.{decimals:0<width$}",
        if whole.is_empty() { "0" } else { whole },
        width = MAX_DECIMALS
    );
    if format!("{total:.prec$}", prec = MAX_DECIMALS) != given {
        return Err("more digits than can be kept exactly: at most 15 significant digits");
    }
    Ok(total)
}

fn is_status(status: &str) -> bool {
    (1..=MAX_STATUS).contains(&status.len())
        && status
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn write(body: Value) -> OrderWrite {
        serde_json::from_str(&body.to_string()).expect("order body")
    }

    /// `parse_total` of a JSON text.
    fn total(json: &str) -> Result<f64, &'static str> {
        parse_total(&RawValue::from_string(json.to_owned()).expect("JSON"))
    }

    fn fields(result: Result<NewOrder, ValidationErrors>) -> Vec<(String, &'static str)> {
        match result {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.into_iter().map(|e| (e.field, e.code)).collect(),
        }
    }

    #[test]
    fn control_characters_in_a_reference_or_a_customer_key_are_refused() {
        let now = Timestamp::from_micros(1_000_000);
        let body = json!({"reference": "A\u{0}1", "customer": {"external_id": "P\n1"},
                          "total": 1, "currency": "EUR"});
        assert_eq!(
            fields(write(body).validate(now)),
            vec![
                ("reference".into(), "invalid_characters"),
                ("customer.external_id".into(), "invalid_characters"),
            ]
        );
    }

    #[test]
    fn a_placed_at_beyond_four_digit_utc_years_is_refused() {
        // Found in a review: year -1 in UTC was stored, and every read of the order failed.
        let now = Timestamp::from_micros(1_000_000);
        for placed_at in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"] {
            let body = json!({"reference": "A-1", "customer": {"external_id": "P-1"},
                              "total": 1, "currency": "EUR", "placed_at": placed_at});
            assert_eq!(
                fields(write(body).validate(now)),
                vec![("placed_at".into(), "invalid_timestamp")],
                "{placed_at}"
            );
        }
    }

    #[test]
    fn a_valid_order_defaults_status_and_placed_at() {
        let now = Timestamp::from_micros(1_000_000);
        let new = write(
            json!({"reference": "A-1", "customer": {"external_id": "P-1"},
                               "total": "19.90", "currency": "eur"}),
        )
        .validate(now)
        .expect("valid");
        assert_eq!(
            new.customer,
            Locator::Key(CustomerKey::ExternalId, "P-1".into())
        );
        assert_eq!(new.customer_field, "customer.external_id");
        assert_eq!(new.draft.total, 19.9);
        assert_eq!(new.draft.currency, "EUR");
        assert_eq!(new.draft.status, "placed");
        assert_eq!(new.draft.placed_at, now);
    }

    #[test]
    fn totals_are_plain_non_negative_decimals() {
        for good in [
            "0",
            "12.5",
            r#""19.90""#,
            r#""1000000""#,
            r#"" 007.50 ""#,
            "12345678901.2345",
            r#""1000000000000000""#,
        ] {
            assert!(total(good).is_ok(), "{good}");
        }
        assert_eq!(total(r#""12345678901.2345""#), Ok(12_345_678_901.234_5));
        assert_eq!(total("12345678901.2345"), Ok(12_345_678_901.234_5));
        // Found in a review: these came back rounded; and, as numbers, in an audit.
        for rounded in ["999999999999999.9999", "123456789012345.6789"] {
            assert!(total(&format!("\"{rounded}\"")).is_err(), "{rounded}");
            assert!(total(rounded).is_err(), "{rounded}");
        }
        for bad in [
            "-1",
            r#""-1""#,
            r#""1e3""#,
            "1e3",
            r#""12.""#,
            r#"".5""#,
            r#""1.23456""#,
            "1.23456",
            "19.99999999999999999",
            r#""abc""#,
            "true",
            "[1]",
            "1e16",
        ] {
            assert!(total(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_fault_is_named() {
        let now = Timestamp::now();
        assert_eq!(
            fields(write(json!({})).validate(now)),
            vec![
                ("reference".into(), "required"),
                ("customer_id".into(), "required"),
                ("total".into(), "required"),
                ("currency".into(), "required"),
            ]
        );
        assert_eq!(
            fields(
                write(json!({"reference": "A", "customer_id": "nope", "total": 1,
                             "currency": "XXY", "status": "Shipped!", "placed_at": "yesterday"}))
                .validate(now)
            ),
            vec![
                ("customer_id".into(), "invalid_id"),
                ("currency".into(), "invalid_currency"),
                ("status".into(), "invalid_status"),
                ("placed_at".into(), "invalid_timestamp"),
            ]
        );
        let both = json!({"reference": "A", "customer_id": "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W",
                          "customer": {"external_id": "x"}, "total": 1, "currency": "EUR"});
        assert_eq!(
            fields(write(both).validate(now)),
            vec![("customer".into(), "invalid_customer")]
        );
    }
}
