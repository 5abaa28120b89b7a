#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// When the customers in these tests are created.
const T0: i64 = 1_700_000_000_000_000;
/// When they are updated.
const T1: i64 = T0 + 60_000_000;

/// Knows the groups `vip` (subscribed by default) and `news` (not subscribed by default), and
/// the teams `north` and `south`.
struct TestDirectory;

impl Directory for TestDirectory {
    fn group_default_subscribed(&self, code: &str) -> Option<bool> {
        match code {
            "vip" => Some(true),
            "news" => Some(false),
            _ => None,
        }
    }

    fn team_exists(&self, code: &str) -> bool {
        matches!(code, "north" | "south")
    }
}

fn ctx_at(now: i64) -> ApplyContext<'static> {
    ApplyContext {
        now: Timestamp::from_micros(now),
        directory: &TestDirectory,
        password: Patch::Absent,
        schema: &crate::schema::NO_SCHEMA,
    }
}

fn write(body: Value) -> CustomerWrite {
    serde_json::from_value(body).unwrap()
}

/// Creates a customer at `T0`, which must succeed.
fn create(body: Value) -> Customer {
    match apply(&ctx_at(T0), None, &write(body)) {
        Ok(Applied::Changed(customer)) => *customer,
        other => panic!("create failed: {other:?}"),
    }
}

/// Applies a changing write at `T1` and checks the bookkeeping of a change.
fn update(current: &Customer, body: Value) -> Customer {
    match apply(&ctx_at(T1), Some(current), &write(body.clone())) {
        Ok(Applied::Changed(next)) => {
            assert_eq!(next.version, current.version + 1, "version after {body}");
            assert_eq!(
                next.updated_at,
                Timestamp::from_micros(T1),
                "updated_at after {body}"
            );
            assert_eq!(
                next.created_at, current.created_at,
                "created_at after {body}"
            );
            assert_eq!(next.id, current.id, "id after {body}");
            *next
        }
        other => panic!("expected a change from {body}, got {other:?}"),
    }
}

fn assert_unchanged(current: &Customer, body: Value) {
    let result = apply(&ctx_at(T1), Some(current), &write(body.clone()));
    assert_eq!(result, Ok(Applied::Unchanged), "write {body}");
}

/// The `(field, code)` pairs of a write that must fail, sorted.
fn errors_with(
    ctx: &ApplyContext<'_>,
    current: Option<&Customer>,
    body: Value,
) -> Vec<(String, &'static str)> {
    match apply(ctx, current, &write(body.clone())) {
        Err(errors) => {
            let mut pairs: Vec<_> = errors.0.into_iter().map(|e| (e.field, e.code)).collect();
            pairs.sort();
            pairs
        }
        Ok(applied) => panic!("expected {body} to be refused, got {applied:?}"),
    }
}

fn errors(current: Option<&Customer>, body: Value) -> Vec<(String, &'static str)> {
    errors_with(&ctx_at(T1), current, body)
}

fn err(field: &str, code: &'static str) -> (String, &'static str) {
    (field.to_owned(), code)
}

/// A customer's stored data as JSON, without the bookkeeping a write advances.
fn data(customer: &Customer) -> Value {
    let mut value = serde_json::to_value(customer).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("version");
    object.remove("updated_at");
    value
}

