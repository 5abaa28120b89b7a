//! Groups and teams: their codes, the group hierarchy (which never has a cycle), the writes that
//! create and change them, and the [`KnownCodes`] directory customer writes resolve codes in.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::{TextKind, check_text};
use crate::write::Directory;
use crate::{CustomerWrite, DomainError, Patch, Timestamp, ValidationErrors, WriteOutcome};

/// Longest group or team code.
pub const MAX_CODE: usize = 64;
/// Most groups in one `POST /v1/groups/sync`.
pub const MAX_SYNC_GROUPS: usize = 1000;

/// Whether `code` is 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_code(code: &str) -> bool {
    (1..=MAX_CODE).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn check_code(errors: &mut ValidationErrors, field: &str, code: &str) {
    if !is_valid_code(code) {
        errors.push(
            field,
            "invalid_code",
            format!("a code is 1 to {MAX_CODE} characters of A-Z, a-z, 0-9, _, . and -"),
        );
    }
}

/// A customer group, as stored and returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub code: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// `true`: public, customers may opt in and out; `false`: internal.
    pub subscribable: bool,
    /// The text shown where customers subscribe.
    pub subscribe_text: Option<String>,
    /// The parent group's code; the hierarchy never has a cycle.
    pub parent: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The body of `PUT /v1/groups/{code}` and an item of `POST /v1/groups/sync`: absent fields keep
/// the stored value (on create: the default, `subscribable` false), `null` clears.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct GroupWrite {
    /// Required in sync items; in `PUT` it may repeat the path's code.
    pub code: Option<String>,
    #[schema(value_type = Option<String>)]
    pub title: Patch<String>,
    #[schema(value_type = Option<String>)]
    pub description: Patch<String>,
    #[schema(value_type = Option<bool>)]
    pub subscribable: Patch<bool>,
    #[schema(value_type = Option<String>)]
    pub subscribe_text: Patch<String>,
    /// The parent's code (it must exist; a parent that would make a cycle is refused).
    #[schema(value_type = Option<String>)]
    pub parent: Patch<String>,
}

/// A team, as stored and returned. Customers and API keys belong to teams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Team {
    pub code: String,
    pub name: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The body of `PUT /v1/teams/{code}`: absent keeps, `null` clears.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct TeamWrite {
    /// May repeat the path's code.
    pub code: Option<String>,
    #[schema(value_type = Option<String>)]
    pub name: Patch<String>,
}

/// Why a group or team cannot be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InUse {
    GroupHasSubgroups,
    GroupHasMembers,
    TeamHasMembers,
    TeamHasKeys,
}

/// The code a write is addressed to must match the one in its body, if the body names one.
fn bind_code(path_code: &str, body_code: Option<&str>) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    check_code(&mut errors, "code", path_code);
    if body_code.is_some_and(|c| c != path_code) {
        errors.push(
            "code",
            "code_mismatch",
            "the body's code differs from the one in the path",
        );
    }
    errors.into_result()
}

/// The next value of a text field; a value equal to the stored one is not checked again (text
/// stored before a rule was tightened must not make an unchanged re-send fail).
fn text(
    errors: &mut ValidationErrors,
    (field, kind): (&str, TextKind),
    patch: &Patch<String>,
    current: &Option<String>,
) -> Option<String> {
    match patch {
        Patch::Value(v) if v.trim().is_empty() => None,
        Patch::Value(v) => {
            if current.as_deref() != Some(v.as_str()) {
                check_text(errors, field, v, kind);
            }
            Some(v.clone())
        }
        Patch::Null => None,
        Patch::Absent => current.clone(),
    }
}

impl TeamWrite {
    /// The team after this write to `stored` (or a new team); `None` when nothing changes.
    pub fn apply(
        &self,
        code: &str,
        stored: Option<&Team>,
        now: Timestamp,
    ) -> Result<(WriteOutcome, Team), ValidationErrors> {
        bind_code(code, self.code.as_deref())?;
        let mut errors = ValidationErrors::default();
        let name = text(
            &mut errors,
            ("name", TextKind::Line),
            &self.name,
            &stored.and_then(|t| t.name.clone()),
        );
        errors.into_result()?;
        Ok(match stored {
            Some(team) if team.name == name => (WriteOutcome::Unchanged, team.clone()),
            Some(team) => (
                WriteOutcome::Updated,
                Team {
                    name,
                    updated_at: now.max(team.updated_at),
                    ..team.clone()
                },
            ),
            None => (
                WriteOutcome::Created,
                Team {
                    code: code.to_owned(),
                    name,
                    created_at: now,
                    updated_at: now,
                },
            ),
        })
    }
}

/// The group hierarchy, to apply group writes to in order (a sync item's parent may be a group
/// created earlier in the same batch).
#[derive(Clone, Debug, Default)]
pub struct Hierarchy {
    groups: BTreeMap<String, Group>,
}

/// What a batch of group writes did: a result per item and the groups to store.
#[derive(Debug, Default)]
pub struct GroupPlan {
    pub results: Vec<Result<(WriteOutcome, Group), DomainError>>,
    /// Created or changed groups, each once, in their final state.
    pub upserts: Vec<Group>,
}

impl Hierarchy {
    pub fn new(groups: impl IntoIterator<Item = Group>) -> Self {
        Self {
            groups: groups.into_iter().map(|g| (g.code.clone(), g)).collect(),
        }
    }

    pub fn get(&self, code: &str) -> Option<&Group> {
        self.groups.get(code)
    }

