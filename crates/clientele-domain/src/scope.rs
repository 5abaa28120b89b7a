//! What an API key may see. A key restricted to teams sees only customers in at least one of
//! its teams; everything else does not exist for it (the HTTP layer answers 404, never 403, so
//! the key cannot learn what exists outside its teams).

use crate::write::{Applied, ApplyContext, apply, apply_keeping_teams};
use crate::{ApiKey, Customer, CustomerWrite, DomainError, Patch, ValidationErrors};

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

impl Scope {
    /// Applies a customer write for a caller with this scope: a customer outside it does not
    /// exist (`NotFound`); a new customer without teams gets the scope's teams; the write may
    /// name only the scope's teams, to set, add or remove (another team is as unknown as a
    /// missing one, so the key learns nothing about teams it is not in); a team set it replaces
    /// keeps the teams the key is not in; and it must leave the customer in one of its teams.
    pub fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        current: Option<&Customer>,
        write: &CustomerWrite,
    ) -> Result<Applied, DomainError> {
        let Scope::Teams(own) = self else {
            return Ok(apply(ctx, current, write)?);
        };
        if current.is_some_and(|c| !self.admits(c)) {
            return Err(DomainError::NotFound);
        }
        let mut foreign = ValidationErrors::default();
        let named = [
            ("teams", write.teams.value()),
            ("add_teams", write.add_teams.as_ref()),
            ("remove_teams", write.remove_teams.as_ref()),
        ];
        for (field, codes) in named {
            for (i, code) in codes.into_iter().flatten().enumerate() {
                let code = code.trim();
                if !own.iter().any(|team| team == code) && ctx.directory.team_exists(code) {
                    foreign.push(
                        format!("{field}[{i}]"),
                        "unknown_team",
                        format!("there is no team {code:?}"),
                    );
                }
            }
        }
        // A new customer without teams joins the key's.
        let filled;
        let write = match (current, &write.teams) {
            (None, Patch::Absent) if write.add_teams.is_none() => {
                filled = CustomerWrite {
                    teams: Patch::Value(own.clone()),
                    ..write.clone()
                };
                &filled
            }
            _ => write,
        };
        // A replaced team set keeps the teams the key is not in, which it may neither see nor
        // take away.
        let foreign_team = |team: &str| !own.iter().any(|own| own == team);
        let applied = match apply_keeping_teams(ctx, current, write, &foreign_team) {
            Err(mut errors) => {
                errors.0.extend(foreign.0);
                return Err(errors.into());
            }
            Ok(applied) => applied,
        };
        foreign.into_result()?;
        let teams = match (&applied, current) {
            (Applied::Changed(next), _) => &next.teams,
            (Applied::Unchanged, Some(current)) => &current.teams,
            (Applied::Unchanged, None) => return Ok(applied),
        };
        if !self.admits_teams(teams) {
            return Err(ValidationErrors::single(
                "teams",
                "outside_scope",
                "the customer must stay in at least one of the API key's teams",
            )
            .into());
        }
        Ok(applied)
    }
}

