//! List and search SQL: the `WHERE` of every filter of `GET /v1/customers`, keyset pagination
//! for every sort, and the search terms written with each customer row. How a page is planned
//! is described in docs/search.md.

use clientele_domain::search::{normalize_term, prefix_range, search_terms};
use clientele_domain::{CustomerFilter, CustomerKey, ListQuery, SortKey, SortOrder};

use crate::primitives::{BatchTx, CustomerRow, CustomerTx, Queries, decode_customer};
use crate::sql_store::Backend;

/// Where the SQL of the two backends differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn archived(self, archived: bool) -> &'static str {
        // Literals, not parameters, so that the planner may use partial indexes.
        match (self, archived) {
            (Dialect::Sqlite, true) => "archived = 1",
            (Dialect::Sqlite, false) => "archived = 0",
            (Dialect::Postgres, true) => "archived",
            (Dialect::Postgres, false) => "NOT archived",
        }
    }

    /// A top-level text field of the stored document.
    fn doc_field(self, field: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract(doc, '$.{field}')"),
            Dialect::Postgres => format!("(doc::jsonb ->> '{field}')"),
        }
    }
}

/// A bound parameter of a page query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    Int(i64),
    Text(String),
}

/// A page query and its parameters, in `$n` order.
pub(crate) struct PageSql {
    pub sql: String,
    pub binds: Vec<Bind>,
}

/// How a `q` search finds its customers. Few matches: from the term index, then sorted (cost
/// grows with the matches). Many matches: walk the sort order and probe each customer's terms
/// (cost grows with how far apart matches are), within a window of the sort order; if the window
/// does not fill the page, the terms decide after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    Terms,
    Probe,
}

/// Matching term entries counted, at most, to choose a [`Strategy`]. Sorting matches costs a
/// row fetch each (a few µs); probing costs an index probe per customer walked. Measured on
/// 1,000,000 customers, see docs/benchmarks.md.
const PROBE_FROM_MATCHES: i64 = 3_000;

/// Customers of the sort order a probing search looks at before the terms decide.
const PROBE_WINDOW: u32 = 30_000;

/// Which of a `q`'s matches a page query selects. Under `sort=last_name` a common prefix of
/// last names selects customers that sit together in the sort order, far from its start: they
/// are read by seeking the sort index to the prefix, and the other matches separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Every match.
    All,
    /// The matches whose last-name sort key starts with `q`: a range of the last_name order,
    /// walked with a probe of each customer's terms (the sort key and the terms are normalized
    /// apart, so the range alone does not prove a match).
    NameRange,
    /// The matches outside that range: each has a matching term that is not a prefix of its
    /// sort key (one that is would put the customer in the range), so only those terms count.
    OutsideNameRange,
}

/// How a page query is planned, decided from cheap capped counts (neither SQLite without
/// statistics nor a fixed SQL text can know how many rows a filter selects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub q: Strategy,
    /// A time window on another column than the sort key selects many customers: walk the sort
    /// order and filter, instead of reading the whole window and sorting it.
    pub wide_window: bool,
    pub part: Part,
}

impl Plan {
    /// Whether the page is the merge of a [`Part::NameRange`] and a [`Part::OutsideNameRange`]
    /// query: many matches (sorting them all is what a seek avoids) under `sort=last_name`.
    pub fn splits_by_name(&self, query: &ListQuery) -> bool {
        self.q == Strategy::Probe && query.sort == SortOrder::LastNameAsc
    }
}

/// Customers counted, at most, in a time window to tell whether it is wide.
const WIDE_WINDOW: i64 = 3_000;

