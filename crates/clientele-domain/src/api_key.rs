//! API keys and their roles. The secret never lives here in plain text: the HTTP layer derives a
//! lookup hash and an encrypted copy, and the store keeps only those.

use serde::{Deserialize, Serialize};

use crate::{ApiKeyId, Timestamp};

/// What a key may do; each role includes the ones below it.
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
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Read, Role::Write, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether a key with this role may do what `needed` requires.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// A stored API key, as the store returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    pub teams: Vec<String>,
    pub created_at: Timestamp,
    /// The secret encrypted under the master key (nonce || ciphertext); needed to check signatures.
    pub secret_encrypted: Vec<u8>,
}

/// A key to store: the secret arrives only as its keyed lookup hash and its encrypted form.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub key: ApiKey,
    pub lookup_hash: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
        assert_eq!(Role::parse("write"), Some(Role::Write));
        assert_eq!(Role::parse("root"), None);
    }
}
