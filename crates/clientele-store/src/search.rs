//! List and search SQL: the `WHERE` of every filter of `GET /v1/customers`, keyset pagination
//! for every sort, and the search terms written with each customer row.

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

/// How a page query is planned, decided from cheap capped counts (neither SQLite without
/// statistics nor a fixed SQL text can know how many rows a filter selects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub q: Strategy,
    /// A time window on another column than the sort key selects many customers: walk the sort
    /// order and filter, instead of reading the whole window and sorting it.
    pub wide_window: bool,
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

/// `SELECT COUNT(*)` of the term entries the query's `q` matches, up to
/// [`PROBE_FROM_MATCHES`], and that cap; `None` without `q`.
pub(crate) fn count_matches_sql(query: &ListQuery) -> Option<(PageSql, i64)> {
    let (low, high) = prefix_range(query.filter.q.as_deref()?);
    let page = PageSql {
        sql: "SELECT COUNT(*) FROM (SELECT 1 FROM customer_terms \
              WHERE term >= $1 AND term < $2 LIMIT $3) AS m"
            .to_owned(),
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
}

impl Builder {
    /// Binds a value and returns its placeholder.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn time(&mut self, column: &str, op: &str, value: Option<clientele_domain::Timestamp>) {
        if let Some(value) = value.filter(|_| self.skipped != Some(column)) {
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
    };
    time_conditions(&mut b, &query.filter);
    implied_time_conditions(&mut b, &query.filter);
    filter_conditions(&mut b, &query.filter, dialect);
    // Tags, groups, teams and the caller's team scope.
    let (memberships, texts) = crate::directory::membership_conditions(query, b.binds.len() + 1);
    b.conditions.extend(memberships);
    b.binds.extend(texts.into_iter().map(Bind::Text));
    let probe = match (&query.filter.q, plan.q) {
        (Some(q), Strategy::Probe) => Some(prefix_range(q)),
        _ => None,
    };
    if probe.is_none() {
        q_condition(&mut b, &query.filter);
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
    let sql = match probe {
        None => {
            let limit = b.bind(Bind::Int(i64::from(query.limit) + 1));
            format!("SELECT {columns} FROM customers {filter}{order} LIMIT {limit}")
        }
        Some((low, high)) => {
            // The window: the next PROBE_WINDOW customers of the sort order, as a bound on the
            // sort key found by one index-only walk (a range, so nothing is materialized).
            let window = b.bind(Bind::Int(i64::from(PROBE_WINDOW)));
            let after = keyset.map_or(String::new(), |k| format!("WHERE {k} "));
            let within = if ascending { "<=" } else { ">=" };
            let bound = format!(
                "{column} {within} COALESCE((SELECT {column} FROM customers {after}{order} \
                 LIMIT 1 OFFSET {window}), {column})"
            );
            // A scalar subquery, which neither database turns into a join: one index probe
            // per customer of the window, in sort order, until the page is full.
            let low = b.bind(Bind::Text(low));
            let high = b.bind(Bind::Text(high));
            let probe = format!(
                "(SELECT 1 FROM customer_terms WHERE customer_id = customers.id \
                 AND term >= {low} AND term < {high} LIMIT 1) IS NOT NULL"
            );
            let limit = b.bind(Bind::Int(i64::from(query.limit) + 1));
            let filter = format!(
                "{filter}{}{bound} AND {probe} ",
                if filter.is_empty() { "WHERE " } else { "AND " }
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

fn q_condition(b: &mut Builder, filter: &CustomerFilter) {
    if let Some(q) = &filter.q {
        let (low, high) = prefix_range(q);
        let low = b.bind(Bind::Text(low));
        let high = b.bind(Bind::Text(high));
        b.conditions.push(format!(
            "id IN (SELECT customer_id FROM customer_terms WHERE term >= {low} AND term < {high})"
        ));
    }
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
        impl $crate::search::BackfillTx for sqlx::Transaction<'static, $db> {
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

/// The `(term, customer id)` pairs of these rows, as two parallel lists.
pub(crate) fn term_pairs(rows: &[CustomerRow<'_>]) -> (Vec<String>, Vec<String>) {
    let mut terms = Vec::new();
    let mut ids = Vec::new();
    for row in rows {
        let id = row.customer.id.to_string();
        for term in search_terms(row.customer) {
            terms.push(term);
            ids.push(id.clone());
        }
    }
    (terms, ids)
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
        };
        let page = page_sql(&query, Dialect::Sqlite, terms);
        let expected = [
            "created_at >= $1",
            "updated_at >= $2", // implied: never updated before created
            "email_norm = $3",
            "archived = 0",
            "term >= $4 AND term < $5",
            "(updated_at, id) < ($6, $7)",
            "ORDER BY updated_at DESC, id DESC LIMIT $8",
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
        };
        let page = page_sql(&query, Dialect::Postgres, probing);
        let expected = [
            "(created_at + 0) >= $1",
            "updated_at >= $2",
            "NOT archived",
            "updated_at >= COALESCE((SELECT updated_at FROM customers WHERE (updated_at, id) < ($4, $5)",
            "LIMIT 1 OFFSET $6",
            "term >= $7 AND term < $8 LIMIT 1) IS NOT NULL",
            "LIMIT $9",
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
}
