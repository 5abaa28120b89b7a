//! List and search SQL: the `WHERE` of every filter of `GET /v1/customers`, keyset pagination
//! for every sort, and the search terms written with each customer row. How a page is planned
//! is described in docs/search.md.

use clientele_domain::search::{
    LAST_NAME_FIELD, multiword, normalize_term, prefix_range, search_terms, searchable_fields,
    terms_of_fields,
};
use clientele_domain::{CustomerFilter, CustomerKey, ListQuery, SortKey, SortOrder};

use crate::primitives::{BatchTx, CustomerRow, CustomerTx, Queries, decode_customer, sort_key};
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

    /// A boolean literal of the term index's flags (`multiword`, `name_prefix`): literals, so
    /// that each query names the one key range it reads.
    fn flag(self, value: bool) -> &'static str {
        match (self, value) {
            (Dialect::Sqlite, true) => "1",
            (Dialect::Sqlite, false) => "0",
            (Dialect::Postgres, true) => "TRUE",
            (Dialect::Postgres, false) => "FALSE",
        }
    }

    /// Terms that may match `low`: the key ranges of its kind (see [`multiword`]), both values
    /// of `name_prefix` unless only the terms outside the last-name range are asked for, in
    /// the buckets of the last-name order or the archived customers that `terms` selects.
    fn term_kind(self, low: &str, outside_name_range: bool, terms: &TermFilter) -> String {
        let multiword = self.flag(multiword(low));
        let name_prefix = if outside_name_range {
            format!("name_prefix = {}", self.flag(false))
        } else {
            format!("name_prefix IN ({}, {})", self.flag(false), self.flag(true))
        };
        let within = match terms {
            TermFilter::Buckets(buckets) => buckets.condition(),
            // The condition of the partial index, as written there (SQLite needs it so).
            TermFilter::ArchivedOnly => self.archived(true).to_owned(),
        };
        format!("multiword = {multiword} AND {name_prefix} AND {within}")
    }

    /// The customer ids of a JSON array bound as text, as a subquery.
    fn id_list(self, json: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each({json})"),
            Dialect::Postgres => format!("SELECT jsonb_array_elements_text({json}::jsonb)"),
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
    /// Under `sort=last_name`, many matches outside the last-name range of `q`
    /// ([`Part::OutsideNameRange`]): read in last-name order from the term index alone, whose
    /// entries hold their customer's sort key, as candidates for the page's other filters (see
    /// [`name_order_candidates_sql`]). The sort order cannot be walked instead: those matches
    /// may all lie far from its start (first names that go with a few surnames).
    NameOrder,
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
    /// Under a time sort with a time window on the other column: the matches whose sort key
    /// lies on the window's side of its edge (see [`window_edge`]). Every customer never
    /// modified since its creation is here (its two times are equal), so the sort order's own
    /// index seeks to where these matches are.
    KeyInWindow,
    /// The other matches of that window: the sort key lies past the window's edge while the
    /// other time lies inside, so the two differ: these customers were modified since their
    /// creation, and their sort order is the partial index of modified customers.
    ModifiedOutsideWindow,
}

/// The condition of the partial indexes of customers modified since their creation (migration
/// 0010). SQLite uses a partial index only when the query has its condition as written there.
const MODIFIED: &str = "updated_at > created_at";

/// Buckets of the last-name order, by the first character of the sort key: every key of a
/// bucket sorts before every key of the next (byte order is code point order), so a term's
/// entries read bucket by bucket come in last-name order, and the first page of many matches
/// reads the first buckets only instead of every match ([`Strategy::NameOrder`]). The term index
/// holds each entry's bucket ahead of the term; a search of every bucket seeks each of them.
/// ASCII letters get one bucket each; the rest of the code points a few, in order.
pub(crate) const NAME_BUCKETS: i64 = 35;

/// The bucket of a last-name sort key (see [`NAME_BUCKETS`]): 0 for no last name.
pub(crate) fn name_bucket(last_name_sort: &str) -> i64 {
    let Some(first) = last_name_sort.chars().next() else {
        return 0;
    };
    match first {
        '\0'..='/' => 1,
        '0'..='9' => 2,
        ':'..='`' => 3,
        'a'..='z' => 4 + i64::from(u32::from(first) - u32::from('a')),
        '{'..='\u{7f}' => 30,
        // Latin-1 and Latin Extended (ä, ö, é, ł, ...), then IPA and Greek, then Cyrillic.
        '\u{80}'..='\u{24f}' => 31,
        '\u{250}'..='\u{3ff}' => 32,
        '\u{400}'..='\u{52f}' => 33,
        _ => 34,
    }
}

/// Which buckets of the last-name order a term query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Buckets(std::ops::RangeInclusive<i64>);

impl Buckets {
    pub(crate) fn all() -> Self {
        Buckets(0..=NAME_BUCKETS - 1)
    }

    /// A list of literals, not a range: each bucket is one seek to the term range within it
    /// (a range of buckets would be walked whole, the term checked on every entry).
    fn condition(&self) -> String {
        let list: Vec<String> = self.0.clone().map(|b| b.to_string()).collect();
        format!("name_bucket IN ({})", list.join(", "))
    }

    /// The groups of buckets a [`Strategy::NameOrder`] round reads, in order, from the bucket
    /// of the cursor's key: one, then four times as many each, so that a common prefix costs one
    /// query and a rare one a handful.
    pub(crate) fn groups_from(after: Option<&str>) -> impl Iterator<Item = Buckets> {
        let mut first = after.map_or(0, name_bucket);
        let mut width = 1;
        std::iter::from_fn(move || {
            if first >= NAME_BUCKETS {
                return None;
            }
            let last = (first + width - 1).min(NAME_BUCKETS - 1);
            let group = Buckets(first..=last);
            first = last + 1;
            width *= 4;
            Some(group)
        })
    }
}

/// Which term entries a term query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TermFilter {
    /// Those in these buckets of the last-name order, of every customer.
    Buckets(Buckets),
    /// Those of archived customers, through their partial index (migration 0014 on SQLite,
    /// 0013 on PostgreSQL): a query with `archived=true` counts and reads only these.
    ArchivedOnly,
}

impl TermFilter {
    /// Every term entry a query's other filters may keep.
    fn of(query: &ListQuery) -> Self {
        if query.filter.archived == Some(true) {
            TermFilter::ArchivedOnly
        } else {
            TermFilter::Buckets(Buckets::all())
        }
    }
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