    /// Whether making `parent` the parent of `code` would close a cycle: `parent` is `code`
    /// itself or one of its descendants.
    pub fn would_cycle(&self, code: &str, parent: &str) -> bool {
        let mut at = Some(parent);
        // A chain longer than the number of groups would itself be a cycle; never loop forever.
        for _ in 0..=self.groups.len() {
            match at {
                None => return false,
                Some(current) if current == code => return true,
                Some(current) => at = self.groups.get(current).and_then(|g| g.parent.as_deref()),
            }
        }
        true
    }

    /// Applies one write to the group `code`.
    pub fn apply(
        &mut self,
        code: &str,
        write: &GroupWrite,
        now: Timestamp,
    ) -> Result<(WriteOutcome, Group), ValidationErrors> {
        bind_code(code, write.code.as_deref())?;
        let stored = self.groups.get(code);
        let mut errors = ValidationErrors::default();
        let base = stored.cloned().unwrap_or_else(|| Group {
            code: code.to_owned(),
            title: None,
            description: None,
            subscribable: false,
            subscribe_text: None,
            parent: None,
            created_at: now,
            updated_at: now,
        });
        let mut next = base.clone();
        next.title = text(
            &mut errors,
            ("title", TextKind::Line),
            &write.title,
            &base.title,
        );
        next.description = text(
            &mut errors,
            // Free text, as before one-line text refused control characters.
            ("description", TextKind::Multiline),
            &write.description,
            &base.description,
        );
        next.subscribe_text = text(
            &mut errors,
            ("subscribe_text", TextKind::Multiline),
            &write.subscribe_text,
            &base.subscribe_text,
        );
        next.subscribable = match write.subscribable {
            Patch::Value(v) => v,
            Patch::Null => false,
            Patch::Absent => base.subscribable,
        };
        next.parent = match &write.parent {
            Patch::Value(parent) => {
                let before = errors.0.len();
                check_code(&mut errors, "parent", parent);
                if errors.0.len() == before {
                    if parent != code && !self.groups.contains_key(parent) {
                        errors.push(
                            "parent",
                            "unknown_group",
                            format!("there is no group {parent:?}"),
                        );
                    } else if self.would_cycle(code, parent) {
                        errors.push(
                            "parent",
                            "parent_cycle",
                            format!("{parent:?} is {code:?} or one of its subgroups: that would make a cycle"),
                        );
                    }
                }
                Some(parent.clone())
            }
            Patch::Null => None,
            Patch::Absent => base.parent.clone(),
        };
        errors.into_result()?;
        let outcome = match stored {
            None => WriteOutcome::Created,
            Some(stored) if *stored == next => return Ok((WriteOutcome::Unchanged, next)),
            Some(stored) => {
                next.updated_at = now.max(stored.updated_at);
                WriteOutcome::Updated
            }
        };
        self.groups.insert(code.to_owned(), next.clone());
        Ok((outcome, next))
    }

    /// Applies sync items in order; an item that could not be read fails alone.
    pub fn plan(
        mut self,
        items: &[Result<GroupWrite, ValidationErrors>],
        now: Timestamp,
    ) -> GroupPlan {
        let mut plan = GroupPlan::default();
        let mut changed: Vec<String> = Vec::new();
        for item in items {
            let result = match item {
                Err(errors) => Err(DomainError::Validation(errors.clone())),
                Ok(write) => match write.code.as_deref() {
                    None => {
                        Err(
                            ValidationErrors::single("code", "required", "each item needs a code")
                                .into(),
                        )
                    }
                    Some(code) => self.apply(code, write, now).map_err(DomainError::from),
                },
            };
            if let Ok((outcome, group)) = &result
                && *outcome != WriteOutcome::Unchanged
                && !changed.contains(&group.code)
            {
                changed.push(group.code.clone());
            }
            plan.results.push(result);
        }
        plan.upserts = changed
            .iter()
            .filter_map(|code| self.groups.get(code).cloned())
            .collect();
        plan
    }
}

/// The groups and teams a write may name, loaded from the store for the codes it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownCodes {
    /// Group code → its `subscribable` (the default subscription of a new membership).
    pub groups: HashMap<String, bool>,
    pub teams: HashSet<String>,
}

impl Directory for KnownCodes {
    fn group_default_subscribed(&self, code: &str) -> Option<bool> {
        self.groups.get(code).copied()
    }

    fn team_exists(&self, code: &str) -> bool {
        self.teams.contains(code)
    }
}

/// The group and team codes some writes by a caller with this scope may name (what a store must
/// look up: the scope's teams too, which new customers get), sorted and unique, without the
/// spaces around them that a write may send (as the write's own checks drop them).
pub fn named_codes<'a>(
    scope: &crate::Scope,
    writes: impl IntoIterator<Item = &'a CustomerWrite>,
) -> (Vec<String>, Vec<String>) {
    let mut groups = Vec::new();
    let mut teams: Vec<String> = scope.teams().unwrap_or_default().to_vec();
    for write in writes {
        let refs = write
            .groups
            .value()
            .into_iter()
            .flatten()
            .chain(write.add_groups.iter().flatten());
        groups.extend(refs.map(|g| g.code().trim().to_owned()));
        groups.extend(
            write
                .remove_groups
                .iter()
                .flatten()
                .map(|c| c.trim().to_owned()),
        );
        let codes = write
            .teams
            .value()
            .into_iter()
            .flatten()
            .chain(write.add_teams.iter().flatten())
            .chain(write.remove_teams.iter().flatten());
        teams.extend(codes.map(|c| c.trim().to_owned()));
    }
    for list in [&mut groups, &mut teams] {
        list.retain(|c| is_valid_code(c));
        list.sort_unstable();
        list.dedup();
    }
    (groups, teams)
}

#[cfg(test)]
mod tests;
