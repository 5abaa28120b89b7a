//! [`SqlStore`]: the domain [`Store`] over any [`Backend`], so that SQLite and PostgreSQL share
//! every code path above connection handling.

use std::sync::Arc;

use async_trait::async_trait;
use clientele_domain::group::Hierarchy;
use clientele_domain::{
    ApiKey, ApiKeyId, ChangePage, ChangeQuery, Customer, CustomerDoc, CustomerId, DomainError,
    Group, GroupCommitStats, GroupResults, GroupWrite, KnownCodes, ListQuery, Locator, NamePage,
    NewApiKey, OrderId, Page, PoolStats, Precondition, Scope, Store, TagCount, Team, TeamWrite,
    Timestamp, ValidationErrors, WriteCommand, WriteOutcome,
};

use clientele_domain::order::{NewOrder, Order, OrderPage};
use clientele_domain::schema::Schema;
use clientele_domain::sync::{SyncBatch, SyncReport};
use clientele_domain::{ClaimOutcome, Completion, IdempotencyClaim, StoredResponse};

use crate::directory::{DirectoryQueries, DirectoryTx};
use crate::feed::{self, FeedQueries, FeedSignal, FeedTx};
use crate::group_commit::{self, CreateWriter};
use crate::heartbeat::Heartbeat;
use crate::orders::{self, OrderQueries, OrderTx};
use crate::primitives::{BatchTx, CustomerTx, KeyColumn, KeyValue, Queries};
use crate::schema_store::{self, SchemaTx};
use crate::unit_of_work;

/// What a database backend provides: write transactions and pools to run queries on.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    type Tx: CustomerTx
        + BatchTx
        + DirectoryTx
        + OrderTx
        + SchemaTx
        + FeedTx
        + crate::search::BackfillTx;
    type Reader: Queries + DirectoryQueries + OrderQueries + FeedQueries;

    const NAME: &'static str;

    /// A transaction that may write (on SQLite: the one writer connection, `BEGIN IMMEDIATE`).
    async fn begin_write(&self) -> Result<Self::Tx, DomainError>;

    /// A read-only snapshot to plan a sync batch in before taking the write lock, where writes
    /// are serialized (SQLite); `None` where planning inside the write transaction is better
    /// (PostgreSQL locks only the rows a batch touches).
    async fn begin_snapshot(&self) -> Result<Option<Self::Tx>, DomainError>;

    /// The pool that serves reads.
    fn reads(&self) -> &Self::Reader;

    /// One customer by id or unique key: `GET /v1/customers/{id}`, the hottest read.
    async fn customer_doc(&self, locator: &Locator) -> Result<Option<CustomerDoc>, DomainError> {
        self.reads().customer_doc(locator).await
    }

    /// The pool for single-statement writes outside customer transactions (API keys).
    fn writes(&self) -> &Self::Reader;

    /// Tells the other hub processes on this database, at the commit of `tx`, that an API key
    /// was revoked (nothing where no other process shares the database).
    async fn announce_key_revocation(&self, _tx: &mut Self::Tx) -> Result<(), DomainError> {
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats;
}

pub struct SqlStore<B> {
    backend: Arc<B>,
    /// Writes concurrent single creates together.
    creates: CreateWriter,
    /// Wakes change-feed long polls after commits that recorded changes.
    feed: FeedSignal,
    /// Who to tell when another process revokes an API key.
    key_revoked: KeyRevoked,
    /// This process's incarnation, which holds its idempotency claims, kept alive.
    heartbeat: Heartbeat,
}

/// What [`Store::on_key_revoked`] is given to call.
type Callback = Arc<dyn Fn() + Send + Sync>;

/// The callbacks of [`Store::on_key_revoked`], called by a backend's listener.
#[derive(Clone, Default)]
pub(crate) struct KeyRevoked(Arc<std::sync::Mutex<Vec<Callback>>>);

impl KeyRevoked {
    pub(crate) fn notify(&self) {
        let callbacks = self
            .0
            .lock()
            .map(|callbacks| callbacks.clone())
            .unwrap_or_default();
        for callback in callbacks {
            callback();
        }
    }