    /// The parts of a page that is split at the edge of a time window on the other column than
    /// a time sort key ([`window_edge`]), in the order the sort walks them: a wide window (a
    /// narrow one is read through its own index), not when the term index drives the query
    /// (few matches of `q`, read and sorted wherever they are). Walking the sort order alone
    /// would meet, before or after the matches, every customer on the other side of the edge,
    /// since the two times are equal until a customer is modified.
    pub fn window_parts(&self, query: &ListQuery) -> Option<[Part; 2]> {
        let split = self.wide_window && (query.filter.q.is_none() || self.q == Strategy::Probe);
        window_edge(query).filter(|_| split)?;
        use Part::{KeyInWindow, ModifiedOutsideWindow};
        // The modified customers lie past the window's edge: after it by `updated_at`
        // (`created_before`), before it by `created_at` (`updated_after`).
        Some(match query.sort {
            SortOrder::UpdatedAsc | SortOrder::CreatedDesc => [KeyInWindow, ModifiedOutsideWindow],
            _ => [ModifiedOutsideWindow, KeyInWindow],
        })
    }
}

/// The time bounds of a query, `[from, before)` per column.
struct TimeBounds {
    created: (Option<i64>, Option<i64>),
    updated: (Option<i64>, Option<i64>),
}

impl TimeBounds {
    /// The bounds the filters give, none implied.
    fn given(filter: &CustomerFilter) -> Self {
        let micros = |t: Option<clientele_domain::Timestamp>| t.map(|t| t.as_micros());
        TimeBounds {
            created: (micros(filter.created_after), micros(filter.created_before)),
            updated: (micros(filter.updated_after), micros(filter.updated_before)),
        }
    }

    /// Each bound as tight as the filters make it: since a customer is never updated before it
    /// was created, `created_after` also bounds `updated_at` and `updated_before` also bounds
    /// `created_at`, so either index can seek to where the matches begin.
    fn of(filter: &CustomerFilter) -> Self {
        let TimeBounds {
            created: (ca, cb),
            updated: (ua, ub),
        } = Self::given(filter);
        TimeBounds {
            created: (ca, cb.into_iter().chain(ub).min()),
            updated: (ua.into_iter().chain(ca).max(), ub),
        }
    }
}

/// The edge of a time window on the column that is not the (time) sort key, where the sort key's
/// own bounds do not already stop: `created_before` under an `updated_at` sort, `updated_after`
/// under a `created_at` sort. A customer past the edge by its sort key but inside the window by
/// its other time was modified since its creation. The other edge of such a window needs no
/// split: it bounds the sort key too (see [`TimeBounds`]).
fn window_edge(query: &ListQuery) -> Option<i64> {
    let bounds = TimeBounds::of(&query.filter);
    match sort_column(query.sort).0 {
        "updated_at" => {
            let edge = bounds.created.1?;
            let implied = bounds.updated.1.is_some_and(|before| before <= edge);
            (!implied).then_some(edge)
        }
        "created_at" => {
            let edge = bounds.updated.0?;
            let implied = bounds.created.0.is_some_and(|from| from >= edge);
            (!implied).then_some(edge)
        }
        _ => None,
    }
}

/// The time conditions of a page query: the query's [`TimeBounds`], the sort key's narrowed to
/// a [`Part`]'s side of a split window's edge, and for [`Part::ModifiedOutsideWindow`] the
/// condition of the partial indexes of modified customers.
fn part_time_conditions(b: &mut Builder, query: &ListQuery, part: Part) {
    let mut bounds = TimeBounds::of(&query.filter);
    let split = matches!(part, Part::KeyInWindow | Part::ModifiedOutsideWindow);
    let edge = window_edge(query).filter(|_| split);
    if let Some(edge) = edge {
        let inside = part == Part::KeyInWindow;
        // On the window's side of the edge, the edge is the tighter bound (else it would be
        // implied, and no split made); past it, the tighter of the edge and the sort key's own.
        match (sort_column(query.sort).0, inside) {
            ("updated_at", true) => bounds.updated.1 = Some(edge),
            ("updated_at", false) => bounds.updated.0 = bounds.updated.0.max(Some(edge)),
            ("created_at", true) => bounds.created.0 = Some(edge),
            _ => bounds.created.1 = Some(bounds.created.1.map_or(edge, |b| b.min(edge))),
        }
    }
    time_conditions(b, &bounds);
    if edge.is_some() && part == Part::ModifiedOutsideWindow {
        b.conditions.push(MODIFIED.to_owned());
    }
}

/// Customers counted, at most, in a time window to tell whether it is wide.
const WIDE_WINDOW: i64 = 3_000;

/// `SELECT COUNT(*)` of the customers in the query's time windows on columns other than its
/// sort key, as given (a bound only implied by the sort key's own is no window to count), up to
/// [`WIDE_WINDOW`], and that cap; `None` when there are no such windows.
pub(crate) fn window_count_sql(query: &ListQuery) -> Option<(PageSql, i64)> {
    let (column, _) = sort_column(query.sort);
    let mut b = Builder {
        skipped: Some(column),
        ..Builder::default()
    };
    time_conditions(&mut b, &TimeBounds::given(&query.filter));
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
/// [`PROBE_FROM_MATCHES`], and that cap; `None` without `q`. An index-only scan of one key range
/// of the term index (two for every match: both values of `name_prefix`) on both backends.
pub(crate) fn count_matches_sql(
    query: &ListQuery,
    dialect: Dialect,
    part: Part,
) -> Option<(PageSql, i64)> {
    let (low, high) = prefix_range(query.filter.q.as_deref()?);
    let kind = dialect.term_kind(&low, part == Part::OutsideNameRange, &TermFilter::of(query));
    let page = PageSql {
        sql: format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM customer_terms \
             WHERE {kind} AND term >= $1 AND term < $2 LIMIT $3) AS m"
        ),
        binds: vec![
            Bind::Text(low),
            Bind::Text(high),
            Bind::Int(PROBE_FROM_MATCHES),
        ],
    };
    Some((page, PROBE_FROM_MATCHES))
}

/// Candidates of a [`Strategy::NameOrder`] page, fetched at most, first; each round that the
/// page's other filters leave unfilled asks for [`NAME_ORDER_GROWTH`] times more, after the last.
pub(crate) const NAME_ORDER_ROUNDS: usize = 3;
pub(crate) const NAME_ORDER_GROWTH: i64 = 8;

