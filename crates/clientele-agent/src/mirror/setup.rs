//! Opening the mirror's database and making its tables: the connection settings of each
//! backend, the agent's bookkeeping tables beside the mirror table, and the one-time rebuild
//! that gives a table made by an earlier agent its `_clientele_ref` column.

use anyhow::Context;
use sqlx::any::AnyPoolOptions;

use super::{Dialect, Mirror, REF_COLUMN, RowRef, is_postgres, is_sqlite};
use crate::fields::{CUSTOMER_FIELDS, Kind};

/// How [`Mirror::connect`] opens the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Created if missing, in WAL mode: a real run.
    Create,
    /// Read-only, changing nothing: a dry run.
    ReadOnly,
    /// A private in-memory database: a dry run's plan for a mirror not there yet.
    Memory,
}

/// Whether the file of a `sqlite:` URL exists (an in-memory URL has none to create), read as
/// sqlx reads the URL; one it cannot read is left to the connection to refuse.
pub(super) fn sqlite_file_exists(url: &str) -> bool {
    use std::str::FromStr as _;
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return true;
    };
    let path = options.get_filename();
    path.as_os_str().is_empty() || path.starts_with(":memory:") || path.exists()
}

impl Mirror {
    pub(super) async fn connect(url: &str, table: &str, access: Access) -> anyhow::Result<Mirror> {
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
        Ok(self
            .columns_of(table)
            .await?
            .iter()
            .any(|name| name == column))
    }

    /// Whether the mirror table and the agent's tables beside it all exist.
    pub(super) async fn has_tables(&self) -> anyhow::Result<bool> {
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

    /// The columns of `table`, none when it does not exist.
    async fn columns_of(&self, table: &str) -> anyhow::Result<Vec<String>> {
        let sql = match self.dialect {
            Dialect::Sqlite => "SELECT name FROM pragma_table_info(?)",
            Dialect::Postgres => {
                "SELECT CAST(attname AS TEXT) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped"
            }
        };
        Ok(sqlx::query_scalar(sql)
            .bind(table)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A table of the mirror's name that exists already (made by hand, or for something else)
    /// must have a column for every customer field: refused before anything touches it, rather
    /// than rewritten for the agent's bookkeeping and then failing on its first row.
    async fn check_existing_table(&self) -> anyhow::Result<()> {
        let columns = self.columns_of(&self.table).await?;
        if columns.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = CUSTOMER_FIELDS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !columns.iter().any(|column| column == name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "the table `{}` exists without the columns a mirror needs: {} (a mirror table has a \
             column for every customer field, named as in the API; name a table that does not \
             exist yet in [mirror] table, and the agent makes it)",
            self.table,
            missing.join(", ")
        )
    }

    pub(super) async fn ensure_tables(&mut self) -> anyhow::Result<()> {
        self.check_existing_table().await?;
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
