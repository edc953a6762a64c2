//! The firing loop: every replica runs one. It fires what is due (each
//! schedule claimed by one replica at a time, see
//! [`crate::domain::schedules::firing`]), then sleeps until the earliest
//! next fire time, and no longer than `max_sleep`; any replica's change to a
//! schedule (and a module becoming ENABLED) wakes it through NOTIFY, so an
//! idle server fires within milliseconds of a fire time.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::schedules::Schedules;

/// Shortest pause between two looks while a due schedule is held by
/// another replica's claim (its transaction is about to commit).
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Pause after a failure (the database is away), doubling up to a few
/// seconds.
const FAILURE_PAUSE: Duration = Duration::from_millis(200);

/// Fires schedules until `shutdown`.
pub async fn run(schedules: Schedules, wake: Arc<Notify>, shutdown: CancellationToken) {
    let max_sleep = schedules.settings().max_sleep;
    let mut failures = 0u32;
    loop {
        let wait = match look(&schedules).await {
            Ok(wait) => {
                failures = 0;
                wait.map_or(max_sleep, |wait| wait.min(max_sleep))
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(%error, "schedules could not fire; retrying");
                }
                failures += 1;
                (FAILURE_PAUSE * 2u32.pow(failures.min(4))).min(max_sleep)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fires what is due; returns how long until the next fire time.
async fn look(schedules: &Schedules) -> Result<Option<Duration>, crate::AppError> {
    let fired = schedules.fire_due().await?;
    for claim in &fired {
        crate::telemetry::names::schedule_fired(claim.created as u64, claim.skipped as u64);
        crate::telemetry::names::jobs_cancelled("schedule_overlap", claim.cancelled);
    }
    let wait = schedules.time_to_next_fire().await?;
    // A schedule due now that this replica could not claim is another's
    // claim in progress: look again shortly rather than spin.
    Ok(wait.map(|wait| wait.max(BUSY_PAUSE)))
}
