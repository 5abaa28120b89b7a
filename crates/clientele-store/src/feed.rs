//! The change feed's storage side: reading pages of `changes` in seq order (which is commit
//! order on both backends, see `docs/change-feed.md`), the retention purge and its horizon, the
//! feed position lists report, and the wake-up signal long polls wait on.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use clientele_domain::{ChangePage, ChangeQuery, DomainError, Scope, Timestamp};
use tokio::sync::watch;

/// Rows deleted per purge transaction, so that retention never holds the write lock long.
pub(crate) const PURGE_CHUNK: i64 = 10_000;

/// How often a waiting long poll looks again even without a signal: covers a notification lost
/// while a PostgreSQL listener reconnects, and writers in other processes on one SQLite file.
const RECHECK: Duration = Duration::from_secs(1);

/// The feed reads, served from the read pool.
#[async_trait]
pub(crate) trait FeedQueries: Send + Sync {
    /// Up to `limit` changes after `after` that `scope` may see, in seq order.
    async fn change_rows(
        &self,
        after: i64,
        limit: u32,
        scope: &Scope,
    ) -> Result<Vec<clientele_domain::ChangeEvent>, DomainError>;

    /// `(highest seq recorded, highest seq purged)`.
    async fn feed_marks(&self) -> Result<(i64, i64), DomainError>;
}

/// The retention purge, inside a write transaction.
#[async_trait]
pub(crate) trait FeedTx: Send {
    /// Deletes up to [`PURGE_CHUNK`] seqs of the changes recorded before `before`, moving the
    /// horizon with them; returns how many rows went and whether more are due.
    async fn purge_chunk(&mut self, before: Timestamp) -> Result<(u64, bool), DomainError>;
}

/// Tells waiting long polls that changes were committed. Each store owns one; PostgreSQL
/// stores also feed it from `LISTEN`, so commits through other hub processes wake them too.
#[derive(Clone)]
pub(crate) struct FeedSignal(watch::Sender<u64>);

