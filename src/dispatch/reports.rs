//! Group commit of worker reports: every completion, failure and release of
//! every stream of this replica goes through a queue; a writer takes what
//! has gathered (up to a batch), settles it in one transaction and only then
//! acknowledges each report to its stream. While one batch commits, the next
//! gathers, so the batch size follows the load.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, mpsc};

use super::{Shared, registry::StreamCommand, tell};
use crate::{
    domain::jobs::leases::{Report, ReportKind, ReportOutcome, is_transient},
    error::AppError,
    store::jobs::ProgressWrite,
};

/// Most reports settled in one transaction.
const MAX_BATCH: usize = 512;

/// A report waiting to be settled, and where to send its outcome.
#[derive(Debug)]
pub struct PendingReport {
    pub report: Report,
    pub reply: mpsc::UnboundedSender<StreamCommand>,
    /// The last progress reported on the lease and not written yet: stored
    /// with the report, so that the finished job keeps it.
    pub progress: Option<ProgressWrite>,
}

/// One writer: settles batches until shutdown, then settles what is left.
pub async fn run_writer(
    shared: Arc<Shared>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<PendingReport>>>,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let first = tokio::select! {
                biased;
                report = queue.recv() => report,
                () = shared.shutdown.cancelled() => {
                    // Settle what was reported before the server stops.
                    let mut rest = Vec::new();
                    while let Ok(report) = queue.try_recv() {
                        rest.push(report);
                    }
                    drop(queue);
                    while !rest.is_empty() {
                        let chunk: Vec<PendingReport> =
                            rest.drain(..rest.len().min(MAX_BATCH)).collect();
                        settle_with_retry(&shared, chunk, true).await;
                    }
                    return;
                }
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(report) => batch.push(report),
                    Err(_) => break,
                }
            }
            batch
        };
        settle_with_retry(&shared, batch, false).await;
    }
}

/// How long the writers keep trying, once the server stops, to settle
/// what was reported while the database is away.
const STOPPING_PATIENCE: Duration = Duration::from_secs(2);

/// Settles a batch, retrying while the database is unavailable or the
/// batch collided with a concurrent change (the reports are not
/// acknowledged meanwhile, so nothing is lost). Tries come at most
/// [`Leases::retry_pause_cap`](crate::domain::jobs::leases::Leases::retry_pause_cap)
/// apart, so that once the database is back the batch lands before the
/// reaper may take the leases it settles: a report that waited on the
/// database must not cost its job the attempt it completed. A batch the
/// database refuses for another reason is settled report by report, so one
/// bad report cannot hold up the others.
async fn settle_with_retry(shared: &Shared, batch: Vec<PendingReport>, stopping: bool) {
    let reports: Vec<Report> = batch.iter().map(|p| p.report.clone()).collect();
    let progress: Vec<ProgressWrite> = batch.iter().filter_map(|p| p.progress.clone()).collect();
    let mut pause = Duration::from_millis(20);
    let give_up_at = stopping.then(|| Instant::now() + STOPPING_PATIENCE);
    loop {
        match shared
            .leases
            .settle_with_progress(&reports, &progress)
            .await
        {
            Ok(outcomes) => {
                crate::telemetry::names::reports_settled(batch.len());
                count_reports(&batch, &outcomes);
                acknowledge(&batch, outcomes);
                return;
            }
            Err(error) if is_transient(&error) => {
                if matches!(error, AppError::Unavailable(_)) {
                    shared.note_db_failure(&error);
                } else {
                    tracing::debug!(%error, reports = batch.len(), "a report batch collided; trying again");
                }
                if give_up_at.is_some_and(|at| Instant::now() >= at) {
                    // The server is going away and the database with it: the
                    // leases come back when they expire.
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(shared.leases.retry_pause_cap());
            }
            Err(error) if batch.len() > 1 => {
                tracing::warn!(%error, reports = batch.len(), "settling a batch failed; settling one by one");
                for pending in batch {
                    Box::pin(settle_with_retry(shared, vec![pending], stopping)).await;
                }
                return;
            }
            Err(error) => {
                tracing::error!(%error, job = %reports[0].lease.job, "a report could not be stored");
                acknowledge(
                    &batch,
                    vec![ReportOutcome {
                        accepted: false,
                        reason: "the report could not be stored; the lease stands until it \
                                 expires"
                            .into(),
                    }],
                );
                return;
            }
        }
    }
}

/// Counts the accepted reports by kind (a non-permanent failure is
/// retried unless its job is out of attempts).
fn count_reports(batch: &[PendingReport], outcomes: &[ReportOutcome]) {
    for (pending, outcome) in batch.iter().zip(outcomes) {
        if outcome.accepted {
            crate::telemetry::names::report(match &pending.report.kind {
                ReportKind::Completed(_) => "completed",
                ReportKind::Failed {
                    permanent: false, ..
                } => "failed",
                ReportKind::Failed {
                    permanent: true, ..
                } => "failed_permanently",
                ReportKind::Released => "released",
            });
        }
    }
}

fn acknowledge(batch: &[PendingReport], outcomes: Vec<ReportOutcome>) {
    for (pending, outcome) in batch.iter().zip(outcomes) {
        tell(
            &pending.reply,
            StreamCommand::Settled {
                lease: pending.report.lease,
                outcome,
            },
        );
    }
}
