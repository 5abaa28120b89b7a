//! The mirror table (SQLite or PostgreSQL): one row per hub customer, one column per customer
//! field named as in the API, arrays and objects as JSON text. Beside it, in the same database,
//! `_clientele_feed` keeps the change-feed position (updated in the transaction that applies the
//! rows it covers) and `_clientele_shadow` keeps, for `sync`, the version and hash of each row as
//! the hub last had it — what tells a local edit from a hub change, and the agent's own writes
//! from anyone else's.

use std::collections::HashMap;

use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::any::AnyArguments;
use sqlx::{AnyPool, Arguments};

use crate::fields::{CUSTOMER_FIELDS, Kind, kind_of, writable_part};
use crate::mapping::hash_item;

mod pending;
mod row;
mod setup;

pub use pending::{PendingCreate, PendingEdit};
pub use row::MirrorRow;
use setup::{Access, sqlite_file_exists};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Mirror {
    pool: AnyPool,
    dialect: Dialect,
    table: String,
    /// How a row is found again (`LocalRow::rowref`).
    row_ref: RowRef,
}

/// What names a row of the mirror table for as long as it lives, edits included: a pending
/// create must find its row again after a kill, however the row was edited since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowRef {
    /// SQLite, a dry run of a table made by an agent before the column: the `rowid`, which
    /// SQLite gives again to the next row once the last one is deleted, and may renumber on
    /// `VACUUM`.
    Rowid,
    /// The `_clientele_ref` column the agent gives the table: on PostgreSQL an identity column
    /// (a row's `ctid` changes with every update), on SQLite an `INTEGER PRIMARY KEY
    /// AUTOINCREMENT` (never given to another row, kept by `VACUUM`).
    RefColumn,
    /// PostgreSQL, a dry run of a table made by an agent before the column: `ctid`, which is
    /// stable for as long as a run that writes nothing.
    Ctid,
}

/// The column naming a mirror row for as long as it lives ([`RowRef::RefColumn`]).
const REF_COLUMN: &str = "_clientele_ref";

/// A mirror row as the hub last had it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    pub version: i64,
    pub hash: String,
}

/// A row of the mirror table: where it is (`rowref`, for rows without an id) and its fields.
#[derive(Clone, Debug)]
pub struct LocalRow {
    pub rowref: String,
    pub fields: Map<String, Value>,
}

pub(crate) fn is_sqlite(url: &str) -> bool {
    url.to_ascii_lowercase().starts_with("sqlite:")
}