    fn add(&self, callback: Callback) {
        if let Ok(mut callbacks) = self.0.lock() {
            callbacks.push(callback);
        }
    }
}

impl<B> SqlStore<B> {
    pub(crate) fn new(backend: B) -> Self
    where
        B: Backend,
    {
        let backend = Arc::new(backend);
        Self {
            creates: CreateWriter::start(Arc::clone(&backend)),
            heartbeat: Heartbeat::start(Arc::downgrade(&backend)),
            backend,
            feed: FeedSignal::new(),
            key_revoked: KeyRevoked::default(),
        }
    }

    pub(crate) fn feed_signal(&self) -> &FeedSignal {
        &self.feed
    }

    pub(crate) fn key_revoked(&self) -> &KeyRevoked {
        &self.key_revoked
    }

    #[cfg(test)]
    pub(crate) fn sql_backend(&self) -> &B {
        &self.backend
    }
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn write_customer(
        &self,
        command: WriteCommand,
        completion: Option<Completion<'_, (WriteOutcome, Customer)>>,
    ) -> Result<(WriteOutcome, Customer), DomainError> {
        let result = if group_commit::groupable(&command, completion.is_some()) {
            self.creates.create(command).await?
        } else {
            unit_of_work::write_customer(|| self.backend.begin_write(), &command, completion)
                .await?
        };
        if result.0 != WriteOutcome::Unchanged {
            self.feed.notify();
        }
        Ok(result)
    }

    async fn sync_customers(
        &self,
        batch: &SyncBatch,
        completion: Option<Completion<'_, SyncReport>>,
    ) -> Result<SyncReport, DomainError> {
        let report = unit_of_work::sync_customers(&*self.backend, batch, completion).await?;
        if report.applied {
            self.feed.notify();
        }
        Ok(report)
    }

    async fn claim_idempotency(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, DomainError> {
        let incarnation = self.heartbeat.incarnation();
        unit_of_work::claim_idempotency(self.backend.writes(), claim, incarnation).await
    }

    async fn complete_idempotency(
        &self,
        claim: &IdempotencyClaim,
        response: &StoredResponse,
    ) -> Result<(), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        tx.complete_idempotency(claim, response).await?;
        tx.commit().await
    }

    async fn release_idempotency(&self, claim: &IdempotencyClaim) -> Result<(), DomainError> {
        self.backend.writes().release_claim(claim).await
    }

    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, DomainError> {
        self.backend.writes().purge_claims(before).await
    }

    async fn record_nonce(
        &self,
        key: ApiKeyId,
        nonce: &str,
        at: Timestamp,
    ) -> Result<bool, DomainError> {
        self.backend.writes().insert_nonce(key, nonce, at).await
    }

    async fn release_nonce(&self, key: ApiKeyId, nonce: &str) -> Result<(), DomainError> {
        self.backend.writes().delete_nonce(key, nonce).await
    }

    async fn purge_nonces(&self, before: Timestamp) -> Result<u64, DomainError> {
        self.backend.writes().purge_nonces(before).await
    }

    async fn get_customer(&self, locator: &Locator) -> Result<Option<CustomerDoc>, DomainError> {
        self.backend.customer_doc(locator).await
    }

