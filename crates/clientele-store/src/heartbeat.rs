//! Which hub processes are alive, for idempotency claims: each process draws an incarnation (a
//! ULID) when it opens the store, writes it with every key it claims, and records in
//! `hub_processes` every [`HEARTBEAT_EVERY`] that it is still running. A claim left in flight by
//! a process not seen for [`OWNER_STALE_MICROS`] (killed, its machine lost) is taken over then,
//! not at the end of the claim's 10-minute lease.

use std::sync::Weak;
use std::time::Duration;

use clientele_domain::Timestamp;
use tokio::task::JoinHandle;

use crate::primitives::Queries;
use crate::sql_store::Backend;

/// How often a process records that it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How long a process may go unseen before the keys it holds in flight are deemed abandoned:
/// six heartbeats, so that a database busy for a while does not hand a running request's key
/// to its retry.
pub(crate) const OWNER_STALE_MICROS: i64 = 30 * 1_000_000;

/// Processes unseen for this long are forgotten (a claim whose owner is forgotten is abandoned).
const FORGET_AFTER_MICROS: i64 = 3600 * 1_000_000;

/// This process's incarnation and its heartbeat task; dropping it stops the task.
pub(crate) struct Heartbeat {
    incarnation: String,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts recording that this process is alive; the first record is written at once. The
    /// task stops with the backend.
    pub(crate) fn start<B: Backend>(backend: Weak<B>) -> Heartbeat {
        let incarnation = ulid::Ulid::new().to_string();
        let task = tokio::spawn({
            let incarnation = incarnation.clone();
            async move {
                let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(backend) = backend.upgrade() else {
                        return;
                    };
                    let now = Timestamp::now();
                    let forget_before =
                        Timestamp::from_micros(now.as_micros() - FORGET_AFTER_MICROS);
                    if let Err(error) = backend
                        .writes()
                        .heartbeat(&incarnation, now, forget_before)
                        .await
                    {
                        tracing::warn!(%error, "recording this hub process's heartbeat failed");
                    }
                }
            }
        });
        Heartbeat { incarnation, task }
    }

    pub(crate) fn incarnation(&self) -> &str {
        &self.incarnation
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
