//! Groups, teams, tags and the membership rows behind list filters, tag counts and team scopes:
//! the SQL both backends share (numbered placeholders, multi-row `VALUES`), instantiated per
//! backend by [`directory_primitives`].
//!
//! Memberships are indexed copies of each customer's `tags`, `groups` and `teams`, written in
//! the transaction of every customer write; deletions cascade from `customers`.

use async_trait::async_trait;
use clientele_domain::{
    CustomerId, DomainError, Group, KnownCodes, ListQuery, NamePage, Scope, TagCount, Team,
};

use crate::primitives::CustomerRow;

/// The directory writes of a transaction.
#[async_trait]
pub(crate) trait DirectoryTx: Send {
    /// Which of these codes exist. Where the backend locks rows, the found groups and teams are
    /// locked against deletion until the transaction ends, so no customer joins a group or team
    /// that a concurrent delete removes.
    async fn known_codes(
        &mut self,
        groups: &[String],
        teams: &[String],
    ) -> Result<KnownCodes, DomainError>;

    /// Serializes group writes (the hierarchy check needs a stable view), then loads the groups
    /// `named` and all their ancestors: what a batch naming these codes and parents needs to
    /// check for cycles, whatever the number of groups.
    async fn lock_groups(&mut self, named: &[String]) -> Result<Vec<Group>, DomainError>;

    async fn upsert_groups(&mut self, groups: &[Group]) -> Result<(), DomainError>;

    /// Deletes the group unless it has subgroups or members.
    async fn delete_group(&mut self, code: &str) -> Result<(), DomainError>;

    async fn team_for_update(&mut self, code: &str) -> Result<Option<Team>, DomainError>;

    async fn upsert_team(&mut self, team: &Team) -> Result<(), DomainError>;

    /// Deletes the team unless customers or live API keys belong to it.
    async fn delete_team(&mut self, code: &str) -> Result<(), DomainError>;

