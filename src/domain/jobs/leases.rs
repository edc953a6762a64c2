//! The worker side of the queue: leasing jobs to Work streams, extending
//! leases on heartbeats, settling reports, handing leases back and taking
//! them from streams that vanished.
//!
//! Every report quotes (job, attempt) and is applied only while that attempt
//! is still the job's current lease held by the reporting stream — one
//! conditional UPDATE, so at most one completion per job is ever accepted,
//! whatever races with it (a cancel, the reaper, another replica). Reports
//! of many streams are settled together, one transaction per batch.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::{
    JobSettings,
    events::{QueueChanges, Revocation, RevokeCause},
};
use crate::{
    db::{self, DbPool},
    domain::modules::{self, hooks::HookOutcome},
    error::AppError,
    store::jobs::{
        self as rows, ClaimFilter, ClaimPlan, ExtendedLease, JobRow, JobStatus, LeaseRef,
        LostLease, Settled,
    },
};

/// Most expired leases taken per reaper statement.
const REAP_BATCH: i64 = 500;

/// What a worker says about one lease.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    /// The attempt finished with this result.
    Completed(serde_json::Value),
    /// The attempt failed; `error` holds message, details and attempt.
    Failed {
        error: serde_json::Value,
        permanent: bool,
    },
    /// The worker gives the job back unfinished.
    Released,
}

/// One report on one lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub lease: LeaseRef,
    pub kind: ReportKind,
}

/// Whether a report was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    pub accepted: bool,
    /// Why not, when not.
    pub reason: String,
}

/// The error a failure report leaves on its job.
pub fn failure_error(
    message: &str,
    details: serde_json::Value,
    attempt: i32,
    permanent: bool,
) -> serde_json::Value {
    json!({
        "message": message,
        "details": details,
        "attempt": attempt,
        "permanent": permanent,
    })
}

/// The lease service.
#[derive(Clone)]
pub struct Leases {
    pool: DbPool,
    settings: JobSettings,
}

impl Leases {
    /// Leases in `pool`'s database.
    pub fn new(pool: DbPool, settings: JobSettings) -> Self {
        Self { pool, settings }
    }

    /// The configuration.
    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    /// Leases up to one runnable job per entry of `plan.owners` (fewer when
    /// fewer are runnable), on the dispatcher's own claiming connection: one
    /// statement, which also announces the claimed jobs as changed.
    pub async fn claim(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        filter: &ClaimFilter,
        plan: &ClaimPlan,
    ) -> Result<Vec<JobRow>, AppError> {
        let started = std::time::Instant::now();
        let jobs = rows::claim(conn, filter, plan, self.settings.lease).await?;
        tracing::trace!(
            db.operation = "jobs.claim",
            duration_us = started.elapsed().as_micros() as u64,
            claimed = jobs.len(),
            "database operation"
        );
        Ok(jobs)
    }

    /// Applies a batch of reports in one transaction; the outcomes are in
    /// the order of `reports`.
    pub async fn settle(&self, reports: &[Report]) -> Result<Vec<ReportOutcome>, AppError> {
        let backoff = self.settings.backoff();
        let mut completed = (Vec::new(), Vec::new());
        let mut failed = (Vec::new(), Vec::new(), Vec::new());
        let mut released = Vec::new();
        for report in reports {
            match &report.kind {
                ReportKind::Completed(result) => {
                    completed.0.push(report.lease);
                    completed.1.push(result.clone());
                }
                ReportKind::Failed { error, permanent } => {
                    failed.0.push(report.lease);
                    failed.1.push(error.clone());
                    failed.2.push(*permanent);
                }
                ReportKind::Released => released.push(report.lease),
            }
        }
        let settled: Vec<Settled> = db::transaction(&self.pool, "jobs.settle", async |conn| {
            let mut settled = rows::complete(conn, &completed.0, &completed.1).await?;
            settled.extend(rows::fail(conn, &failed.0, &failed.1, &failed.2, backoff).await?);
            settled.extend(rows::hand_back(conn, &released, false).await?);
            let mut changes = QueueChanges::default();
            for job in &settled {
                let status = JobStatus::from_label(&job.status).unwrap_or(JobStatus::Pending);
                // A released job is runnable now; a failed one after its
                // backoff.
                let released_now = released.iter().any(|l| l.job == job.id);
                changes.note(job.id, status, released_now);
            }
            changes.announce(conn).await?;
            let hooks: Vec<HookOutcome> = settled
                .iter()
                .filter_map(|job| {
                    let status = JobStatus::from_label(&job.status)?;
                    HookOutcome::of(job.id, job.hook.as_deref(), status, job.error.clone())
                })
                .collect();
            modules::hooks::settle(conn, &hooks).await?;
            Ok(settled)
        })
        .await?;
        Ok(reports
            .iter()
            .map(|report| {
                let lease = &report.lease;
                if settled.iter().any(|s| {
                    s.id == lease.job && s.attempt == lease.attempt && s.stream == lease.stream
                }) {
                    ReportOutcome {
                        accepted: true,
                        reason: String::new(),
                    }
                } else {
                    ReportOutcome {
                        accepted: false,
                        reason: format!(
                            "attempt {} of job {} is no longer leased to this stream (cancelled, \
                             expired or re-leased); nothing changed",
                            report.lease.attempt, report.lease.job
                        ),
                    }
                }
            })
            .collect())
    }