    async fn delete_customer(
        &self,
        locator: &Locator,
        scope: &Scope,
        precondition: Option<Precondition>,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError> {
        let begin = || self.backend.begin_write();
        unit_of_work::delete_customer(begin, locator, scope, precondition, completion).await?;
        self.feed.notify();
        Ok(())
    }

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, DomainError> {
        feed::change_page(self.backend.reads(), &self.feed, query).await
    }

    async fn feed_position(&self) -> Result<i64, DomainError> {
        let (last, purged) = self.backend.reads().feed_marks().await?;
        Ok(last.max(purged))
    }

    async fn purge_changes(&self, before: Timestamp) -> Result<u64, DomainError> {
        let mut purged = 0;
        loop {
            let mut tx = self.backend.begin_write().await?;
            let (deleted, more) = tx.purge_chunk(before).await?;
            tx.commit().await?;
            purged += deleted;
            if !more {
                return Ok(purged);
            }
        }
    }

    async fn list_customers(&self, query: &ListQuery) -> Result<Page, DomainError> {
        self.backend.reads().customer_page(query).await
    }

    async fn password_hash(
        &self,
        locator: &Locator,
    ) -> Result<Option<(CustomerId, Option<String>)>, DomainError> {
        self.backend.reads().password_hash(locator).await
    }

    async fn insert_api_key(
        &self,
        key: &NewApiKey,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        // The key's teams are checked in the transaction that stores it, and locked against
        // deletion where the backend locks rows: a concurrent delete of one of them either
        // waits and then finds the key (in use), or deletes first and the key is refused here.
        let teams = &key.key.teams;
        if !teams.is_empty() {
            let known = tx.known_codes(&[], teams).await?;
            let mut errors = ValidationErrors::default();
            for team in teams.iter().filter(|team| !known.teams.contains(*team)) {
                errors.push(
                    "teams",
                    "unknown_team",
                    format!("there is no team {team:?}"),
                );
            }
            errors.into_result()?;
        }
        tx.insert_api_key(key, false).await?;
        complete(&mut tx, completion, &()).await?;
        tx.commit().await
    }

    async fn restore_api_key(&self, key: &NewApiKey) -> Result<(), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        tx.insert_api_key(key, true).await?;
        tx.commit().await
    }

    async fn api_key_by_lookup(&self, lookup_hash: &[u8]) -> Result<Option<ApiKey>, DomainError> {
        let value = KeyValue::Bytes(lookup_hash);
        self.backend
            .reads()
            .api_key_where(KeyColumn::LookupHash, value)
            .await
    }

    async fn api_key_by_id(&self, id: ApiKeyId) -> Result<Option<ApiKey>, DomainError> {
        let id = id.to_string();
        let value = KeyValue::Text(&id);
        self.backend
            .reads()
            .api_key_where(KeyColumn::Id, value)
            .await
    }

    async fn list_api_keys(&self, page: &NamePage) -> Result<Vec<ApiKey>, DomainError> {
        self.backend.reads().api_keys(page).await
    }

    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: Timestamp,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<bool, DomainError> {
        let mut tx = self.backend.begin_write().await?;
        if !tx.revoke_api_key(id, at).await? {
            return Ok(false);
        }
        self.backend.announce_key_revocation(&mut tx).await?;
        complete(&mut tx, completion, &()).await?;
        tx.commit().await?;
        Ok(true)
    }

    fn on_key_revoked(&self, revoked: Callback) {
        self.key_revoked.add(revoked);
    }

    async fn count_api_keys(&self) -> Result<i64, DomainError> {
        self.backend.reads().count_api_keys().await
    }

    async fn create_order(
        &self,
        new: &NewOrder,
        scope: &Scope,
        completion: Option<Completion<'_, Order>>,
    ) -> Result<Order, DomainError> {
        let tx = self.backend.begin_write().await?;
        orders::create_order(tx, new, scope, completion).await
    }

    async fn get_order(&self, id: OrderId, scope: &Scope) -> Result<Option<Order>, DomainError> {
        orders::get_order(self.backend.reads(), id, scope).await
    }

