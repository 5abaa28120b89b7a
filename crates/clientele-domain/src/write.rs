//! A customer write (create, PATCH, upsert, sync item) and the rules that merge it into the
//! stored customer: absent = unchanged, `null` = cleared, address modes, incremental set edits,
//! the derived display name, and "a write that changes nothing keeps the version".

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::customer::{derived_name, untrimmed_derived_name};
use crate::schema::MAX_CUSTOM_FIELDS;
use crate::validation::{MAX_ITEMS, TextKind, check_key, check_text, is_date, is_plausible_email};
use crate::{
    Address, AddressKind, Customer, CustomerId, CustomerKey, GroupMembership, Patch, Timestamp,
    ValidationErrors, iso,
};

/// The body of a customer write. Every field is optional: absent leaves the stored value,
/// `null` clears it; an empty or blank string clears optional text too (exports write "" for
/// "no value"), except the unique keys, where "" is 422 `empty`. Text is one line, without
/// control characters (422 `invalid_characters`), at most 1,000 characters (keys and tags 255);
/// `note` may hold tabs and line breaks, up to 65,536 characters (the schema's `pattern`s say
/// which characters). Text sent unchanged (equal to the stored value, or for an address to its
/// stored address of the same title or `remote_id`) is not checked again, so text stored
/// before a rule was tightened does not make a re-send fail. Unknown fields are refused by the
/// HTTP layer before this is built.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CustomerWrite {
    /// Unique key; "" is refused (422 `empty`): `null` clears it.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub external_id: Patch<String>,
    /// Unique key, case-insensitively (stored as given); "" is refused (422 `empty`): `null`
    /// clears it.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub email: Patch<String>,
    /// Unique key; "" is refused (422 `empty`): `null` clears it.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub username: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub first_name: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub last_name: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub company: Patch<String>,
    /// Display name; when unset it is derived from first and last name.
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub name: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub phone: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub phone_alt: Patch<String>,
    #[schema(value_type = Option<bool>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub email_verified: Patch<bool>,
    #[schema(value_type = Option<bool>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub email_opt_out: Patch<bool>,
    #[schema(value_type = Option<bool>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub archived: Patch<bool>,
    /// ISO 4217 code (case-insensitive in input, stored upper case).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub currency: Patch<String>,
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 100)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub discount_percent: Patch<f64>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub payment_terms: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 65536, pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub note: Patch<String>,
    /// `YYYY-MM-DD`, a real date.
    #[schema(value_type = Option<String>, format = Date)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub birthday: Patch<String>,
    #[schema(value_type = Option<Vec<AddressWrite>>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub addresses: Patch<Vec<AddressWrite>>,
    /// How `addresses` applies: `replace` (default) or `merge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses_mode: Option<AddressesMode>,
    /// Which address field `merge` matches on: `title` (default) or `remote_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses_key: Option<AddressesKey>,
    /// Replaces the tag set.
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub tags: Patch<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_tags: Option<Vec<String>>,
    /// Replaces the memberships; a code alone takes the group's default subscription.
    #[schema(value_type = Option<Vec<GroupRef>>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub groups: Patch<Vec<GroupRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_groups: Option<Vec<GroupRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_groups: Option<Vec<String>>,
    /// Replaces the team set.
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub teams: Patch<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_teams: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_teams: Option<Vec<String>>,
    /// Custom fields, as one object: given, it replaces the stored object whole (a field left
    /// out is removed; send the fields to keep with it), checked against the schema's custom
    /// fields when a schema is defined; `null` removes them all. At most 200 fields and 64 KiB of
    /// JSON (422 `too_many`, `too_large`). A number beyond the range of
    /// 64-bit integers is refused (422 `out_of_range`, naming where it is): it could not be
    /// stored exactly, so send such values (long account numbers) as strings. A name given twice
    /// in one object, at any depth, is refused (422 `duplicate_field`, naming where it is).
    #[schema(value_type = Option<Object>)]
    #[serde(
        skip_serializing_if = "Patch::is_absent",
        deserialize_with = "custom_fields"
    )]
    pub custom: Patch<Map<String, Value>>,
    /// Write-only; stored as an Argon2id hash. `null` removes the password.
    #[schema(value_type = Option<String>, write_only)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub password: Patch<String>,
    /// Sync items only: the current value of the batch key, when the item changes the key itself.
    #[schema(ignore)]
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_value: Option<String>,
    /// Sync items only: `true` deletes the item's customer.
    #[schema(ignore)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<bool>,
    /// Sync items only: the version the item applies to.
    #[schema(ignore)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    /// Read-only response fields are accepted (so a customer read can be written back) and ignored.
    #[schema(value_type = Option<String>, read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[schema(value_type = Option<i64>, read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    #[schema(value_type = Option<bool>, read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_password: Option<Value>,
    #[schema(value_type = Option<String>, read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Value>,
    #[schema(value_type = Option<String>, read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Value>,
}