/// The `(last_name_sort, customer_id)` of the first `count` term entries of `q` outside its
/// last-name range within `buckets`, in last-name order, after `after` (the cursor, then the
/// last candidate of the previous round): an index-only range scan of the term range in each
/// bucket and a bounded sort, with no customer row read. A customer with several such terms comes once per
/// term, next to itself. Customers inside the last-name range are among them (one of their
/// other terms may match too): the caller skips those, since a condition here would cost as
/// much as the rest of the scan (measured: 45 against 20 ms for 185,000 entries).
pub(crate) fn name_order_candidates_sql(
    query: &ListQuery,
    dialect: Dialect,
    after: Option<(&str, &str)>,
    buckets: &Buckets,
    count: i64,
) -> Option<PageSql> {
    let (low, high) = prefix_range(query.filter.q.as_deref()?);
    let kind = dialect.term_kind(&low, true, &TermFilter::Buckets(buckets.clone()));
    let mut b = Builder::default();
    let low = b.bind(Bind::Text(low));
    let high = b.bind(Bind::Text(high));
    let mut conditions = vec![kind, format!("term >= {low} AND term < {high}")];
    if let Some((key, id)) = after {
        let key = b.bind(Bind::Text(key.to_owned()));
        let id = b.bind(Bind::Text(id.to_owned()));
        conditions.push(format!("(last_name_sort, customer_id) > ({key}, {id})"));
    }
    let count = b.bind(Bind::Int(count));
    Some(PageSql {
        sql: format!(
            "SELECT last_name_sort, customer_id FROM customer_terms WHERE {} \
             ORDER BY last_name_sort, customer_id LIMIT {count}",
            conditions.join(" AND ")
        ),
        binds: b.binds,
    })
}

/// The customers among `candidates` (a JSON array of ids) that pass the page's other filters,
/// in sort order, at most `limit`: a [`Strategy::NameOrder`] round.
pub(crate) fn name_order_page_sql(
    query: &ListQuery,
    dialect: Dialect,
    plan: Plan,
    candidates: String,
    limit: i64,
) -> PageSql {
    // Time conditions as expressions: the candidates, not a time index, drive the query.
    let mut b = Builder {
        unindexed: Some("last_name_sort"),
        ..Builder::default()
    };
    b.page_filters(query, dialect, plan.part);
    let list = b.bind(Bind::Text(candidates));
    b.conditions
        .push(format!("id IN ({})", dialect.id_list(&list)));
    let limit = b.bind(Bind::Int(limit));
    // Sorted by an expression: a planner must not walk the sort order looking for the few.
    PageSql {
        sql: format!(
            "SELECT {PAGE_COLUMNS} FROM customers WHERE {} \
             ORDER BY last_name_sort || '' ASC, id ASC LIMIT {limit}",
            b.conditions.join(" AND ")
        ),
        binds: b.binds,
    }
}

/// The columns of a page query's rows, in the order the store decodes them.
const PAGE_COLUMNS: &str = "id, version, doc, created_at, updated_at, last_name_sort";

#[derive(Default)]
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

    /// Every filter of a page but `q`: a part's time conditions, the other filters, and tags,
    /// groups, teams and the caller's team scope.
    fn page_filters(&mut self, query: &ListQuery, dialect: Dialect, part: Part) {
        part_time_conditions(self, query, part);
        filter_conditions(self, &query.filter, dialect);
        let (memberships, texts) =
            crate::directory::membership_conditions(query, self.binds.len() + 1);
        self.conditions.extend(memberships);
        self.binds.extend(texts.into_iter().map(Bind::Text));
    }

    fn time(&mut self, column: &str, op: &str, micros: Option<i64>) {
        let wanted = self.skipped != Some(column) && self.only.is_none_or(|only| only == column);
        if let Some(micros) = micros.filter(|_| wanted) {
            let p = self.bind(Bind::Int(micros));
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
    // Walking the modified customers past a window's edge, PostgreSQL checks the window on the
    // other time inside the partial index (which holds it) only when the condition is on the
    // column itself; SQLite checks it there before reading the row either way, and given the
    // column it may choose to read the whole window and sort it instead.
    let index_checks_other_time =
        plan.part == Part::ModifiedOutsideWindow && dialect == Dialect::Postgres;
    let mut b = Builder {
        unindexed: (plan.wide_window && !index_checks_other_time).then_some(column),
        ..Builder::default()
    };
    b.page_filters(query, dialect, plan.part);
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
        q_condition(
            &mut b,
            dialect,
            plan.part,
            &TermFilter::of(query),
            (low, high),
        );
    }
    let keyset = keyset_condition(&mut b, query);
    b.conditions.extend(keyset.clone());
    let filter = if b.conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", b.conditions.join(" AND "))
    };
    let order = format!("ORDER BY {column} {direction}, id {direction}");
    let columns = PAGE_COLUMNS;
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
            // What the walk passes: the customers, or on PostgreSQL a window of them.
            let mut walked = "customers".to_owned();
            let mut conditions = Vec::new();
            if plan.part != Part::NameRange {
                match dialect {
                    Dialect::Sqlite => {
                        let end = window(&mut b, query, dialect, plan.part, keyset, Window::End);
                        // Without a window's end (fewer customers left), the last key: a bound
                        // that is not a NULL keeps the condition an index range, so the walk
                        // stops there.
                        let (within, last) = if direction == "ASC" {
                            ("<=", "MAX")
                        } else {
                            (">=", "MIN")
                        };
                        conditions.push(format!(
                            "{column} {within} COALESCE(({end}), \
                             (SELECT {last}({column}) FROM customers))"
                        ));
                    }
                    // The window's first customers, read as the page needs them: the window's
                    // end is not sought first (30,000 index entries, half of a page's time).
                    // Named `customers`, so that the page's conditions apply to it as written.
                    Dialect::Postgres => {
                        let walk =
                            window(&mut b, query, dialect, plan.part, keyset, Window::Customers);
                        walked = format!("({walk}) AS customers");
                    }
                }
            }
            // A scalar subquery, which neither database turns into a join: one index probe
            // per customer walked, in sort order, until the page is full.
            let multiword = dialect.flag(multiword(low));
            let low = b.bind(Bind::Text(low.clone()));
            let high = b.bind(Bind::Text(high.clone()));
            conditions.push(format!(
                "(SELECT 1 FROM customer_terms WHERE customer_id = customers.id \
                 AND multiword = {multiword} AND term >= {low} AND term < {high} LIMIT 1) \
                 IS NOT NULL"
            ));
            let limit = limit(&mut b);
            let filter = format!(
                "{filter}{}{} ",
                if filter.is_empty() { "WHERE " } else { "AND " },
                conditions.join(" AND ")
            );
            match dialect {
                Dialect::Sqlite => {
                    format!("SELECT {columns} FROM customers {filter}{order} LIMIT {limit}")
                }
                // PostgreSQL checks a filter in the index only in an index-only scan, so a walk
                // that selects the row reads every customer it passes. The walk selects ids
                // (the sort index holds them, and the probe needs nothing else), and only the
                // page's rows are read.
                Dialect::Postgres => format!(
                    "SELECT {columns} FROM customers WHERE id IN \
                     (SELECT id FROM {walked} {filter}{order} LIMIT {limit}) {order}"
                ),
            }
        }
    };
    PageSql {
        sql,
        binds: b.binds,
    }
}

