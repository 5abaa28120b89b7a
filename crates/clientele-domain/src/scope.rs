//! What an API key may see. A key restricted to teams sees only customers in at least one of
//! its teams; everything else does not exist for it (the HTTP layer answers 404, never 403, so
//! the key cannot learn what exists outside its teams).

use crate::{ApiKey, Customer};

/// The customers a caller may see and change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every customer.
    All,
    /// Only customers in at least one of these team codes (never empty).
    Teams(Vec<String>),
}

impl Scope {
    /// Whether a customer with these team codes is visible.
    pub fn admits_teams(&self, customer_teams: &[String]) -> bool {
        match self {
            Scope::All => true,
            Scope::Teams(teams) => customer_teams.iter().any(|t| teams.contains(t)),
        }
    }

    /// Whether this customer is visible.
    pub fn admits(&self, customer: &Customer) -> bool {
        self.admits_teams(&customer.teams)
    }

    /// The team codes of a restricted scope; `None` for [`Scope::All`].
    pub fn teams(&self) -> Option<&[String]> {
        match self {
            Scope::All => None,
            Scope::Teams(teams) => Some(teams),
        }
    }
}

impl ApiKey {
    /// The customers this key may see: all of them unless the key is restricted to teams.
    pub fn scope(&self) -> Scope {
        if self.teams.is_empty() {
            Scope::All
        } else {
            Scope::Teams(self.teams.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teams(codes: &[&str]) -> Vec<String> {
        codes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn an_unrestricted_scope_admits_customers_without_teams() {
        assert!(Scope::All.admits_teams(&[]));
        assert!(Scope::All.admits_teams(&teams(&["north"])));
    }

    #[test]
    fn a_team_scope_admits_only_customers_sharing_a_team() {
        let scope = Scope::Teams(teams(&["north", "west"]));
        assert!(scope.admits_teams(&teams(&["south", "west"])));
        assert!(!scope.admits_teams(&teams(&["south"])));
        assert!(!scope.admits_teams(&[]));
    }
}