/// An address in a write. In `merge` mode, absent fields keep the stored address's values.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AddressWrite {
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub title: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub remote_id: Patch<String>,
    #[schema(value_type = Option<AddressKind>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub kind: Patch<AddressKind>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub name: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub company: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub line1: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub line2: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub line3: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub city: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub region: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub postal_code: Patch<String>,
    /// ISO 3166-1 alpha-2 (case-insensitive in input, stored upper case).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub country: Patch<String>,
    #[schema(value_type = Option<String>, max_length = 1000, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(skip_serializing_if = "Patch::is_absent")]
    pub phone: Patch<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressesMode {
    #[default]
    Replace,
    Merge,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressesKey {
    #[default]
    Title,
    RemoteId,
}

/// A group membership in a write: a bare code, or a code with an explicit subscription. A bare
/// code keeps the subscription of a membership the customer has, and takes the group's default
/// for a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum GroupRef {
    Code(String),
    Membership {
        code: String,
        subscribed: Option<bool>,
    },
}

impl<'de> Deserialize<'de> for GroupRef {
    /// By hand rather than derived as `untagged`: a derived untagged enum buffers the object,
    /// so the body parser never sees its fields, and a misspelt `subscribed` was dropped
    /// silently. Here an unknown field is skipped as any struct's is, and reported as one.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GroupRefVisitor;