/// The `SELECT` of where a probing page's window ends ([`window`]): no row when the window
/// reaches the end of the walk, so that the probe has seen every candidate and its rows are all
/// the matches, even fewer than a page. `None` for a part probed without a window.
pub(crate) fn window_end_sql(query: &ListQuery, dialect: Dialect, part: Part) -> Option<PageSql> {
    if part == Part::NameRange {
        return None;
    }
    let mut b = Builder::default();
    let keyset = keyset_condition(&mut b, query);
    let sql = window(&mut b, query, dialect, part, keyset, Window::End);
    Some(PageSql {
        sql,
        binds: b.binds,
    })
}

/// `(sort key, id)` past the cursor, binding its values.
fn keyset_condition(b: &mut Builder, query: &ListQuery) -> Option<String> {
    let (column, direction) = sort_column(query.sort);
    let after = query.after.as_ref()?;
    let key = b.bind(match &after.key {
        SortKey::Time(t) => Bind::Int(*t),
        SortKey::Text(t) => Bind::Text(t.clone()),
    });
    let id = b.bind(Bind::Text(after.id.to_string()));
    let compare = if direction == "ASC" { ">" } else { "<" };
    Some(format!("({column}, id) {compare} ({key}, {id})"))
}

/// What a query of a probing page's window selects.
#[derive(Clone, Copy)]
enum Window {
    /// The sort key where it ends: no row when fewer customers are left.
    End,
    /// Its customers, in sort order.
    Customers,
}

