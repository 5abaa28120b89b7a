//! The sync agent behind `clientele push | pull | sync` (`AGENT.md`).

pub mod fields;
pub mod job;
pub mod transform;