    async fn customer_orders(
        &self,
        customer: &Locator,
        scope: &Scope,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Option<OrderPage>, DomainError> {
        orders::customer_orders(self.backend.reads(), customer, scope, after, limit).await
    }

    async fn get_schema(&self) -> Result<Schema, DomainError> {
        // A new read transaction sees the schema committed last: SQLite's readers need not
        // queue for the writer (PostgreSQL's reads and writes share one pool).
        let tx = match self.backend.begin_snapshot().await? {
            Some(tx) => tx,
            None => self.backend.begin_write().await?,
        };
        schema_store::get(tx).await
    }

    async fn put_schema(
        &self,
        schema: &Schema,
        completion: Option<Completion<'_, Schema>>,
    ) -> Result<(), DomainError> {
        schema_store::put(self.backend.begin_write().await?, schema, completion).await
    }

    async fn write_groups(
        &self,
        items: &[Result<GroupWrite, ValidationErrors>],
        completion: Option<Completion<'_, GroupResults>>,
    ) -> Result<GroupResults, DomainError> {
        let mut tx = self.backend.begin_write().await?;
        let named: Vec<String> = items
            .iter()
            .flatten()
            .flat_map(|write| write.code.iter().chain(write.parent.value()))
            // A malformed code names no group (and PostgreSQL text cannot hold every string).
            .filter(|code| clientele_domain::group::is_valid_code(code))
            .cloned()
            .collect();
        let plan = Hierarchy::new(tx.lock_groups(&named).await?).plan(items, Timestamp::now());
        if !plan.upserts.is_empty() {
            tx.upsert_groups(&plan.upserts).await?;
        }
        if let Some(completion) = completion {
            let response = (completion.render)(&plan.results);
            tx.complete_idempotency(completion.claim, &response).await?;
        } else if plan.upserts.is_empty() {
            return Ok(plan.results);
        }
        tx.commit().await?;
        Ok(plan.results)
    }

    async fn get_group(&self, code: &str) -> Result<Option<Group>, DomainError> {
        self.backend.reads().group(code).await
    }

    async fn list_groups(&self, page: &NamePage) -> Result<Vec<Group>, DomainError> {
        self.backend.reads().groups(page).await
    }

    async fn delete_group(
        &self,
        code: &str,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        // Only the lock: the delete checks its own subgroups and members.
        tx.lock_groups(&[]).await?;
        tx.delete_group(code).await?;
        complete(&mut tx, completion, &()).await?;
        tx.commit().await
    }

    async fn write_team(
        &self,
        code: &str,
        write: &TeamWrite,
        completion: Option<Completion<'_, (WriteOutcome, Team)>>,
    ) -> Result<(WriteOutcome, Team), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        let stored = tx.team_for_update(code).await?;
        let result = write.apply(code, stored.as_ref(), Timestamp::now())?;
        if result.0 != WriteOutcome::Unchanged {
            tx.upsert_team(&result.1).await?;
        } else if completion.is_none() {
            return Ok(result);
        }
        complete(&mut tx, completion, &result).await?;
        tx.commit().await?;
        Ok(result)
    }

    async fn get_team(&self, code: &str) -> Result<Option<Team>, DomainError> {
        self.backend.reads().team(code).await
    }

    async fn list_teams(
        &self,
        page: &NamePage,
        among: Option<&[String]>,
    ) -> Result<Vec<Team>, DomainError> {
        self.backend.reads().teams(page, among).await
    }

    async fn delete_team(
        &self,
        code: &str,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError> {
        let mut tx = self.backend.begin_write().await?;
        tx.delete_team(code).await?;
        complete(&mut tx, completion, &()).await?;
        tx.commit().await
    }

    async fn known_codes(
        &self,
        groups: &[String],
        teams: &[String],
    ) -> Result<KnownCodes, DomainError> {
        let mut tx = self.backend.begin_write().await?;
        let known = tx.known_codes(groups, teams).await?;
        tx.commit().await?;
        Ok(known)
    }

    async fn tag_counts(
        &self,
        scope: &Scope,
        page: &NamePage,
    ) -> Result<Vec<TagCount>, DomainError> {
        self.backend.reads().tag_counts(scope, page).await
    }

    async fn ping(&self) -> Result<(), DomainError> {
        self.backend.reads().ping().await
    }

    fn pool_stats(&self) -> PoolStats {
        self.backend.pool_stats()
    }

    fn group_commit_stats(&self) -> GroupCommitStats {
        self.creates.stats()
    }

    fn backend(&self) -> &'static str {
        B::NAME
    }
}

/// Records the idempotent response of `result`, if the request has a key, in `tx`: committed
/// with the write it answers for, or not at all.
async fn complete<T>(
    tx: &mut impl CustomerTx,
    completion: Option<Completion<'_, T>>,
    result: &T,
) -> Result<(), DomainError> {
    if let Some(completion) = completion {
        let response = (completion.render)(result);
        tx.complete_idempotency(completion.claim, &response).await?;
    }
    Ok(())
}
