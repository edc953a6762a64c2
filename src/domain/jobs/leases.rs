//! The worker side of the queue: leasing jobs to Work streams, extending
//! leases on heartbeats, settling reports, handing leases back and taking
//! them from streams that vanished.
//!
//! Every report quotes (job, attempt) and is applied only while that attempt
//! is still the job's current lease held by the reporting stream — one
//! conditional UPDATE, so at most one completion per job is ever accepted,
//! whatever races with it (a cancel, the reaper, another replica). Reports
//! of many streams are settled together, one transaction per batch.

pub mod progress;
mod reports;

pub use reports::*;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::JobSettings;
use crate::{
    db::{self, DbPool},
    domain::{
        events::{QueueChanges, Revocation, RevokeCause},
        modules::{self, hooks::HookOutcome},
    },
    error::AppError,
    store::jobs::{
        self as rows, ClaimFilter, ClaimPlan, CountingScope, ExtendedLease, JobRow, JobStatus,
        LeaseRef, LostLease, ProgressWrite, Settled,
    },
};

/// Most expired leases taken per reaper statement.
const REAP_BATCH: i64 = 500;
/// Most waiting jobs promoted per statement.
const PROMOTE_BATCH: i64 = 10_000;
/// Most concurrency keys one claim examines.
const KEYS_PER_CLAIM: usize = 1024;

/// Whether a claim also examines concurrency keys and rate-limit buckets.
/// That phase makes the claim a statement several times the size of the
/// plain one (milliseconds more work, even kept prepared), which a drain of
/// plain jobs should not pay on every claim; the dispatcher runs it
/// whenever it can matter (see `dispatch::Claimer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsPhase {
    /// Lock the keys with room and the buckets holding a token, then claim
    /// from every lane.
    Run,
    /// Claim jobs of no key and no bucket only.
    Skip,
}

/// What a claim leased.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The jobs, in dispatch order.
    pub jobs: Vec<JobRow>,
    /// Whether the limits phase leased a job of a concurrency key or of a
    /// rate-limit bucket: some had room (false when it was skipped).
    pub limits_found: bool,
}

/// The lease service.
#[derive(Clone)]
pub struct Leases {
    pool: DbPool,
    settings: JobSettings,
}