/// `SELECT COUNT(*)` of the customers in the query's time windows on columns other than its
/// sort key, up to [`WIDE_WINDOW`], and that cap; `None` when there are no such windows.
pub(crate) fn window_count_sql(query: &ListQuery) -> Option<(PageSql, i64)> {
    let (column, _) = sort_column(query.sort);
    let mut b = Builder {
        conditions: Vec::new(),
        binds: Vec::new(),
        unindexed: None,
        skipped: Some(column),
        only: None,
    };
    time_conditions(&mut b, &query.filter);
    if b.conditions.is_empty() {
        return None;
    }
    let cap = b.bind(Bind::Int(WIDE_WINDOW));
    let sql = format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM customers WHERE {} LIMIT {cap}) AS m",
        b.conditions.join(" AND ")
    );
    let page = PageSql {
        sql,
        binds: b.binds,
    };
    Some((page, WIDE_WINDOW))
}

/// `SELECT COUNT(*)` of the term entries the query's `q` matches (only those that are not a
/// prefix of their customer's last-name sort key, for [`Part::OutsideNameRange`]), up to
/// [`PROBE_FROM_MATCHES`], and that cap; `None` without `q`. An index-only range scan on both
/// backends (PostgreSQL's primary key includes `name_prefix`).
pub(crate) fn count_matches_sql(query: &ListQuery, part: Part) -> Option<(PageSql, i64)> {
    let (low, high) = prefix_range(query.filter.q.as_deref()?);
    let others = if part == Part::OutsideNameRange {
        " AND NOT name_prefix"
    } else {
        ""
    };
    let page = PageSql {
        sql: format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM customer_terms \
             WHERE term >= $1 AND term < $2{others} LIMIT $3) AS m"
        ),
        binds: vec![
            Bind::Text(low),
            Bind::Text(high),
            Bind::Int(PROBE_FROM_MATCHES),
        ],
    };
    Some((page, PROBE_FROM_MATCHES))
}

struct Builder {
    conditions: Vec<String>,
    binds: Vec<Bind>,
    /// The sort column: with a wide window, the other time columns must not drive the query.
    unindexed: Option<&'static str>,
    /// Time conditions on this column are left out (counting the windows off the sort key).
    skipped: Option<&'static str>,
    /// Only time conditions on this column are written (where a probing window starts).
    only: Option<&'static str>,
}

impl Builder {
    /// Binds a value and returns its placeholder.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn time(&mut self, column: &str, op: &str, value: Option<clientele_domain::Timestamp>) {
        let wanted = self.skipped != Some(column) && self.only.is_none_or(|only| only == column);
        if let Some(value) = value.filter(|_| wanted) {
            let p = self.bind(Bind::Int(value.as_micros()));
            if self.unindexed.is_some_and(|sort| sort != column) {
                // An expression, which no index serves: the planner walks the sort order.
                self.conditions.push(format!("({column} + 0) {op} {p}"));
            } else {
                self.conditions.push(format!("{column} {op} {p}"));
            }
        }
    }
}