        impl<'de> serde::de::Visitor<'de> for GroupRefVisitor {
            type Value = GroupRef;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a group code, or an object with `code` and `subscribed`")
            }

            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<GroupRef, E> {
                Ok(GroupRef::Code(code.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, code: String) -> Result<GroupRef, E> {
                Ok(GroupRef::Code(code))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<GroupRef, A::Error> {
                use serde::de::Error;
                let (mut code, mut subscribed) = (None, None);
                while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*field {
                        "code" if code.is_some() => return Err(A::Error::duplicate_field("code")),
                        "code" => code = Some(map.next_value::<String>()?),
                        "subscribed" if subscribed.is_some() => {
                            return Err(A::Error::duplicate_field("subscribed"));
                        }
                        "subscribed" => subscribed = Some(map.next_value::<Option<bool>>()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(GroupRef::Membership {
                    code: code.ok_or_else(|| A::Error::missing_field("code"))?,
                    subscribed: subscribed.flatten(),
                })
            }
        }

        deserializer.deserialize_any(GroupRefVisitor)
    }
}

impl GroupRef {
    pub fn code(&self) -> &str {
        match self {
            GroupRef::Code(code) | GroupRef::Membership { code, .. } => code,
        }
    }

    fn subscribed(&self) -> Option<bool> {
        match self {
            GroupRef::Code(_) => None,
            GroupRef::Membership { subscribed, .. } => *subscribed,
        }
    }
}

/// The groups and teams that exist, as far as a write needs to know.
pub trait Directory {
    /// The group's default subscription (`subscribable`), or `None` when no such group exists.
    fn group_default_subscribed(&self, code: &str) -> Option<bool>;
    fn team_exists(&self, code: &str) -> bool;
}

/// A directory with no groups and no teams.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyDirectory;

impl Directory for EmptyDirectory {
    fn group_default_subscribed(&self, _: &str) -> Option<bool> {
        None
    }

    fn team_exists(&self, _: &str) -> bool {
        false
    }
}

/// What a write did to the stored customer.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// The result equals the stored customer: no new version, no change record.
    Unchanged,
    /// The new state (version and `updated_at` already advanced).
    Changed(Box<Customer>),
}

impl CustomerWrite {
    /// The write's value for a unique key.
    pub fn key(&self, key: CustomerKey) -> &Patch<String> {
        match key {
            CustomerKey::ExternalId => &self.external_id,
            CustomerKey::Email => &self.email,
            CustomerKey::Username => &self.username,
        }
    }

    fn key_mut(&mut self, key: CustomerKey) -> &mut Patch<String> {
        match key {
            CustomerKey::ExternalId => &mut self.external_id,
            CustomerKey::Email => &mut self.email,
            CustomerKey::Username => &mut self.username,
        }
    }

    /// Checks a write addressed by a key (`PUT /customers/{key}/{value}`) against the path: a
    /// body without the key or with the same value is fine, anything else is refused.
    pub fn bind_key(&self, key: CustomerKey, value: &str) -> Result<(), ValidationErrors> {
        let field = key.as_str();
        let mut errors = ValidationErrors::default();
        check_key(&mut errors, field, value);
        errors.into_result()?;
        match self.key(key) {
            Patch::Absent => Ok(()),
            Patch::Value(given) if key.normalize(given) == key.normalize(value) => Ok(()),
            Patch::Value(_) => Err(ValidationErrors::single(
                field,
                "key_mismatch",
                format!("the body's {field} differs from the one in the path; rename with PATCH"),
            )),
            Patch::Null => Err(ValidationErrors::single(
                field,
                "key_mismatch",
                format!("cannot clear the {field} the customer is addressed by"),
            )),
        }
    }

    /// The write that creates the customer an upsert on `key` found missing: the key's value
    /// comes from the upsert when the body does not carry it.
    pub fn for_upsert_create(&self, key: CustomerKey, value: &str) -> Option<CustomerWrite> {
        self.key(key).is_absent().then(|| {
            let mut write = self.clone();
            *write.key_mut(key) = Patch::Value(value.to_owned());
            write
        })
    }

    /// Refuses the sync-item directives (`match`, `delete`, `expected_version`) outside sync items.
    pub fn reject_sync_directives(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let given = [
            ("match", self.match_value.is_some()),
            ("delete", self.delete.is_some()),
            ("expected_version", self.expected_version.is_some()),
        ];
        for (field, present) in given {
            if present {
                errors.push(field, "unknown_field", "only sync items take this field");
            }
        }
        errors.into_result()
    }

    /// The value of the key an upsert matches on, which the body must carry.
    pub fn required_key(&self, key: CustomerKey) -> Result<&str, ValidationErrors> {
        match self.key(key) {
            Patch::Value(v) => {
                let mut errors = ValidationErrors::default();
                check_key(&mut errors, key.as_str(), v);
                errors.into_result().map(|()| v.as_str())
            }
            _ => Err(ValidationErrors::single(
                key.as_str(),
                "required",
                format!("an upsert on {key} needs {key} in the body"),
            )),
        }
    }
}

/// The context a write is applied in.
pub struct ApplyContext<'a> {
    pub now: Timestamp,
    pub directory: &'a dyn Directory,
    /// The password change, already hashed by the caller: only whether one is set matters here.
    pub password: Patch<()>,
    /// The custom fields and required fields writes are checked against.
    pub schema: &'a crate::schema::Schema,
}

/// Merges `write` into `current` (or creates a customer when `current` is `None`), validating
/// every field and the result. Pure: the caller persists the outcome.
pub fn apply(
    ctx: &ApplyContext<'_>,
    current: Option<&Customer>,
    write: &CustomerWrite,
) -> Result<Applied, ValidationErrors> {
    apply_keeping_teams(ctx, current, write, &|_| false)
}

/// [`apply`], where a `teams` that replaces the customer's set (or clears it) keeps the teams
/// `kept` names: a team-restricted key's write leaves alone the teams it may not see.
pub(crate) fn apply_keeping_teams(
    ctx: &ApplyContext<'_>,
    current: Option<&Customer>,
    write: &CustomerWrite,
    kept: &dyn Fn(&str) -> bool,
) -> Result<Applied, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let blank;
    let base = match current {
        Some(customer) => customer,
        None => {
            blank = blank_customer(ctx.now);
            &blank
        }
    };

    let mut next = base.clone();
    for key in CustomerKey::ALL {
        let field = key.as_str();
        let value = write.key(key);
        if let Patch::Value(v) = value {
            check_key(&mut errors, field, v);
            if key == CustomerKey::Email && !v.is_empty() && !is_plausible_email(v) {
                errors.push(field, "invalid_email", "not an email address");
            }
        }
    }
    next.external_id = write.external_id.clone().apply_to(next.external_id);
    next.email = write.email.clone().apply_to(next.email);
    next.username = write.username.clone().apply_to(next.username);

    let texts: [(&str, &Patch<String>, &mut Option<String>, TextKind); 7] = [
        (
            "first_name",
            &write.first_name,
            &mut next.first_name,
            TextKind::Line,
        ),
        (
            "last_name",
            &write.last_name,
            &mut next.last_name,
            TextKind::Line,
        ),
        ("company", &write.company, &mut next.company, TextKind::Line),
        ("phone", &write.phone, &mut next.phone, TextKind::Line),
        (
            "phone_alt",
            &write.phone_alt,
            &mut next.phone_alt,
            TextKind::Line,
        ),
        (
            "payment_terms",
            &write.payment_terms,
            &mut next.payment_terms,
            TextKind::Line,
        ),
        ("note", &write.note, &mut next.note, TextKind::Multiline),
    ];
    for (field, patch, slot, kind) in texts {
        // A value equal to the stored one is not checked again: text stored before a rule was
        // tightened (a tab in a name) must not make every unchanged re-send of it fail.
        if let Patch::Value(v) = patch
            && slot.as_deref() != Some(v.as_str())
        {
            check_text(&mut errors, field, v, kind);
        }
        *slot = blank_as_null(patch).apply_to(slot.take());
    }
    next.name = next_name(base, &next, &blank_as_null(&write.name), &mut errors);

