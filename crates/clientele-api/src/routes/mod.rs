//! The routes, grouped by resource; each module's `router()` documents what it serves.

pub(crate) mod api_keys;
pub(crate) mod customers;
pub(crate) mod groups;
pub(crate) mod name_page;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod schema;
pub(crate) mod sync;
pub(crate) mod tags;
pub(crate) mod teams;