/// The `SELECT` of a customer page: filters, then the keyset condition, ordered by the sort
/// key and id, one row more than the limit (it tells whether there is a next page).
pub(crate) fn page_sql(query: &ListQuery, dialect: Dialect, plan: Plan) -> PageSql {
    let (column, direction) = sort_column(query.sort);
    let mut b = Builder {
        conditions: Vec::new(),
        binds: Vec::new(),
        unindexed: plan.wide_window.then_some(column),
        skipped: None,
        only: None,
    };
    time_conditions(&mut b, &query.filter);
    implied_time_conditions(&mut b, &query.filter);
    filter_conditions(&mut b, &query.filter, dialect);
    // Tags, groups, teams and the caller's team scope.
    let (memberships, texts) = crate::directory::membership_conditions(query, b.binds.len() + 1);
    b.conditions.extend(memberships);
    b.binds.extend(texts.into_iter().map(Bind::Text));
    let range = query.filter.q.as_deref().map(prefix_range);
    if let Some((low, high)) = &range {
        name_range_condition(&mut b, plan.part, low, high);
    }
    // NameRange probes within its range; Probe within a window of the sort order.
    let probe = match (&range, plan.q, plan.part) {
        (Some(range), _, Part::NameRange) | (Some(range), Strategy::Probe, _) => Some(range),
        _ => None,
    };
    if let (Some((low, high)), None) = (&range, probe) {
        q_condition(&mut b, plan.part, low, high);
    }
    let ascending = direction == "ASC";
    let keyset = query.after.as_ref().map(|after| {
        let key = b.bind(match &after.key {
            SortKey::Time(t) => Bind::Int(*t),
            SortKey::Text(t) => Bind::Text(t.clone()),
        });
        let id = b.bind(Bind::Text(after.id.to_string()));
        let compare = if ascending { ">" } else { "<" };
        format!("({column}, id) {compare} ({key}, {id})")
    });
    b.conditions.extend(keyset.clone());
    let filter = if b.conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", b.conditions.join(" AND "))
    };
    let order = format!("ORDER BY {column} {direction}, id {direction}");
    let columns = "id, version, doc, created_at, updated_at, last_name_sort";
    let limit = |b: &mut Builder| b.bind(Bind::Int(i64::from(query.limit) + 1));
    let sql = match probe {
        None => {
            // Matches read through the term index are sorted: an expression no index serves,
            // so that a planner misled by its estimates cannot walk the whole sort order
            // looking for them (PostgreSQL did, for a prefix whose terms are mostly skipped).
            let order = if range.is_some() {
                let key = if query.sort == SortOrder::LastNameAsc {
                    format!("{column} || ''")
                } else {
                    format!("{column} + 0")
                };
                format!("ORDER BY {key} {direction}, id {direction}")
            } else {
                order
            };
            let limit = limit(&mut b);
            format!("SELECT {columns} FROM customers {filter}{order} LIMIT {limit}")
        }
        Some((low, high)) => {
            let mut conditions = Vec::new();
            if plan.part != Part::NameRange {
                // The window: the next PROBE_WINDOW customers of the sort order (archived ones
                // only, through their small index, when only they are asked for), as a bound
                // on the sort key found by one index-only walk (nothing is materialized).
                // It starts where the walk does: after the cursor, within the time conditions
                // on the sort key itself.
                let window = b.bind(Bind::Int(i64::from(PROBE_WINDOW)));
                let mark = b.conditions.len();
                (b.only, b.unindexed) = (Some(column), None);
                time_conditions(&mut b, &query.filter);
                implied_time_conditions(&mut b, &query.filter);
                let mut walked: Vec<String> = b.conditions.drain(mark..).collect();
                walked.extend(keyset);
                if query.filter.archived == Some(true) {
                    walked.push(dialect.archived(true).to_owned());
                }
                let after = if walked.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {} ", walked.join(" AND "))
                };
                // Without a window's end (fewer customers left), the last key: a bound that is
                // not a NULL keeps the condition an index range, so the walk stops there.
                let (within, last) = if ascending {
                    ("<=", "MAX")
                } else {
                    (">=", "MIN")
                };
                conditions.push(format!(
                    "{column} {within} COALESCE((SELECT {column} FROM customers {after}{order} \
                     LIMIT 1 OFFSET {window}), (SELECT {last}({column}) FROM customers))"
                ));
            }
            // A scalar subquery, which neither database turns into a join: one index probe
            // per customer walked, in sort order, until the page is full.
            let low = b.bind(Bind::Text(low.clone()));
            let high = b.bind(Bind::Text(high.clone()));
            conditions.push(format!(
                "(SELECT 1 FROM customer_terms WHERE customer_id = customers.id \
                 AND term >= {low} AND term < {high} LIMIT 1) IS NOT NULL"
            ));
            let limit = limit(&mut b);
            let filter = format!(
                "{filter}{}{} ",
                if filter.is_empty() { "WHERE " } else { "AND " },
                conditions.join(" AND ")
            );
            format!("SELECT {columns} FROM customers {filter}{order} LIMIT {limit}")
        }
    };
    PageSql {
        sql,
        binds: b.binds,
    }
}

fn sort_column(sort: SortOrder) -> (&'static str, &'static str) {
    use SortOrder::*;
    match sort {
        CreatedAsc => ("created_at", "ASC"),
        CreatedDesc => ("created_at", "DESC"),
        UpdatedAsc => ("updated_at", "ASC"),
        UpdatedDesc => ("updated_at", "DESC"),
        LastNameAsc => ("last_name_sort", "ASC"),
    }
}

