//! Finishing the walks that pauses and resumes owe (`queue_walks`): a
//! replica killed, or a database gone, in the middle of one leaves its
//! queue's pending jobs partly held; every replica takes such walks over
//! once they have been owed for a while (see `domain/jobs/queues.rs`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::jobs::Jobs;

/// How often a replica looks for owed walks.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Finishes owed walks at start and every `interval` until `shutdown`.
pub async fn run(jobs: Jobs, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = jobs.finish_owed_walks() => {
                if let Err(error) = result {
                    tracing::warn!(%error, "could not finish owed queue walks; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