    next.email_verified = flag(&write.email_verified, base.email_verified);
    next.email_opt_out = flag(&write.email_opt_out, base.email_opt_out);
    next.archived = flag(&write.archived, base.archived);

    next.currency = match &blank_as_null(&write.currency) {
        Patch::Value(code) => {
            let code = code.to_ascii_uppercase();
            if !iso::is_currency(&code) {
                errors.push(
                    "currency",
                    "invalid_currency",
                    "not an ISO 4217 currency code",
                );
            }
            Some(code)
        }
        other => other.clone().apply_to(base.currency.clone()),
    };
    next.discount_percent = match write.discount_percent.clone() {
        Patch::Value(d) if !(0.0..=100.0).contains(&d) => {
            errors.push(
                "discount_percent",
                "out_of_range",
                "must be between 0 and 100",
            );
            None
        }
        other => other.apply_to(base.discount_percent),
    };
    if blank_as_null(&write.birthday)
        .value()
        .is_some_and(|date| !is_date(date))
    {
        errors.push(
            "birthday",
            "invalid_date",
            "must be a real date as YYYY-MM-DD",
        );
    }
    next.birthday = blank_as_null(&write.birthday).apply_to(base.birthday.clone());

    next.addresses = next_addresses(base, write, &mut errors);
    let tags = CodeSet {
        field: "tags",
        replace: &write.tags,
        add: write.add_tags.as_deref(),
        remove: write.remove_tags.as_deref(),
        kept: &|_| false,
    };
    next.tags = tags.apply(&base.tags, |_| None, &mut errors);
    let teams = CodeSet {
        field: "teams",
        replace: &write.teams,
        add: write.add_teams.as_deref(),
        remove: write.remove_teams.as_deref(),
        kept,
    };
    next.teams = teams.apply(
        &base.teams,
        |code| (!ctx.directory.team_exists(code)).then_some(("unknown_team", "team")),
        &mut errors,
    );
    next.groups = next_groups(base, write, ctx.directory, &mut errors);
    next.custom = match &write.custom {
        Patch::Value(map) => map.clone(),
        Patch::Null => Map::new(),
        Patch::Absent => base.custom.clone(),
    };
    next.has_password = match ctx.password {
        Patch::Value(()) => true,
        Patch::Null => false,
        Patch::Absent => base.has_password,
    };
    if let Patch::Value(custom) = &write.custom {
        // Bounds a stored object already met, or met before they were set, are not checked
        // again when it is sent unchanged (as text, above); nor is the schema, field by field.
        if *custom != base.custom {
            check_custom_size(custom, &mut errors);
            for (name, value) in custom {
                check_exact_numbers(&format!("custom.{name}"), value, &mut errors);
            }
            ctx.schema.check_custom(custom, &base.custom, &mut errors);
        }
    }
    if current.is_none() {
        ctx.schema.check_required(&next, &mut errors);
    }

    errors.into_result()?;

    let password_written = matches!(ctx.password, Patch::Value(()));
    match current {
        Some(current) if !password_written && current.same_data(&next) => Ok(Applied::Unchanged),
        Some(current) => {
            next.version = current.version + 1;
            next.updated_at = ctx.now.max(current.updated_at);
            Ok(Applied::Changed(Box::new(next)))
        }
        None => Ok(Applied::Changed(Box::new(next))),
    }
}

pub(crate) fn blank_customer(now: Timestamp) -> Customer {
    Customer {
        id: CustomerId::new(),
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
    }
}

/// `custom` as given, refusing a field named twice at any depth: JSON objects keep the last of
/// two, so one of the two values would be dropped without a word.
fn custom_fields<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Patch<Map<String, Value>>, D::Error> {
    struct UniqueFields(Map<String, Value>);

    impl<'de> Deserialize<'de> for UniqueFields {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Fields;
            impl<'de> serde::de::Visitor<'de> for Fields {
                type Value = UniqueFields;

                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object of custom fields")
                }

                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    access: A,
                ) -> Result<UniqueFields, A::Error> {
                    unique_fields(access).map(UniqueFields)
                }
            }
            deserializer.deserialize_map(Fields)
        }
    }

    Option::<UniqueFields>::deserialize(deserializer)
        .map(|given| given.map_or(Patch::Null, |UniqueFields(fields)| Patch::Value(fields)))
}

