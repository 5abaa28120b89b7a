//! The mirror table (SQLite or PostgreSQL): one row per hub customer, one column per customer
//! field named as in the API, arrays and objects as JSON text. Beside it, in the same database,
//! `_clientele_feed` keeps the change-feed position (updated in the transaction that applies the
//! rows it covers) and `_clientele_shadow` keeps, for `sync`, the version and hash of each row as
//! the hub last had it — what tells a local edit from a hub change, and the agent's own writes
//! from anyone else's.

use std::collections::HashMap;

use anyhow::Context;
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::{AnyPool, Arguments};

use crate::fields::{CUSTOMER_FIELDS, Kind, kind_of, writable_part};
use crate::mapping::hash_item;

mod row;
pub use row::MirrorRow;

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

/// A create sent by a run that was killed before it wrote the hub's answer back.
#[derive(Debug)]
pub struct PendingCreate {
    pub rowref: String,
    /// The content hash of the row when it was sent.
    pub hash: String,
    pub key: String,
    /// The request body as sent; `None` when an agent that did not keep it sent it.
    pub body: Option<Value>,
}

/// An edit sent by a run that was killed before it wrote the hub's answer back: the hub may have
/// applied it or not.
#[derive(Debug)]
pub struct PendingEdit {
    pub id: String,
    pub rowref: String,
    /// The version it was sent against (`If-Match`).
    pub base_version: i64,
    /// The request body as sent.
    pub body: Value,
}

/// How [`Mirror::connect`] opens the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Created if missing, in WAL mode: a real run.
    Create,
    /// Read-only, changing nothing: a dry run.
    ReadOnly,
    /// A private in-memory database: a dry run's plan for a mirror not there yet.
    Memory,
}

pub(crate) fn is_sqlite(url: &str) -> bool {
    url.to_ascii_lowercase().starts_with("sqlite:")
}