fn time_conditions(b: &mut Builder, filter: &CustomerFilter) {
    b.time("created_at", ">=", filter.created_after);
    b.time("created_at", "<", filter.created_before);
    b.time("updated_at", ">=", filter.updated_after);
    b.time("updated_at", "<", filter.updated_before);
}

/// Conditions that follow from the time windows.
fn implied_time_conditions(b: &mut Builder, filter: &CustomerFilter) {
    // A customer is never updated before it was created, so these follow and let the other
    // time index seek to where the matches begin.
    let implied = |given: Option<clientele_domain::Timestamp>, other| given.filter(|_| other);
    b.time(
        "updated_at",
        ">=",
        implied(filter.created_after, filter.updated_after.is_none()),
    );
    b.time(
        "created_at",
        "<",
        implied(filter.updated_before, filter.created_before.is_none()),
    );
}

fn filter_conditions(b: &mut Builder, filter: &CustomerFilter, dialect: Dialect) {
    if let Some(email) = &filter.email {
        let p = b.bind(Bind::Text(CustomerKey::Email.normalize(email)));
        b.conditions.push(format!("email_norm = {p}"));
    }
    if let Some(external_id) = &filter.external_id {
        let p = b.bind(Bind::Text(external_id.clone()));
        b.conditions.push(format!("external_id = {p}"));
    }
    if let Some(phone) = &filter.phone {
        // Found through the term index, then compared exactly with either number.
        let term = b.bind(Bind::Text(normalize_term(phone)));
        let exact = b.bind(Bind::Text(phone.clone()));
        b.conditions.push(format!(
            "id IN (SELECT customer_id FROM customer_terms WHERE term = {term}) \
             AND {exact} IN ({}, {})",
            dialect.doc_field("phone"),
            dialect.doc_field("phone_alt")
        ));
    }
    if let Some(archived) = filter.archived {
        b.conditions.push(dialect.archived(archived).to_owned());
    }
}

/// Confines a [`Part`] to its side of the last-name range of `q`.
fn name_range_condition(b: &mut Builder, part: Part, low: &str, high: &str) {
    let condition = match part {
        Part::All => return,
        Part::NameRange => "last_name_sort >= {low} AND last_name_sort < {high}",
        // Not an OR of two ranges, which a planner may read as two index scans and sort.
        Part::OutsideNameRange => "NOT (last_name_sort >= {low} AND last_name_sort < {high})",
    };
    let low = b.bind(Bind::Text(low.to_owned()));
    let high = b.bind(Bind::Text(high.to_owned()));
    b.conditions
        .push(condition.replace("{low}", &low).replace("{high}", &high));
}

fn q_condition(b: &mut Builder, part: Part, low: &str, high: &str) {
    let others = if part == Part::OutsideNameRange {
        " AND NOT name_prefix"
    } else {
        ""
    };
    let low = b.bind(Bind::Text(low.to_owned()));
    let high = b.bind(Bind::Text(high.to_owned()));
    b.conditions.push(format!(
        "id IN (SELECT customer_id FROM customer_terms \
         WHERE term >= {low} AND term < {high}{others})"
    ));
}

/// The state of the one-time indexing of customers stored before the search index existed.
#[async_trait::async_trait]
pub(crate) trait BackfillTx: Send {
    async fn terms_backfill_pending(&mut self) -> Result<bool, clientele_domain::DomainError>;
    async fn finish_terms_backfill(&mut self) -> Result<(), clientele_domain::DomainError>;
}

