//! What `sync` writes down before it sends a create or an edit, and forgets in the
//! transaction that writes the hub's answer back: a run killed in between finds it on the next
//! start and sends it again under the same idempotency key, so the hub replays what it did.

use serde_json::Value;

use super::Mirror;

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

impl Mirror {
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
}
