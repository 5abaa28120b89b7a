//! The storage boundary: one trait, implemented for SQLite and PostgreSQL by `clientele-store`.
//!
//! Each method is one unit of work (one transaction). Writes load the stored customer, call
//! [`crate::write::apply`] and persist the result together with its change record.

use async_trait::async_trait;

use crate::Scope;
use crate::feed::{ChangePage, ChangeQuery};
use crate::group::{Group, GroupWrite, KnownCodes, Team, TeamWrite};
use crate::order::{NewOrder, Order, OrderPage};
use crate::schema::Schema;
use crate::sync::{SyncBatch, SyncReport};
use crate::{
    ApiKey, ApiKeyId, Customer, CustomerId, CustomerKey, CustomerWrite, DomainError, NewApiKey,
    OrderId, Patch, Timestamp, ValidationErrors,
};

/// How a request addresses one customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locator {
    Id(CustomerId),
    Key(CustomerKey, String),
}

/// Which customer a write goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteTarget {
    /// Always a new customer; a unique-key clash is [`DomainError::DuplicateKey`].
    Create,
    /// The customer with this key value, created when there is none.
    Upsert(CustomerKey, String),
    /// An existing customer; [`DomainError::NotFound`] when there is none.
    Update(Locator),
}

/// One customer write, ready for the store: the password, if any, is already hashed.
#[derive(Clone, Debug)]
pub struct WriteCommand {
    pub target: WriteTarget,
    pub write: CustomerWrite,
    /// The Argon2id PHC string to store, `Null` to remove the password, `Absent` to keep it.
    pub password_hash: Patch<String>,
    /// `If-Match`: what the stored customer must be for the write to apply.
    pub precondition: Option<Precondition>,
    /// The customers the caller may see and change (see [`Scope::apply`]).
    pub scope: Scope,
}

/// What an `If-Match` header requires of the stored customer (RFC 9110, 13.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// `*`: that there is one, whatever its version.
    Exists,
    /// `"3"`: that it is at this version; `"0"`, that there is none yet.
    Version(i64),
}

impl Precondition {
    /// Whether the stored customer (its version, `None` when there is none) meets it.
    pub fn check(self, stored: Option<i64>) -> Result<(), DomainError> {
        match (self, stored) {
            (Precondition::Exists, Some(_)) => Ok(()),
            (Precondition::Exists, None) => Err(DomainError::NoCurrentVersion),
            (Precondition::Version(expected), actual) => {
                let actual = actual.unwrap_or(0);
                if actual == expected {
                    Ok(())
                } else {
                    Err(DomainError::VersionConflict { expected, actual })
                }
            }
        }
    }
}

/// A keyset page of a list ordered by a name (group and team codes, tags, API key ids), in
/// byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePage {
    /// The last name of the previous page.
    pub after: Option<String>,
    pub limit: u32,
}

/// A tag and how many customers (that the caller may see) carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagCount {
    pub tag: String,
    pub count: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Updated,
    Unchanged,
}

/// The kind of a change record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// A customer as stored: its response JSON, ready to send without re-encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerDoc {
    pub id: CustomerId,
    pub version: i64,
    pub json: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    CreatedAsc,
    CreatedDesc,
    UpdatedAsc,
    UpdatedDesc,
    LastNameAsc,
}

impl SortOrder {
    pub const ALL: [(SortOrder, &'static str); 5] = [
        (SortOrder::CreatedAsc, "created_at"),
        (SortOrder::CreatedDesc, "-created_at"),
        (SortOrder::UpdatedAsc, "updated_at"),
        (SortOrder::UpdatedDesc, "-updated_at"),
        (SortOrder::LastNameAsc, "last_name"),
    ];

    pub fn parse(s: &str) -> Option<SortOrder> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(o, _)| *o)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(o, _)| *o == self)
            .map_or("created_at", |(_, name)| name)
    }
}