/// Implements [`BackfillTx`] for a backend's transaction (the SQL is the same on both).
macro_rules! backfill_primitives {
    ($db:ty) => {
        #[async_trait::async_trait]
        impl<'c> $crate::search::BackfillTx for sqlx::Transaction<'c, $db> {
            async fn terms_backfill_pending(
                &mut self,
            ) -> Result<bool, clientele_domain::DomainError> {
                let pending: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM customer_terms_backfill WHERE NOT done",
                )
                .fetch_one(&mut **self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(pending > 0)
            }

            async fn finish_terms_backfill(&mut self) -> Result<(), clientele_domain::DomainError> {
                sqlx::query("UPDATE customer_terms_backfill SET done = (1 = 1)")
                    .execute(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                Ok(())
            }
        }
    };
}

pub(crate) use backfill_primitives;

/// Indexes the search terms of customers stored before the search index existed, 1000 per
/// transaction, once (a flag set by the migration says whether it is still due). New writes
/// index their own terms meanwhile; rewriting a customer's terms twice is harmless.
pub(crate) async fn backfill_terms<B: Backend>(
    backend: &B,
) -> Result<u64, clientele_domain::DomainError> {
    let mut after = None;
    let mut indexed = 0;
    loop {
        let mut tx = backend.begin_write().await?;
        if !tx.terms_backfill_pending().await? {
            return Ok(indexed);
        }
        let page = backend
            .reads()
            .customer_page(&ListQuery {
                limit: 1000,
                sort: SortOrder::CreatedAsc,
                after,
                filter: CustomerFilter::default(),
                scope: clientele_domain::Scope::All,
            })
            .await?;
        let customers = page
            .items
            .iter()
            .map(|doc| decode_customer(&doc.json))
            .collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<CustomerRow<'_>> = customers
            .iter()
            .zip(&page.items)
            .map(|(customer, doc)| CustomerRow::new(customer, None, &doc.json))
            .collect();
        tx.write_terms(&rows, true).await?;
        indexed += rows.len() as u64;
        if page.next.is_none() {
            tx.finish_terms_backfill().await?;
        }
        tx.commit().await?;
        after = page.next;
        if after.is_none() {
            if indexed > 0 {
                tracing::info!(indexed, "indexed stored customers for search");
            }
            return Ok(indexed);
        }
    }
}

/// The `(term, customer id, name_prefix)` rows of these customers, as parallel lists.
#[derive(Default)]
pub(crate) struct TermRows {
    pub terms: Vec<String>,
    pub ids: Vec<String>,
    /// Whether the term is a prefix of the customer's last-name sort key (see [`Part`]).
    pub name_prefix: Vec<bool>,
}

pub(crate) fn term_rows(rows: &[CustomerRow<'_>]) -> TermRows {
    let mut out = TermRows::default();
    for row in rows {
        let id = row.customer.id.to_string();
        for term in search_terms(row.customer) {
            out.name_prefix
                .push(row.last_name_sort.starts_with(term.as_str()));
            out.terms.push(term);
            out.ids.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::{Cursor, CustomerId, Scope, Timestamp};

    #[test]
    fn filters_and_the_cursor_bind_in_placeholder_order() {
        let query = ListQuery {
            limit: 10,
            sort: SortOrder::UpdatedDesc,
            after: Some(Cursor {
                key: SortKey::Time(5),
                id: CustomerId::new(),
            }),
            filter: CustomerFilter {
                created_after: Some(Timestamp::from_micros(1)),
                email: Some("A@B.c".into()),
                archived: Some(false),
                q: Some("Sm".into()),
                ..CustomerFilter::default()
            },
            scope: Scope::All,
        };
        let terms = Plan {
            q: Strategy::Terms,
            wide_window: false,
            part: Part::All,
        };
        let page = page_sql(&query, Dialect::Sqlite, terms);
        let expected = [
            "created_at >= $1",
            "updated_at >= $2", // implied: never updated before created
            "email_norm = $3",
            "archived = 0",
            "term >= $4 AND term < $5",
            "(updated_at, id) < ($6, $7)",
            "ORDER BY updated_at + 0 DESC, id DESC LIMIT $8",
        ];
        for part in expected {
            assert!(page.sql.contains(part), "{part}: {}", page.sql);
        }
        assert_eq!(page.binds.len(), 8);
        assert_eq!(page.binds[2], Bind::Text("a@b.c".into()));
        assert_eq!(page.binds[7], Bind::Int(11));

        let probing = Plan {
            q: Strategy::Probe,
            wide_window: true,
            part: Part::All,
        };
        let page = page_sql(&query, Dialect::Postgres, probing);
        let expected = [
            "(created_at + 0) >= $1",
            "updated_at >= $2",
            "NOT archived",
            "updated_at >= COALESCE((SELECT updated_at FROM customers \
             WHERE updated_at >= $7 AND (updated_at, id) < ($4, $5) ORDER BY",
            "LIMIT 1 OFFSET $6), (SELECT MIN(updated_at) FROM customers))",
            "term >= $8 AND term < $9 LIMIT 1) IS NOT NULL",
            "LIMIT $10",
        ];
        for part in expected {
            assert!(page.sql.contains(part), "{part}: {}", page.sql);
        }
        let (count, cap) = window_count_sql(&query).expect("a window off the sort key");
        assert_eq!(cap, WIDE_WINDOW);
        assert!(
            count.sql.contains("WHERE created_at >= $1 LIMIT $2"),
            "{}",
            count.sql
        );
        let by_created = ListQuery {
            sort: SortOrder::CreatedAsc,
            ..query.clone()
        };
        assert!(window_count_sql(&by_created).is_none());
    }

    #[test]
    fn a_search_by_last_name_splits_at_the_prefix_range_of_the_sort_key() {
        let query = ListQuery {
            limit: 10,
            sort: SortOrder::LastNameAsc,
            after: None,
            filter: CustomerFilter {
                archived: Some(true),
                q: Some("Vir".into()),
                ..CustomerFilter::default()
            },
            scope: Scope::All,
        };
        let plan = Plan {
            q: Strategy::Probe,
            wide_window: false,
            part: Part::All,
        };
        assert!(plan.splits_by_name(&query));
        let by_created = ListQuery {
            sort: SortOrder::CreatedAsc,
            ..query.clone()
        };
        assert!(!plan.splits_by_name(&by_created));

        // The range: sought in the sort index, each customer probed, no window.
        let range = page_sql(
            &query,
            Dialect::Postgres,
            Plan {
                part: Part::NameRange,
                ..plan
            },
        );
        for part in [
            "last_name_sort >= $1 AND last_name_sort < $2",
            "term >= $3 AND term < $4 LIMIT 1) IS NOT NULL",
            "WHERE archived AND",
        ] {
            assert!(range.sql.contains(part), "{part}: {}", range.sql);
        }
        assert!(!range.sql.contains("OFFSET"), "{}", range.sql);
        assert_eq!(range.binds[0], Bind::Text("vir".into()));

        // The rest, probed: a window over archived customers only.
        let others = page_sql(
            &query,
            Dialect::Postgres,
            Plan {
                part: Part::OutsideNameRange,
                ..plan
            },
        );
        for part in [
            "NOT (last_name_sort >= $1 AND last_name_sort < $2)",
            "FROM customers WHERE archived ORDER BY last_name_sort ASC, id ASC LIMIT 1 OFFSET $3), \
             (SELECT MAX(last_name_sort) FROM customers))",
        ] {
            assert!(others.sql.contains(part), "{part}: {}", others.sql);
        }
        // Or read through the terms that are not a prefix of their customer's sort key.
        let few = page_sql(
            &query,
            Dialect::Sqlite,
            Plan {
                q: Strategy::Terms,
                part: Part::OutsideNameRange,
                ..plan
            },
        );
        for part in [
            "term >= $3 AND term < $4 AND NOT name_prefix)",
            "ORDER BY last_name_sort || '' ASC, id ASC",
        ] {
            assert!(few.sql.contains(part), "{part}: {}", few.sql);
        }
        let (count, _) = count_matches_sql(&query, Part::OutsideNameRange).expect("q");
        assert!(
            count.sql.contains("AND NOT name_prefix LIMIT $3"),
            "{}",
            count.sql
        );
    }
}