    /// Replaces the membership rows of these customers: the rows of `replaced` go, those of
    /// `rows` are written. Nothing is sent for empty sets.
    async fn write_memberships(
        &mut self,
        replaced: &[CustomerId],
        rows: &[CustomerRow<'_>],
    ) -> Result<(), DomainError>;
}

/// The directory reads, served from the pool.
#[async_trait]
pub(crate) trait DirectoryQueries: Send + Sync {
    async fn group(&self, code: &str) -> Result<Option<Group>, DomainError>;
    async fn groups(&self, page: &NamePage) -> Result<Vec<Group>, DomainError>;
    async fn team(&self, code: &str) -> Result<Option<Team>, DomainError>;
    async fn teams(
        &self,
        page: &NamePage,
        among: Option<&[String]>,
    ) -> Result<Vec<Team>, DomainError>;
    async fn tag_counts(
        &self,
        scope: &Scope,
        page: &NamePage,
    ) -> Result<Vec<TagCount>, DomainError>;
}

/// `($1, $2), ($3, $4)`: `rows` groups of `columns` numbered parameters from `$first`.
pub(crate) fn numbered(first: usize, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let group: Vec<String> = (0..columns)
                .map(|c| format!("${}", first + r * columns + c))
                .collect();
            format!("({})", group.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, ..., $(first + count - 1)`.
pub(crate) fn list(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A customer's membership rows, flattened for multi-row inserts.
#[derive(Default)]
pub(crate) struct Memberships {
    pub tags: Vec<(String, String)>,
    pub groups: Vec<(String, String, bool)>,
    pub teams: Vec<(String, String)>,
}

impl Memberships {
    pub fn of(rows: &[CustomerRow<'_>]) -> Self {
        let mut all = Memberships::default();
        for row in rows {
            let c = row.customer;
            let id = c.id.to_string();
            all.tags
                .extend(c.tags.iter().map(|t| (id.clone(), t.clone())));
            all.groups.extend(
                c.groups
                    .iter()
                    .map(|g| (id.clone(), g.code.clone(), g.subscribed)),
            );
            all.teams
                .extend(c.teams.iter().map(|t| (id.clone(), t.clone())));
        }
        all
    }
}

/// The condition that a customer (`customers.id`) is in one of the scope's teams, with its
/// parameters numbered from `$first`; `None` for an unrestricted scope.
pub(crate) fn scope_condition(scope: &Scope, first: usize) -> Option<(String, Vec<String>)> {
    let teams = scope.teams()?;
    Some((
        format!(
            "EXISTS (SELECT 1 FROM customer_teams st WHERE st.customer_id = customers.id \
             AND st.team_code IN ({}))",
            list(first, teams.len())
        ),
        teams.to_vec(),
    ))
}

/// The conditions of the `tag`, `group` (with `include_subgroups`) and `team` filters and the
/// caller's scope, with their text parameters numbered from `$first`.
pub(crate) fn membership_conditions(query: &ListQuery, first: usize) -> (Vec<String>, Vec<String>) {
    let mut conditions = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let filter = &query.filter;
    if let Some(tag) = &filter.tag {
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM customer_tags ft WHERE ft.customer_id = customers.id \
             AND ft.tag = ${})",
            first + binds.len()
        ));
        binds.push(tag.clone());
    }
    if let Some(group) = &filter.group {
        let n = first + binds.len();
        conditions.push(if filter.include_subgroups {
            format!(
                // The subgroup set does not depend on the customer: computed once, then
                // each customer is checked by its membership index.
                "EXISTS (SELECT 1 FROM customer_groups fg WHERE fg.customer_id = customers.id \
                 AND fg.group_code IN (WITH RECURSIVE sub(code) AS \
                 (SELECT code FROM groups WHERE code = ${n} \
                 UNION SELECT g.code FROM groups g JOIN sub ON g.parent = sub.code) \
                 SELECT code FROM sub))"
            )
        } else {
            format!(
                "EXISTS (SELECT 1 FROM customer_groups fg WHERE fg.customer_id = customers.id \
                 AND fg.group_code = ${n})"
            )
        });
        binds.push(group.clone());
    }
    if let Some(team) = &filter.team {
        // A team a restricted key is not in does not exist for it: filtering by it must not
        // tell which of its customers are shared with that team.
        if query.scope.teams().is_some_and(|own| !own.contains(team)) {
            conditions.push("1 = 0".to_owned());
        }
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM customer_teams ft2 WHERE ft2.customer_id = customers.id \
             AND ft2.team_code = ${})",
            first + binds.len()
        ));
        binds.push(team.clone());
    }
    if let Some((condition, teams)) = scope_condition(&query.scope, first + binds.len()) {
        conditions.push(condition);
        binds.extend(teams);
    }
    (conditions, binds)
}

/// Codes per lookup statement at most (SQLite binds at most 32,766 parameters, PostgreSQL 65,535).
pub(crate) const CODES_PER_QUERY: usize = 4096;

/// Customers whose membership rows one delete statement names at most.
pub(crate) const MEMBERSHIP_CHUNK: usize = 256;

pub(crate) const GROUP_COLUMNS: &str =
    "code, title, description, subscribable, subscribe_text, parent, created_at, updated_at";
pub(crate) const TEAM_COLUMNS: &str = "code, name, created_at, updated_at";

pub(crate) fn in_use(what: clientele_domain::InUse) -> DomainError {
    DomainError::InUse(what)
}

/// Implements [`DirectoryTx`] for a backend's transaction and [`DirectoryQueries`] for its
/// pool. `share` locks rows against deletion (PostgreSQL `FOR SHARE`), `update` for a change,
/// `serialize_groups` serializes group writes (SQLite serializes every write already), and
/// `insert_memberships` is the backend's way of writing many membership rows at once.
macro_rules! directory_primitives {
    (
        $db:ty,
        share = $share:literal,
        update = $update:literal,
        serialize_groups = $serialize:literal,
        insert_memberships = $insert_memberships:path
    ) => {
        fn decode_group(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<clientele_domain::Group, clientele_domain::DomainError> {
            use sqlx::Row;
            let db = $crate::error::db_error;
            Ok(clientele_domain::Group {
                code: row.try_get(0).map_err(db)?,
                title: row.try_get(1).map_err(db)?,
                description: row.try_get(2).map_err(db)?,
                subscribable: row.try_get(3).map_err(db)?,
                subscribe_text: row.try_get(4).map_err(db)?,
                parent: row.try_get(5).map_err(db)?,
                created_at: clientele_domain::Timestamp::from_micros(row.try_get(6).map_err(db)?),
                updated_at: clientele_domain::Timestamp::from_micros(row.try_get(7).map_err(db)?),
            })
        }

        fn decode_team(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<clientele_domain::Team, clientele_domain::DomainError> {
            use sqlx::Row;
            let db = $crate::error::db_error;
            Ok(clientele_domain::Team {
                code: row.try_get(0).map_err(db)?,
                name: row.try_get(1).map_err(db)?,
                created_at: clientele_domain::Timestamp::from_micros(row.try_get(2).map_err(db)?),
                updated_at: clientele_domain::Timestamp::from_micros(row.try_get(3).map_err(db)?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::directory::DirectoryTx for sqlx::Transaction<'static, $db> {
            async fn known_codes(
                &mut self,
                groups: &[String],
                teams: &[String],
            ) -> Result<clientele_domain::KnownCodes, clientele_domain::DomainError> {
                use sqlx::Row;
                use $crate::directory::list;
                let db = $crate::error::db_error;
                let mut known = clientele_domain::KnownCodes::default();
                // Chunked only to stay under the backends' bound-parameter limits.
                for groups in groups.chunks($crate::directory::CODES_PER_QUERY) {
                    let sql = format!(
                        "SELECT code, subscribable FROM groups WHERE code IN ({}){}",
                        list(1, groups.len()),
                        $share
                    );
                    let mut query = sqlx::query(&sql);
                    for code in groups {
                        query = query.bind(code);
                    }
                    for row in query.fetch_all(&mut **self).await.map_err(db)? {
                        known
                            .groups
                            .insert(row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
                    }
                }
                for teams in teams.chunks($crate::directory::CODES_PER_QUERY) {
                    let sql = format!(
                        "SELECT code FROM teams WHERE code IN ({}){}",
                        list(1, teams.len()),
                        $share
                    );
                    let mut query = sqlx::query(&sql);
                    for code in teams {
                        query = query.bind(code);
                    }
                    for row in query.fetch_all(&mut **self).await.map_err(db)? {
                        known.teams.insert(row.try_get(0).map_err(db)?);
                    }
                }
                Ok(known)
            }

            async fn lock_groups(
                &mut self,
                named: &[String],
            ) -> Result<Vec<clientele_domain::Group>, clientele_domain::DomainError> {
                use $crate::directory::list;
                let db = $crate::error::db_error;
                if !$serialize.is_empty() {
                    sqlx::query($serialize).execute(&mut **self).await.map_err(db)?;
                }
                let mut loaded = std::collections::BTreeMap::new();
                for named in named.chunks($crate::directory::CODES_PER_QUERY) {
                    let sql = format!(
                        "WITH RECURSIVE chain (code) AS ( \
                             SELECT code FROM groups WHERE code IN ({}) \
                             UNION \
                             SELECT g.parent FROM groups AS g JOIN chain AS c ON g.code = c.code \
                             WHERE g.parent IS NOT NULL) \
                         SELECT {} FROM groups WHERE code IN (SELECT code FROM chain)",
                        list(1, named.len()),
                        $crate::directory::GROUP_COLUMNS
                    );
                    let mut query = sqlx::query(&sql);
                    for code in named {
                        query = query.bind(code);
                    }
                    for row in query.fetch_all(&mut **self).await.map_err(db)? {
                        let group = decode_group(&row)?;
                        loaded.insert(group.code.clone(), group);
                    }
                }
                Ok(loaded.into_values().collect())
            }

            async fn upsert_groups(
                &mut self,
                groups: &[clientele_domain::Group],
            ) -> Result<(), clientele_domain::DomainError> {
                for chunk in groups.chunks(64) {
                    let sql = format!(
                        "INSERT INTO groups ({}) VALUES {} ON CONFLICT (code) DO UPDATE SET \
                         title = excluded.title, description = excluded.description, \
                         subscribable = excluded.subscribable, \
                         subscribe_text = excluded.subscribe_text, parent = excluded.parent, \
                         updated_at = excluded.updated_at",
                        $crate::directory::GROUP_COLUMNS,
                        $crate::directory::numbered(1, chunk.len(), 8)
                    );
                    let mut query = sqlx::query(&sql);
                    for g in chunk {
                        query = query
                            .bind(&g.code)
                            .bind(&g.title)
                            .bind(&g.description)
                            .bind(g.subscribable)
                            .bind(&g.subscribe_text)
                            .bind(&g.parent)
                            .bind(g.created_at.as_micros())
                            .bind(g.updated_at.as_micros());
                    }
                    query
                        .execute(&mut **self)
                        .await
                        .map_err($crate::error::db_error)?;
                }
                Ok(())
            }

            async fn delete_group(&mut self, code: &str) -> Result<(), clientele_domain::DomainError> {
                use clientele_domain::InUse;
                let db = $crate::error::db_error;
                // Deleting first waits for writers holding the group (`known_codes`); the checks
                // after it then see what they committed.
                let deleted = sqlx::query("DELETE FROM groups WHERE code = $1")
                    .bind(code)
                    .execute(&mut **self)
                    .await
                    .map_err(db)?;
                if deleted.rows_affected() == 0 {
                    return Err(clientele_domain::DomainError::NotFound);
                }
                let subgroups: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM groups WHERE parent = $1")
                        .bind(code)
                        .fetch_one(&mut **self)
                        .await
                        .map_err(db)?;
                if subgroups > 0 {
                    return Err($crate::directory::in_use(InUse::GroupHasSubgroups));
                }
                let members: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM customer_groups WHERE group_code = $1 LIMIT 1",
                )
                .bind(code)
                .fetch_optional(&mut **self)
                .await
                .map_err(db)?;
                if members.is_some() {
                    return Err($crate::directory::in_use(InUse::GroupHasMembers));
                }
                Ok(())
            }

            async fn team_for_update(
                &mut self,
                code: &str,
            ) -> Result<Option<clientele_domain::Team>, clientele_domain::DomainError> {
                let sql = format!(
                    "SELECT {} FROM teams WHERE code = $1{}",
                    $crate::directory::TEAM_COLUMNS,
                    $update
                );
                let row = sqlx::query(&sql)
                    .bind(code)
                    .fetch_optional(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.as_ref().map(decode_team).transpose()
            }

            async fn upsert_team(
                &mut self,
                team: &clientele_domain::Team,
            ) -> Result<(), clientele_domain::DomainError> {
                let sql = format!(
                    "INSERT INTO teams ({}) VALUES ($1, $2, $3, $4) ON CONFLICT (code) \
                     DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
                    $crate::directory::TEAM_COLUMNS
                );
                sqlx::query(&sql)
                    .bind(&team.code)
                    .bind(&team.name)
                    .bind(team.created_at.as_micros())
                    .bind(team.updated_at.as_micros())
                    .execute(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                Ok(())
            }

            async fn delete_team(&mut self, code: &str) -> Result<(), clientele_domain::DomainError> {
                use clientele_domain::InUse;
                let db = $crate::error::db_error;
                let deleted = sqlx::query("DELETE FROM teams WHERE code = $1")
                    .bind(code)
                    .execute(&mut **self)
                    .await
                    .map_err(db)?;
                if deleted.rows_affected() == 0 {
                    return Err(clientele_domain::DomainError::NotFound);
                }
                let members: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM customer_teams WHERE team_code = $1 LIMIT 1",
                )
                .bind(code)
                .fetch_optional(&mut **self)
                .await
                .map_err(db)?;
                if members.is_some() {
                    return Err($crate::directory::in_use(InUse::TeamHasMembers));
                }
                // Key teams are a JSON list per key; keys are few, so they are read and checked here.
                let key_teams: Vec<String> =
                    sqlx::query_scalar("SELECT teams FROM api_keys WHERE revoked_at IS NULL")
                        .fetch_all(&mut **self)
                        .await
                        .map_err(db)?;
                let used = key_teams.iter().any(|teams| {
                    serde_json::from_str::<Vec<String>>(teams)
                        .is_ok_and(|teams| teams.iter().any(|t| t == code))
                });
                if used {
                    return Err($crate::directory::in_use(InUse::TeamHasKeys));
                }
                Ok(())
            }

            async fn write_memberships(
                &mut self,
                replaced: &[clientele_domain::CustomerId],
                rows: &[$crate::primitives::CustomerRow<'_>],
            ) -> Result<(), clientele_domain::DomainError> {
                use $crate::directory::{MEMBERSHIP_CHUNK, list};
                let db = $crate::error::db_error;
                let ids: Vec<String> = replaced.iter().map(ToString::to_string).collect();
                for chunk in ids.chunks(MEMBERSHIP_CHUNK) {
                    for table in ["customer_tags", "customer_groups", "customer_teams"] {
                        let sql = format!(
                            "DELETE FROM {table} WHERE customer_id IN ({})",
                            list(1, chunk.len())
                        );
                        let mut query = sqlx::query(&sql);
                        for id in chunk {
                            query = query.bind(id);
                        }
                        query.execute(&mut **self).await.map_err(db)?;
                    }
                }
                $insert_memberships(self, &$crate::directory::Memberships::of(rows)).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::directory::DirectoryQueries for sqlx::Pool<$db> {
            async fn group(
                &self,
                code: &str,
            ) -> Result<Option<clientele_domain::Group>, clientele_domain::DomainError> {
                let sql = format!(
                    "SELECT {} FROM groups WHERE code = $1",
                    $crate::directory::GROUP_COLUMNS
                );
                let row = sqlx::query(&sql)
                    .bind(code)
                    .fetch_optional(self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.as_ref().map(decode_group).transpose()
            }

            async fn groups(
                &self,
                page: &clientele_domain::NamePage,
            ) -> Result<Vec<clientele_domain::Group>, clientele_domain::DomainError> {
                let sql = format!(
                    "SELECT {} FROM groups WHERE code > $1 ORDER BY code LIMIT $2",
                    $crate::directory::GROUP_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(i64::from(page.limit))
                    .fetch_all(self)
                    .await
                    .map_err($crate::error::db_error)?;
                rows.iter().map(decode_group).collect()
            }

            async fn team(
                &self,
                code: &str,
            ) -> Result<Option<clientele_domain::Team>, clientele_domain::DomainError> {
                let sql = format!(
                    "SELECT {} FROM teams WHERE code = $1",
                    $crate::directory::TEAM_COLUMNS
                );
                let row = sqlx::query(&sql)
                    .bind(code)
                    .fetch_optional(self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.as_ref().map(decode_team).transpose()
            }

            async fn teams(
                &self,
                page: &clientele_domain::NamePage,
                among: Option<&[String]>,
            ) -> Result<Vec<clientele_domain::Team>, clientele_domain::DomainError> {
                // A key names at most 100 teams: one list of parameters.
                let filter = match among {
                    None => String::new(),
                    Some([]) => return Ok(Vec::new()),
                    Some(codes) => {
                        format!(" AND code IN ({})", $crate::directory::list(3, codes.len()))
                    }
                };
                let sql = format!(
                    "SELECT {} FROM teams WHERE code > $1{filter} ORDER BY code LIMIT $2",
                    $crate::directory::TEAM_COLUMNS
                );
                let mut query = sqlx::query(&sql)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(i64::from(page.limit));
                for code in among.unwrap_or_default() {
                    query = query.bind(code);
                }
                let rows = query
                    .fetch_all(self)
                    .await
                    .map_err($crate::error::db_error)?;
                rows.iter().map(decode_team).collect()
            }

            async fn tag_counts(
                &self,
                scope: &clientele_domain::Scope,
                page: &clientele_domain::NamePage,
            ) -> Result<Vec<clientele_domain::TagCount>, clientele_domain::DomainError> {
                use sqlx::Row;
                let db = $crate::error::db_error;
                let (condition, teams) = $crate::directory::scope_condition(scope, 3)
                    .map_or((String::new(), Vec::new()), |(c, t)| (format!("AND {c}"), t));
                let sql = format!(
                    "SELECT ct.tag, COUNT(*) FROM customer_tags ct \
                     JOIN customers ON customers.id = ct.customer_id \
                     WHERE ct.tag > $1 {condition} \
                     GROUP BY ct.tag ORDER BY ct.tag LIMIT $2"
                );
                let mut query = sqlx::query(&sql)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(i64::from(page.limit));
                for team in teams {
                    query = query.bind(team);
                }
                let rows = query.fetch_all(self).await.map_err(db)?;
                rows.iter()
                    .map(|row| {
                        Ok(clientele_domain::TagCount {
                            tag: row.try_get(0).map_err(db)?,
                            count: row.try_get(1).map_err(db)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use directory_primitives;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_row_order() {
        assert_eq!(numbered(3, 2, 2), "($3, $4), ($5, $6)");
        assert_eq!(list(2, 3), "$2, $3, $4");
    }
}