impl Scope {
    /// A customer as this scope shows it: a restricted key sees only its own teams among the
    /// customer's (the others are not its to see, nor to take away; see [`Scope::apply`]).
    pub fn shown<'a>(&self, customer: &'a Customer) -> std::borrow::Cow<'a, Customer> {
        match self {
            Scope::Teams(own) if customer.teams.iter().any(|team| !own.contains(team)) => {
                let mut shown = customer.clone();
                shown.teams.retain(|team| own.contains(team));
                std::borrow::Cow::Owned(shown)
            }
            _ => std::borrow::Cow::Borrowed(customer),
        }
    }

    /// A stored customer document (its response JSON) as this scope shows it: `None` when the
    /// customer is not visible, else unchanged for an unrestricted scope or a customer in none
    /// but its teams, else re-encoded with only the scope's teams ([`Scope::shown`]). A document
    /// that does not decode is a storage error, never shown unfiltered.
    pub fn shown_document(&self, json: String) -> Result<Option<String>, DomainError> {
        let Scope::Teams(own) = self else {
            return Ok(Some(json));
        };
        #[derive(serde::Deserialize)]
        struct Teams {
            #[serde(default)]
            teams: Vec<String>,
        }
        let undecodable = |error: serde_json::Error| DomainError::Storage(Box::new(error));
        // Only the teams are read first: most documents a key reads are in its teams alone.
        let Teams { teams } = serde_json::from_str(&json).map_err(undecodable)?;
        let is_own = |team: &String| own.contains(team);
        if !teams.iter().any(is_own) {
            return Ok(None);
        }
        if teams.iter().all(is_own) {
            return Ok(Some(json));
        }
        let mut document: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).map_err(undecodable)?;
        let shown = teams
            .into_iter()
            .filter(is_own)
            .map(serde_json::Value::String);
        document.insert("teams".to_owned(), shown.collect());
        Ok(Some(serde_json::Value::Object(document).to_string()))
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

    fn write(body: serde_json::Value) -> CustomerWrite {
        serde_json::from_value(body).expect("a customer write")
    }

    fn context(directory: &crate::KnownCodes) -> ApplyContext<'_> {
        ApplyContext {
            now: crate::Timestamp::from_micros(0),
            directory,
            password: Patch::Absent,
            schema: &crate::schema::NO_SCHEMA,
        }
    }

    fn directory() -> crate::KnownCodes {
        crate::KnownCodes {
            teams: ["north", "south"].iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    fn created(result: Result<Applied, DomainError>) -> Customer {
        match result {
            Ok(Applied::Changed(customer)) => *customer,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn field_codes(result: Result<Applied, DomainError>) -> Vec<(String, &'static str)> {
        match result {
            Err(DomainError::Validation(errors)) => {
                errors.0.into_iter().map(|e| (e.field, e.code)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_scoped_create_without_teams_gets_the_scopes_teams() {
        let directory = directory();
        let ctx = context(&directory);
        let scope = Scope::Teams(teams(&["north"]));
        let customer = created(scope.apply(&ctx, None, &write(serde_json::json!({}))));
        assert_eq!(customer.teams, ["north"]);
        let customer = created(Scope::All.apply(&ctx, None, &write(serde_json::json!({}))));
        assert!(customer.teams.is_empty());
    }

    #[test]
    fn a_scoped_write_names_only_its_teams_and_keeps_the_customer_in_one() {
        let directory = directory();
        let ctx = context(&directory);
        let scope = Scope::Teams(teams(&["north"]));
        let body = serde_json::json!({"teams": ["north", "south", "ghost"]});
        assert_eq!(
            field_codes(scope.apply(&ctx, None, &write(body))),
            [
                ("teams[2]".to_owned(), "unknown_team"),
                ("teams[1]".to_owned(), "unknown_team")
            ]
        );
        let own = created(scope.apply(&ctx, None, &write(serde_json::json!({}))));
        let body = serde_json::json!({"remove_teams": ["north"]});
        assert_eq!(
            field_codes(scope.apply(&ctx, Some(&own), &write(body))),
            [("teams".to_owned(), "outside_scope")]
        );
        let foreign =
            created(Scope::All.apply(&ctx, None, &write(serde_json::json!({"teams": ["south"]}))));
        let result = scope.apply(&ctx, Some(&foreign), &write(serde_json::json!({})));
        assert!(matches!(result, Err(DomainError::NotFound)), "{result:?}");
    }

    #[test]
    fn a_scoped_team_set_keeps_foreign_teams_and_reports_at_the_codes_sent() {
        let directory = directory();
        let ctx = context(&directory);
        let scope = Scope::Teams(teams(&["north"]));
        let shared = created(Scope::All.apply(
            &ctx,
            None,
            &write(serde_json::json!({"teams": ["north", "south"]})),
        ));
        // A code is the same with spaces around it, as everywhere else.
        let same = scope.apply(
            &ctx,
            Some(&shared),
            &write(serde_json::json!({"teams": [" north "]})),
        );
        assert!(matches!(same, Ok(Applied::Unchanged)), "{same:?}");
        // An error names the code where it was sent, not an edit it was turned into.
        let body = serde_json::json!({"teams": ["north", "ghost", "south"]});
        assert_eq!(
            field_codes(scope.apply(&ctx, Some(&shared), &write(body))),
            [
                ("teams[1]".to_owned(), "unknown_team"),
                ("teams[2]".to_owned(), "unknown_team")
            ]
        );
        // Clearing the set clears the key's teams only, and must leave it one.
        let cleared = scope.apply(
            &ctx,
            Some(&shared),
            &write(serde_json::json!({"teams": null})),
        );
        assert_eq!(
            field_codes(cleared),
            [("teams".to_owned(), "outside_scope")]
        );
        let body = serde_json::json!({"remove_teams": [" south"]});
        assert_eq!(
            field_codes(scope.apply(&ctx, Some(&shared), &write(body))),
            [("remove_teams[0]".to_owned(), "unknown_team")]
        );
        let wider = Scope::Teams(teams(&["north", "west"]));
        let directory = crate::KnownCodes {
            teams: ["north", "south", "west"]
                .iter()
                .map(|t| t.to_string())
                .collect(),
            ..Default::default()
        };
        let ctx = context(&directory);
        let moved = created(wider.apply(
            &ctx,
            Some(&shared),
            &write(serde_json::json!({"teams": ["west"]})),
        ));
        assert_eq!(moved.teams, ["south", "west"]);
    }

    #[test]
    fn a_document_is_shown_with_the_scopes_teams_or_not_at_all() {
        let north = Scope::Teams(teams(&["north"]));
        let own = r#"{"id":"a","teams":["north"]}"#.to_owned();
        assert_eq!(north.shown_document(own.clone()).ok(), Some(Some(own)));
        let shared = r#"{"id":"a","teams":["north","south"]}"#.to_owned();
        assert_eq!(
            north.shown_document(shared.clone()).ok(),
            Some(Some(r#"{"id":"a","teams":["north"]}"#.to_owned()))
        );
        assert_eq!(
            Scope::All.shown_document(shared).ok(),
            Some(Some(r#"{"id":"a","teams":["north","south"]}"#.to_owned()))
        );
        let foreign = r#"{"id":"a","teams":["south"]}"#.to_owned();
        assert_eq!(north.shown_document(foreign).ok(), Some(None));
        assert_eq!(
            north.shown_document(r#"{"id":"a"}"#.to_owned()).ok(),
            Some(None)
        );
        // Found in a review: a document that did not decode was shown as it was.
        for broken in [r#"{"id":"a","teams":["south"]"#, r#"{"teams":"south"}"#] {
            assert!(
                matches!(
                    north.shown_document(broken.to_owned()),
                    Err(DomainError::Storage(_))
                ),
                "{broken}"
            );
        }
    }

    #[test]
    fn a_team_scope_admits_only_customers_sharing_a_team() {
        let scope = Scope::Teams(teams(&["north", "west"]));
        assert!(scope.admits_teams(&teams(&["south", "west"])));
        assert!(!scope.admits_teams(&teams(&["south"])));
        assert!(!scope.admits_teams(&[]));
    }
}