/// An address as stored, from the fields given (all others null).
fn address(fields: Value) -> Address {
    let mut full = json!({
        "title": null, "remote_id": null, "kind": null, "name": null, "company": null,
        "line1": null, "line2": null, "line3": null, "city": null, "region": null,
        "postal_code": null, "country": null, "phone": null,
    });
    for (key, value) in fields.as_object().unwrap() {
        assert!(full.get(key).is_some(), "no address field {key}");
        full[key] = value.clone();
    }
    serde_json::from_value(full).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn membership(code: &str, subscribed: bool) -> GroupMembership {
    GroupMembership {
        code: code.to_owned(),
        subscribed,
    }
}

/// A customer with every field set (and an explicit display name, so that it stays put).
fn full_body() -> Value {
    json!({
        "external_id": "ext-1",
        "email": "ann@example.com",
        "username": "ann",
        "first_name": "Ann",
        "last_name": "Lee",
        "company": "Acme",
        "name": "Boss",
        "phone": "+358 40 1",
        "phone_alt": "+358 40 2",
        "email_verified": true,
        "email_opt_out": true,
        "archived": true,
        "currency": "EUR",
        "discount_percent": 10.0,
        "payment_terms": "30-days",
        "note": "likes tea",
        "birthday": "1980-01-31",
        "addresses": [
            {
                "title": "Home", "remote_id": "r1", "kind": "billing", "name": "Ann Lee",
                "company": "Acme", "line1": "Main 1", "line2": "A 2", "line3": "c/o X",
                "city": "Helsinki", "region": "Uusimaa", "postal_code": "00100",
                "country": "FI", "phone": "+358 1"
            },
            {"title": "Work", "remote_id": "r2", "city": "Espoo", "country": "FI"}
        ],
        "tags": ["a", "b"],
        "groups": [{"code": "vip", "subscribed": false}],
        "teams": ["north"],
        "custom": {"shoe_size": 42}
    })
}

fn full_customer() -> Customer {
    create(full_body())
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

#[test]
fn create_from_an_empty_write_takes_the_defaults() {
    let now = Timestamp::from_micros(T0);
    let created = match apply(&ctx_at(T0), None, &CustomerWrite::default()) {
        Ok(Applied::Changed(customer)) => *customer,
        other => panic!("{other:?}"),
    };
    let expected = Customer {
        id: created.id,
        external_id: None,
        email: None,
        username: None,
        first_name: None,
        last_name: None,
        company: None,
        name: None,
        phone: None,
        phone_alt: None,
        email_verified: false,
        email_opt_out: false,
        archived: false,
        currency: None,
        discount_percent: None,
        payment_terms: None,
        note: None,
        birthday: None,
        addresses: Vec::new(),
        tags: Vec::new(),
        groups: Vec::new(),
        teams: Vec::new(),
        custom: Map::new(),
        has_password: false,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    assert_eq!(created, expected);
    assert!(created.id.to_string().starts_with("cus_"), "{}", created.id);
}

#[test]
fn create_with_nulls_is_the_same_as_create_with_nothing() {
    let created = create(json!({
        "first_name": null, "email": null, "email_verified": null, "currency": null,
        "discount_percent": null, "addresses": null, "tags": null, "groups": null,
        "teams": null, "custom": null, "name": null
    }));
    let empty = create(json!({}));
    let mut created = data(&created);
    let mut empty = data(&empty);
    created.as_object_mut().unwrap().remove("id");
    empty.as_object_mut().unwrap().remove("id");
    assert_eq!(created, empty);
}

#[test]
fn create_stores_every_given_field() {
    let c = full_customer();
    assert_eq!(c.version, 1);
    assert_eq!(c.created_at, Timestamp::from_micros(T0));
    assert_eq!(c.updated_at, Timestamp::from_micros(T0));
    assert_eq!(c.external_id.as_deref(), Some("ext-1"));
    assert_eq!(c.email.as_deref(), Some("ann@example.com"));
    assert_eq!(c.username.as_deref(), Some("ann"));
    assert_eq!(c.first_name.as_deref(), Some("Ann"));
    assert_eq!(c.last_name.as_deref(), Some("Lee"));
    assert_eq!(c.company.as_deref(), Some("Acme"));
    assert_eq!(c.name.as_deref(), Some("Boss"));
    assert_eq!(c.phone.as_deref(), Some("+358 40 1"));
    assert_eq!(c.phone_alt.as_deref(), Some("+358 40 2"));
    assert!(c.email_verified && c.email_opt_out && c.archived);
    assert_eq!(c.currency.as_deref(), Some("EUR"));
    assert_eq!(c.discount_percent, Some(10.0));
    assert_eq!(c.payment_terms.as_deref(), Some("30-days"));
    assert_eq!(c.note.as_deref(), Some("likes tea"));
    assert_eq!(c.birthday.as_deref(), Some("1980-01-31"));
    assert_eq!(
        c.addresses,
        vec![
            address(json!({
                "title": "Home", "remote_id": "r1", "kind": "billing", "name": "Ann Lee",
                "company": "Acme", "line1": "Main 1", "line2": "A 2", "line3": "c/o X",
                "city": "Helsinki", "region": "Uusimaa", "postal_code": "00100",
                "country": "FI", "phone": "+358 1"
            })),
            address(json!({"title": "Work", "remote_id": "r2", "city": "Espoo", "country": "FI"})),
        ]
    );
    assert_eq!(c.addresses[0].kind, Some(AddressKind::Billing));
    assert_eq!(c.tags, strings(&["a", "b"]));
    assert_eq!(c.groups, vec![membership("vip", false)]);
    assert_eq!(c.teams, strings(&["north"]));
    assert_eq!(Value::Object(c.custom.clone()), json!({"shoe_size": 42}));
    assert!(!c.has_password);
}

#[test]
fn create_with_a_password_sets_has_password() {
    let ctx = ApplyContext {
        password: Patch::Value(()),
        ..ctx_at(T0)
    };
    match apply(&ctx, None, &CustomerWrite::default()) {
        Ok(Applied::Changed(c)) => {
            assert!(c.has_password);
            assert_eq!(c.version, 1);
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Absent / null / value
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_write_changes_nothing() {
    let c = full_customer();
    assert_unchanged(&c, json!({}));
}

/// For every field: a value sets it, `null` clears it, and no other field moves (so an absent
/// field is left unchanged).
#[test]
fn value_sets_and_null_clears_each_field_leaving_the_others() {
    let base = full_customer();
    let base_data = data(&base);
    // (field, value written, value stored, value stored after null)
    let cases: Vec<(&str, Value, Value, Value)> = vec![
        ("external_id", json!("ext-2"), json!("ext-2"), Value::Null),
        (
            "email",
            json!("Bob@Example.COM"),
            json!("Bob@Example.COM"),
            Value::Null,
        ),
        ("username", json!("bob"), json!("bob"), Value::Null),
        ("first_name", json!("Anna"), json!("Anna"), Value::Null),
        ("last_name", json!("Li"), json!("Li"), Value::Null),
        ("company", json!("Initech"), json!("Initech"), Value::Null),
        ("phone", json!("+1 555"), json!("+1 555"), Value::Null),
        ("phone_alt", json!("+1 556"), json!("+1 556"), Value::Null),
        (
            "payment_terms",
            json!("14-days"),
            json!("14-days"),
            Value::Null,
        ),
        (
            "note",
            json!("prefers coffee"),
            json!("prefers coffee"),
            Value::Null,
        ),
        ("email_verified", json!(false), json!(false), json!(false)),
        ("email_opt_out", json!(false), json!(false), json!(false)),
        ("archived", json!(false), json!(false), json!(false)),
        ("currency", json!("SEK"), json!("SEK"), Value::Null),
        ("discount_percent", json!(12.5), json!(12.5), Value::Null),
        (
            "birthday",
            json!("2000-02-29"),
            json!("2000-02-29"),
            Value::Null,
        ),
        (
            "custom",
            json!({"vip_since": "2020"}),
            json!({"vip_since": "2020"}),
            json!({}),
        ),
        (
            "addresses",
            json!([{"title": "Cabin", "country": "SE"}]),
            serde_json::to_value(vec![address(json!({"title": "Cabin", "country": "SE"}))])
                .unwrap(),
            json!([]),
        ),
        ("tags", json!(["c"]), json!(["c"]), json!([])),
        ("teams", json!(["south"]), json!(["south"]), json!([])),
        (
            "groups",
            json!(["news"]),
            json!([{"code": "news", "subscribed": false}]),
            json!([]),
        ),
    ];
    for (field, written, stored, cleared) in cases {
        assert_ne!(
            base_data[field], stored,
            "{field}: the test value must differ"
        );
        assert_ne!(
            base_data[field], cleared,
            "{field}: the test value must differ"
        );

        let set = update(&base, json!({ field: written }));
        let mut expected = base_data.clone();
        expected[field] = stored;
        assert_eq!(data(&set), expected, "setting {field}");

        let null = update(&base, json!({ field: null }));
        let mut expected = base_data.clone();
        expected[field] = cleared;
        assert_eq!(data(&null), expected, "clearing {field}");
    }
}

#[test]
fn flags_default_false_take_values_and_clear_to_false() {
    let c = create(json!({}));
    let on = update(
        &c,
        json!({"email_verified": true, "email_opt_out": true, "archived": true}),
    );
    assert!(on.email_verified && on.email_opt_out && on.archived);
    assert_unchanged(&on, json!({"email_verified": true}));
    let partly = update(&on, json!({"email_verified": null, "archived": false}));
    assert!(!partly.email_verified);
    assert!(partly.email_opt_out, "absent keeps the flag");
    assert!(!partly.archived);
    assert_unchanged(&c, json!({"email_verified": null, "archived": false}));
}

#[test]
fn custom_is_replaced_as_a_whole() {
    let c = create(json!({"custom": {"a": 1, "b": [1, 2]}}));
    let next = update(&c, json!({"custom": {"c": {"d": null}}}));
    assert_eq!(
        Value::Object(next.custom.clone()),
        json!({"c": {"d": null}})
    );
    assert_unchanged(&next, json!({"custom": {"c": {"d": null}}}));
    assert_unchanged(&next, json!({"note": null}));
}

// ---------------------------------------------------------------------------------------------
// Unchanged and versions
// ---------------------------------------------------------------------------------------------

#[test]
fn writing_the_stored_values_again_is_unchanged() {
    let c = full_customer();
    assert_unchanged(&c, full_body());
    assert_unchanged(
        &c,
        json!({"first_name": "Ann", "archived": true, "tags": ["b", "a"]}),
    );
    assert_unchanged(&c, json!({"add_tags": ["a"], "remove_tags": ["zzz"]}));
    assert_unchanged(&c, json!({"discount_percent": 10}));
}

#[test]
fn a_customer_read_can_be_written_back_unchanged() {
    let c = full_customer();
    let read = serde_json::to_value(&c).unwrap();
    assert!(read.get("version").is_some() && read.get("has_password").is_some());
    assert_unchanged(&c, read);

    let plain = create(json!({"first_name": "Ann"}));
    assert_unchanged(&plain, serde_json::to_value(&plain).unwrap());
}

#[test]
fn read_only_fields_in_a_write_are_ignored() {
    let c = full_customer();
    assert_unchanged(
        &c,
        json!({
            "id": "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W", "version": 99, "has_password": true,
            "created_at": "2000-01-01T00:00:00Z", "updated_at": "2000-01-01T00:00:00Z"
        }),
    );
}

#[test]
fn a_change_bumps_the_version_and_sets_updated_at() {
    let c = full_customer();
    let once = update(&c, json!({"note": "n1"}));
    assert_eq!(once.version, 2);
    assert_eq!(once.updated_at, Timestamp::from_micros(T1));
    assert_eq!(once.created_at, Timestamp::from_micros(T0));
    let twice = update(&once, json!({"note": "n2"}));
    assert_eq!(twice.version, 3);
    assert_eq!(twice.note.as_deref(), Some("n2"));
}

#[test]
fn updated_at_never_goes_backwards() {
    let c = full_customer();
    let earlier = ctx_at(T0 - 1_000);
    match apply(&earlier, Some(&c), &write(json!({"note": "x"}))) {
        Ok(Applied::Changed(next)) => {
            assert_eq!(next.updated_at, c.updated_at);
            assert_eq!(next.version, c.version + 1);
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Display name
// ---------------------------------------------------------------------------------------------

#[test]
fn name_is_derived_from_first_and_last_name() {
    assert_eq!(
        create(json!({"first_name": "Ann", "last_name": "Lee"}))
            .name
            .as_deref(),
        Some("Ann Lee")
    );
    assert_eq!(
        create(json!({"first_name": "Ann"})).name.as_deref(),
        Some("Ann")
    );
    assert_eq!(
        create(json!({"last_name": "Lee"})).name.as_deref(),
        Some("Lee")
    );
    assert_eq!(create(json!({"company": "Acme"})).name, None);
}

#[test]
fn a_derived_name_follows_first_and_last_name() {
    let c = create(json!({"first_name": "Ann", "last_name": "Lee"}));
    let renamed = update(&c, json!({"first_name": "Anna"}));
    assert_eq!(renamed.name.as_deref(), Some("Anna Lee"));
    let no_last = update(&renamed, json!({"last_name": null}));
    assert_eq!(no_last.name.as_deref(), Some("Anna"));
    let nothing = update(&no_last, json!({"first_name": null}));
    assert_eq!(nothing.name, None);
    let again = update(&nothing, json!({"last_name": "Lee"}));
    assert_eq!(again.name.as_deref(), Some("Lee"));
}

#[test]
fn tags_are_kept_without_the_spaces_around_them() {
    // Found in an audit: " y " was stored beside "y", and "   " was a tag.
    let c = create(json!({"tags": [" vip", "vip ", "b2b"]}));
    assert_eq!(c.tags, ["b2b", "vip"]);
    assert_unchanged(&c, json!({"add_tags": [" b2b "]}));
    let removed = update(&c, json!({"remove_tags": ["vip  "]}));
    assert_eq!(removed.tags, ["b2b"]);
    assert_eq!(
        errors(Some(&c), json!({"tags": ["   "]})),
        [err("tags[0]", "empty")]
    );
    assert_eq!(
        errors(Some(&c), json!({"add_tags": [" "]})),
        [err("add_tags[0]", "empty")]
    );
}

#[test]
fn a_derived_name_has_no_stray_spaces() {
    // Found in an audit: " Ann " and "Lee" gave " Ann  Lee".
    let c = create(json!({"first_name": " Ann ", "last_name": "Lee"}));
    assert_eq!(c.name.as_deref(), Some("Ann Lee"));
    assert_eq!(
        c.first_name.as_deref(),
        Some(" Ann "),
        "the names stay as given"
    );
    let renamed = update(&c, json!({"first_name": "Anna "}));
    assert_eq!(renamed.name.as_deref(), Some("Anna Lee"));

    // A name derived before the trimming, spaces and all, still follows the names.
    let earlier = create(json!({"first_name": "Ann ", "last_name": "Lee", "name": "Ann  Lee"}));
    let follows = update(&earlier, json!({"last_name": "Li"}));
    assert_eq!(follows.name.as_deref(), Some("Ann Li"));
}

#[test]
fn an_explicit_name_sticks_until_cleared() {
    let c = create(json!({"first_name": "Ann", "last_name": "Lee", "name": "Boss"}));
    assert_eq!(c.name.as_deref(), Some("Boss"));
    let renamed = update(&c, json!({"first_name": "Anna"}));
    assert_eq!(renamed.name.as_deref(), Some("Boss"));
    let cleared_names = update(&renamed, json!({"first_name": null, "last_name": null}));
    assert_eq!(cleared_names.name.as_deref(), Some("Boss"));

    let back = update(&renamed, json!({"name": null}));
    assert_eq!(back.name.as_deref(), Some("Anna Lee"));
    let follows = update(&back, json!({"last_name": "Li"}));
    assert_eq!(follows.name.as_deref(), Some("Anna Li"));

    let explicit_later = update(&follows, json!({"name": "The Boss"}));
    assert_eq!(explicit_later.name.as_deref(), Some("The Boss"));
    assert_unchanged(&explicit_later, json!({"name": "The Boss"}));
}

#[test]
fn a_name_equal_to_the_derived_one_stays_derived() {
    let c = create(json!({"first_name": "Ann", "last_name": "Lee", "name": "Ann Lee"}));
    assert_eq!(c.name.as_deref(), Some("Ann Lee"));
    let renamed = update(&c, json!({"first_name": "Anna"}));
    assert_eq!(renamed.name.as_deref(), Some("Anna Lee"));

    // Writing the derived name back (as a read written back does) keeps it derived.
    assert_unchanged(&renamed, json!({"name": "Anna Lee"}));
    let again = update(&renamed, json!({"name": "Anna Lee", "last_name": "Li"}));
    // The explicit name in the same write wins over the derivation...
    assert_eq!(again.name.as_deref(), Some("Anna Lee"));
    // ...and since it now differs from the derived "Anna Li", it sticks.
    let sticky = update(&again, json!({"first_name": "Ann"}));
    assert_eq!(sticky.name.as_deref(), Some("Anna Lee"));
}

#[test]
fn name_null_without_first_or_last_name_is_none() {
    let c = create(json!({"name": "Acme Oy"}));
    assert_eq!(c.name.as_deref(), Some("Acme Oy"));
    assert_eq!(update(&c, json!({"name": null})).name, None);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_currency_is_refused() {
    assert_eq!(
        errors(None, json!({"currency": "EURO"})),
        vec![err("currency", "invalid_currency")]
    );
    assert_eq!(
        errors(None, json!({"currency": "ABC"})),
        vec![err("currency", "invalid_currency")]
    );

    let c = full_customer();
    assert_eq!(
        errors(Some(&c), json!({"currency": "xyz1"})),
        vec![err("currency", "invalid_currency")]
    );
}

#[test]
fn an_unknown_country_is_refused_at_its_address() {
    let body = json!({"addresses": [
        {"title": "Home", "country": "FI"},
        {"title": "Work", "country": "XX"}
    ]});
    assert_eq!(
        errors(None, body),
        vec![err("addresses[1].country", "invalid_country")]
    );
    let body = json!({"addresses": [{"title": "Home", "country": "FIN"}]});
    assert_eq!(
        errors(None, body),
        vec![err("addresses[0].country", "invalid_country")]
    );
}

#[test]
fn discount_must_be_between_0_and_100() {
    for bad in [json!(100.5), json!(-1), json!(-0.01), json!(1000)] {
        assert_eq!(
            errors(None, json!({"discount_percent": bad})),
            vec![err("discount_percent", "out_of_range")],
            "{bad}"
        );
    }
    assert_eq!(
        create(json!({"discount_percent": 0})).discount_percent,
        Some(0.0)
    );
    assert_eq!(
        create(json!({"discount_percent": 100})).discount_percent,
        Some(100.0)
    );
    assert_eq!(
        create(json!({"discount_percent": 33.3})).discount_percent,
        Some(33.3)
    );
}

#[test]
fn blank_optional_text_counts_as_null() {
    let stored = create(json!({
        "first_name": "Ann", "last_name": "Lee", "currency": "EUR", "birthday": "1980-01-31",
        "note": "x", "addresses": [{"title": "Home", "city": "Turku", "country": "FI"}]
    }));
    let body = json!({
        "first_name": "", "currency": " ", "birthday": "", "note": "",
        "addresses": [{"title": "Home", "city": "", "country": ""}]
    });
    let next = update(&stored, body);
    assert_eq!(next.first_name, None);
    assert_eq!(next.name.as_deref(), Some("Lee"));
    assert_eq!(next.currency, None);
    assert_eq!(next.birthday, None);
    assert_eq!(next.note, None);
    assert_eq!(next.addresses[0].city, None);
    assert_eq!(next.addresses[0].country, None);
    // Keys are different: an empty key is an error, not a silent clear.
    assert_eq!(
        errors(None, json!({"external_id": ""})),
        vec![err("external_id", "empty")]
    );
}

#[test]
fn merging_two_body_addresses_with_the_same_key_is_refused() {
    assert_eq!(
        errors(
            None,
            json!({"addresses_mode": "merge", "addresses": [{"title": "A"}, {"title": "A"}]})
        ),
        vec![err("addresses[1].title", "duplicate_title")]
    );
}

#[test]
fn birthday_must_be_a_real_date() {
    for bad in ["2023-02-29", "2024-13-01", "1980-1-31", "31.01.1980"] {
        assert_eq!(
            errors(None, json!({"birthday": bad})),
            vec![err("birthday", "invalid_date")],
            "{bad}"
        );
    }
    assert_eq!(
        create(json!({"birthday": "2024-02-29"}))
            .birthday
            .as_deref(),
        Some("2024-02-29")
    );
}

#[test]
fn keys_must_be_well_formed() {
    assert_eq!(
        errors(None, json!({"email": "not-an-email"})),
        vec![err("email", "invalid_email")]
    );
    assert_eq!(
        errors(None, json!({"email": "a@b"})),
        vec![err("email", "invalid_email")]
    );
    assert_eq!(
        errors(None, json!({"email": ""})),
        vec![err("email", "empty")]
    );
    assert_eq!(
        errors(None, json!({"external_id": ""})),
        vec![err("external_id", "empty")]
    );
    assert_eq!(
        errors(None, json!({"username": ""})),
        vec![err("username", "empty")]
    );
    assert_eq!(
        errors(None, json!({"username": "a\u{7}b"})),
        vec![err("username", "invalid_characters")]
    );
    assert_eq!(
        errors(None, json!({"external_id": "x".repeat(256)})),
        vec![err("external_id", "too_long")]
    );
    assert_eq!(
        create(json!({"external_id": "x".repeat(255)}))
            .external_id
            .map(|s| s.len()),
        Some(255)
    );
    assert_eq!(
        create(json!({"email": "Ann.Lee@Example.COM"}))
            .email
            .as_deref(),
        Some("Ann.Lee@Example.COM"),
        "stored as given"
    );
}

#[test]
fn texts_have_a_maximum_length() {
    let long = "x".repeat(1_001);
    assert_eq!(
        errors(None, json!({"first_name": long})),
        vec![err("first_name", "too_long")]
    );
    assert_eq!(
        errors(None, json!({"name": long})),
        vec![err("name", "too_long")]
    );
    assert_eq!(
        errors(
            None,
            json!({"addresses": [{"title": "Home", "city": long}]})
        ),
        vec![err("addresses[0].city", "too_long")]
    );
    assert_eq!(
        create(json!({"note": long})).note.map(|n| n.len()),
        Some(1_001)
    );
}

#[test]
fn address_titles_must_be_unique() {
    let body = json!({"addresses": [{"title": "Home"}, {"title": "Work"}, {"title": "Home"}]});
    assert_eq!(
        errors(None, body),
        vec![err("addresses[2].title", "duplicate_title")]
    );
}

#[test]
fn address_remote_ids_must_be_unique() {
    let body = json!({"addresses": [
        {"title": "A", "remote_id": "r1"},
        {"title": "B", "remote_id": "r1"},
        {"title": "C"},
        {"title": "D"}
    ]});
    assert_eq!(
        errors(None, body),
        vec![err("addresses[1].remote_id", "duplicate_remote_id")]
    );
}

#[test]
fn a_clash_names_the_address_the_body_sent() {
    let stored = create(json!({"addresses": [
        {"title": "Home", "remote_id": "r1"},
        {"title": "Work", "remote_id": "r2"}
    ]}));
    // Merged in, the new address sits third in the result; the body sent it first.
    let merged = json!({"addresses_mode": "merge", "addresses_key": "remote_id",
                        "addresses": [{"remote_id": "r9", "title": "Home"}]});
    assert_eq!(
        errors(Some(&stored), merged),
        vec![err("addresses[0].title", "duplicate_title")]
    );
    let renamed = json!({"addresses_mode": "merge", "addresses_key": "title",
                         "addresses": [{"title": "Other"}, {"title": "Work", "remote_id": "r1"}]});
    assert_eq!(
        errors(Some(&stored), renamed),
        vec![err("addresses[1].remote_id", "duplicate_remote_id")]
    );
    // A refused address before it does not shift the index either.
    let replaced = json!({"addresses": [{"title": null}, {"title": "A"}, {"title": "A"}]});
    assert_eq!(
        errors(None, replaced),
        vec![
            err("addresses[0].title", "required"),
            err("addresses[2].title", "duplicate_title")
        ]
    );
}

#[test]
fn an_address_needs_a_title() {
    let missing = json!({"addresses": [{"line1": "Main 1"}]});
    assert_eq!(
        errors(None, missing),
        vec![err("addresses[0].title", "required")]
    );
    let null = json!({"addresses": [{"title": "Home"}, {"title": null, "line1": "Main 1"}]});
    assert_eq!(
        errors(None, null),
        vec![err("addresses[1].title", "required")]
    );
    let blank = json!({"addresses": [{"title": "  "}]});
    assert_eq!(
        errors(None, blank),
        vec![err("addresses[0].title", "empty")]
    );

    // In merge mode too, and also when the address is matched by remote_id.
    let c = full_customer();
    let merge = json!({"addresses_mode": "merge", "addresses": [{"title": null}]});
    assert_eq!(
        errors(Some(&c), merge),
        vec![err("addresses[0].title", "required")]
    );
    let by_remote_id = json!({"addresses_mode": "merge", "addresses_key": "remote_id",
                              "addresses": [{"remote_id": "r1", "title": null}]});
    assert_eq!(
        errors(Some(&c), by_remote_id),
        vec![err("addresses[0].title", "required")]
    );
}

#[test]
fn unknown_teams_and_groups_are_refused() {
    let ctx = ApplyContext {
        directory: &EmptyDirectory,
        ..ctx_at(T0)
    };
    assert_eq!(
        errors_with(&ctx, None, json!({"teams": ["north"], "groups": ["vip"]})),
        vec![
            err("groups[0]", "unknown_group"),
            err("teams[0]", "unknown_team")
        ]
    );
    assert_eq!(
        errors_with(
            &ctx,
            None,
            json!({"add_teams": ["north"], "add_groups": [{"code": "vip", "subscribed": true}]})
        ),
        vec![
            err("add_groups[0]", "unknown_group"),
            err("add_teams[0]", "unknown_team")
        ]
    );
    // With a directory that knows some of them, only the others are refused.
    assert_eq!(
        errors(
            None,
            json!({"teams": ["north", "west"], "groups": ["vip", "gold", "news"]})
        ),
        vec![
            err("groups[1]", "unknown_group"),
            err("teams[1]", "unknown_team")
        ]
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let c = full_customer();
    let body = json!({
        "email": "nope",
        "currency": "zzz",
        "discount_percent": 101,
        "birthday": "2023-02-29",
        "addresses": [{"title": "Home", "country": "ZZ"}, {"city": "Nowhere"}],
        "add_tags": ["ok", ""],
        "teams": ["west"],
        "groups": ["gold"]
    });
    assert_eq!(
        errors(Some(&c), body),
        vec![
            err("add_tags[1]", "empty"),
            err("addresses[0].country", "invalid_country"),
            err("addresses[1].title", "required"),
            err("birthday", "invalid_date"),
            err("currency", "invalid_currency"),
            err("discount_percent", "out_of_range"),
            err("email", "invalid_email"),
            err("groups[0]", "unknown_group"),
            err("teams[0]", "unknown_team"),
        ]
    );
}

#[test]
fn errors_carry_a_message() {
    match apply(&ctx_at(T0), None, &write(json!({"currency": "zzz"}))) {
        Err(e) => assert!(e.0.iter().all(|f| !f.message.is_empty()), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

#[test]
fn currency_and_country_are_stored_upper_case() {
    let c = create(json!({
        "currency": "eur",
        "addresses": [{"title": "Home", "country": "fi"}, {"title": "Work", "country": "Se"}]
    }));
    assert_eq!(c.currency.as_deref(), Some("EUR"));
    assert_eq!(c.addresses[0].country.as_deref(), Some("FI"));
    assert_eq!(c.addresses[1].country.as_deref(), Some("SE"));

    assert_unchanged(
        &c,
        json!({
            "currency": "eur",
            "addresses": [{"title": "Home", "country": "fi"}, {"title": "Work", "country": "se"}]
        }),
    );
    assert_unchanged(
        &c,
        json!({
            "addresses_mode": "merge",
            "addresses": [{"title": "Work", "country": "se"}]
        }),
    );
    let changed = update(&c, json!({"currency": "sek"}));
    assert_eq!(changed.currency.as_deref(), Some("SEK"));
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

#[test]
fn addresses_replace_by_default() {
    let c = full_customer();
    let replaced = update(
        &c,
        json!({"addresses": [{"title": "Work", "city": "Vantaa"}]}),
    );
    assert_eq!(
        replaced.addresses,
        vec![address(json!({"title": "Work", "city": "Vantaa"}))]
    );
    let explicit = update(
        &c,
        json!({"addresses_mode": "replace", "addresses": [{"title": "Work", "city": "Vantaa"}]}),
    );
    assert_eq!(explicit.addresses, replaced.addresses);
    assert_eq!(update(&c, json!({"addresses": []})).addresses, Vec::new());
}

#[test]
fn addresses_merge_by_title_patches_matches_and_appends_the_rest() {
    let c = full_customer();
    let merged = update(
        &c,
        json!({
            "addresses_mode": "merge",
            "addresses": [
                {"title": "Home", "city": "Tampere", "line2": null, "kind": "shipping"},
                {"title": "Cabin", "city": "Inari", "country": "fi"}
            ]
        }),
    );
    assert_eq!(
        merged.addresses,
        vec![
            address(json!({
                "title": "Home", "remote_id": "r1", "kind": "shipping", "name": "Ann Lee",
                "company": "Acme", "line1": "Main 1", "line2": null, "line3": "c/o X",
                "city": "Tampere", "region": "Uusimaa", "postal_code": "00100",
                "country": "FI", "phone": "+358 1"
            })),
            c.addresses[1].clone(),
            address(json!({"title": "Cabin", "city": "Inari", "country": "FI"})),
        ]
    );
    // Merging what is already there changes nothing.
    assert_unchanged(
        &merged,
        json!({"addresses_mode": "merge", "addresses": [{"title": "Cabin", "city": "Inari"}]}),
    );
    // An empty merge keeps every address.
    assert_unchanged(&merged, json!({"addresses_mode": "merge", "addresses": []}));
}

#[test]
fn addresses_merge_by_title_needs_a_title_for_each_address() {
    let c = full_customer();
    assert_eq!(
        errors(
            Some(&c),
            json!({"addresses_mode": "merge", "addresses": [{"city": "Oulu"}]})
        ),
        vec![err("addresses[0].title", "required")]
    );
}

#[test]
fn addresses_merge_by_remote_id_can_rename_a_title() {
    let c = full_customer();
    let merged = update(
        &c,
        json!({
            "addresses_mode": "merge",
            "addresses_key": "remote_id",
            "addresses": [
                {"remote_id": "r2", "title": "Office", "postal_code": "02100"},
                {"remote_id": "r3", "title": "Cabin"}
            ]
        }),
    );
    assert_eq!(
        merged.addresses,
        vec![
            c.addresses[0].clone(),
            address(json!({
                "title": "Office", "remote_id": "r2", "city": "Espoo", "country": "FI",
                "postal_code": "02100"
            })),
            address(json!({"title": "Cabin", "remote_id": "r3"})),
        ]
    );
    // Without a title the matched address keeps its own.
    let kept = update(
        &c,
        json!({"addresses_mode": "merge", "addresses_key": "remote_id",
               "addresses": [{"remote_id": "r1", "city": "Turku"}]}),
    );
    assert_eq!(kept.addresses[0].title, "Home");
    assert_eq!(kept.addresses[0].city.as_deref(), Some("Turku"));
}

#[test]
fn addresses_merge_by_remote_id_requires_remote_id() {
    let c = full_customer();
    let body = json!({
        "addresses_mode": "merge",
        "addresses_key": "remote_id",
        "addresses": [
            {"remote_id": "r1", "city": "Turku"},
            {"title": "Home", "city": "Oulu"},
            {"title": "Work", "remote_id": null}
        ]
    });
    assert_eq!(
        errors(Some(&c), body),
        vec![
            err("addresses[1].remote_id", "required"),
            err("addresses[2].remote_id", "required")
        ]
    );
    // A new address (unknown remote_id) still needs a title.
    let body = json!({"addresses_mode": "merge", "addresses_key": "remote_id",
                      "addresses": [{"remote_id": "r9", "city": "Oulu"}]});
    assert_eq!(
        errors(Some(&c), body),
        vec![err("addresses[0].title", "required")]
    );
}

#[test]
fn addresses_merge_renaming_onto_another_title_is_a_duplicate() {
    let c = full_customer();
    let body = json!({"addresses_mode": "merge", "addresses_key": "remote_id",
                      "addresses": [{"remote_id": "r1", "title": "Work"}]});
    // Named by its place in the body, not in the merged list.
    assert_eq!(
        errors(Some(&c), body),
        vec![err("addresses[0].title", "duplicate_title")]
    );
}

#[test]
fn addresses_null_clears_even_in_merge_mode() {
    let c = full_customer();
    let cleared = update(&c, json!({"addresses_mode": "merge", "addresses": null}));
    assert!(cleared.addresses.is_empty());
}

#[test]
fn addresses_mode_without_addresses_changes_nothing() {
    let c = full_customer();
    assert_unchanged(
        &c,
        json!({"addresses_mode": "replace", "addresses_key": "remote_id"}),
    );
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

#[test]
fn tags_are_a_sorted_set() {
    let c = create(json!({"tags": ["vip", "b2b", "vip", "a"]}));
    assert_eq!(c.tags, strings(&["a", "b2b", "vip"]));
    assert_unchanged(&c, json!({"tags": ["vip", "a", "b2b", "a"]}));
}

#[test]
fn tags_replace_then_add_then_remove() {
    let c = create(json!({"tags": ["a", "b"]}));
    let next = update(
        &c,
        json!({"tags": ["x", "y"], "add_tags": ["z", "a"], "remove_tags": ["y", "nope"]}),
    );
    assert_eq!(next.tags, strings(&["a", "x", "z"]));
    // An added and removed tag ends up removed.
    let next = update(&c, json!({"add_tags": ["c"], "remove_tags": ["c", "a"]}));
    assert_eq!(next.tags, strings(&["b"]));
    let added = update(&c, json!({"add_tags": ["0", "c"]}));
    assert_eq!(added.tags, strings(&["0", "a", "b", "c"]));
    let removed = update(&c, json!({"remove_tags": ["a"]}));
    assert_eq!(removed.tags, strings(&["b"]));
    let cleared_then_added = update(&c, json!({"tags": null, "add_tags": ["q"]}));
    assert_eq!(cleared_then_added.tags, strings(&["q"]));
    assert_unchanged(&c, json!({"add_tags": ["b"], "remove_tags": ["c"]}));
}

#[test]
fn bad_tags_are_refused_at_their_position() {
    assert_eq!(
        errors(None, json!({"add_tags": [""]})),
        vec![err("add_tags[0]", "empty")]
    );
    assert_eq!(
        errors(None, json!({"tags": ["ok", ""]})),
        vec![err("tags[1]", "empty")]
    );
    assert_eq!(
        errors(
            None,
            json!({"tags": ["a\nb"], "add_tags": ["x".repeat(256)]})
        ),
        vec![
            err("add_tags[0]", "too_long"),
            err("tags[0]", "invalid_characters")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Groups and teams
// ---------------------------------------------------------------------------------------------

#[test]
fn a_bare_group_code_takes_the_group_default() {
    let c = create(json!({"groups": ["vip", "news"]}));
    assert_eq!(
        c.groups,
        vec![membership("news", false), membership("vip", true)]
    );
    let c = create(json!({"groups": [{"code": "vip"}, {"code": "news", "subscribed": null}]}));
    assert_eq!(
        c.groups,
        vec![membership("news", false), membership("vip", true)]
    );
}

#[test]
fn an_explicit_subscription_overrides_the_default() {
    let c = create(json!({"groups": [
        {"code": "vip", "subscribed": false},
        {"code": "news", "subscribed": true}
    ]}));
    assert_eq!(
        c.groups,
        vec![membership("news", true), membership("vip", false)]
    );
    assert_unchanged(
        &c,
        json!({"groups": [{"code": "news", "subscribed": true}, {"code": "vip", "subscribed": false}]}),
    );
    // A bare code keeps a membership's subscription (re-sending a list never undoes an
    // opt-out), in a replacing list and in `add_groups`; a new membership takes the default.
    assert_unchanged(&c, json!({"groups": ["vip", "news"]}));
    assert_unchanged(&c, json!({"add_groups": ["vip"]}));
    let opted_out = update(
        &c,
        json!({"groups": [{"code": "vip", "subscribed": false}]}),
    );
    let rejoined = update(&opted_out, json!({"add_groups": ["news", "vip"]}));
    assert_eq!(
        rejoined.groups,
        vec![membership("news", false), membership("vip", false)]
    );
}

#[test]
fn a_misspelt_membership_field_is_reported_as_unknown() {
    let mut ignored = Vec::new();
    let body = br#"{"groups": [{"code": "vip", "subscribd": false}]}"#;
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed: CustomerWrite = serde_ignored::deserialize(&mut json, |path| {
        ignored.push(path.to_string());
    })
    .unwrap();
    assert_eq!(ignored, vec!["groups.?.0.subscribd".to_owned()]);
    assert_eq!(
        parsed.groups,
        Patch::Value(vec![GroupRef::Membership {
            code: "vip".into(),
            subscribed: None
        }])
    );
}

#[test]
fn groups_add_and_remove() {
    let c = create(json!({"groups": [{"code": "vip", "subscribed": false}]}));
    let added = update(&c, json!({"add_groups": ["news"]}));
    assert_eq!(
        added.groups,
        vec![membership("news", false), membership("vip", false)]
    );
    let resubscribed = update(
        &added,
        json!({"add_groups": [{"code": "vip", "subscribed": true}]}),
    );
    assert_eq!(
        resubscribed.groups,
        vec![membership("news", false), membership("vip", true)]
    );
    let removed = update(&resubscribed, json!({"remove_groups": ["vip"]}));
    assert_eq!(removed.groups, vec![membership("news", false)]);
    assert_eq!(
        errors(
            Some(&resubscribed),
            json!({"remove_groups": ["vip", "gold"]})
        ),
        vec![err("remove_groups[1]", "unknown_group")]
    );
    let cleared = update(&removed, json!({"groups": null}));
    assert!(cleared.groups.is_empty());
    assert_unchanged(&removed, json!({"remove_groups": ["vip"]}));
    let replaced = update(
        &c,
        json!({"groups": ["news"], "add_groups": [{"code": "vip", "subscribed": true}], "remove_groups": ["news"]}),
    );
    assert_eq!(replaced.groups, vec![membership("vip", true)]);
}

#[test]
fn teams_are_a_set_with_add_and_remove() {
    let c = create(json!({"teams": ["south", "north", "south"]}));
    assert_eq!(c.teams, strings(&["north", "south"]));
    let removed = update(&c, json!({"remove_teams": ["north"]}));
    assert_eq!(removed.teams, strings(&["south"]));
    let added = update(&removed, json!({"add_teams": ["north"]}));
    assert_eq!(added.teams, strings(&["north", "south"]));
    let replaced = update(&c, json!({"teams": ["north"]}));
    assert_eq!(replaced.teams, strings(&["north"]));
    assert_unchanged(&c, json!({"add_teams": ["south"]}));
    assert_eq!(
        errors(Some(&c), json!({"add_teams": ["west"]})),
        vec![err("add_teams[0]", "unknown_team")]
    );
    assert_eq!(
        errors(Some(&c), json!({"teams": [""]})),
        vec![err("teams[0]", "empty")]
    );
}

// ---------------------------------------------------------------------------------------------
// Password
// ---------------------------------------------------------------------------------------------

#[test]
fn a_password_write_always_counts_as_a_change() {
    let set = ApplyContext {
        password: Patch::Value(()),
        ..ctx_at(T1)
    };
    let c = create(json!({"first_name": "Ann"}));
    let with = match apply(&set, Some(&c), &CustomerWrite::default()) {
        Ok(Applied::Changed(next)) => *next,
        other => panic!("{other:?}"),
    };
    assert!(with.has_password);
    assert_eq!(with.version, 2);
    // Setting a (new) password again is a change although has_password stays true.
    match apply(&set, Some(&with), &CustomerWrite::default()) {
        Ok(Applied::Changed(next)) => {
            assert!(next.has_password);
            assert_eq!(next.version, 3);
        }
        other => panic!("{other:?}"),
    }
    // Absent keeps it.
    assert_unchanged(&with, json!({"first_name": "Ann"}));

    let clear = ApplyContext {
        password: Patch::Null,
        ..ctx_at(T1)
    };
    match apply(&clear, Some(&with), &CustomerWrite::default()) {
        Ok(Applied::Changed(next)) => {
            assert!(!next.has_password);
            assert_eq!(next.version, 3);
        }
        other => panic!("{other:?}"),
    }
    // Clearing a password that is not there changes nothing.
    assert_eq!(
        apply(&clear, Some(&c), &CustomerWrite::default()),
        Ok(Applied::Unchanged)
    );
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[test]
fn bind_key_accepts_an_absent_or_equal_key() {
    let absent = CustomerWrite::default();
    assert_eq!(absent.bind_key(CustomerKey::ExternalId, "ext-1"), Ok(()));
    let same = write(json!({"username": "ann"}));
    assert_eq!(same.bind_key(CustomerKey::Username, "ann"), Ok(()));
    let email = write(json!({"email": "Ann@Example.com"}));
    assert_eq!(
        email.bind_key(CustomerKey::Email, "ann@example.COM"),
        Ok(())
    );
}

#[test]
fn an_upsert_create_takes_the_key_only_when_the_body_lacks_it() {
    let absent = CustomerWrite::default();
    let filled = absent
        .for_upsert_create(CustomerKey::ExternalId, "ext-1")
        .expect("filled");
    assert_eq!(filled.external_id, Patch::Value("ext-1".to_owned()));
    assert_eq!(filled.email, Patch::Absent);
    let given = write(json!({"email": "Ann@Example.com"}));
    assert!(
        given
            .for_upsert_create(CustomerKey::Email, "ann@example.com")
            .is_none()
    );
}

#[test]
fn bind_key_refuses_a_different_or_null_key() {
    let mismatch = |body: Value, key: CustomerKey, value: &str| {
        let w = write(body);
        match w.bind_key(key, value) {
            Err(e) => {
                e.0.into_iter()
                    .map(|f| (f.field, f.code))
                    .collect::<Vec<_>>()
            }
            Ok(()) => panic!("{key} {value} accepted"),
        }
    };
    assert_eq!(
        mismatch(
            json!({"email": "bob@example.com"}),
            CustomerKey::Email,
            "ann@example.com"
        ),
        vec![err("email", "key_mismatch")]
    );
    // Only emails compare case-insensitively.
    assert_eq!(
        mismatch(
            json!({"external_id": "ABC"}),
            CustomerKey::ExternalId,
            "abc"
        ),
        vec![err("external_id", "key_mismatch")]
    );
    assert_eq!(
        mismatch(json!({"username": "Ann"}), CustomerKey::Username, "ann"),
        vec![err("username", "key_mismatch")]
    );
    assert_eq!(
        mismatch(json!({"username": null}), CustomerKey::Username, "ann"),
        vec![err("username", "key_mismatch")]
    );
}

#[test]
fn required_key_needs_a_value_in_the_body() {
    let w = write(json!({"external_id": "ext-1", "email": null}));
    assert_eq!(w.required_key(CustomerKey::ExternalId), Ok("ext-1"));
    for key in [CustomerKey::Email, CustomerKey::Username] {
        match w.required_key(key) {
            Err(e) => {
                assert_eq!(e.0.len(), 1);
                assert_eq!(e.0[0].field, key.as_str());
                assert_eq!(e.0[0].code, "required");
            }
            Ok(v) => panic!("{key}: {v}"),
        }
    }
}

#[test]
fn key_returns_the_patch_of_each_key() {
    let w = write(json!({"external_id": "e", "email": null}));
    assert_eq!(
        w.key(CustomerKey::ExternalId),
        &Patch::Value("e".to_owned())
    );
    assert_eq!(w.key(CustomerKey::Email), &Patch::Null);
    assert_eq!(w.key(CustomerKey::Username), &Patch::Absent);
}

// ---------------------------------------------------------------------------------------------
// Property: a sequence of patches against a simple model
// ---------------------------------------------------------------------------------------------

/// One write over a subset of the fields.
#[derive(Clone, Debug)]
struct Step {
    texts: Vec<(&'static str, Patch<String>)>,
    archived: Patch<bool>,
    currency: Patch<String>,
    tags: Patch<Vec<String>>,
    add_tags: Option<Vec<String>>,
    remove_tags: Option<Vec<String>>,
}

const TEXT_FIELDS: [&str; 4] = ["first_name", "last_name", "phone", "note"];

impl Step {
    fn to_write(&self) -> CustomerWrite {
        let mut w = CustomerWrite {
            archived: self.archived.clone(),
            currency: self.currency.clone(),
            tags: self.tags.clone(),
            add_tags: self.add_tags.clone(),
            remove_tags: self.remove_tags.clone(),
            ..CustomerWrite::default()
        };
        for (field, patch) in &self.texts {
            let slot = match *field {
                "first_name" => &mut w.first_name,
                "last_name" => &mut w.last_name,
                "phone" => &mut w.phone,
                "note" => &mut w.note,
                other => panic!("no field {other}"),
            };
            *slot = patch.clone();
        }
        w
    }
}

/// The expected state: absent keeps, null clears, a value sets.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    fields: BTreeMap<&'static str, String>,
    archived: bool,
    tags: BTreeSet<String>,
}

fn patch_field(
    fields: &mut BTreeMap<&'static str, String>,
    field: &'static str,
    patch: &Patch<String>,
) {
    match patch {
        Patch::Absent => {}
        Patch::Null => {
            fields.remove(field);
        }
        // Blank optional text counts as null.
        Patch::Value(v) if v.trim().is_empty() => {
            fields.remove(field);
        }
        Patch::Value(v) => {
            fields.insert(field, v.clone());
        }
    }
}

impl Model {
    fn apply(&mut self, step: &Step) {
        for (field, patch) in &step.texts {
            patch_field(&mut self.fields, field, patch);
        }
        patch_field(
            &mut self.fields,
            "currency",
            &step.currency.clone().map(|c| c.to_uppercase()),
        );
        match step.archived {
            Patch::Absent => {}
            Patch::Null => self.archived = false,
            Patch::Value(v) => self.archived = v,
        }
        match &step.tags {
            Patch::Absent => {}
            Patch::Null => self.tags.clear(),
            Patch::Value(tags) => self.tags = tags.iter().cloned().collect(),
        }
        for tag in step.add_tags.iter().flatten() {
            self.tags.insert(tag.clone());
        }
        for tag in step.remove_tags.iter().flatten() {
            self.tags.remove(tag);
        }
    }

    fn get(&self, field: &str) -> Option<String> {
        self.fields.get(field).cloned()
    }

    /// The display name, never given in these writes, so always derived.
    fn name(&self) -> Option<String> {
        match (self.get("first_name"), self.get("last_name")) {
            (Some(first), Some(last)) => Some(format!("{first} {last}")),
            (Some(only), None) | (None, Some(only)) => Some(only),
            (None, None) => None,
        }
    }

    fn assert_matches(&self, c: &Customer) {
        assert_eq!(c.first_name, self.get("first_name"), "first_name");
        assert_eq!(c.last_name, self.get("last_name"), "last_name");
        assert_eq!(c.phone, self.get("phone"), "phone");
        assert_eq!(c.note, self.get("note"), "note");
        assert_eq!(c.currency, self.get("currency"), "currency");
        assert_eq!(c.name, self.name(), "name");
        assert_eq!(c.archived, self.archived, "archived");
        assert_eq!(
            c.tags,
            self.tags.iter().cloned().collect::<Vec<_>>(),
            "tags"
        );
        // Fields no step touches keep their defaults.
        assert_eq!(c.email, None);
        assert_eq!(c.company, None);
        assert!(!c.email_verified && !c.email_opt_out && !c.has_password);
        assert!(c.addresses.is_empty() && c.groups.is_empty() && c.teams.is_empty());
    }
}

fn patch_from<T: Clone + std::fmt::Debug + 'static>(pool: &[T]) -> impl Strategy<Value = Patch<T>> {
    let pool = pool.to_vec();
    prop_oneof![
        Just(Patch::Absent),
        Just(Patch::Null),
        proptest::sample::select(pool).prop_map(Patch::Value),
    ]
}

const TAG_POOL: [&str; 5] = ["a", "b", "vip", "x-1", "Z"];

fn tag_list() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(proptest::sample::select(TAG_POOL.to_vec()), 0..4)
        .prop_map(|tags| tags.into_iter().map(str::to_owned).collect())
}

fn text_patch(pool: &'static [&'static str]) -> impl Strategy<Value = Patch<String>> {
    patch_from(pool).prop_map(|p| p.map(str::to_owned))
}

fn step() -> impl Strategy<Value = Step> {
    (
        text_patch(&["Ann", "Bob", "Ö"]),
        text_patch(&["Lee", "Smith"]),
        text_patch(&["+358 40 1", "555"]),
        text_patch(&["", "likes tea", "VIP"]),
        patch_from(&[false, true]),
        text_patch(&["EUR", "eur", "SEK", "usd"]),
        prop_oneof![
            Just(Patch::Absent),
            Just(Patch::Null),
            tag_list().prop_map(Patch::Value)
        ],
        proptest::option::of(tag_list()),
        proptest::option::of(tag_list()),
    )
        .prop_map(
            |(first, last, phone, note, archived, currency, tags, add_tags, remove_tags)| Step {
                texts: TEXT_FIELDS
                    .into_iter()
                    .zip([first, last, phone, note])
                    .collect(),
                archived,
                currency,
                tags,
                add_tags,
                remove_tags,
            },
        )
}

proptest! {
    #[test]
    fn a_sequence_of_patches_matches_the_model(
        first in step(),
        rest in proptest::collection::vec(step(), 0..12),
    ) {
        let mut model = Model::default();
        model.apply(&first);
        let mut customer = match apply(&ctx_at(T0), None, &first.to_write()) {
            Ok(Applied::Changed(c)) => *c,
            other => panic!("create {first:?}: {other:?}"),
        };
        model.assert_matches(&customer);
        let mut changes = 0;
        let mut last_change = T0;
        for (i, step) in rest.iter().enumerate() {
            let before = model.clone();
            model.apply(step);
            let now = T0 + 1_000 * (i as i64 + 1);
            match apply(&ctx_at(now), Some(&customer), &step.to_write()) {
                Ok(Applied::Changed(next)) => {
                    prop_assert_ne!(&before, &model, "changed although the model did not: {:?}", step);
                    prop_assert_eq!(next.version, customer.version + 1);
                    prop_assert_eq!(next.updated_at, Timestamp::from_micros(now));
                    changes += 1;
                    last_change = now;
                    customer = *next;
                }
                Ok(Applied::Unchanged) => {
                    prop_assert_eq!(&before, &model, "unchanged although the model changed: {:?}", step);
                }
                Err(e) => panic!("step {step:?} refused: {e:?}"),
            }
            model.assert_matches(&customer);
        }
        prop_assert_eq!(customer.version, 1 + changes);
        prop_assert_eq!(customer.created_at, Timestamp::from_micros(T0));
        prop_assert_eq!(customer.updated_at, Timestamp::from_micros(last_change));
    }
}

#[test]
fn single_line_text_refuses_control_characters_and_a_note_keeps_its_lines() {
    for bad in [
        "Ada\tKing",
        "Ada\nKing",
        "Ada\rKing",
        "Ada\u{1b}[31mKing",
        "Ada\u{85}King",
    ] {
        assert_eq!(
            errors(None, json!({"first_name": bad})),
            vec![err("first_name", "invalid_characters")],
            "{bad:?}"
        );
        assert_eq!(
            errors(
                None,
                json!({"addresses": [{"title": "Home", "line1": bad}]})
            ),
            vec![err("addresses[0].line1", "invalid_characters")],
            "{bad:?}"
        );
    }
    let customer = create(json!({"note": "line 1\r\n\tline 2", "last_name": "O'Brien-Łukasz"}));
    assert_eq!(customer.note.as_deref(), Some("line 1\r\n\tline 2"));
    for bad in ["a\u{0}b", "a\u{7}b", "a\u{1b}b"] {
        assert_eq!(
            errors(None, json!({"note": bad})),
            vec![err("note", "invalid_characters")],
            "{bad:?}"
        );
    }
}

#[test]
fn text_stored_before_the_rule_may_be_sent_again_unchanged() {
    let mut stored = create(json!({"external_id": "legacy"}));
    stored.first_name = Some("Ann\tMarie".into());
    stored.name = Some("Ann\tMarie Smith".into());
    let same = json!({"first_name": "Ann\tMarie", "name": "Ann\tMarie Smith"});
    assert!(matches!(
        apply(&ctx_at(T1), Some(&stored), &write(same)),
        Ok(Applied::Unchanged)
    ));
    assert_eq!(
        errors(Some(&stored), json!({"first_name": "Ann\tMaria"})),
        vec![err("first_name", "invalid_characters")]
    );

    // An address's lines too (found in a review: they were checked as sent), on every mode.
    stored.addresses = vec![address(
        json!({"title": "Home", "remote_id": "r1", "line1": "Main St"}),
    )];
    stored.addresses[0].line1 = Some("Main\tSt".into());
    for (mode, key) in [
        ("replace", "title"),
        ("merge", "title"),
        ("merge", "remote_id"),
    ] {
        let same = json!({
            "addresses_mode": mode, "addresses_key": key,
            "addresses": [{"title": "Home", "remote_id": "r1", "line1": "Main\tSt"}],
        });
        let result = apply(&ctx_at(T1), Some(&stored), &write(same));
        assert!(
            matches!(result, Ok(Applied::Unchanged)),
            "{mode} by {key}: {result:?}"
        );
    }
    let elsewhere = json!({"addresses": [
        {"title": "Home", "remote_id": "r1", "line1": "Main\tSt"},
        {"title": "Work", "line1": "Main\tSt", "line2": "Main\tSt"},
    ]});
    assert_eq!(
        errors(Some(&stored), elsewhere),
        vec![
            err("addresses[1].line1", "invalid_characters"),
            err("addresses[1].line2", "invalid_characters")
        ]
    );
}

#[test]
fn custom_numbers_beyond_64_bit_integers_are_refused_not_rounded() {
    let body = |custom: &str| -> CustomerWrite {
        serde_json::from_str(&format!(r#"{{"custom": {custom}}}"#)).unwrap()
    };
    let refused = |custom: &str| match apply(&ctx_at(T0), None, &body(custom)) {
        Err(errors) => errors
            .0
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect::<Vec<_>>(),
        other => panic!("{custom} was accepted: {other:?}"),
    };
    assert_eq!(
        refused(r#"{"account": 123456789012345678901234567890}"#),
        vec![("custom.account".to_owned(), "out_of_range")]
    );
    assert_eq!(
        refused(r#"{"list": [1, {"n": -9223372036854775809}]}"#),
        vec![("custom.list[1].n".to_owned(), "out_of_range")]
    );
    // Every 64-bit integer is kept exactly, and so are ordinary decimals.
    let kept = r#"{"max": 18446744073709551615, "min": -9223372036854775808, "ratio": 0.1, "big": 1.5e18}"#;
    match apply(&ctx_at(T0), None, &body(kept)) {
        Ok(Applied::Changed(customer)) => assert_eq!(
            serde_json::to_string(&customer.custom).unwrap(),
            r#"{"big":1.5e+18,"max":18446744073709551615,"min":-9223372036854775808,"ratio":0.1}"#
        ),
        other => panic!("{other:?}"),
    }
}

/// The OpenAPI document's patterns for text say what the validation does, character for
/// character, so generated clients and fuzzers refuse what the hub refuses: every text field of
/// a customer write and of an address has one, and `note` alone takes line breaks.
#[test]
fn the_documented_text_patterns_match_the_validation() {
    use crate::validation::TextKind;
    let schemas = [
        serde_json::to_value(<CustomerWrite as utoipa::PartialSchema>::schema()).unwrap(),
        serde_json::to_value(<AddressWrite as utoipa::PartialSchema>::schema()).unwrap(),
    ];
    let chars: Vec<char> = (0u32..0x300)
        .chain([0x2028, 0x2029, 0xFEFF, 0x1F600])
        .filter_map(char::from_u32)
        .collect();
    let mut checked = Vec::new();
    for schema in &schemas {
        for (field, property) in schema["properties"].as_object().unwrap() {
            let Some(pattern) = property["pattern"].as_str() else {
                continue;
            };
            let pattern = regex::Regex::new(pattern).unwrap();
            let kind = if field == "note" {
                TextKind::Multiline
            } else {
                TextKind::Line
            };
            for &c in &chars {
                let text = format!("a{c}b");
                assert_eq!(pattern.is_match(&text), kind.allows(c), "{c:?} in {field}");
            }
            checked.push(field.clone());
        }
    }
    // The customer's eleven text fields (keys included) and the address's eleven.
    assert_eq!(checked.len(), 22, "{checked:?}");
}

#[test]
fn custom_fields_are_bounded_in_number_and_size() {
    let many: Map<String, Value> = (0..201).map(|i| (format!("f{i}"), json!(i))).collect();
    assert_eq!(
        errors(None, json!({"custom": many})),
        vec![err("custom", "too_many")]
    );
    let fits: Map<String, Value> = (0..200).map(|i| (format!("f{i}"), json!(i))).collect();
    assert_eq!(create(json!({"custom": fits})).custom.len(), 200);
    assert_eq!(
        errors(None, json!({"custom": {"blob": "x".repeat(64 * 1024)}})),
        vec![err("custom", "too_large")]
    );
    let near = "x".repeat(64 * 1024 - 20);
    assert_eq!(create(json!({"custom": {"blob": near}})).custom.len(), 1);
}

#[test]
fn custom_fields_stored_before_their_bounds_may_be_sent_again_unchanged() {
    let mut stored = create(json!({"external_id": "legacy"}));
    let many: Map<String, Value> = (0..201).map(|i| (format!("f{i}"), json!(i))).collect();
    stored.custom = many.clone();
    assert!(matches!(
        apply(&ctx_at(T1), Some(&stored), &write(json!({"custom": many}))),
        Ok(Applied::Unchanged)
    ));
    let mut more = stored.custom.clone();
    more.insert("f201".into(), json!(201));
    assert_eq!(
        errors(Some(&stored), json!({"custom": more})),
        vec![err("custom", "too_many")]
    );
}