pub(crate) fn is_postgres(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Statements stay under both backends' parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

impl Mirror {
    /// Opens the mirror, creating its database (SQLite) and tables where missing.
    pub async fn open(url: &str, table: &str) -> anyhow::Result<Mirror> {
        let mut mirror = Mirror::connect(url, table, Access::Create).await?;
        mirror.ensure_tables().await?;
        Ok(mirror)
    }

    /// [`Mirror::open`], or for a dry run [`Mirror::open_for_plan`].
    pub async fn open_for(url: &str, table: &str, dry_run: bool) -> anyhow::Result<Mirror> {
        if dry_run {
            Mirror::open_for_plan(url, table).await
        } else {
            Mirror::open(url, table).await
        }
    }

    /// The mirror as it stands, for a dry run, which must change nothing: opened read-only
    /// when its database and tables are all there. A mirror not there yet (no database file,
    /// or a table missing) is planned as an empty one, an in-memory database of the same
    /// tables: everything the hub has would be created.
    pub async fn open_for_plan(url: &str, table: &str) -> anyhow::Result<Mirror> {
        if !is_sqlite(url) || sqlite_file_exists(url) {
            let mirror = Mirror::connect(url, table, Access::ReadOnly).await?;
            if mirror.has_tables().await? {
                return Ok(mirror);
            }
            mirror.pool.close().await;
        }
        let mut mirror = Mirror::connect("sqlite::memory:", table, Access::Memory).await?;
        mirror.ensure_tables().await?;
        Ok(mirror)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn placeholder(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// The placeholders of `count` values in a row: `?, ?` or `$1, $2`.
    fn placeholders(&self, count: usize) -> String {
        (1..=count)
            .map(|n| self.placeholder(n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The change-feed position the mirror has applied up to (0 when new).
    pub async fn position(&self) -> anyhow::Result<i64> {
        let sql = format!(
            "SELECT position FROM _clientele_feed WHERE mirror_table = {}",
            self.placeholder(1)
        );
        let position: Option<i64> = sqlx::query_scalar(&sql)
            .bind(&self.table)
            .fetch_optional(&self.pool)
            .await?;
        Ok(position.unwrap_or(0))
    }

    /// Every shadow entry for these ids.
    pub async fn shadows(&self, ids: &[&str]) -> anyhow::Result<HashMap<String, Shadow>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut args = AnyArguments::default();
            args.add(self.table.clone()).map_err(anyhow::Error::msg)?;
            let mut marks = Vec::with_capacity(chunk.len());
            for (index, id) in chunk.iter().enumerate() {
                args.add(id.to_string()).map_err(anyhow::Error::msg)?;
                marks.push(self.placeholder(index + 2));
            }
            let sql = format!(
                "SELECT id, version, hash FROM _clientele_shadow WHERE mirror_table = {} AND id IN ({})",
                self.placeholder(1),
                marks.join(", ")
            );
            let rows: Vec<(String, i64, String)> = sqlx::query_as_with(&sql, args)
                .fetch_all(&self.pool)
                .await?;
            out.extend(
                rows.into_iter()
                    .map(|(id, version, hash)| (id, Shadow { version, hash })),
            );
        }
        Ok(out)
    }

    /// Local rows by id (normalized fields).
    pub async fn rows_by_id(&self, ids: &[&str]) -> anyhow::Result<HashMap<String, LocalRow>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut args = AnyArguments::default();
            let mut marks = Vec::with_capacity(chunk.len());
            for (index, id) in chunk.iter().enumerate() {
                args.add(id.to_string()).map_err(anyhow::Error::msg)?;
                marks.push(self.placeholder(index + 1));
            }
            let sql = format!("{} WHERE id IN ({})", self.select_rows(), marks.join(", "));
            let rows: Vec<(String, String)> = sqlx::query_as_with(&sql, args)
                .fetch_all(&self.pool)
                .await?;
            for (rowref, json) in rows {
                let row = local_row(rowref, &json)?;
                if let Some(Value::String(id)) = row.fields.get("id") {
                    out.insert(id.clone(), row);
                }
            }
        }
        Ok(out)
    }

    /// Every row of the mirror table with its shadow, streamed, for `sync` to find local edits.
    pub async fn scan(
        &self,
        mut visit: impl FnMut(LocalRow, Option<Shadow>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let sql = match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT CAST(m.{} AS TEXT), {}, s.version, s.hash FROM {} AS m \
                 LEFT JOIN _clientele_shadow AS s ON s.mirror_table = ? AND s.id = m.id",
                self.row_ref_column(),
                self.json_expression("m"),
                self.table
            ),
            Dialect::Postgres => format!(
                "SELECT m.{}::text, row_to_json(m)::text, s.version, s.hash FROM {} AS m \
                 LEFT JOIN _clientele_shadow AS s ON s.mirror_table = $1 AND s.id = m.id",
                self.row_ref_column(),
                self.table
            ),
        };
        let mut rows = sqlx::query_as::<_, (String, String, Option<i64>, Option<String>)>(&sql)
            .bind(&self.table)
            .fetch(&self.pool);
        while let Some((rowref, json, version, hash)) = rows.try_next().await? {
            let shadow = version
                .zip(hash)
                .map(|(version, hash)| Shadow { version, hash });
            visit(local_row(rowref, &json)?, shadow)?;
        }
        Ok(())
    }

    /// Up to `limit` rows of the mirror table after the reference `after`, in reference order,
    /// each with its shadow: `sync` reads the table a page at a time, holding one page, and
    /// writes between pages. A dry run of a PostgreSQL mirror an earlier agent made (rows named
    /// by `ctid`, which has no order to page by) gets the whole table as one page.
    pub async fn scan_page(
        &self,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<(LocalRow, Option<Shadow>)>> {
        if self.row_ref == RowRef::Ctid {
            if after > 0 {
                return Ok(Vec::new());
            }
            let mut page = Vec::new();
            self.scan(|row, shadow| {
                page.push((row, shadow));
                Ok(())
            })
            .await?;
            return Ok(page);
        }
        let column = self.row_ref_column();
        let sql = match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT CAST(m.{column} AS TEXT), {}, s.version, s.hash FROM {} AS m \
                 LEFT JOIN _clientele_shadow AS s ON s.mirror_table = ? AND s.id = m.id \
                 WHERE m.{column} > ? ORDER BY m.{column} LIMIT ?",
                self.json_expression("m"),
                self.table
            ),
            Dialect::Postgres => format!(
                "SELECT m.{column}::text, row_to_json(m)::text, s.version, s.hash FROM {} AS m \
                 LEFT JOIN _clientele_shadow AS s ON s.mirror_table = $1 AND s.id = m.id \
                 WHERE m.{column} > $2 ORDER BY m.{column} LIMIT $3",
                self.table
            ),
        };
        let rows = sqlx::query_as::<_, (String, String, Option<i64>, Option<String>)>(&sql)
            .bind(&self.table)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(rowref, json, version, hash)| {
                let shadow = version
                    .zip(hash)
                    .map(|(version, hash)| Shadow { version, hash });
                Ok((local_row(rowref, &json)?, shadow))
            })
            .collect()
    }

    fn select_rows(&self) -> String {
        match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT CAST(m.{} AS TEXT), {} FROM {} AS m",
                self.row_ref_column(),
                self.json_expression("m"),
                self.table
            ),
            Dialect::Postgres => format!(
                "SELECT m.{}::text, row_to_json(m)::text FROM {} AS m",
                self.row_ref_column(),
                self.table
            ),
        }
    }

    /// The column a row's `rowref` is read from.
    fn row_ref_column(&self) -> &'static str {
        match self.row_ref {
            RowRef::Rowid => "rowid",
            RowRef::RefColumn => REF_COLUMN,
            RowRef::Ctid => "ctid",
        }
    }

    fn json_expression(&self, alias: &str) -> String {
        let pairs: Vec<String> = CUSTOMER_FIELDS
            .iter()
            .map(|(name, _)| format!("'{name}', {alias}.{name}"))
            .collect();
        format!("json_object({})", pairs.join(", "))
    }

    pub async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(self.pool.begin().await?)
    }

    /// Upserts whole customers (as the hub sent them) by id.
    pub async fn upsert(
        &self,
        tx: &mut sqlx::AnyConnection,
        customers: &[&Value],
    ) -> anyhow::Result<()> {
        let rows: Vec<MirrorRow> = customers
            .iter()
            .map(|customer| MirrorRow::from_customer(customer))
            .collect();
        self.upsert_rows(tx, &rows.iter().collect::<Vec<_>>()).await
    }

    /// Upserts rows by id, [`ROWS_PER_STATEMENT`] to a statement. An event older than the row
    /// (replayed after a resync) changes nothing.
    pub async fn upsert_rows(
        &self,
        tx: &mut sqlx::AnyConnection,
        rows: &[&MirrorRow],
    ) -> anyhow::Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut args = AnyArguments::default();
            for row in chunk {
                row.bind(&mut args)?;
            }
            sqlx::query_with(&self.upsert_sql(chunk.len()), args)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// The upsert of `rows` rows: the same text for the same count, so the prepared statement
    /// of a full chunk is reused from the connection's cache.
    fn upsert_sql(&self, rows: usize) -> String {
        use std::fmt::Write;
        let columns = CUSTOMER_FIELDS.len();
        let names: Vec<&str> = CUSTOMER_FIELDS.iter().map(|(name, _)| *name).collect();
        let mut sql = format!("INSERT INTO {} ({}) VALUES ", self.table, names.join(", "));
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                match self.dialect {
                    Dialect::Sqlite => sql.push('?'),
                    Dialect::Postgres => {
                        let _ = write!(sql, "${}", row * columns + column + 1);
                    }
                }
            }
            sql.push(')');
        }
        let updates: Vec<String> = names
            .iter()
            .filter(|name| **name != "id")
            .map(|name| format!("{name} = excluded.{name}"))
            .collect();
        let _ = write!(
            sql,
            " ON CONFLICT (id) DO UPDATE SET {} \
             WHERE {table}.version IS NULL OR excluded.version >= {table}.version",
            updates.join(", "),
            table = self.table,
        );
        sql
    }

    /// Overwrites one local row (found by `rowref`) with a customer, e.g. after creating it.
    pub async fn overwrite_row(
        &self,
        tx: &mut sqlx::AnyConnection,
        rowref: &str,
        customer: &Value,
    ) -> anyhow::Result<()> {
        let row = MirrorRow::from_customer(customer);
        let mut args = AnyArguments::default();
        row.bind(&mut args)?;
        let sets: Vec<String> = CUSTOMER_FIELDS
            .iter()
            .enumerate()
            .map(|(index, (name, _))| format!("{name} = {}", self.placeholder(index + 1)))
            .collect();
        let condition = self.at_rowref(CUSTOMER_FIELDS.len() + 1, rowref, &mut args)?;
        let sql = format!(
            "UPDATE {} SET {} WHERE {condition}",
            self.table,
            sets.join(", ")
        );
        sqlx::query_with(&sql, args).execute(&mut *tx).await?;
        Ok(())
    }

    /// The condition picking the row at `rowref`, its value bound as parameter `n`.
    fn at_rowref(
        &self,
        n: usize,
        rowref: &str,
        args: &mut AnyArguments<'_>,
    ) -> anyhow::Result<String> {
        // A rowref of another form (recorded before the table had its identity column) names
        // no row.
        Ok(match self.row_ref {
            RowRef::Rowid => {
                args.add(rowref.parse::<i64>().unwrap_or(-1))
                    .map_err(anyhow::Error::msg)?;
                "rowid = ?".to_owned()
            }
            RowRef::RefColumn => {
                args.add(rowref.parse::<i64>().unwrap_or(-1))
                    .map_err(anyhow::Error::msg)?;
                format!("{REF_COLUMN} = {}", self.placeholder(n))
            }
            RowRef::Ctid => {
                args.add(rowref.to_owned()).map_err(anyhow::Error::msg)?;
                format!("ctid = ${n}::tid")
            }
        })
    }

    /// Whether `rowref` is of the form this mirror names its rows by (an earlier agent's
    /// PostgreSQL mirror named them by `ctid`).
    pub fn is_row_ref(&self, rowref: &str) -> bool {
        match self.row_ref {
            RowRef::Rowid | RowRef::RefColumn => rowref.parse::<i64>().is_ok(),
            RowRef::Ctid => rowref.starts_with('('),
        }
    }

    /// The rows without an id: local inserts not created yet.
    pub async fn rows_without_id(&self) -> anyhow::Result<Vec<LocalRow>> {
        let sql = format!("{} WHERE m.id IS NULL", self.select_rows());
        let rows: Vec<(String, String)> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(rowref, json)| local_row(rowref, &json))
            .collect()
    }

    /// The row at `rowref`, if there is one.
    pub async fn row_at(&self, rowref: &str) -> anyhow::Result<Option<LocalRow>> {
        let mut args = AnyArguments::default();
        let condition = self.at_rowref(1, rowref, &mut args)?;
        let sql = format!("{} WHERE m.{condition}", self.select_rows());
        let row: Option<(String, String)> = sqlx::query_as_with(&sql, args)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|(rowref, json)| local_row(rowref, &json))
            .transpose()
    }

    /// Removes the row at `rowref` (not its id's shadow: the row is a local twin of another).
    pub async fn delete_at(
        &self,
        tx: &mut sqlx::AnyConnection,
        rowref: &str,
    ) -> anyhow::Result<()> {
        let mut args = AnyArguments::default();
        let condition = self.at_rowref(1, rowref, &mut args)?;
        let sql = format!("DELETE FROM {} WHERE {condition}", self.table);
        sqlx::query_with(&sql, args).execute(&mut *tx).await?;
        Ok(())
    }

    pub async fn delete(&self, tx: &mut sqlx::AnyConnection, ids: &[&str]) -> anyhow::Result<()> {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            for (table, column, extra) in [
                (self.table.as_str(), "id", false),
                ("_clientele_shadow", "id", true),
            ] {
                let mut args = AnyArguments::default();
                let mut marks = Vec::new();
                let mut n = 0;
                if extra {
                    n += 1;
                    args.add(self.table.clone()).map_err(anyhow::Error::msg)?;
                }
                for id in chunk {
                    n += 1;
                    marks.push(self.placeholder(n));
                    args.add(id.to_string()).map_err(anyhow::Error::msg)?;
                }
                let scope = if extra {
                    format!("mirror_table = {} AND ", self.placeholder(1))
                } else {
                    String::new()
                };
                let sql = format!(
                    "DELETE FROM {table} WHERE {scope}{column} IN ({})",
                    marks.join(", ")
                );
                sqlx::query_with(&sql, args).execute(&mut *tx).await?;
            }
        }
        Ok(())
    }

    /// Removes the rows (with an id) whose id is not in `keep`: after a resync from the list.
    pub async fn delete_except(
        &self,
        tx: &mut sqlx::AnyConnection,
        keep: &[String],
    ) -> anyhow::Result<usize> {
        let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
        let sql = format!("SELECT id FROM {} WHERE id IS NOT NULL", self.table);
        let ids: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut *tx).await?;
        let gone: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !keep.contains(id))
            .collect();
        self.delete(tx, &gone).await?;
        Ok(gone.len())
    }

    /// Records what the hub has for these rows: (id, version, hash).
    pub async fn set_shadows(
        &self,
        tx: &mut sqlx::AnyConnection,
        shadows: &[(String, Shadow)],
    ) -> anyhow::Result<()> {
        for chunk in shadows.chunks(ROWS_PER_STATEMENT) {
            let mut args = AnyArguments::default();
            let mut tuples = Vec::new();
            let mut n = 0;
            for (id, shadow) in chunk {
                tuples.push(format!(
                    "({}, {}, {}, {})",
                    self.placeholder(n + 1),
                    self.placeholder(n + 2),
                    self.placeholder(n + 3),
                    self.placeholder(n + 4)
                ));
                n += 4;
                args.add(self.table.clone()).map_err(anyhow::Error::msg)?;
                args.add(id.clone()).map_err(anyhow::Error::msg)?;
                args.add(shadow.version).map_err(anyhow::Error::msg)?;
                args.add(shadow.hash.clone()).map_err(anyhow::Error::msg)?;
            }
            let sql = format!(
                "INSERT INTO _clientele_shadow (mirror_table, id, version, hash) VALUES {} \
                 ON CONFLICT (mirror_table, id) DO UPDATE SET version = excluded.version, hash = excluded.hash",
                tuples.join(", ")
            );
            sqlx::query_with(&sql, args).execute(&mut *tx).await?;
        }
        Ok(())
    }

    pub async fn set_position(
        &self,
        tx: &mut sqlx::AnyConnection,
        position: i64,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "INSERT INTO _clientele_feed (mirror_table, position) VALUES ({}, {}) \
             ON CONFLICT (mirror_table) DO UPDATE SET position = excluded.position",
            self.placeholder(1),
            self.placeholder(2)
        );
        sqlx::query(&sql)
            .bind(&self.table)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