pub(crate) fn is_postgres(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Whether the file of a `sqlite:` URL exists (an in-memory URL has none to create), read as
/// sqlx reads the URL; one it cannot read is left to the connection to refuse.
fn sqlite_file_exists(url: &str) -> bool {
    use std::str::FromStr as _;
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return true;
    };
    let path = options.get_filename();
    path.as_os_str().is_empty() || path.starts_with(":memory:") || path.exists()
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

    async fn connect(url: &str, table: &str, access: Access) -> anyhow::Result<Mirror> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if is_sqlite(url) {
            let mode = match access {
                Access::Create => "mode=rwc",
                Access::ReadOnly => "mode=ro",
                Access::Memory => "",
            };
            let url = match (url.contains('?'), mode) {
                (_, "") => url.to_owned(),
                (true, _) => format!("{url}&{mode}"),
                (false, _) => format!("{url}?{mode}"),
            };
            (Dialect::Sqlite, url)
        } else if is_postgres(url) {
            (Dialect::Postgres, url.to_owned())
        } else {
            anyhow::bail!("the mirror URL must be sqlite://PATH or postgres://...");
        };
        let wal = dialect == Dialect::Sqlite && access == Access::Create;
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { 4 })
            // An in-memory database lives as long as its one connection.
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if wal {
                        // WAL with NORMAL: durable across a killed process, one sync per checkpoint.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    if dialect == Dialect::Sqlite {
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the mirror database {}", redact(&url)))?;
        let mut mirror = Mirror {
            pool,
            dialect,
            table: table.to_owned(),
            row_ref: RowRef::RefColumn,
        };
        if !mirror.has_ref_column().await? {
            mirror.row_ref = match dialect {
                Dialect::Sqlite => RowRef::Rowid,
                Dialect::Postgres => RowRef::Ctid,
            };
        }
        Ok(mirror)
    }

    /// Whether the mirror table has its `_clientele_ref` column (false when the table is not
    /// there at all).
    async fn has_ref_column(&self) -> anyhow::Result<bool> {
        self.has_column(&self.table, REF_COLUMN).await
    }

    /// Whether `table` (when it exists) has the column `column`.
    async fn has_column(&self, table: &str, column: &str) -> anyhow::Result<bool> {
        let sql = match self.dialect {
            Dialect::Sqlite => "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?",
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM pg_attribute WHERE attrelid = to_regclass($1) \
                 AND attname = $2 AND NOT attisdropped"
            }
        };
        let found: i64 = sqlx::query_scalar(sql)
            .bind(table)
            .bind(column)
            .fetch_one(&self.pool)
            .await?;
        Ok(found > 0)
    }

    /// Whether the mirror table and the agent's tables beside it all exist.
    async fn has_tables(&self) -> anyhow::Result<bool> {
        let names = [
            self.table.as_str(),
            "_clientele_feed",
            "_clientele_shadow",
            "_clientele_pending_create",
        ];
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?, ?, ?)"
            }
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM (VALUES ($1), ($2), ($3), ($4)) AS wanted (name) \
                 WHERE to_regclass(wanted.name) IS NOT NULL"
            }
        };
        let mut query = sqlx::query_scalar::<_, i64>(sql);
        for name in names {
            query = query.bind(name);
        }
        Ok(query.fetch_one(&self.pool).await? == names.len() as i64)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn ensure_tables(&mut self) -> anyhow::Result<()> {
        if self.dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await?;
        }
        let columns: Vec<String> = CUSTOMER_FIELDS
            .iter()
            .map(|(name, kind)| {
                if *name == "id" {
                    // Not the key: a local insert has no id yet.
                    return "id TEXT UNIQUE".to_owned();
                }
                format!("{name} {}", self.sql_type(*kind))
            })
            .chain([format!("{REF_COLUMN} {}", self.ref_column_type())])
            .collect();
        let statements = [
            format!("CREATE TABLE IF NOT EXISTS {} ({})", self.table, columns.join(", ")),
            "CREATE TABLE IF NOT EXISTS _clientele_feed (mirror_table TEXT PRIMARY KEY, position BIGINT NOT NULL)".to_owned(),
            "CREATE TABLE IF NOT EXISTS _clientele_shadow (mirror_table TEXT NOT NULL, id TEXT NOT NULL, \
             version BIGINT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (mirror_table, id))"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS _clientele_pending_create (mirror_table TEXT NOT NULL, \
             rowref TEXT NOT NULL, hash TEXT NOT NULL, idempotency_key TEXT NOT NULL, \
             body TEXT, PRIMARY KEY (mirror_table, rowref))"
                .to_owned(),
            "CREATE TABLE IF NOT EXISTS _clientele_pending_edit (mirror_table TEXT NOT NULL, \
             id TEXT NOT NULL, rowref TEXT NOT NULL, base_version BIGINT NOT NULL, \
             body TEXT NOT NULL, PRIMARY KEY (mirror_table, id))"
                .to_owned(),
        ];
        for statement in statements {
            sqlx::query(&statement).execute(&self.pool).await?;
        }
        if !self.has_ref_column().await? {
            // A table made by an earlier agent (or by hand) gets it once, in a rewrite of the
            // table.
            match self.dialect {
                Dialect::Sqlite => self.rebuild_with_ref_column().await?,
                Dialect::Postgres => {
                    let add = format!(
                        "ALTER TABLE {} ADD COLUMN {REF_COLUMN} {}",
                        self.table,
                        self.ref_column_type()
                    );
                    sqlx::query(&add).execute(&self.pool).await?;
                }
            }
        }
        self.row_ref = RowRef::RefColumn;
        // Mirrors made by agents before the create's body was kept get its column.
        if !self.has_column("_clientele_pending_create", "body").await? {
            sqlx::query("ALTER TABLE _clientele_pending_create ADD COLUMN body TEXT")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The type of [`REF_COLUMN`]. PostgreSQL's ALWAYS refuses a value copied in from elsewhere
    /// (`INSERT ... SELECT *`) rather than letting it name two rows; SQLite's AUTOINCREMENT
    /// never gives a deleted row's number to another.
    fn ref_column_type(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY",
        }
    }

    /// Gives a SQLite mirror table made before [`REF_COLUMN`] the column, which SQLite cannot
    /// add to a table in place as a key: the table is made again, as SQLite's manual says
    /// (its "generalized ALTER TABLE procedure"), in one transaction. Each row keeps its rowid
    /// as its reference, so creates pending under it still find their rows; every column,
    /// index and trigger is kept, and the key on `id` becomes a unique constraint.
    async fn rebuild_with_ref_column(&self) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        let columns: Vec<DeclaredColumn> = sqlx::query_as(
            "SELECT name, type AS declared, \"notnull\" AS not_null, dflt_value AS default_value, \
             pk AS key_position FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind(&self.table)
        .fetch_all(&mut *connection)
        .await?;
        let kept: Vec<String> = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') \
             AND sql IS NOT NULL",
        )
        .bind(&self.table)
        .fetch_all(&mut *connection)
        .await?;
        let mut definitions: Vec<String> = columns.iter().map(DeclaredColumn::definition).collect();
        definitions.push(format!("{REF_COLUMN} {}", self.ref_column_type()));
        let mut key: Vec<&DeclaredColumn> = columns
            .iter()
            .filter(|column| column.key_position > 0)
            .collect();
        key.sort_by_key(|column| column.key_position);
        if !key.is_empty() {
            let names: Vec<String> = key.iter().map(|column| quoted(&column.name)).collect();
            definitions.push(format!("UNIQUE ({})", names.join(", ")));
        }
        let names: Vec<String> = columns.iter().map(|column| quoted(&column.name)).collect();
        let names = names.join(", ");
        // Views naming the table are left as they are: SQLite's newer renames would check them
        // while the table is away.
        sqlx::query("PRAGMA legacy_alter_table = ON")
            .execute(&mut *connection)
            .await?;
        let rebuilt = self
            .rebuild(&mut connection, &definitions, &names, kept)
            .await;
        sqlx::query("PRAGMA legacy_alter_table = OFF")
            .execute(&mut *connection)
            .await?;
        rebuilt
    }

    /// The transaction of [`Mirror::rebuild_with_ref_column`]: the table made again with
    /// `definitions`, its rows (`names`) copied, the `kept` indexes and triggers made again.
    async fn rebuild(
        &self,
        connection: &mut sqlx::AnyConnection,
        definitions: &[String],
        names: &str,
        kept: Vec<String>,
    ) -> anyhow::Result<()> {
        let rebuilt = "_clientele_rebuilt";
        let mut tx = sqlx::Connection::begin(connection).await?;
        let mut statements = vec![
            format!("DROP TABLE IF EXISTS {rebuilt}"),
            format!("CREATE TABLE {rebuilt} ({})", definitions.join(", ")),
            format!(
                "INSERT INTO {rebuilt} ({names}, {REF_COLUMN}) SELECT {names}, rowid FROM {}",
                self.table
            ),
            format!("DROP TABLE {}", self.table),
            format!("ALTER TABLE {rebuilt} RENAME TO {}", self.table),
        ];
        statements.extend(kept);
        for statement in statements {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        // A create pending under the rowid of a row deleted since names no row; no new row
        // may take its number.
        let pending: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(CAST(rowref AS INTEGER)) FROM _clientele_pending_create \
             WHERE mirror_table = ?",
        )
        .bind(&self.table)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(pending) = pending {
            sqlx::query("DELETE FROM sqlite_sequence WHERE name = ? AND seq < ?")
                .bind(&self.table)
                .bind(pending)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            )
            .bind(&self.table)
            .bind(pending)
            .bind(&self.table)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn sql_type(&self, kind: Kind) -> &'static str {
        match (kind, self.dialect) {
            (Kind::Text | Kind::Json, _) => "TEXT",
            (Kind::Bool, Dialect::Sqlite) => "INTEGER",
            (Kind::Bool, Dialect::Postgres) => "BOOLEAN",
            (Kind::Number, Dialect::Sqlite) => "REAL",
            (Kind::Number, Dialect::Postgres) => "DOUBLE PRECISION",
            (Kind::Integer, _) => "BIGINT",
        }
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
    ) -> anyhow::Result<()> {
        let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
        let sql = format!("SELECT id FROM {} WHERE id IS NOT NULL", self.table);
        let ids: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut *tx).await?;
        let gone: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !keep.contains(id))
            .collect();
        self.delete(tx, &gone).await
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

    /// The idempotency key for creating the local row `rowref` with content `hash`: the key
    /// recorded when a create of this very row and content was sent and its answer never
    /// written back (a killed run: the hub replays what it did), or else `fresh`, recorded now
    /// with the `body` it is sent with. A row's content and place (a rowid, a ctid) can recur,
    /// so the key is never derived from them: a create whose answer was written back never
    /// shares its key with a later one.
    pub async fn create_key(
        &self,
        rowref: &str,
        hash: &str,
        fresh: &str,
        body: &Value,
    ) -> anyhow::Result<String> {
        let sql = format!(
            "SELECT hash, idempotency_key FROM _clientele_pending_create \
             WHERE mirror_table = {} AND rowref = {}",
            self.placeholder(1),
            self.placeholder(2)
        );
        let pending: Option<(String, String)> = sqlx::query_as(&sql)
            .bind(&self.table)
            .bind(rowref)
            .fetch_optional(&self.pool)
            .await?;
        if let Some((pending_hash, key)) = pending
            && pending_hash == hash
        {
            return Ok(key);
        }
        let sql = format!(
            "INSERT INTO _clientele_pending_create \
             (mirror_table, rowref, hash, idempotency_key, body) \
             VALUES ({}) ON CONFLICT (mirror_table, rowref) DO UPDATE \
             SET hash = excluded.hash, idempotency_key = excluded.idempotency_key, \
             body = excluded.body",
            self.placeholders(5)
        );
        sqlx::query(&sql)
            .bind(&self.table)
            .bind(rowref)
            .bind(hash)
            .bind(fresh)
            .bind(body.to_string())
            .execute(&self.pool)
            .await?;
        Ok(fresh.to_owned())
    }

    /// The creates that were sent and whose answer was never written back (a killed run).
    pub async fn pending_creates(&self) -> anyhow::Result<Vec<PendingCreate>> {
        let sql = format!(
            "SELECT rowref, hash, idempotency_key, body FROM _clientele_pending_create \
             WHERE mirror_table = {}",
            self.placeholder(1)
        );
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(&sql)
            .bind(&self.table)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(rowref, hash, key, body)| PendingCreate {
                rowref,
                hash,
                key,
                // Recorded by this agent, so it parses; an older agent recorded none.
                body: body.and_then(|body| serde_json::from_str(&body).ok()),
            })
            .collect())
    }

    /// The hub answered the create of `rowref`: its key is done with.
    pub async fn forget_create(
        &self,
        tx: &mut sqlx::AnyConnection,
        rowref: &str,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "DELETE FROM _clientele_pending_create WHERE mirror_table = {} AND rowref = {}",
            self.placeholder(1),
            self.placeholder(2)
        );
        sqlx::query(&sql)
            .bind(&self.table)
            .bind(rowref)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Writes down the edit of customer `id` (row `rowref`) about to be sent against
    /// `base_version` with `body`, before it is: see [`PendingEdit`].
    pub async fn record_edit(
        &self,
        id: &str,
        rowref: &str,
        base_version: i64,
        body: &Value,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "INSERT INTO _clientele_pending_edit (mirror_table, id, rowref, base_version, body) \
             VALUES ({}) ON CONFLICT (mirror_table, id) DO UPDATE \
             SET rowref = excluded.rowref, base_version = excluded.base_version, \
             body = excluded.body",
            self.placeholders(5)
        );
        sqlx::query(&sql)
            .bind(&self.table)
            .bind(id)
            .bind(rowref)
            .bind(base_version)
            .bind(body.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The edits that were sent and whose answer was never written back (a killed run).
    pub async fn pending_edits(&self) -> anyhow::Result<Vec<PendingEdit>> {
        let sql = format!(
            "SELECT id, rowref, base_version, body FROM _clientele_pending_edit \
             WHERE mirror_table = {}",
            self.placeholder(1)
        );
        let rows: Vec<(String, String, i64, String)> = sqlx::query_as(&sql)
            .bind(&self.table)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(id, rowref, base_version, body)| {
                Ok(PendingEdit {
                    id,
                    rowref,
                    base_version,
                    body: serde_json::from_str(&body)?,
                })
            })
            .collect()
    }

    /// The hub answered the edit of customer `id`: it is pending no more.
    pub async fn forget_edit(&self, tx: &mut sqlx::AnyConnection, id: &str) -> anyhow::Result<()> {
        let sql = format!(
            "DELETE FROM _clientele_pending_edit WHERE mirror_table = {} AND id = {}",
            self.placeholder(1),
            self.placeholder(2)
        );
        sqlx::query(&sql)
            .bind(&self.table)
            .bind(id)
            .execute(&mut *tx)
            .await?;
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

/// A column of a SQLite table as `pragma_table_info` declares it.
#[derive(sqlx::FromRow)]
struct DeclaredColumn {
    name: String,
    declared: String,
    not_null: i64,
    default_value: Option<String>,
    /// Its place in the primary key, 0 when outside it.
    key_position: i64,
}

impl DeclaredColumn {
    /// The column as `CREATE TABLE` declares it, its key aside.
    fn definition(&self) -> String {
        let mut definition = format!("{} {}", quoted(&self.name), self.declared);
        if self.not_null != 0 {
            definition.push_str(" NOT NULL");
        }
        if let Some(default) = &self.default_value {
            definition.push_str(" DEFAULT ");
            definition.push_str(default);
        }
        definition
    }
}

/// An identifier as SQL quotes it (a column named by hand may be a keyword, or hold a space).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
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