/// The fields of a JSON object, refusing a name given twice in it or in any object inside it.
fn unique_fields<'de, A: serde::de::MapAccess<'de>>(
    mut access: A,
) -> Result<Map<String, Value>, A::Error> {
    let mut fields = Map::new();
    while let Some(name) = access.next_key::<String>()? {
        if fields.contains_key(&name) {
            return Err(serde::de::Error::custom(format!(
                "duplicate field `{name}`"
            )));
        }
        let UniqueValue(value) = access.next_value()?;
        fields.insert(name, value);
    }
    Ok(fields)
}

/// Any JSON value, as `serde_json::Value` reads it, but with [`unique_fields`] in its objects.
struct UniqueValue(Value);

impl<'de> Deserialize<'de> for UniqueValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyValue;
        impl<'de> serde::de::Visitor<'de> for AnyValue {
            type Value = UniqueValue;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, value: bool) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Bool(value)))
            }
            fn visit_i64<E>(self, value: i64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(value)))
            }
            fn visit_u64<E>(self, value: u64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(value)))
            }
            fn visit_f64<E>(self, value: f64) -> Result<UniqueValue, E> {
                // JSON has no infinities nor NaN; `Value` reads them as null too.
                Ok(UniqueValue(Value::from(value)))
            }
            fn visit_str<E>(self, value: &str) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(value.to_owned())))
            }
            fn visit_string<E>(self, value: String) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(value)))
            }
            fn visit_unit<E>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<UniqueValue, D::Error> {
                UniqueValue::deserialize(deserializer)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueValue, A::Error> {
                let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(UniqueValue(item)) = access.next_element()? {
                    items.push(item);
                }
                Ok(UniqueValue(Value::Array(items)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                access: A,
            ) -> Result<UniqueValue, A::Error> {
                unique_fields(access).map(|fields| UniqueValue(Value::Object(fields)))
            }
        }
        deserializer.deserialize_any(AnyValue)
    }
}

/// Most bytes of `custom`'s JSON (and at most as many fields as a schema may declare): the
/// object is stored with the customer and copied into each of its change records, and pages of
/// customers are built whole.
const MAX_CUSTOM_BYTES: usize = 64 * 1024;

fn check_custom_size(custom: &Map<String, Value>, errors: &mut ValidationErrors) {
    if custom.len() > MAX_CUSTOM_FIELDS {
        errors.push(
            "custom",
            "too_many",
            format!("at most {MAX_CUSTOM_FIELDS} custom fields"),
        );
    } else if json_length(custom) > MAX_CUSTOM_BYTES {
        errors.push(
            "custom",
            "too_large",
            format!("at most {MAX_CUSTOM_BYTES} bytes of JSON"),
        );
    }
}

/// The length of a value's JSON, counted as it is written, without keeping it.
fn json_length(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing into a counter cannot fail, nor can a map of JSON values fail to serialize.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A JSON integer beyond 64 bits (an account number, say) reaches the hub as a double: it would
/// be stored rounded, and read back as another number. Any double outside the range of 64-bit
/// integers is refused with the field named, so the client sends such values as strings.
fn check_exact_numbers(path: &str, value: &Value, errors: &mut ValidationErrors) {
    const BEYOND_U64: f64 = 18_446_744_073_709_551_616.0; // 2^64
    const I64_MIN: f64 = -9_223_372_036_854_775_808.0; // -2^63: one below rounds to it
    match value {
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|x| n.is_f64() && !(I64_MIN < x && x < BEYOND_U64)) =>
        {
            errors.push(
                path,
                "out_of_range",
                "numbers beyond the range of 64-bit integers cannot be stored exactly; send \
                 the value as a string",
            )
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_exact_numbers(&format!("{path}[{i}]"), item, errors);
            }
        }
        Value::Object(fields) => {
            for (name, item) in fields {
                check_exact_numbers(&format!("{path}.{name}"), item, errors);
            }
        }
        _ => {}
    }
}

/// Optional text given as an empty or blank string counts as `null`: exports from other systems
/// write "" for "no value", and a stored "" would differ from null for no reason.
fn blank_as_null(patch: &Patch<String>) -> Patch<String> {
    match patch {
        Patch::Value(text) if text.trim().is_empty() => Patch::Null,
        other => other.clone(),
    }
}

fn flag(patch: &Patch<bool>, current: bool) -> bool {
    match patch {
        Patch::Value(v) => *v,
        Patch::Null => false,
        Patch::Absent => current,
    }
}