fn local_row(rowref: String, json: &str) -> anyhow::Result<LocalRow> {
    let raw: Map<String, Value> = serde_json::from_str(json)?;
    Ok(LocalRow {
        rowref,
        fields: normalize(&raw),
    })
}

/// A customer in one canonical form whether it comes from the hub or from a mirror row (where
/// booleans may be 0/1, numbers may be integral floats, arrays and objects are JSON text).
pub fn normalize(raw: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, kind) in CUSTOMER_FIELDS {
        let value = raw.get(*name).cloned().unwrap_or(Value::Null);
        let value = match (kind, value) {
            (_, Value::Null) => Value::Null,
            (Kind::Bool, Value::Number(number)) => Value::Bool(number.as_i64().unwrap_or(0) != 0),
            (Kind::Number, Value::Number(number)) => number
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            (Kind::Json, Value::String(text)) => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            (_, value) => value,
        };
        out.insert((*name).to_owned(), value);
    }
    out
}

/// The hash of what a client may write of a customer (what `sync` compares to spot local edits).
pub fn content_hash(normalized: &Map<String, Value>) -> String {
    hex::encode(hash_item(&writable_part(normalized)))
}

pub fn is_mirror_field(name: &str) -> bool {
    kind_of(name).is_some()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// `sync` holds one page of the mirror at a time, so a page is never longer than asked, and
    /// walking the pages from each one's last reference meets every row once, across the holes
    /// deleted rows leave.
    #[tokio::test]
    async fn pages_are_bounded_and_meet_every_row_once() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("mirror.db").display());
        let mirror = Mirror::open(&url, "customers").await.expect("open");
        let mut tx = mirror.begin().await.expect("begin");
        for n in 0..2_500 {
            sqlx::query("INSERT INTO customers (external_id) VALUES (?)")
                .bind(format!("row-{n}"))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        sqlx::query("DELETE FROM customers WHERE _clientele_ref % 7 = 0")
            .execute(&mut *tx)
            .await
            .expect("delete");
        tx.commit().await.expect("commit");

        let (mut after, mut pages, mut seen) = (0, Vec::new(), HashSet::new());
        loop {
            let page = mirror.scan_page(after, 1_000).await.expect("page");
            let Some((last, _)) = page.last() else { break };
            after = last.rowref.parse().expect("a numeric reference");
            pages.push(page.len());
            for (row, shadow) in page {
                assert_eq!(shadow, None, "a local insert has no shadow");
                assert!(
                    seen.insert(row.fields["external_id"].clone()),
                    "{row:?} twice"
                );
            }
        }
        let kept = 2_500 - 2_500 / 7;
        assert_eq!(pages, vec![1_000, 1_000, kept - 2_000]);
        assert_eq!(seen.len(), kept);
    }
}