impl FeedSignal {
    pub fn new() -> Self {
        Self(watch::Sender::new(0))
    }

    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A page of the feed, waiting up to `query.wait` for a first change. Rows are read before the
/// horizon, so a purge between the two reads makes the answer `CursorExpired` rather than a gap.
pub(crate) async fn change_page(
    reads: &impl FeedQueries,
    signal: &FeedSignal,
    query: &ChangeQuery,
) -> Result<ChangePage, DomainError> {
    let deadline = Instant::now() + query.wait;
    let mut changed = signal.0.subscribe();
    loop {
        changed.borrow_and_update();
        // A team-scoped reader skips the changes it may not see. Without a ceiling it would stay
        // behind them and rescan them on every poll; the ceiling is read first, so every change
        // at or below it has committed (seq order is commit order) and is in the rows below.
        let ceiling = match query.scope {
            Scope::All => None,
            Scope::Teams(_) => Some(reads.feed_marks().await?.0),
        };
        let events = reads
            .change_rows(query.after, query.limit, &query.scope)
            .await?;
        let (_, horizon) = reads.feed_marks().await?;
        if query.after < horizon {
            return Err(DomainError::CursorExpired {
                after: query.after,
                horizon,
            });
        }
        let now = Instant::now();
        if !events.is_empty() || now >= deadline {
            let short = events.len() < query.limit as usize;
            let mut page = ChangePage::new(events, query.after);
            if let Some(ceiling) = ceiling.filter(|_| short) {
                page.next_after = page.next_after.max(ceiling);
            }
            return Ok(page);
        }
        let pause = (deadline - now).min(RECHECK);
        let _ = tokio::time::timeout(pause, changed.changed()).await;
    }
}

/// Implements [`FeedQueries`] for a backend's pool and [`FeedTx`] for its transaction.
/// `teams_match` is the SQL that is true when the row's `teams` share one with `$3`, bound by
/// `teams_param`.
macro_rules! feed_primitives {
    ($db:ty, teams_match = $teams_match:literal, teams_param = $teams_param:expr) => {
        #[async_trait::async_trait]
        impl $crate::feed::FeedQueries for sqlx::Pool<$db> {
            async fn change_rows(
                &self,
                after: i64,
                limit: u32,
                scope: &clientele_domain::Scope,
            ) -> Result<Vec<clientele_domain::ChangeEvent>, clientele_domain::DomainError> {
                use sqlx::Row;
                let db = $crate::error::db_error;
                const COLUMNS: &str =
                    "SELECT seq, kind, customer_id, external_id, version, at, customer FROM changes";
                let rows = match scope.teams() {
                    None => {
                        let sql = format!("{COLUMNS} WHERE seq > $1 ORDER BY seq LIMIT $2");
                        sqlx::query(&sql)
                            .bind(after)
                            .bind(i64::from(limit))
                            .fetch_all(self)
                            .await
                    }
                    Some(teams) => {
                        let sql = format!(
                            "{COLUMNS} WHERE seq > $1 AND {} ORDER BY seq LIMIT $2",
                            $teams_match
                        );
                        sqlx::query(&sql)
                            .bind(after)
                            .bind(i64::from(limit))
                            .bind($teams_param(teams))
                            .fetch_all(self)
                            .await
                    }
                }
                .map_err(db)?;
                rows.iter()
                    .map(|row| {
                        let kind: &str = row.try_get(1).map_err(db)?;
                        clientele_domain::ChangeEvent {
                            seq: row.try_get(0).map_err(db)?,
                            kind: clientele_domain::ChangeKind::parse(kind).ok_or_else(|| {
                                clientele_domain::DomainError::Storage(
                                    format!("unknown change kind {kind}").into(),
                                )
                            })?,
                            customer_id: $crate::primitives::decode_id(
                                row.try_get(2).map_err(db)?,
                            )?,
                            external_id: row.try_get(3).map_err(db)?,
                            version: row.try_get(4).map_err(db)?,
                            at: clientele_domain::Timestamp::from_micros(
                                row.try_get(5).map_err(db)?,
                            ),
                            customer: row.try_get(6).map_err(db)?,
                        }
                        .as_seen_by(scope)
                    })
                    .collect()
            }

            async fn feed_marks(&self) -> Result<(i64, i64), clientele_domain::DomainError> {
                sqlx::query_as(
                    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM changes), purged_through \
                     FROM change_feed_horizon",
                )
                .fetch_one(self)
                .await
                .map_err($crate::error::db_error)
            }
        }

        #[async_trait::async_trait]
        impl $crate::feed::FeedTx for sqlx::Transaction<'static, $db> {
            async fn purge_chunk(
                &mut self,
                before: clientele_domain::Timestamp,
            ) -> Result<(u64, bool), clientele_domain::DomainError> {
                let db = $crate::error::db_error;
                let horizon: i64 =
                    sqlx::query_scalar("SELECT purged_through FROM change_feed_horizon")
                        .fetch_one(&mut **self)
                        .await
                        .map_err(db)?;
                // Changes are purged as a prefix of the seq order: up to the first one that is
                // still within retention.
                let first_kept: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM changes WHERE seq > $1 AND at >= $2 ORDER BY seq LIMIT 1",
                )
                .bind(horizon)
                .bind(before.as_micros())
                .fetch_optional(&mut **self)
                .await
                .map_err(db)?;
                let target = match first_kept {
                    Some(seq) => seq - 1,
                    None => {
                        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM changes")
                            .fetch_one(&mut **self)
                            .await
                            .map_err(db)?
                            .unwrap_or(horizon)
                    }
                };
                if target <= horizon {
                    return Ok((0, false));
                }
                let upto = target.min(horizon + $crate::feed::PURGE_CHUNK);
                let deleted = sqlx::query("DELETE FROM changes WHERE seq > $1 AND seq <= $2")
                    .bind(horizon)
                    .bind(upto)
                    .execute(&mut **self)
                    .await
                    .map_err(db)?
                    .rows_affected();
                sqlx::query("UPDATE change_feed_horizon SET purged_through = $1")
                    .bind(upto)
                    .execute(&mut **self)
                    .await
                    .map_err(db)?;
                Ok((deleted, upto < target))
            }
        }
    };
}

pub(crate) use feed_primitives;