/// A name equal to the one derived from first and last name counts as derived, so that it keeps
/// following them; any other name given stays until it is cleared or replaced.
fn next_name(
    base: &Customer,
    next: &Customer,
    patch: &Patch<String>,
    errors: &mut ValidationErrors,
) -> Option<String> {
    let derived = derived_name(next.first_name.as_deref(), next.last_name.as_deref());
    match patch {
        Patch::Value(name) => {
            if base.name.as_deref() != Some(name.as_str()) {
                check_text(errors, "name", name, TextKind::Line);
            }
            Some(name.clone())
        }
        Patch::Null => derived,
        Patch::Absent => {
            let (first, last) = (base.first_name.as_deref(), base.last_name.as_deref());
            let was_derived = base.name == derived_name(first, last)
                || base.name == untrimmed_derived_name(first, last);
            if was_derived {
                derived
            } else {
                base.name.clone()
            }
        }
    }
}

fn next_addresses(
    base: &Customer,
    write: &CustomerWrite,
    errors: &mut ValidationErrors,
) -> Vec<Address> {
    let given = match &write.addresses {
        Patch::Absent => return base.addresses.clone(),
        Patch::Null => return Vec::new(),
        Patch::Value(given) => given,
    };
    if given.len() > MAX_ITEMS {
        errors.push(
            "addresses",
            "too_many",
            format!("at most {MAX_ITEMS} addresses"),
        );
        return base.addresses.clone();
    }
    let mode = write.addresses_mode.unwrap_or_default();
    let key = write.addresses_key.unwrap_or_default();
    let mut result: Vec<Address> = match mode {
        AddressesMode::Replace => Vec::with_capacity(given.len()),
        AddressesMode::Merge => base.addresses.clone(),
    };
    // For each address of the result, the body's address that last wrote it (none: kept as
    // stored), so that an error names the address the caller sent.
    let mut origin: Vec<Option<usize>> = vec![None; result.len()];
    let mut given_keys = BTreeSet::new();
    for (i, address) in given.iter().enumerate() {
        let path = format!("addresses[{i}]");
        let stored = base.addresses.iter().find(|stored| match key {
            AddressesKey::Title => address.title.value() == Some(&stored.title),
            AddressesKey::RemoteId => {
                address.remote_id.value().is_some()
                    && address.remote_id.value() == stored.remote_id.as_ref()
            }
        });
        validate_address(&path, address, stored, errors);
        if mode == AddressesMode::Merge {
            let (field, value) = match key {
                AddressesKey::Title => ("title", address.title.value()),
                AddressesKey::RemoteId => ("remote_id", address.remote_id.value()),
            };
            if let Some(value) = value
                && !given_keys.insert(value)
            {
                errors.push(
                    format!("{path}.{field}"),
                    if field == "title" {
                        "duplicate_title"
                    } else {
                        "duplicate_remote_id"
                    },
                    format!("the body merges two addresses with the {field} {value:?}"),
                );
                continue;
            }
        }
        let existing = match (mode, key) {
            (AddressesMode::Replace, _) => None,
            (AddressesMode::Merge, AddressesKey::Title) => match &address.title {
                Patch::Value(title) => result.iter().position(|a| &a.title == title),
                _ => None,
            },
            (AddressesMode::Merge, AddressesKey::RemoteId) => match &address.remote_id {
                Patch::Value(remote_id) => result
                    .iter()
                    .position(|a| a.remote_id.as_ref() == Some(remote_id)),
                _ => {
                    errors.push(
                        format!("{path}.remote_id"),
                        "required",
                        "merging addresses by remote_id needs remote_id on every address",
                    );
                    continue;
                }
            },
        };
        match existing {
            Some(index) => {
                let merged = merge_address(&result[index], address);
                result[index] = merged;
                origin[index] = Some(i);
            }
            None => match new_address(address) {
                Some(new) => {
                    result.push(new);
                    origin.push(Some(i));
                }
                // A `null` title was already reported by `validate_address`.
                None if address.title == Patch::Null => {}
                None => errors.push(
                    format!("{path}.title"),
                    "required",
                    "an address needs a title",
                ),
            },
        }
    }
    let mut titles = BTreeMap::new();
    let mut remote_ids = BTreeMap::new();
    // The body's address to blame for a clash between results `first` and `again`.
    let blame = |first: usize, again: usize| origin[again].or(origin[first]).unwrap_or(again);
    for (i, address) in result.iter().enumerate() {
        if let Some(&first) = titles.get(address.title.as_str()) {
            errors.push(
                format!("addresses[{}].title", blame(first, i)),
                "duplicate_title",
                format!("another address already has the title {:?}", address.title),
            );
        } else {
            titles.insert(address.title.as_str(), i);
        }
        if let Some(remote_id) = address.remote_id.as_deref() {
            if let Some(&first) = remote_ids.get(remote_id) {
                errors.push(
                    format!("addresses[{}].remote_id", blame(first, i)),
                    "duplicate_remote_id",
                    "another address already has this remote_id",
                );
            } else {
                remote_ids.insert(remote_id, i);
            }
        }
    }
    if result.len() > MAX_ITEMS {
        errors.push(
            "addresses",
            "too_many",
            format!("at most {MAX_ITEMS} addresses"),
        );
    }
    result
}

