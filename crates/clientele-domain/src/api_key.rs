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

impl ApiKey {
    /// Whether this key may list, create or revoke a key restricted to `teams` (empty: none).
    /// An admin key restricted to teams manages only keys restricted to some of its own teams,
    /// so that it cannot hand out, or take away, more than it has itself.
    pub fn manages_keys_of(&self, teams: &[String]) -> bool {
        self.teams.is_empty()
            || (!teams.is_empty() && teams.iter().all(|team| self.teams.contains(team)))
    }

    /// Whether the team exists for this key: every team for an unrestricted key, its own for a
    /// key restricted to teams (any other is as absent to it as a team that does not exist).
    pub fn sees_team(&self, code: &str) -> bool {
        self.teams.is_empty() || self.teams.iter().any(|team| team == code)
    }
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

    fn key(teams: &[&str]) -> ApiKey {
        ApiKey {
            id: ApiKeyId::new(),
            name: "k".into(),
            role: Role::Admin,
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
            created_at: Timestamp::now(),
            secret_encrypted: Vec::new(),
        }
    }

    #[test]
    fn a_restricted_admin_manages_only_keys_within_its_teams() {
        let unrestricted = key(&[]);
        assert!(unrestricted.manages_keys_of(&[]));
        assert!(unrestricted.manages_keys_of(&["north".into()]));

        let north_south = key(&["north", "south"]);
        assert!(north_south.manages_keys_of(&["north".into()]));
        assert!(north_south.manages_keys_of(&["south".into(), "north".into()]));
        assert!(
            !north_south.manages_keys_of(&[]),
            "an unrestricted key is more than it has"
        );
        assert!(!north_south.manages_keys_of(&["north".into(), "east".into()]));
    }

    #[test]
    fn a_restricted_key_sees_only_its_own_teams() {
        assert!(key(&[]).sees_team("east"));
        let north_south = key(&["north", "south"]);
        assert!(north_south.sees_team("south"));
        assert!(!north_south.sees_team("east"));
    }

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