    /// Extends the leases `stream` holds (all, or those of `only`).
    pub async fn extend(
        &self,
        stream: Uuid,
        only: Option<&[Uuid]>,
    ) -> Result<Vec<ExtendedLease>, AppError> {
        let lease = self.settings.lease;
        db::with_connection(&self.pool, "jobs.heartbeat", async |conn| {
            Ok(rows::extend_leases(conn, stream, only, lease).await?)
        })
        .await
    }

    /// Hands leases back unfinished (a draining server, a stream ending on
    /// the server's side, jobs claimed for a stream that closed before it got
    /// them): PENDING at once, not a failure.
    pub async fn hand_back(
        &self,
        leases: &[LeaseRef],
        undelivered: bool,
    ) -> Result<usize, AppError> {
        if leases.is_empty() {
            return Ok(0);
        }
        db::transaction(&self.pool, "jobs.hand_back", async |conn| {
            let settled = rows::hand_back(conn, leases, undelivered).await?;
            let mut changes = QueueChanges::default();
            for job in &settled {
                changes.note(job.id, JobStatus::Pending, true);
            }
            changes.announce(conn).await?;
            Ok(settled.len())
        })
        .await
    }

    /// Takes the leases of a stream that vanished (closed, reset, cut off):
    /// each job goes back to the queue at once, or fails if that was its last
    /// attempt.
    pub async fn lose(&self, stream: Uuid, jobs: &[Uuid]) -> Result<usize, AppError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        db::transaction(&self.pool, "jobs.lose_leases", async |conn| {
            let lost = rows::lose_leases_of(
                conn,
                stream,
                jobs,
                "the worker's stream ended before the attempt was reported",
            )
            .await?;
            announce_lost(conn, &lost, false).await?;
            Ok(lost.len())
        })
        .await
    }

    /// Takes every lease that expired (its worker stopped heartbeating),
    /// whichever replica its stream is on; the holders are told.
    pub async fn reap(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            let reaped = db::transaction(&self.pool, "jobs.reap", async |conn| {
                let lost = rows::reap_expired(
                    conn,
                    "the lease expired: no heartbeat from the worker in time",
                    REAP_BATCH,
                )
                .await?;
                announce_lost(conn, &lost, true).await?;
                Ok(lost.len())
            })
            .await?;
            total += reaped;
            if (reaped as i64) < REAP_BATCH {
                return Ok(total);
            }
        }
    }

    /// How long until the next scheduled job is due, if any is.
    pub async fn time_to_next_scheduled(&self) -> Result<Option<Duration>, AppError> {
        db::with_connection(&self.pool, "jobs.next_scheduled", async |conn| {
            Ok(rows::time_to_next_scheduled(conn).await?)
        })
        .await
    }
}

async fn announce_lost(
    conn: &mut diesel_async::AsyncPgConnection,
    lost: &[LostLease],
    tell_holders: bool,
) -> Result<(), AppError> {
    let mut changes = QueueChanges::default();
    for lease in lost {
        let status = JobStatus::from_label(&lease.status).unwrap_or(JobStatus::Pending);
        changes.note(lease.id, status, true);
        if tell_holders {
            changes.revoked.push(Revocation {
                stream: lease.holder,
                job: lease.id,
                attempt: lease.attempt,
                cause: RevokeCause::LeaseLost,
            });
        }
    }
    changes.announce(conn).await?;
    let hooks: Vec<HookOutcome> = lost
        .iter()
        .filter_map(|lease| {
            let status = JobStatus::from_label(&lease.status)?;
            HookOutcome::of(lease.id, lease.hook.as_deref(), status, lease.error.clone())
        })
        .collect();
    modules::hooks::settle(conn, &hooks).await
}