/// Checks an address as sent; `stored` is the customer's address it names (by the key of the
/// write), whose text is not checked again where it is sent unchanged, as a customer's is not.
fn validate_address(
    path: &str,
    address: &AddressWrite,
    stored: Option<&Address>,
    errors: &mut ValidationErrors,
) {
    match &address.title {
        Patch::Value(title) if title.trim().is_empty() => {
            errors.push(
                format!("{path}.title"),
                "empty",
                "an address title must not be empty",
            );
        }
        Patch::Null => errors.push(
            format!("{path}.title"),
            "required",
            "an address needs a title",
        ),
        _ => {}
    }
    let country = blank_as_null(&address.country);
    if country
        .value()
        .is_some_and(|c| !iso::is_country(&c.to_ascii_uppercase()))
    {
        errors.push(
            format!("{path}.country"),
            "invalid_country",
            "not an ISO 3166-1 alpha-2 country code",
        );
    }
    let stored_text = |text: fn(&Address) -> Option<&str>| stored.and_then(text);
    let texts: [(&str, &Patch<String>, Option<&str>); 11] = [
        ("title", &address.title, stored_text(|a| Some(&a.title))),
        (
            "remote_id",
            &address.remote_id,
            stored_text(|a| a.remote_id.as_deref()),
        ),
        ("name", &address.name, stored_text(|a| a.name.as_deref())),
        (
            "company",
            &address.company,
            stored_text(|a| a.company.as_deref()),
        ),
        ("line1", &address.line1, stored_text(|a| a.line1.as_deref())),
        ("line2", &address.line2, stored_text(|a| a.line2.as_deref())),
        ("line3", &address.line3, stored_text(|a| a.line3.as_deref())),
        ("city", &address.city, stored_text(|a| a.city.as_deref())),
        (
            "region",
            &address.region,
            stored_text(|a| a.region.as_deref()),
        ),
        (
            "postal_code",
            &address.postal_code,
            stored_text(|a| a.postal_code.as_deref()),
        ),
        ("phone", &address.phone, stored_text(|a| a.phone.as_deref())),
    ];
    for (field, patch, stored) in texts {
        if let Patch::Value(v) = patch
            && stored != Some(v.as_str())
        {
            check_text(errors, &format!("{path}.{field}"), v, TextKind::Line);
        }
    }
}

fn new_address(write: &AddressWrite) -> Option<Address> {
    let empty = Address {
        title: String::new(),
        remote_id: None,
        kind: None,
        name: None,
        company: None,
        line1: None,
        line2: None,
        line3: None,
        city: None,
        region: None,
        postal_code: None,
        country: None,
        phone: None,
    };
    write.title.value()?;
    Some(merge_address(&empty, write))
}

fn merge_address(current: &Address, write: &AddressWrite) -> Address {
    let text = |patch: &Patch<String>, current: &Option<String>| {
        blank_as_null(patch).apply_to(current.clone())
    };
    Address {
        title: write
            .title
            .value()
            .cloned()
            .unwrap_or_else(|| current.title.clone()),
        remote_id: text(&write.remote_id, &current.remote_id),
        kind: write.kind.clone().apply_to(current.kind),
        name: text(&write.name, &current.name),
        company: text(&write.company, &current.company),
        line1: text(&write.line1, &current.line1),
        line2: text(&write.line2, &current.line2),
        line3: text(&write.line3, &current.line3),
        city: text(&write.city, &current.city),
        region: text(&write.region, &current.region),
        postal_code: text(&write.postal_code, &current.postal_code),
        country: blank_as_null(&write.country)
            .apply_to(current.country.clone())
            .map(|c| c.to_ascii_uppercase()),
        phone: text(&write.phone, &current.phone),
    }
}

/// The edits of a set of codes (tags, teams) a write asks for.
struct CodeSet<'a> {
    field: &'static str,
    replace: &'a Patch<Vec<String>>,
    add: Option<&'a [String]>,
    remove: Option<&'a [String]>,
    /// Current codes a replacement keeps (and no removal takes away).
    kept: &'a dyn Fn(&str) -> bool,
}