/// The value a keyset page continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    Time(i64),
    Text(String),
}

/// The position after the last customer of a page: its sort key and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub key: SortKey,
    pub id: CustomerId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: u32,
    pub sort: SortOrder,
    pub after: Option<Cursor>,
    pub filter: CustomerFilter,
    /// The customers the caller may see; a team scope filters like a `team` filter.
    pub scope: Scope,
}

/// The filters of `GET /v1/customers`, all combined with AND; `None` means not filtered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerFilter {
    /// Inclusive.
    pub created_after: Option<Timestamp>,
    /// Exclusive.
    pub created_before: Option<Timestamp>,
    /// Inclusive.
    pub updated_after: Option<Timestamp>,
    /// Exclusive.
    pub updated_before: Option<Timestamp>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub tag: Option<String>,
    pub group: Option<String>,
    /// With `group`: members of the group's descendants count too.
    pub include_subgroups: bool,
    pub team: Option<String>,
    /// `None` is `any`.
    pub archived: Option<bool>,
    /// Case-insensitive prefix over names, email, phone, company and external id.
    pub q: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<CustomerDoc>,
    /// Present when there may be more.
    pub next: Option<Cursor>,
}

/// Connection-pool figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

/// Group commit of single creates (figures since start), for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions that wrote a group of creates.
    pub groups: u64,
    /// Creates answered by those groups.
    pub creates: u64,
}

/// A request's hold on an `Idempotency-Key` (per API key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub api_key: ApiKeyId,
    pub key: String,
    /// A hash of method, path and body: the same key with another request is refused.
    pub fingerprint: Vec<u8>,
    pub at: Timestamp,
}

/// What claiming an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key is this request's now: run it.
    Claimed,
    /// The same request ran before: answer with its response.
    Replay(StoredResponse),
    /// The same request is still running.
    InFlight,
    /// The key was used with a different request.
    Reused,
}

/// A response as recorded for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_MICROS: i64 = 24 * 3600 * 1_000_000;
/// After this long a claim whose request never finished (its process died) may be taken over.
pub const IDEMPOTENCY_LEASE_MICROS: i64 = 10 * 60 * 1_000_000;

/// Completes an idempotency claim in the transaction of the write it answers for, so a write
/// is never committed without the response a retry will replay.
pub struct Completion<'a, T> {
    pub claim: &'a IdempotencyClaim,
    pub render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
}

impl<T> Clone for Completion<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Completion<'_, T> {}

