//! Prefixed ULID identifiers (`cus_…`, `key_…`). ULIDs sort by creation time, which keeps the
//! primary-key index append-mostly and gives keyset pagination a stable tie-breaker.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// The ULIDs of this process, each greater than the one before: within a millisecond a ULID's
/// random part would order them at random, and lists paged by id (orders) promise creation
/// order.
static ULIDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

fn next_ulid() -> Ulid {
    // `None` only when a millisecond's 2^80 random values ran out, or for a poisoned lock.
    // (Not `unwrap_or_default`: a default `Ulid` is the nil one.)
    match ULIDS
        .lock()
        .ok()
        .and_then(|mut ulids| ulids.generate().ok())
    {
        Some(ulid) => ulid,
        None => Ulid::new(),
    }
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(Ulid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh identifier, after every other this process made.
            pub fn new() -> Self {
                Self(next_ulid())
            }

            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            pub fn ulid(&self) -> Ulid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let rest = s.strip_prefix($prefix).ok_or(InvalidId)?;
                // Only the canonical upper-case form is an id; anything else would alias one.
                if rest.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(InvalidId);
                }
                let ulid = Ulid::from_string(rest).map_err(|_| InvalidId)?;
                // Text past the largest ULID decodes with overflow; only canonical text is an id.
                if ulid.to_string() != rest {
                    return Err(InvalidId);
                }
                Ok(Self(ulid))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// A customer's hub-assigned id: `cus_` followed by a ULID.
    CustomerId,
    "cus_"
);
prefixed_id!(
    /// An API key's public id: `key_` followed by a ULID.
    ApiKeyId,
    "key_"
);

prefixed_id!(
    /// An order's hub-assigned id: `ord_` followed by a ULID.
    OrderId,
    "ord_"
);

/// A string that is not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_in_the_order_they_are_made() {
        // Found in a review: orders made in one millisecond were listed in random order.
        let ids: Vec<OrderId> = (0..10_000).map(|_| OrderId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn round_trips_through_its_text_form() {
        let id = CustomerId::new();
        let text = id.to_string();
        assert!(text.starts_with("cus_"));
        assert_eq!(text.parse::<CustomerId>(), Ok(id));
    }

    #[test]
    fn refuses_other_prefixes_and_non_canonical_text() {
        let id = CustomerId::new().to_string();
        assert!(id.replace("cus_", "key_").parse::<CustomerId>().is_err());
        assert!(id.to_lowercase().parse::<CustomerId>().is_err());
        assert!("cus_".parse::<CustomerId>().is_err());
        assert!(
            "cus_ZZZZZZZZZZZZZZZZZZZZZZZZZZ"
                .parse::<CustomerId>()
                .is_err()
        );
    }
}
