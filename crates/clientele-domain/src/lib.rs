//! Clientele's domain: what a customer is, which writes are valid, how a write merges into the
//! stored customer, and the [`Store`] trait that storage backends implement.
//!
//! Nothing here performs I/O or knows about HTTP or SQL; the storage crate calls [`write::apply`]
//! inside its transactions and the HTTP layer maps [`DomainError`] to problem responses.

pub mod api_key;
pub mod customer;
pub mod error;
pub mod feed;
pub mod group;
pub mod id;
pub mod iso;
pub mod order;
pub mod patch;
pub mod schema;
pub mod scope;
pub mod search;
pub mod signing;
pub mod store;
pub mod sync;
pub mod timestamp;
pub mod validation;
pub mod write;

pub use api_key::{ApiKey, NewApiKey, Role};
pub use customer::{Address, AddressKind, Customer, CustomerKey, GroupMembership};
pub use error::DomainError;
pub use feed::{ChangeEvent, ChangePage, ChangeQuery};
pub use group::{Group, GroupWrite, InUse, KnownCodes, Team, TeamWrite};
pub use id::{ApiKeyId, CustomerId, OrderId};
pub use patch::Patch;
pub use scope::Scope;
pub use store::{
    ChangeKind, ClaimOutcome, Completion, Cursor, CustomerDoc, CustomerFilter, GroupCommitStats,
    GroupResults, IdempotencyClaim, ListQuery, Locator, NamePage, Page, PoolStats, Precondition,
    SortKey, SortOrder, Store, StoredResponse, TagCount, WriteCommand, WriteOutcome, WriteTarget,
};
pub use timestamp::Timestamp;
pub use validation::{FieldError, ValidationErrors};
pub use write::{
    AddressWrite, AddressesKey, AddressesMode, Applied, ApplyContext, CustomerWrite, Directory,
    EmptyDirectory, GroupRef,
};