/// The window of a probing page: the first [`PROBE_WINDOW`] customers of the walk (archived ones
/// only, through their small index, when only they are asked for; modified ones only, through
/// theirs, for [`Part::ModifiedOutsideWindow`]). It starts where the walk does: after the cursor
/// (`keyset`, bound already), within the time conditions on the sort key itself and the part's
/// side of a window's edge. Its end is found by one index-only walk of the whole window (nothing
/// is materialized); a query that filters its customers stops reading them when its page is
/// full.
fn window(
    b: &mut Builder,
    query: &ListQuery,
    dialect: Dialect,
    part: Part,
    keyset: Option<String>,
    selects: Window,
) -> String {
    let (column, direction) = sort_column(query.sort);
    let window = b.bind(Bind::Int(i64::from(PROBE_WINDOW)));
    let mark = b.conditions.len();
    (b.only, b.unindexed) = (Some(column), None);
    part_time_conditions(b, query, part);
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
    let (select, limit) = match selects {
        Window::End => (column, format!("LIMIT 1 OFFSET {window}")),
        Window::Customers => ("*", format!("LIMIT {window}")),
    };
    format!(
        "SELECT {select} FROM customers {after}ORDER BY {column} {direction}, id {direction} \
         {limit}"
    )
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

fn time_conditions(b: &mut Builder, bounds: &TimeBounds) {
    b.time("created_at", ">=", bounds.created.0);
    b.time("created_at", "<", bounds.created.1);
    b.time("updated_at", ">=", bounds.updated.0);
    b.time("updated_at", "<", bounds.updated.1);
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
        let term = normalize_term(phone);
        let kind = dialect.term_kind(&term, false, &TermFilter::Buckets(Buckets::all()));
        let term = b.bind(Bind::Text(term));
        let exact = b.bind(Bind::Text(phone.clone()));
        b.conditions.push(format!(
            "id IN (SELECT customer_id FROM customer_terms WHERE {kind} AND term = {term}) \
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
        Part::All | Part::KeyInWindow | Part::ModifiedOutsideWindow => return,
        Part::NameRange => "last_name_sort >= {low} AND last_name_sort < {high}",
        // Not an OR of two ranges, which a planner may read as two index scans and sort.
        Part::OutsideNameRange => "NOT (last_name_sort >= {low} AND last_name_sort < {high})",
    };
    let low = b.bind(Bind::Text(low.to_owned()));
    let high = b.bind(Bind::Text(high.to_owned()));
    b.conditions
        .push(condition.replace("{low}", &low).replace("{high}", &high));
}

fn q_condition(
    b: &mut Builder,
    dialect: Dialect,
    part: Part,
    terms: &TermFilter,
    (low, high): (&str, &str),
) {
    let kind = dialect.term_kind(low, part == Part::OutsideNameRange, terms);
    let low = b.bind(Bind::Text(low.to_owned()));
    let high = b.bind(Bind::Text(high.to_owned()));
    b.conditions.push(format!(
        "id IN (SELECT customer_id FROM customer_terms \
         WHERE {kind} AND term >= {low} AND term < {high})"
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
        impl $crate::search::BackfillTx for sqlx::Transaction<'static, $db> {
            async fn terms_backfill_pending(
                &mut self,
            ) -> Result<bool, clientele_domain::DomainError> {
                let pending: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM customer_terms_backfill WHERE NOT done OR version <> $1",
                )
                .bind($crate::search::TERM_ROWS_VERSION)
                .fetch_one(&mut **self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(pending > 0)
            }

            async fn finish_terms_backfill(&mut self) -> Result<(), clientele_domain::DomainError> {
                sqlx::query("UPDATE customer_terms_backfill SET done = (1 = 1), version = $1")
                    .bind($crate::search::TERM_ROWS_VERSION)
                    .execute(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                Ok(())
            }
        }
    };
}

pub(crate) use backfill_primitives;

/// The version of how term rows are derived from a customer ([`term_rows`]: which terms, and
/// every column beside them). An update deletes the rows of the terms it removes by recomputing
/// them from the stored customer ([`TermSource::change_to`]), so the stored rows must be the
/// ones this code derives: a database whose rows another version wrote has them all rebuilt
/// at the next start ([`backfill_terms`]). Bump it with any change of the derivation; the test
/// `the_derivation_of_term_rows_is_pinned` fails until then.
pub(crate) const TERM_ROWS_VERSION: i64 = 1;

/// Indexes the search terms of every stored customer anew, 1000 per transaction, when they are
/// due: after a migration that added or dropped term rows' columns (it clears a flag), or when
/// the stored rows follow another [`TERM_ROWS_VERSION`]. New writes index their own terms
/// meanwhile; rewriting a customer's terms twice is harmless.
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

/// What a customer's term rows are made of, owned: its searchable fields (the terms, and the
/// last name whose sort key each row carries, with the flags and bucket that follow from it)
/// and whether it is archived, which each row carries too.
pub(crate) struct TermSource {
    fields: [Option<String>; 8],
    archived: bool,
}

/// How an update changes a customer's term rows.
#[derive(Debug, PartialEq)]
pub(crate) enum TermChange {
    /// Every row stays as it is.
    Kept,
    /// Only these terms go and come: every other column of the rows follows the last name and
    /// `archived`, which stay.
    Terms {
        removed: Vec<String>,
        added: Vec<String>,
    },
    /// Every row changes: the last name's sort key or `archived` changed, which each row
    /// carries.
    All,
}

impl TermSource {
    pub(crate) fn of(customer: &clientele_domain::Customer) -> Self {
        TermSource {
            fields: searchable_fields(customer).map(|field| field.map(str::to_owned)),
            archived: customer.archived,
        }
    }

    /// How the term rows this source made change when the customer becomes `next`. The rows
    /// are derived from these fields alone ([`TERM_ROWS_VERSION`]), so the rows to delete are
    /// known without reading them.
    pub(crate) fn change_to(&self, next: &clientele_domain::Customer) -> TermChange {
        let stored = self.fields.each_ref().map(Option::as_deref);
        let next_fields = searchable_fields(next);
        if self.archived != next.archived {
            return TermChange::All;
        }
        if stored == next_fields {
            return TermChange::Kept;
        }
        let (stored_last, next_last) = (stored[LAST_NAME_FIELD], next_fields[LAST_NAME_FIELD]);
        if stored_last != next_last && sort_key(stored_last) != sort_key(next_last) {
            return TermChange::All;
        }
        let before = terms_of_fields(stored);
        let after = terms_of_fields(next_fields);
        let missing_from = |terms: &[String], other: &[String]| -> Vec<String> {
            terms
                .iter()
                .filter(|term| other.binary_search(term).is_err())
                .cloned()
                .collect()
        };
        let removed = missing_from(&before, &after);
        let added = missing_from(&after, &before);
        if removed.is_empty() && added.is_empty() {
            TermChange::Kept
        } else {
            TermChange::Terms { removed, added }
        }
    }
}

/// The terms an update removes from one customer's rows and adds to them
/// ([`TermChange::Terms`]).
pub(crate) struct TermEdit<'a> {
    pub row: &'a CustomerRow<'a>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

impl TermEdit<'_> {
    /// The `(customer_id, term)` pairs of the rows to delete, as parallel lists.
    pub(crate) fn removed_rows(edits: &[TermEdit<'_>]) -> (Vec<String>, Vec<String>) {
        let mut ids = Vec::new();
        let mut terms = Vec::new();
        for edit in edits {
            let id = edit.row.customer.id.to_string();
            for term in &edit.removed {
                ids.push(id.clone());
                terms.push(term.clone());
            }
        }
        (ids, terms)
    }

    /// The rows to insert.
    pub(crate) fn added_rows<'a>(edits: &'a [TermEdit<'a>]) -> TermRows<'a> {
        let mut rows = TermRows::default();
        for edit in edits {
            rows.push(edit.row, edit.added.iter().cloned());
        }
        rows
    }
}

/// The rows of `customer_terms` for these customers, as parallel lists.
#[derive(Default)]
pub(crate) struct TermRows<'a> {
    pub terms: Vec<String>,
    pub ids: Vec<String>,
    /// Whether the term holds whitespace (see [`multiword`]).
    pub multiword: Vec<bool>,
    /// Whether the term is a prefix of the customer's last-name sort key (see [`Part`]).
    pub name_prefix: Vec<bool>,
    /// The customer's last-name sort key: its matches are read in last-name order from the
    /// term index alone ([`Strategy::NameOrder`]).
    pub last_name_sort: Vec<&'a str>,
    /// The bucket of that key ([`name_bucket`]), computed once per customer.
    pub name_bucket: Vec<i64>,
    /// Whether the customer is archived: `archived=true` reads the terms of archived customers
    /// from a partial index of their own ([`TermFilter::ArchivedOnly`]).
    pub archived: Vec<bool>,
}

impl<'a> TermRows<'a> {
    /// Adds the rows of these terms of one customer.
    fn push(&mut self, row: &'a CustomerRow<'_>, terms: impl IntoIterator<Item = String>) {
        let id = row.customer.id.to_string();
        let bucket = name_bucket(&row.last_name_sort);
        for term in terms {
            self.name_prefix
                .push(row.last_name_sort.starts_with(term.as_str()));
            self.multiword.push(multiword(&term));
            self.terms.push(term);
            self.ids.push(id.clone());
            self.last_name_sort.push(&row.last_name_sort);
            self.name_bucket.push(bucket);
            self.archived.push(row.customer.archived);
        }
    }
}

/// Every term row of these customers.
pub(crate) fn term_rows<'a>(rows: &'a [CustomerRow<'_>]) -> TermRows<'a> {
    let mut out = TermRows::default();
    for row in rows {
        out.push(row, search_terms(row.customer));
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
        assert_has(&page, &expected);
        assert_eq!(page.binds.len(), 8);
        assert_eq!(page.binds[2], Bind::Text("a@b.c".into()));
        assert_eq!(page.binds[7], Bind::Int(11));

        let probing = Plan {
            q: Strategy::Probe,
            wide_window: true,
            part: Part::All,
        };
        // SQLite: the walk is bounded by the key where the window ends.
        let page = page_sql(&query, Dialect::Sqlite, probing);
        let expected = [
            "(created_at + 0) >= $1",
            "updated_at >= $2",
            "archived = 0",
            "updated_at >= COALESCE((SELECT updated_at FROM customers \
             WHERE updated_at >= $7 AND (updated_at, id) < ($4, $5) ORDER BY",
            "LIMIT 1 OFFSET $6), (SELECT MIN(updated_at) FROM customers))",
            "term >= $8 AND term < $9 LIMIT 1) IS NOT NULL",
            "ORDER BY updated_at DESC, id DESC LIMIT $10",
        ];
        assert_has(&page, &expected);
        // PostgreSQL: the walk reads the window's customers as the page needs them, selecting
        // ids (an index-only scan), and only the page's rows are read.
        let page = page_sql(&query, Dialect::Postgres, probing);
        let expected = [
            "SELECT id, version, doc, created_at, updated_at, last_name_sort FROM customers \
             WHERE id IN (SELECT id FROM (SELECT * FROM customers \
             WHERE updated_at >= $7 AND (updated_at, id) < ($4, $5) \
             ORDER BY updated_at DESC, id DESC LIMIT $6) AS customers WHERE",
            "(created_at + 0) >= $1",
            "updated_at >= $2",
            "NOT archived",
            "term >= $8 AND term < $9 LIMIT 1) IS NOT NULL",
            "LIMIT $10) ORDER BY updated_at DESC, id DESC",
        ];
        assert_has(&page, &expected);
        assert!(!page.sql.contains("OFFSET"), "{}", page.sql);
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
        assert_has(
            &range,
            &[
                "last_name_sort >= $1 AND last_name_sort < $2",
                "term >= $3 AND term < $4 LIMIT 1) IS NOT NULL",
                "WHERE archived AND",
            ],
        );
        assert!(!range.sql.contains("OFFSET"), "{}", range.sql);
        assert_eq!(range.binds[0], Bind::Text("vir".into()));

        // The rest, when many: candidates in last-name order from the term index alone, past
        // the cursor, outside the range, of the query's kind of term...
        let buckets = Buckets::groups_from(Some("aalto"))
            .nth(1)
            .expect("a second group");
        let candidates = name_order_candidates_sql(
            &query,
            Dialect::Sqlite,
            Some(("aalto", "cus_1")),
            &buckets,
            88,
        )
        .expect("q");
        assert_has(
            &candidates,
            &[
                "FROM customer_terms WHERE multiword = 0 AND name_prefix = 0 \
             AND name_bucket IN (5, 6, 7, 8)",
                "term >= $1 AND term < $2 AND (last_name_sort, customer_id) > ($3, $4)",
                "ORDER BY last_name_sort, customer_id LIMIT $5",
            ],
        );
        assert_eq!(candidates.binds[4], Bind::Int(88));
        let spaced = ListQuery {
            filter: CustomerFilter {
                q: Some("vir ta".into()),
                ..query.filter.clone()
            },
            ..query.clone()
        };
        let candidates =
            name_order_candidates_sql(&spaced, Dialect::Postgres, None, &Buckets::all(), 11)
                .expect("q");
        assert!(
            candidates
                .sql
                .contains("multiword = TRUE AND name_prefix = FALSE AND name_bucket IN (0, 1, 2,"),
            "{}",
            candidates.sql
        );
        // ... then the customers among them that pass the other filters, sorted.
        let others = name_order_page_sql(
            &query,
            Dialect::Postgres,
            Plan {
                q: Strategy::NameOrder,
                part: Part::OutsideNameRange,
                ..plan
            },
            r#"["cus_1"]"#.into(),
            7,
        );
        assert_has(
            &others,
            &[
                "WHERE archived AND id IN (SELECT jsonb_array_elements_text($1::jsonb))",
                "ORDER BY last_name_sort || '' ASC, id ASC LIMIT $2",
            ],
        );
        // When few, read through the terms that are not a prefix of their customer's sort key.
        let few_of = |query: &ListQuery| {
            let terms = Plan {
                q: Strategy::Terms,
                part: Part::OutsideNameRange,
                ..plan
            };
            page_sql(query, Dialect::Sqlite, terms)
        };
        let few = few_of(&query);
        // With `archived=true`, the terms of archived customers only, in their partial index.
        assert_has(
            &few,
            &[
                "WHERE multiword = 0 AND name_prefix = 0 AND archived = 1 AND term >= $3 \
             AND term < $4)",
                "ORDER BY last_name_sort || '' ASC, id ASC",
            ],
        );
        let (count, _) =
            count_matches_sql(&query, Dialect::Sqlite, Part::OutsideNameRange).expect("q");
        assert!(
            count.sql.contains(
                "WHERE multiword = 0 AND name_prefix = 0 AND archived = 1 AND term >= $1"
            ),
            "{}",
            count.sql
        );
        // Otherwise those of every customer, in every bucket.
        let any = ListQuery {
            filter: CustomerFilter {
                archived: Some(false),
                ..query.filter.clone()
            },
            ..query.clone()
        };
        let few = few_of(&any);
        assert_has(
            &few,
            &[
                "WHERE multiword = 0 AND name_prefix = 0 AND name_bucket IN (0, 1, 2, ",
                "31, 32, 33, 34) AND term >= $3 AND term < $4)",
            ],
        );
        let (count, _) = count_matches_sql(&any, Dialect::Postgres, Part::All).expect("q");
        assert!(
            count
                .sql
                .contains("multiword = FALSE AND name_prefix IN (FALSE, TRUE) AND name_bucket IN"),
            "{}",
            count.sql
        );
        let (count, _) = count_matches_sql(&query, Dialect::Postgres, Part::All).expect("q");
        assert!(
            count
                .sql
                .contains("multiword = FALSE AND name_prefix IN (FALSE, TRUE) AND archived AND"),
            "{}",
            count.sql
        );
    }

    fn window_query(sort: SortOrder, filter: CustomerFilter) -> ListQuery {
        ListQuery {
            limit: 10,
            sort,
            after: None,
            filter,
            scope: Scope::All,
        }
    }

    fn at(micros: i64) -> Option<Timestamp> {
        Some(Timestamp::from_micros(micros))
    }

    const WIDE: Plan = Plan {
        q: Strategy::Terms,
        wide_window: true,
        part: Part::All,
    };

    fn assert_has(page: &PageSql, parts: &[&str]) {
        for part in parts {
            assert!(page.sql.contains(part), "{part}: {}", page.sql);
        }
    }

    #[test]
    fn a_wide_window_on_the_other_time_column_splits_at_its_edge_in_walk_order() {
        use Part::{KeyInWindow, ModifiedOutsideWindow};
        // created_before under -updated_at: the modified customers come first (updated later).
        let query = window_query(
            SortOrder::UpdatedDesc,
            CustomerFilter {
                created_before: at(500),
                ..CustomerFilter::default()
            },
        );
        assert_eq!(
            WIDE.window_parts(&query),
            Some([ModifiedOutsideWindow, KeyInWindow])
        );
        let part = |part| Plan { part, ..WIDE };
        let inside = page_sql(&query, Dialect::Sqlite, part(KeyInWindow));
        assert_has(
            &inside,
            &[
                "WHERE (created_at + 0) < $1 AND updated_at < $2 ORDER BY updated_at DESC",
                "LIMIT $3",
            ],
        );
        assert!(!inside.sql.contains(MODIFIED), "{}", inside.sql);
        assert_eq!(inside.binds[1], Bind::Int(500));
        let modified = page_sql(&query, Dialect::Sqlite, part(ModifiedOutsideWindow));
        assert_has(
            &modified,
            &["WHERE (created_at + 0) < $1 AND updated_at >= $2 AND updated_at > created_at "],
        );
        assert_eq!(modified.binds[1], Bind::Int(500));
        // The opposite direction of the same sort walks the parts the other way round.
        let parts_sorted_by = |query: &ListQuery, sort| {
            WIDE.window_parts(&ListQuery {
                sort,
                ..query.clone()
            })
        };
        assert_eq!(
            parts_sorted_by(&query, SortOrder::UpdatedAsc),
            Some([KeyInWindow, ModifiedOutsideWindow])
        );

        // updated_after under created_at: the modified customers come first (created earlier).
        let query = window_query(
            SortOrder::CreatedAsc,
            CustomerFilter {
                updated_after: at(500),
                updated_before: at(900),
                ..CustomerFilter::default()
            },
        );
        assert_eq!(
            WIDE.window_parts(&query),
            Some([ModifiedOutsideWindow, KeyInWindow])
        );
        let inside = page_sql(&query, Dialect::Postgres, part(KeyInWindow));
        assert_has(
            &inside,
            &[
                "WHERE created_at >= $1 AND created_at < $2 AND (updated_at + 0) >= $3 \
               AND (updated_at + 0) < $4 ORDER BY created_at ASC",
            ],
        );
        // One bound per side of the sort key: the edge, tighter than updated_before's. The
        // window on the other time as an expression on SQLite (which checks it in the index
        // anyway), on the column for PostgreSQL (which checks only that in the index).
        let modified = page_sql(&query, Dialect::Sqlite, part(ModifiedOutsideWindow));
        assert_has(
            &modified,
            &[
                "WHERE created_at < $1 AND (updated_at + 0) >= $2 AND (updated_at + 0) < $3 \
               AND updated_at > created_at ORDER BY created_at ASC",
            ],
        );
        assert_eq!(modified.binds[..3], [500, 500, 900].map(Bind::Int));
        let modified = page_sql(&query, Dialect::Postgres, part(ModifiedOutsideWindow));
        assert_has(
            &modified,
            &[
                "WHERE created_at < $1 AND updated_at >= $2 AND updated_at < $3 \
               AND updated_at > created_at ORDER BY created_at ASC",
            ],
        );
        assert_eq!(
            parts_sorted_by(&query, SortOrder::CreatedDesc),
            Some([KeyInWindow, ModifiedOutsideWindow])
        );
        // Unsplit, the same query has no part conditions.
        let whole = page_sql(&query, Dialect::Postgres, WIDE);
        assert!(!whole.sql.contains(MODIFIED), "{}", whole.sql);
    }

    #[test]
    fn a_window_is_not_split_where_the_sort_key_alone_finds_its_matches() {
        let filter =
            |created_after, created_before, updated_after, updated_before| CustomerFilter {
                created_after,
                created_before,
                updated_after,
                updated_before,
                ..CustomerFilter::default()
            };
        let unsplit = [
            // The other edge bounds the sort key too (never updated before created).
            (SortOrder::UpdatedDesc, filter(at(5), None, None, None)),
            (SortOrder::CreatedAsc, filter(None, None, None, at(5))),
            // The sort key's own bound is as tight as the edge.
            (SortOrder::UpdatedDesc, filter(None, at(5), None, at(5))),
            (SortOrder::CreatedAsc, filter(at(5), None, at(5), None)),
            // A window on the sort key's own column only.
            (SortOrder::CreatedAsc, filter(None, at(5), None, None)),
            // Not a time sort.
            (SortOrder::LastNameAsc, filter(None, at(5), at(1), None)),
        ];
        for (sort, filter) in unsplit {
            let query = window_query(sort, filter);
            assert_eq!(WIDE.window_parts(&query), None, "{query:?}");
        }
        let split = window_query(SortOrder::UpdatedDesc, filter(at(1), at(5), None, at(6)));
        assert!(WIDE.window_parts(&split).is_some());
        // A narrow window is read through its own index.
        let narrow = Plan {
            wide_window: false,
            ..WIDE
        };
        assert_eq!(narrow.window_parts(&split), None);
        // Few matches of q: the term index drives the query. Many: the sort order is probed.
        let q = ListQuery {
            filter: CustomerFilter {
                q: Some("sa".into()),
                ..split.filter.clone()
            },
            ..split
        };
        assert_eq!(WIDE.window_parts(&q), None);
        let probe = Plan {
            q: Strategy::Probe,
            ..WIDE
        };
        assert!(probe.window_parts(&q).is_some());
    }

    #[test]
    fn a_probed_part_of_a_split_window_walks_only_its_side_and_its_customers() {
        let query = ListQuery {
            after: Some(Cursor {
                key: SortKey::Time(900),
                id: CustomerId::new(),
            }),
            ..window_query(
                SortOrder::UpdatedDesc,
                CustomerFilter {
                    created_before: at(500),
                    archived: Some(true),
                    q: Some("sa".into()),
                    ..CustomerFilter::default()
                },
            )
        };
        let probe = |part| Plan {
            q: Strategy::Probe,
            wide_window: true,
            part,
        };
        let modified = page_sql(&query, Dialect::Sqlite, probe(Part::ModifiedOutsideWindow));
        // The window counts the modified customers past the edge and after the cursor.
        let walked = "SELECT updated_at FROM customers WHERE updated_at >= $6 \
                      AND updated_at > created_at AND (updated_at, id) < ($3, $4) \
                      AND archived = 1 ORDER BY updated_at DESC, id DESC LIMIT 1 OFFSET $5";
        assert_has(
            &modified,
            &[
                "WHERE (created_at + 0) < $1 AND updated_at >= $2 AND updated_at > created_at \
                 AND archived = 1 AND (updated_at, id) < ($3, $4) AND updated_at >= COALESCE((",
                walked,
            ],
        );
        // The same window, on its own: whether the probe saw every candidate.
        let end =
            window_end_sql(&query, Dialect::Sqlite, Part::ModifiedOutsideWindow).expect("a window");
        assert_eq!(
            end.sql,
            walked
                .replace("$6", "$4")
                .replace("$5", "$3")
                .replace("($3, $4)", "($1, $2)")
        );
        assert_eq!(end.binds[0], Bind::Int(900));
        assert_eq!(end.binds[2], Bind::Int(i64::from(PROBE_WINDOW)));
        assert_eq!(end.binds[3], Bind::Int(500));
        let inside = window_end_sql(&query, Dialect::Sqlite, Part::KeyInWindow).expect("a window");
        assert!(
            inside
                .sql
                .contains("WHERE updated_at < $4 AND (updated_at, id) < ($1, $2)")
        );
        assert!(!inside.sql.contains(MODIFIED), "{}", inside.sql);
        assert!(window_end_sql(&query, Dialect::Sqlite, Part::NameRange).is_none());
    }

    #[test]
    fn name_buckets_follow_the_byte_order_of_sort_keys() {
        let keys = [
            "", " x", "-", "0", "9lives", ":", "a", "aalto", "b", "m", "mäki", "z", "zz", "{",
            "\u{7f}", "à", "ämäki", "ö", "ɐ", "ω", "а", "я", "ա", "中",
        ];
        for pair in keys.windows(2) {
            assert!(pair[0].as_bytes() < pair[1].as_bytes(), "{pair:?}");
            assert!(name_bucket(pair[0]) <= name_bucket(pair[1]), "{pair:?}");
        }
        assert_eq!(name_bucket(""), 0);
        assert_eq!(name_bucket("aalto"), 4);
        assert_eq!(name_bucket("zorn"), 29);
        assert_eq!(name_bucket("中"), NAME_BUCKETS - 1);
        assert!(
            keys.iter()
                .all(|k| (0..NAME_BUCKETS).contains(&name_bucket(k)))
        );
    }

    proptest::proptest! {
        #[test]
        fn a_smaller_sort_key_never_has_a_later_bucket(a in "\\PC{0,3}", b in "\\PC{0,3}") {
            let (low, high) = if a.as_bytes() <= b.as_bytes() { (a, b) } else { (b, a) };
            proptest::prop_assert!(name_bucket(&low) <= name_bucket(&high));
        }
    }

    #[test]
    fn bucket_groups_cover_the_buckets_from_the_cursors_once_in_order() {
        let covered: Vec<i64> = Buckets::groups_from(None)
            .flat_map(|group| group.0)
            .collect();
        assert_eq!(covered, (0..NAME_BUCKETS).collect::<Vec<_>>());
        let widths: Vec<usize> = Buckets::groups_from(None)
            .map(|group| group.0.count())
            .collect();
        assert_eq!(widths, [1, 4, 16, 14]);
        let from_m: Vec<i64> = Buckets::groups_from(Some("malm"))
            .flat_map(|group| group.0)
            .collect();
        assert_eq!(from_m, (name_bucket("m")..NAME_BUCKETS).collect::<Vec<_>>());
        assert_eq!(
            Buckets::groups_from(Some("中")).count(),
            1,
            "the last bucket alone"
        );
    }

    fn customer() -> clientele_domain::Customer {
        serde_json::from_value(serde_json::json!({
            "id": "cus_01JDQ8Z6X5B8N4K2M7P9R3T5V7", "email_verified": false, "email_opt_out": false,
            "archived": false, "addresses": [], "tags": [], "groups": [], "teams": [],
            "custom": {}, "has_password": false, "version": 1,
            "created_at": "2026-11-24T00:00:00Z", "updated_at": "2026-11-24T00:00:00Z",
            "first_name": "Ada", "last_name": "Lovelace", "company": "Analytical Engines",
        }))
        .expect("a customer")
    }

    #[test]
    fn an_update_changes_the_terms_it_touches_or_every_row() {
        let stored = customer();
        let source = TermSource::of(&stored);
        let mut next = stored.clone();
        next.note = Some("not searchable".into());
        next.version += 1;
        assert_eq!(source.change_to(&next), TermChange::Kept);
        next.company = Some("analytical engines".into());
        assert_eq!(
            source.change_to(&next),
            TermChange::Kept,
            "the same terms, lower-cased"
        );
        next.first_name = Some("Augusta Ada".into());
        next.company = Some("Engines".into());
        assert_eq!(
            source.change_to(&next),
            TermChange::Terms {
                removed: vec!["analytical".into(), "analytical engines".into()],
                added: vec!["augusta".into(), "augusta ada".into()],
            },
            "\"ada\" and \"engines\" stay"
        );
        let mut archived = stored.clone();
        archived.archived = true;
        assert_eq!(
            source.change_to(&archived),
            TermChange::All,
            "each row carries archived"
        );
        let mut renamed = stored.clone();
        renamed.last_name = Some("Byron".into());
        assert_eq!(
            source.change_to(&renamed),
            TermChange::All,
            "each row carries the last name's sort key and bucket"
        );
        renamed.last_name = Some("LOVELACE".into());
        assert_eq!(
            source.change_to(&renamed),
            TermChange::Kept,
            "the same sort key and terms"
        );
    }

    /// Stored databases hold rows of this derivation: a change here must come with a new
    /// [`TERM_ROWS_VERSION`], so that they are rebuilt at start instead of being edited as if
    /// they were this version's.
    #[test]
    fn the_derivation_of_term_rows_is_pinned() {
        let mut customer = customer();
        customer.email = Some("Ada@Example.org".into());
        customer.phone = Some("+44 20 1234".into());
        let doc = "{}";
        let rows = [CustomerRow::new(&customer, None, doc)];
        let rows = term_rows(&rows);
        let printed: Vec<String> = (0..rows.terms.len())
            .map(|i| {
                assert_eq!(rows.ids[i], customer.id.to_string());
                format!(
                    "{} | {} {} {} {} {}",
                    rows.terms[i],
                    rows.multiword[i],
                    rows.name_prefix[i],
                    rows.last_name_sort[i],
                    rows.name_bucket[i],
                    rows.archived[i],
                )
            })
            .collect();
        let pinned = [
            "+44 | false false lovelace 15 false",
            "+44 20 1234 | true false lovelace 15 false",
            "1234 | false false lovelace 15 false",
            "20 | false false lovelace 15 false",
            "ada | false false lovelace 15 false",
            "ada@example.org | false false lovelace 15 false",
            "analytical | false false lovelace 15 false",
            "analytical engines | true false lovelace 15 false",
            "engines | false false lovelace 15 false",
            "lovelace | false true lovelace 15 false",
        ];
        assert_eq!(
            (TERM_ROWS_VERSION, printed),
            (1, pinned.map(str::to_owned).to_vec())
        );
    }
}
