//! The data the benchmark writes: realistic customers with one address, as API create bodies for
//! the hub and as stored rows (the same response document the hub keeps in `doc`) for the raw
//! floor. Customer number `n` of a run tagged `tag` has keys no other customer of any run has.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

const FIRST_NAMES: [&str; 8] = [
    "Aino", "Matti", "Sofia", "Juhani", "Emma", "Mikael", "Helmi", "Oskari",
];
const LAST_NAMES: [&str; 8] = [
    "Korhonen",
    "Virtanen",
    "Mäkinen",
    "Nieminen",
    "Hämäläinen",
    "Laine",
    "Heikkinen",
    "Koskinen",
];
/// City, region, postal code, country.
const PLACES: [(&str, &str, &str, &str); 6] = [
    ("Helsinki", "Uusimaa", "00100", "FI"),
    ("Turku", "Varsinais-Suomi", "20100", "FI"),
    ("Tampere", "Pirkanmaa", "33100", "FI"),
    ("Stockholm", "Stockholms län", "111 22", "SE"),
    ("Tallinn", "Harju maakond", "10111", "EE"),
    ("Berlin", "Berlin", "10115", "DE"),
];
const STREETS: [&str; 5] = [
    "Mannerheimintie",
    "Aleksanterinkatu",
    "Hämeenkatu",
    "Drottninggatan",
    "Unter den Linden",
];

/// The writable fields of customer `n`: what a source system would send.
fn fields(tag: &str, n: u64) -> Map<String, Value> {
    let i = n as usize;
    let first = FIRST_NAMES[i % FIRST_NAMES.len()];
    let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
    let (city, region, postal_code, country) = PLACES[i % PLACES.len()];
    let street = STREETS[i % STREETS.len()];
    let body = json!({
        "external_id": format!("{tag}-{n:08}"),
        "email": format!("{}.{}.{n}@{tag}.example.com", first.to_lowercase(), ascii(last)),
        "first_name": first,
        "last_name": last,
        "company": format!("{last} Oy"),
        "phone": format!("+358 40 {:07}", n % 10_000_000),
        "currency": "EUR",
        "discount_percent": (n % 20) as f64 / 2.0,
        "payment_terms": "30-days",
        "note": "Prefers delivery before noon; invoice by e-mail.",
        "birthday": format!("19{:02}-{:02}-{:02}", 50 + n % 50, 1 + n % 12, 1 + n % 28),
        "tags": ["newsletter", if n.is_multiple_of(3) { "b2b" } else { "b2c" }],
        "custom": {"loyalty_tier": if n.is_multiple_of(5) { "gold" } else { "silver" }},
        "addresses": [{
            "title": "Home",
            "kind": "billing",
            "name": format!("{first} {last}"),
            "line1": format!("{street} {}", 1 + n % 120),
            "line2": format!("A {}", 1 + n % 40),
            "city": city,
            "region": region,
            "postal_code": postal_code,
            "country": country,
            "phone": format!("+358 9 {:06}", n % 1_000_000),
        }],
    });
    match body {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `Mäkinen` -> `makinen`, for e-mail local parts.
fn ascii(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .map(|c| match c {
            'ä' | 'å' => 'a',
            'ö' => 'o',
            other => other,
        })
        .collect()
}

/// The `POST /v1/customers` body of customer `n`.
pub fn create_body(tag: &str, n: u64) -> Value {
    Value::Object(fields(tag, n))
}

/// One `customers` row and its `changes` row, as the hub would store customer `n`.
#[derive(Clone, Debug)]
pub struct StoredRow {
    pub id: String,
    pub external_id: String,
    pub email_norm: String,
    pub last_name_sort: String,
    pub at_micros: i64,
    pub doc: String,
}

/// Customer `n` as a stored row: every response field present, `null` where unset, like the
/// hub's `doc` column.
pub fn stored_row(tag: &str, n: u64) -> StoredRow {
    let id = format!("cus_{}", ulid::Ulid::new());
    let at_micros = now_micros();
    let mut doc = fields(tag, n);
    let text = |doc: &Map<String, Value>, key: &str| {
        doc.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (external_id, email, last_name) = (
        text(&doc, "external_id"),
        text(&doc, "email"),
        text(&doc, "last_name"),
    );
    let name = format!("{} {last_name}", text(&doc, "first_name"));
    let stamp = "2026-11-23T12:00:00.000000Z";
    for (key, value) in [
        ("id", json!(id)),
        ("username", Value::Null),
        ("name", json!(name)),
        ("phone_alt", Value::Null),
        ("email_verified", json!(false)),
        ("email_opt_out", json!(false)),
        ("archived", json!(false)),
        ("groups", json!([])),
        ("teams", json!([])),
        ("has_password", json!(false)),
        ("version", json!(1)),
        ("created_at", json!(stamp)),
        ("updated_at", json!(stamp)),
    ] {
        doc.insert(key.to_owned(), value);
    }
    complete_addresses(&mut doc);
    StoredRow {
        id,
        email_norm: email.to_lowercase(),
        external_id,
        last_name_sort: last_name.to_lowercase(),
        at_micros,
        doc: Value::Object(doc).to_string(),
    }
}

/// Gives each address every field, as responses do.
fn complete_addresses(doc: &mut Map<String, Value>) {
    if let Some(Value::Array(addresses)) = doc.get_mut("addresses") {
        for address in addresses.iter_mut().filter_map(Value::as_object_mut) {
            for key in ["remote_id", "company", "line3"] {
                address.entry(key).or_insert(Value::Null);
            }
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
