//! The sync agent behind `clientele push | pull | sync` (`AGENT.md`).

pub mod compare;
pub mod fields;
pub mod job;
pub mod mapping;
pub mod mirror;
pub mod progress;
pub mod pull;
pub mod push;
pub mod report;
pub mod run;
pub mod source;
pub mod state;
pub mod sync;
pub mod transform;

/// An id for this run of a command, unique across runs, processes and machines (a ULID): what
/// keeps one run's idempotency keys from ever being another run's.
pub(crate) fn run_id() -> String {
    ulid::Ulid::new().to_string()
}