/// Concurrency keys tended per transaction (see [`Leases::tend_keys`]).
pub const KEYS_PER_TENDING: i64 = 500;

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
    /// statement, which locks the concurrency keys and buckets it examines,
    /// claims, and announces the claimed jobs as changed (see [`rows::claim`]). Every lease is tagged with
    /// `claim`, which the dispatcher keeps until it has the answer: if the
    /// answer is lost, [`Self::recover_claims`] finds what it leased.
    pub async fn claim(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        filter: &ClaimFilter,
        plan: &ClaimPlan,
        claim: Uuid,
        limits: LimitsPhase,
        after_key: &str,
    ) -> Result<Claimed, AppError> {
        if plan.owners.is_empty() {
            return Ok(Claimed::default());
        }
        let started = std::time::Instant::now();
        if limits == LimitsPhase::Skip {
            // Only the plain lane: one statement, atomic on its own, and
            // one round trip, as the claim was before keys and buckets.
            let jobs = rows::claim_plain(conn, filter, plan, self.settings.lease, claim).await?;
            tracing::trace!(
                db.operation = "jobs.claim",
                duration_us = started.elapsed().as_micros() as u64,
                claimed = jobs.len(),
                "database operation"
            );
            return Ok(Claimed {
                jobs,
                limits_found: false,
            });
        }
        // Keys (and buckets) locked per claim: enough to fill the batch with
        // one job each; the rest wait their turn (round robin). One
        // statement, which locks them, claims and commits (see
        // [`rows::claim`] for why that is safe).
        let examined = plan.owners.len().clamp(16, KEYS_PER_CLAIM) as i64;
        let jobs = rows::claim(
            conn,
            filter,
            plan,
            self.settings.lease,
            examined,
            claim,
            after_key,
        )
        .await?;
        // Whether keys or buckets had room, as far as this claim can tell:
        // it leased a job of one.
        let limits_found = jobs
            .iter()
            .any(|job| job.concurrency_key.is_some() || job.rate_limit.is_some());
        tracing::trace!(
            db.operation = "jobs.claim",
            duration_us = started.elapsed().as_micros() as u64,
            claimed = jobs.len(),
            "database operation"
        );
        Ok(Claimed { jobs, limits_found })
    }

    /// The leases still standing of claims whose answer was lost (see
    /// [`rows::leases_of_claims`]).
    pub async fn leases_of_claims(&self, claims: &[Uuid]) -> Result<Vec<LeaseRef>, AppError> {
        db::with_connection(&self.pool, "jobs.leases_of_claims", async |conn| {
            Ok(rows::leases_of_claims(conn, claims).await?)
        })
        .await
    }

    /// Tends up to [`KEYS_PER_TENDING`] concurrency keys' rows after
    /// `after` (see [`rows::lock_key_rows`]): recounts their RUNNING jobs
    /// and deletes the rows of keys without an open job. Returns the last
    /// key tended (`None`: the walk reached the end), and how many counts
    /// were wrong.
    pub async fn tend_keys(&self, after: &str) -> Result<(Option<String>, usize), AppError> {
        db::transaction(&self.pool, "jobs.tend_keys", async |conn| {
            let keys = rows::lock_key_rows(conn, after, KEYS_PER_TENDING).await?;
            if keys.is_empty() {
                return Ok((None, 0));
            }
            let wrong = rows::tend_key_rows(conn, &keys).await?;
            let last = (keys.len() as i64 == KEYS_PER_TENDING)
                .then(|| keys.last().cloned())
                .flatten();
            Ok((last, wrong))
        })
        .await
    }

    /// Moves the waiting jobs that fell due into the dispatch indexes, in
    /// batches; returns how many. Other replicas are woken when any moved.
    pub async fn promote_due(&self) -> Result<usize, AppError> {
        let mut total = 0;
        loop {
            let promoted = db::transaction(&self.pool, "jobs.promote_due", async |conn| {
                let promoted = rows::promote_due(conn, PROMOTE_BATCH).await?;
                if promoted > 0 {
                    rows::notify(conn, "w").await?;
                }
                Ok(promoted)
            })
            .await?;
            total += promoted;
            if (promoted as i64) < PROMOTE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Applies a batch of reports in one transaction; the outcomes are in
    /// the order of `reports`.
    pub async fn settle(&self, reports: &[Report]) -> Result<Vec<ReportOutcome>, AppError> {
        self.settle_with_progress(reports, &[]).await
    }

    /// [`Self::settle`], storing first, in the same transaction, the last
    /// progress reported on these leases and not stored yet (see
    /// [`progress`]), so that a finished job keeps it.
    pub async fn settle_with_progress(
        &self,
        reports: &[Report],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ReportOutcome>, AppError> {
        let backoff = self.settings.backoff();
        let rule = self.settings.return_rule();
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
        let ids: Vec<Uuid> = reports.iter().map(|report| report.lease.job).collect();
        let settled: Vec<Settled> = db::transaction(&self.pool, "jobs.settle", async |conn| {
            // Every row of the batch at once, in id order (see
            // `rows::lock_in_order`): then a batch never deadlocks with a
            // heartbeat or with the other writer's batch.
            let locked = rows::lock_in_order(conn, &ids).await?;
            rows::write_progress(conn, progress).await?;
            // The three settling statements count their keys' RUNNING jobs
            // themselves, on the key rows locked above, in place of the
            // trigger's write per job; nothing else in between.
            let counting = locked.keys > 0
                && rows::count_keys_by_statement(conn, true, CountingScope::Transaction).await?;
            let mut settled = rows::complete(conn, &completed.0, &completed.1).await?;
            settled.extend(rows::fail(conn, &failed.0, &failed.1, &failed.2, backoff).await?);
            settled.extend(rows::hand_back(conn, &released, false, rule).await?);
            if counting {
                rows::count_keys_by_statement(conn, false, CountingScope::Transaction).await?;
            }
            let mut changes = QueueChanges::default();
            for job in &settled {
                let status = JobStatus::from_label(&job.status).unwrap_or(JobStatus::Pending);
                // A released job is runnable after its short delay, a
                // failed one after its backoff: the schedule changed.
                changes.note(job.id, status, false);
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
        let retried = settled
            .iter()
            .filter(|s| {
                s.status == JobStatus::Pending.label() && failed.0.iter().any(|l| l.job == s.id)
            })
            .count();
        crate::telemetry::names::job_retries(retried);
        let resettled = self.already_completed(reports, &settled).await?;
        Ok(reports
            .iter()
            .map(|report| {
                let lease = &report.lease;
                if resettled.contains(&lease.job)
                    || settled.iter().any(|s| {
                        s.id == lease.job && s.attempt == lease.attempt && s.stream == lease.stream
                    })
                {
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

    /// The completions of `reports` that this batch did not settle because
    /// they already were: the batch is being settled again after a commit
    /// whose outcome was lost with its connection. Asked only when some
    /// completion found no running lease, which is rare.
    async fn already_completed(
        &self,
        reports: &[Report],
        settled: &[Settled],
    ) -> Result<Vec<Uuid>, AppError> {
        let unsettled: Vec<LeaseRef> = reports
            .iter()
            .filter(|report| matches!(report.kind, ReportKind::Completed(_)))
            .map(|report| report.lease)
            .filter(|lease| !settled.iter().any(|s| s.id == lease.job))
            .collect();
        if unsettled.is_empty() {
            return Ok(Vec::new());
        }
        db::with_connection(&self.pool, "jobs.already_completed", async |conn| {
            Ok(rows::already_completed(conn, &unsettled).await?)
        })
        .await
    }

    /// Extends the leases `stream` holds (all, or those of `only`). A
    /// collision with a concurrent change is tried again at once, a few
    /// times: a heartbeat that does not land costs the worker its leases.
    pub async fn extend(
        &self,
        stream: Uuid,
        only: Option<&[Uuid]>,
    ) -> Result<Vec<ExtendedLease>, AppError> {
        let lease = self.settings.lease;
        let mut tries = 0;
        loop {
            let extended = db::with_connection(&self.pool, "jobs.heartbeat", async |conn| {
                Ok(rows::extend_leases(conn, stream, only, lease).await?)
            })
            .await;
            match extended {
                Err(AppError::Aborted(_)) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    /// Keeps alive exactly these leases (see [`rows::extend_exact`]): the
    /// ones a stream holds that its worker cannot be asked to heartbeat,
    /// because the worker has not received them yet or has already
    /// reported them. Returns those that still stood.
    pub async fn keep_alive(&self, leases: &[LeaseRef]) -> Result<Vec<ExtendedLease>, AppError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.settings.lease;
        db::with_connection(&self.pool, "jobs.keep_alive", async |conn| {
            Ok(rows::extend_exact(conn, leases, lease).await?)
        })
        .await
    }

    /// The leases the database says `streams` hold (see
    /// [`rows::leases_held_by`]).
    pub async fn held_by(&self, streams: &[Uuid]) -> Result<Vec<LeaseRef>, AppError> {
        db::with_connection(&self.pool, "jobs.held_by", async |conn| {
            Ok(rows::leases_held_by(conn, streams).await?)
        })
        .await
    }

    /// The longest pause between two tries of a write that the database
    /// could not take for now (away, or a collision): a quarter of the
    /// heartbeat interval, within 50 ms..1 s. Short, so that once the
    /// database is back the write lands well before the reaper looks at
    /// expired leases again (it waits one and a half heartbeat intervals
    /// after the last failure), and so never takes a lease whose report or
    /// hand-back was only waiting for the database.
    pub fn retry_pause_cap(&self) -> Duration {
        (self.settings.heartbeat_interval() / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// [`Self::hand_back`], tried again while the database is away or the
    /// write collides, until it lands or `stop` is cancelled (the server is
    /// going away: the reaper takes the leases when they expire). Left to
    /// the reaper, a hand-back would cost each job an attempt it never
    /// used. `on_failure` hears every failed try.
    pub async fn hand_back_retrying(
        &self,
        leases: &[LeaseRef],
        undelivered: bool,
        stop: &CancellationToken,
        on_failure: &(dyn Fn(&AppError) + Send + Sync),
    ) -> Result<usize, AppError> {
        self.retrying(stop, on_failure, || self.hand_back(leases, undelivered))
            .await
    }

    /// [`Self::lose`], tried again like [`Self::hand_back_retrying`].
    pub async fn lose_retrying(
        &self,
        stream: Uuid,
        jobs: &[Uuid],
        stop: &CancellationToken,
        on_failure: &(dyn Fn(&AppError) + Send + Sync),
    ) -> Result<usize, AppError> {
        self.retrying(stop, on_failure, || self.lose(stream, jobs))
            .await
    }

    /// Runs `attempt` until it lands, fails for good, or `stop` is
    /// cancelled; transient failures wait a doubling pause between tries.
    async fn retrying<F, Fut>(
        &self,
        stop: &CancellationToken,
        on_failure: &(dyn Fn(&AppError) + Send + Sync),
        attempt: F,
    ) -> Result<usize, AppError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<usize, AppError>>,
    {
        let mut pause = Duration::from_millis(20);
        loop {
            match attempt().await {
                Err(error) if is_transient(&error) && !stop.is_cancelled() => {
                    on_failure(&error);
                    tokio::select! {
                        () = stop.cancelled() => return Err(error),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(self.retry_pause_cap());
                }
                other => return other,
            }
        }
    }

    /// Hands leases back unfinished (a draining server, a stream ending on
    /// the server's side, jobs claimed for a stream that closed before it got
    /// them): see [`rows::hand_back`] for what that costs. Undelivered ones
    /// are PENDING at once and free.
    pub async fn hand_back(
        &self,
        leases: &[LeaseRef],
        undelivered: bool,
    ) -> Result<usize, AppError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let rule = self.settings.return_rule();
        let ids: Vec<Uuid> = leases.iter().map(|lease| lease.job).collect();
        db::transaction(&self.pool, "jobs.hand_back", async |conn| {
            // The jobs in id order, then their keys in key order, as a
            // settle takes them: a hand-back racing a settle of jobs of the
            // same keys cannot deadlock on the key rows (the trigger would
            // take them in the order the jobs happen to be updated). Held,
            // the keys are counted by the statement itself.
            let locked = rows::lock_in_order(conn, &ids).await?;
            let counting = locked.keys > 0
                && rows::count_keys_by_statement(conn, true, CountingScope::Transaction).await?;
            let settled = rows::hand_back(conn, leases, undelivered, rule).await?;
            if counting {
                rows::count_keys_by_statement(conn, false, CountingScope::Transaction).await?;
            }
            let mut changes = QueueChanges::default();
            for job in &settled {
                let status = JobStatus::from_label(&job.status).unwrap_or(JobStatus::Pending);
                changes.note(job.id, status, undelivered);
            }
            changes.announce(conn).await?;
            // A hand-back past the free ones may fail a hook job for good,
            // which ends its module's transition.
            let hooks: Vec<HookOutcome> = settled
                .iter()
                .filter_map(|job| {
                    let status = JobStatus::from_label(&job.status)?;
                    HookOutcome::of(job.id, job.hook.as_deref(), status, job.error.clone())
                })
                .collect();
            modules::hooks::settle(conn, &hooks).await?;
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

/// Whether a failed write may succeed when tried again unchanged: the
/// database was away (or too slow), or the write collided with a
/// concurrent one (a deadlock or a serialization failure).
pub fn is_transient(error: &AppError) -> bool {
    matches!(error, AppError::Unavailable(_) | AppError::Aborted(_))
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