/// What makes a well-formed code unacceptable: an error code and the noun for the message.
type Unknown = Option<(&'static str, &'static str)>;

impl CodeSet<'_> {
    /// The sorted set after the replace and the incremental additions and removals.
    fn apply(
        &self,
        current: &[String],
        unknown: impl Fn(&str) -> Unknown,
        errors: &mut ValidationErrors,
    ) -> Vec<String> {
        let kept = current.iter().filter(|code| (self.kept)(code)).cloned();
        let mut set: BTreeSet<String> = match self.replace {
            Patch::Absent => current.iter().cloned().collect(),
            Patch::Null => kept.collect(),
            Patch::Value(codes) => check_codes(self.field, codes, &unknown, errors)
                .into_iter()
                .chain(kept)
                .collect(),
        };
        if let Some(add) = self.add {
            let field = format!("add_{}", self.field);
            set.extend(check_codes(&field, add, &unknown, errors));
        }
        if let Some(remove) = self.remove {
            let field = format!("remove_{}", self.field);
            for code in check_codes(&field, remove, &unknown, errors) {
                if !(self.kept)(&code) {
                    set.remove(&code);
                }
            }
        }
        if set.len() > MAX_ITEMS {
            errors.push(
                self.field,
                "too_many",
                format!("at most {MAX_ITEMS} {}", self.field),
            );
        }
        set.into_iter().collect()
    }
}

/// The codes that are well formed and known, without the spaces around them (" vip" and
/// "vip" are one tag, and a blank one is `empty`); an error for each other one.
fn check_codes(
    field: &str,
    codes: &[String],
    unknown: &impl Fn(&str) -> Unknown,
    errors: &mut ValidationErrors,
) -> Vec<String> {
    let mut valid = Vec::with_capacity(codes.len());
    for (i, code) in codes.iter().enumerate() {
        let code = code.trim();
        let path = format!("{field}[{i}]");
        let before = errors.0.len();
        check_key(errors, &path, code);
        if errors.0.len() > before {
            continue;
        }
        match unknown(code) {
            Some((error_code, noun)) => {
                errors.push(path, error_code, format!("there is no {noun} {code:?}"));
            }
            None => valid.push(code.to_owned()),
        }
    }
    valid
}

fn next_groups(
    base: &Customer,
    write: &CustomerWrite,
    directory: &dyn Directory,
    errors: &mut ValidationErrors,
) -> Vec<GroupMembership> {
    let stored: BTreeMap<String, bool> = base
        .groups
        .iter()
        .map(|g| (g.code.clone(), g.subscribed))
        .collect();
    let mut memberships = match &write.groups {
        Patch::Absent => stored,
        Patch::Null => BTreeMap::new(),
        Patch::Value(refs) => resolve_groups("groups", refs, &stored, directory, errors),
    };
    if let Some(add) = &write.add_groups {
        let added = resolve_groups("add_groups", add, &memberships, directory, errors);
        memberships.extend(added);
    }
    if let Some(remove) = &write.remove_groups {
        let unknown = |code: &str| {
            directory
                .group_default_subscribed(code)
                .is_none()
                .then_some(("unknown_group", "group"))
        };
        for code in check_codes("remove_groups", remove, &unknown, errors) {
            memberships.remove(&code);
        }
    }
    memberships
        .into_iter()
        .map(|(code, subscribed)| GroupMembership { code, subscribed })
        .collect()
}

/// The memberships a list of groups names. A bare code keeps the subscription of a membership
/// the customer has (`current`), and takes the group's default for a new one: a client that
/// sends the same list again never undoes a customer's opt-out.
fn resolve_groups(
    field: &str,
    refs: &[GroupRef],
    current: &BTreeMap<String, bool>,
    directory: &dyn Directory,
    errors: &mut ValidationErrors,
) -> BTreeMap<String, bool> {
    let mut resolved = BTreeMap::new();
    for (i, group) in refs.iter().enumerate() {
        // Without the spaces around it, as tag and team codes are.
        let code = group.code().trim();
        let Some(default) = directory.group_default_subscribed(code) else {
            errors.push(
                format!("{field}[{i}]"),
                "unknown_group",
                format!("there is no group {code:?}"),
            );
            continue;
        };
        let subscribed = group
            .subscribed()
            .or_else(|| current.get(code).copied())
            .unwrap_or(default);
        // A group named twice: the later reference wins, as later items of a batch do.
        resolved.insert(code.to_owned(), subscribed);
    }
    resolved
}

#[cfg(test)]
mod tests;
