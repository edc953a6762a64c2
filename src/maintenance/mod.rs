//! Housekeeping that keeps the identity tables bounded: forgetting spent
//! refresh tokens of ended sessions, and writing the summary rows of
//! sampled audit events. Any replica may run it; every step is idempotent.
//! Deleting what is old (finished jobs, audit rows, ended sessions, stale
//! login counters) is [`retention`]'s, one replica at a time.

pub mod fleet;
pub mod memory;
pub mod retention;
pub mod schedules;
pub mod walks;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Identity;

/// How often the housekeeping runs.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Runs the housekeeping every `interval` until `shutdown`, then writes the
/// audit summaries still pending.
pub async fn run(identity: Identity, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        ticks += 1;
        if let Err(error) = identity.audit.flush_summaries(false).await {
            tracing::warn!(%error, "could not write audit summaries");
        }
        // The tables change slowly; sweep them every minute or so.
        if ticks % 6 == 0 {
            if let Err(error) = identity.sessions.prune().await {
                tracing::warn!(%error, "could not prune spent refresh tokens");
            }
        }
    }
    if let Err(error) = identity.audit.flush_summaries(true).await {
        tracing::warn!(%error, "could not write the last audit summaries");
    }
}