/// The result of each item of a group write, in order.
pub type GroupResults = Vec<Result<(WriteOutcome, Group), DomainError>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates, upserts or updates one customer and records the change in the same transaction.
    async fn write_customer(
        &self,
        command: WriteCommand,
        completion: Option<Completion<'_, (WriteOutcome, Customer)>>,
    ) -> Result<(WriteOutcome, Customer), DomainError>;

    /// Applies a sync batch in one transaction (nothing at all when it is atomic and an item
    /// failed).
    async fn sync_customers(
        &self,
        batch: &SyncBatch,
        completion: Option<Completion<'_, SyncReport>>,
    ) -> Result<SyncReport, DomainError>;

    async fn claim_idempotency(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, DomainError>;

    /// Records the response of a claimed request that wrote nothing (a refusal).
    async fn complete_idempotency(
        &self,
        claim: &IdempotencyClaim,
        response: &StoredResponse,
    ) -> Result<(), DomainError>;

    /// Gives up a claim (the request failed on the server side and may be retried).
    async fn release_idempotency(&self, claim: &IdempotencyClaim) -> Result<(), DomainError>;

    /// Forgets idempotency keys claimed before `before`; returns how many.
    async fn purge_idempotency(&self, before: Timestamp) -> Result<u64, DomainError>;

    /// Records the nonce of an accepted signed request; `false` when this key used it before
    /// (a replay). Shared by every hub process on the database.
    async fn record_nonce(
        &self,
        key: ApiKeyId,
        nonce: &str,
        at: Timestamp,
    ) -> Result<bool, DomainError>;

    /// Forgets the nonce of a signed request that changed nothing (it failed on the server
    /// side), so that the client may send the same signed request again.
    async fn release_nonce(&self, key: ApiKeyId, nonce: &str) -> Result<(), DomainError>;

    /// Forgets nonces recorded before `before`; returns how many.
    async fn purge_nonces(&self, before: Timestamp) -> Result<u64, DomainError>;

    async fn get_customer(&self, locator: &Locator) -> Result<Option<CustomerDoc>, DomainError>;

    /// Hard-deletes (erases) a customer and records a `deleted` change.
    async fn delete_customer(
        &self,
        locator: &Locator,
        scope: &Scope,
        precondition: Option<Precondition>,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError>;

    async fn list_customers(&self, query: &ListQuery) -> Result<Page, DomainError>;

    /// A page of the change feed after `query.after`, in commit order; waits up to
    /// `query.wait` for a first change. [`DomainError::CursorExpired`] when changes after
    /// `query.after` were purged.
    async fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, DomainError>;

    /// The feed position now: every change up to it is committed and visible to reads that
    /// start after this call, and every later change gets a greater seq.
    async fn feed_position(&self) -> Result<i64, DomainError>;

    /// Forgets the changes recorded before `before` (retention); returns how many. A cursor
    /// below the purged ones is expired from then on.
    async fn purge_changes(&self, before: Timestamp) -> Result<u64, DomainError>;

    /// The customer's id and stored password hash (`None` when no password is set).
    async fn password_hash(
        &self,
        locator: &Locator,
    ) -> Result<Option<(CustomerId, Option<String>)>, DomainError>;

    /// Stores a new key; an idempotent creation records its response in the same transaction.
    async fn insert_api_key(
        &self,
        key: &NewApiKey,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError>;

    /// Calls `revoked` whenever a hub process on this database revokes an API key, for as long
    /// as the store lives, so that a process that caches keys drops them at once. Also called
    /// when revocations may have been missed (a lost connection). A store that only this
    /// process writes never calls it: the process knows its own revocations.
    fn on_key_revoked(&self, _revoked: std::sync::Arc<dyn Fn() + Send + Sync>) {}

    /// Stores `key`, or makes the key with the same lookup hash (the same secret) live again
    /// with `key`'s role, teams and encrypted secret: the bootstrap key exists whenever its
    /// secret is configured, even after a revocation or with another master key.
    async fn restore_api_key(&self, key: &NewApiKey) -> Result<(), DomainError>;

    /// The live (not revoked) key with this lookup hash.
    async fn api_key_by_lookup(&self, lookup_hash: &[u8]) -> Result<Option<ApiKey>, DomainError>;

    /// The live key with this id (signed requests name their key by id).
    async fn api_key_by_id(&self, id: ApiKeyId) -> Result<Option<ApiKey>, DomainError>;

    /// A page of the live keys in id order: at most `page.limit`, after the id `page.after`.
    async fn list_api_keys(&self, page: &NamePage) -> Result<Vec<ApiKey>, DomainError>;

    /// Revokes a live key, recording the completion in the same transaction; `false` (and
    /// nothing recorded) when there is no live key with this id.
    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: Timestamp,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<bool, DomainError>;

    async fn count_api_keys(&self) -> Result<i64, DomainError>;

    /// Stores an order for the customer `new` names, in one transaction with its idempotent
    /// response. A customer missing or outside `scope` is [`DomainError::NotFound`].
    async fn create_order(
        &self,
        new: &NewOrder,
        scope: &Scope,
        completion: Option<Completion<'_, Order>>,
    ) -> Result<Order, DomainError>;

    /// The order, unless it is missing or its customer is outside `scope`.
    async fn get_order(&self, id: OrderId, scope: &Scope) -> Result<Option<Order>, DomainError>;

    /// A page of the customer's orders in creation order after `after`; `None` when the
    /// customer is missing or outside `scope`.
    async fn customer_orders(
        &self,
        customer: &Locator,
        scope: &Scope,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Option<OrderPage>, DomainError>;

    /// The customer schema in force (the default when none was set).
    async fn get_schema(&self) -> Result<Schema, DomainError>;

    /// Replaces the customer schema; stored customers are not revalidated.
    async fn put_schema(
        &self,
        schema: &Schema,
        completion: Option<Completion<'_, Schema>>,
    ) -> Result<(), DomainError>;
    /// Applies group writes in order in one transaction (`PUT` is a batch of one); each item
    /// fails alone. An item that could not be read is passed as its errors. A completion is
    /// recorded in that transaction, whatever the items' results.
    async fn write_groups(
        &self,
        items: &[Result<GroupWrite, ValidationErrors>],
        completion: Option<Completion<'_, GroupResults>>,
    ) -> Result<GroupResults, DomainError>;

    async fn get_group(&self, code: &str) -> Result<Option<Group>, DomainError>;

    /// Groups by code, after `after`, at most `limit`.
    async fn list_groups(&self, page: &NamePage) -> Result<Vec<Group>, DomainError>;

    /// Deletes a group without subgroups or members (else [`DomainError::InUse`]).
    async fn delete_group(
        &self,
        code: &str,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError>;

    /// Creates or changes a team; a completion is recorded in the same transaction (also when
    /// the team is unchanged).
    async fn write_team(
        &self,
        code: &str,
        write: &TeamWrite,
        completion: Option<Completion<'_, (WriteOutcome, Team)>>,
    ) -> Result<(WriteOutcome, Team), DomainError>;

    async fn get_team(&self, code: &str) -> Result<Option<Team>, DomainError>;

    /// Teams by code, after `after`, at most `limit`; only those `among` names, when given (a
    /// team-restricted key's own).
    async fn list_teams(
        &self,
        page: &NamePage,
        among: Option<&[String]>,
    ) -> Result<Vec<Team>, DomainError>;

    /// Deletes a team no customer and no live API key belongs to (else [`DomainError::InUse`]).
    async fn delete_team(
        &self,
        code: &str,
        completion: Option<Completion<'_, ()>>,
    ) -> Result<(), DomainError>;

    /// Which of these group and team codes exist.
    async fn known_codes(
        &self,
        groups: &[String],
        teams: &[String],
    ) -> Result<KnownCodes, DomainError>;

    /// Tags with the number of customers in `scope` carrying them, by tag, after `after`, at
    /// most `limit`.
    async fn tag_counts(
        &self,
        scope: &Scope,
        page: &NamePage,
    ) -> Result<Vec<TagCount>, DomainError>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), DomainError>;

    fn pool_stats(&self) -> PoolStats;

    /// How single creates were grouped; all zero for a store that writes them one by one.
    fn group_commit_stats(&self) -> GroupCommitStats {
        GroupCommitStats::default()
    }

    /// Which backend this is (`sqlite` or `postgres`), for logs and metrics.
    fn backend(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_precondition_is_met_by_the_customer_it_names() {
        assert!(Precondition::Exists.check(Some(3)).is_ok());
        assert!(matches!(
            Precondition::Exists.check(None),
            Err(DomainError::NoCurrentVersion)
        ));
        assert!(Precondition::Version(3).check(Some(3)).is_ok());
        assert!(Precondition::Version(0).check(None).is_ok());
        assert!(matches!(
            Precondition::Version(2).check(Some(3)),
            Err(DomainError::VersionConflict {
                expected: 2,
                actual: 3
            })
        ));
        assert!(matches!(
            Precondition::Version(1).check(None),
            Err(DomainError::VersionConflict {
                expected: 1,
                actual: 0
            })
        ));
    }
}
