//! The customer as stored and returned: every field of the API, `null` where unset.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{CustomerId, Timestamp};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    /// `cus_` + ULID, assigned by the hub.
    #[schema(value_type = String, example = "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W")]
    pub id: CustomerId,
    /// The source system's key (person id, customer number...); unique when set.
    pub external_id: Option<String>,
    /// Unique when set, compared case-insensitively, stored as given.
    pub email: Option<String>,
    /// Unique when set (web-shop login name).
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    /// Display name; derived from first and last name unless given.
    pub name: Option<String>,
    pub phone: Option<String>,
    pub phone_alt: Option<String>,
    pub email_verified: bool,
    pub email_opt_out: bool,
    /// Soft delete: archived customers stay readable.
    pub archived: bool,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// 0 to 100.
    pub discount_percent: Option<f64>,
    pub payment_terms: Option<String>,
    pub note: Option<String>,
    /// `YYYY-MM-DD`.
    #[schema(value_type = Option<String>, format = Date)]
    pub birthday: Option<String>,
    pub addresses: Vec<Address>,
    /// A set, kept sorted.
    pub tags: Vec<String>,
    pub groups: Vec<GroupMembership>,
    /// Team codes; drive access restriction.
    pub teams: Vec<String>,
    #[schema(value_type = Object)]
    pub custom: Map<String, Value>,
    /// Whether a password is set; the password itself is write-only.
    pub has_password: bool,
    /// 1 on create, +1 on every change that alters stored data.
    pub version: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl Customer {
    /// The value of one of the unique keys.
    pub fn key(&self, key: CustomerKey) -> Option<&str> {
        match key {
            CustomerKey::ExternalId => self.external_id.as_deref(),
            CustomerKey::Email => self.email.as_deref(),
            CustomerKey::Username => self.username.as_deref(),
        }
    }

    /// Whether two states hold the same data, ignoring the bookkeeping a write updates.
    pub fn same_data(&self, other: &Customer) -> bool {
        let mut other = other.clone();
        other.version = self.version;
        other.updated_at = self.updated_at;
        other.created_at = self.created_at;
        *self == other
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Address {
    /// Required; unique within a customer.
    pub title: String,
    /// The source system's id of the address; unique within a customer when set.
    pub remote_id: Option<String>,
    pub kind: Option<AddressKind>,
    pub name: Option<String>,
    pub company: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub line3: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    pub phone: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    Billing,
    Shipping,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupMembership {
    pub code: String,
    pub subscribed: bool,
}

/// The unique keys a backend can address a customer by.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CustomerKey {
    ExternalId,
    Email,
    Username,
}

impl CustomerKey {
    pub const ALL: [CustomerKey; 3] = [
        CustomerKey::ExternalId,
        CustomerKey::Email,
        CustomerKey::Username,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CustomerKey::ExternalId => "external_id",
            CustomerKey::Email => "email",
            CustomerKey::Username => "username",
        }
    }

    /// The form the uniqueness index holds: emails compare case-insensitively.
    pub fn normalize(self, value: &str) -> String {
        match self {
            CustomerKey::Email => value.to_lowercase(),
            _ => value.to_owned(),
        }
    }
}

impl fmt::Display for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CustomerKey {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        CustomerKey::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

/// The display name derived from first and last name, when either is set: the two joined by
/// one space, without the spaces around either (which exports leave, and which are kept in
/// the names themselves as given).
pub fn derived_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    fn part(name: Option<&str>) -> Option<&str> {
        name.map(str::trim).filter(|name| !name.is_empty())
    }
    joined(part(first), part(last))
}

/// The name [`derived_name`] gave before it trimmed its parts, so that a name stored then
/// still counts as derived.
pub(crate) fn untrimmed_derived_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    joined(first, last)
}

fn joined(first: Option<&str>, last: Option<&str>) -> Option<String> {
    match (first, last) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod derived_name_tests {
    use super::*;

    #[test]
    fn joins_trimmed_parts_with_one_space() {
        assert_eq!(
            derived_name(Some(" Ada "), Some("Lovelace  ")).as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(derived_name(Some("Ada"), None).as_deref(), Some("Ada"));
        assert_eq!(derived_name(None, Some(" Lee")).as_deref(), Some("Lee"));
        assert_eq!(derived_name(None, None), None);
    }
}
