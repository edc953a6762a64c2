//! Retention: deleting finished jobs, audit rows and ended sessions once
//! they are older than the operator keeps them, and login counters that
//! remember nothing any more.
//!
//! One replica prunes at a time: every batch is a short transaction that
//! first takes a transaction-level advisory lock without waiting
//! ([`retention::PRUNE_LOCK_KEY`]); a replica that finds it taken leaves
//! the pass to the holder. Transaction-level, so that it also holds behind
//! PgBouncer in transaction mode, and so that nothing outlives the batch.
//! Each batch deletes at most [`RetentionSettings::batch`] rows and locks
//! only those (`SKIP LOCKED`), and after each the pruner rests twice as
//! long as the batch took, and at least [`BATCH_REST`]: pruning takes at
//! most a third of one connection and 10 batches a second, whatever the
//! backlog, and the dispatcher's statements never wait behind it for long
//! (BENCHMARKS.md, "Retention while dispatching": without the floor, a
//! fast machine deleted 42,000 rows a second and the drain lost 30 %).

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RetentionArgs,
    db::{self, DbPool},
    domain::throttle::LoginThrottle,
    error::AppError,
    store::{self, retention},
};

/// What is kept, and for how long (`None`: for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// COMPLETED jobs, counted from completion (`JOB_RETENTION_COMPLETED_DAYS`).
    pub completed_jobs: Option<Duration>,
    /// FAILED and CANCELLED jobs, counted from their end
    /// (`JOB_RETENTION_FAILED_DAYS`).
    pub failed_jobs: Option<Duration>,
    /// Audit rows, counted from when they were written (`AUDIT_RETENTION_DAYS`).
    pub audit: Option<Duration>,
    /// Sessions, counted from their expiry or revocation; their spent
    /// refresh tokens go with them.
    pub ended_sessions: Duration,
    /// Time between passes (`RETENTION_INTERVAL_SECS`).
    pub interval: Duration,
    /// Most rows one statement deletes.
    pub batch: i64,
}

const DAY: Duration = Duration::from_secs(86_400);

/// Shortest rest between two batches.
pub const BATCH_REST: Duration = Duration::from_millis(100);

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            completed_jobs: Some(7 * DAY),
            failed_jobs: Some(30 * DAY),
            audit: None,
            ended_sessions: DAY,
            interval: Duration::from_secs(300),
            batch: 1_000,
        }
    }
}

impl RetentionSettings {
    /// The settings the flags give (0 days: keep for ever).
    pub fn from_args(args: &RetentionArgs) -> Self {
        let days = |n: u64| (n > 0).then(|| DAY * n as u32);
        Self {
            completed_jobs: days(args.job_retention_completed_days),
            failed_jobs: days(args.job_retention_failed_days),
            audit: days(args.audit_retention_days),
            interval: Duration::from_secs(args.retention_interval_secs),
            ..Self::default()
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// COMPLETED jobs.
    pub completed_jobs: usize,
    /// FAILED and CANCELLED jobs.
    pub failed_jobs: usize,
    /// Audit rows.
    pub audit: usize,
    /// Ended sessions.
    pub sessions: usize,
    /// Login counters that remember nothing any more.
    pub login_throttles: usize,
}

#[derive(Debug, Clone, Copy)]
enum Table {
    CompletedJobs,
    FailedJobs,
    Audit,
    Sessions,
}

/// Prunes on `pool` as `settings` say.
#[derive(Clone)]
pub struct Pruner {
    pool: DbPool,
    throttle: LoginThrottle,
    settings: RetentionSettings,
}

impl Pruner {
    /// A pruner over `pool`; `throttle` knows which login counters are
    /// stale.
    pub fn new(pool: DbPool, throttle: LoginThrottle, settings: RetentionSettings) -> Self {
        Self {
            pool,
            throttle,
            settings,
        }
    }

    /// One pass over every table; `None` when another replica is pruning
    /// (this one then leaves the pass to it).
    pub async fn prune_once(&self) -> Result<Option<PruneReport>, AppError> {
        let now = store::now();
        let ago =
            |age: Duration| now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let mut report = PruneReport::default();
        let plan = [
            (Table::CompletedJobs, self.settings.completed_jobs),
            (Table::FailedJobs, self.settings.failed_jobs),
            (Table::Audit, self.settings.audit),
            (Table::Sessions, Some(self.settings.ended_sessions)),
        ];
        for (table, age) in plan {
            let Some(age) = age else { continue };
            let Some(deleted) = self.prune(table, ago(age)).await? else {
                return Ok(None);
            };
            *match table {
                Table::CompletedJobs => &mut report.completed_jobs,
                Table::FailedJobs => &mut report.failed_jobs,
                Table::Audit => &mut report.audit,
                Table::Sessions => &mut report.sessions,
            } += deleted;
        }
        // A handful of rows, each forgotten in one statement.
        report.login_throttles = self.throttle.sweep().await?;
        Ok(Some(report))
    }

    /// Deletes `table`'s rows older than `before`, batch after batch, until
    /// none is left; `None` as soon as another replica holds the lock.
    async fn prune(&self, table: Table, before: NaiveDateTime) -> Result<Option<usize>, AppError> {
        let limit = self.settings.batch;
        let mut total = 0;
        loop {
            let started = Instant::now();
            let deleted = db::transaction(&self.pool, "retention.prune", async |conn| {
                if !retention::try_lock(conn).await? {
                    return Ok(None);
                }
                let deleted = match table {
                    Table::CompletedJobs => {
                        retention::delete_completed_jobs(conn, before, limit).await?
                    }
                    Table::FailedJobs => retention::delete_failed_jobs(conn, before, limit).await?,
                    Table::Audit => retention::delete_audit(conn, before, limit).await?,
                    Table::Sessions => {
                        retention::delete_ended_sessions(conn, before, limit).await?
                    }
                };
                Ok(Some(deleted))
            })
            .await?;
            let Some(deleted) = deleted else {
                return Ok(None);
            };
            total += deleted;
            if (deleted as i64) < limit {
                return Ok(Some(total));
            }
            tokio::time::sleep((started.elapsed() * 2).max(BATCH_REST)).await;
        }
    }

    /// Prunes every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            let pass = tokio::select! {
                () = shutdown.cancelled() => return,
                pass = self.prune_once() => pass,
            };
            match pass {
                Ok(Some(report)) if report != PruneReport::default() => {
                    tracing::info!(
                        completed_jobs = report.completed_jobs,
                        failed_jobs = report.failed_jobs,
                        audit = report.audit,
                        sessions = report.sessions,
                        login_throttles = report.login_throttles,
                        "retention: deleted old rows"
                    );
                }
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!("retention: another replica is pruning"),
                Err(error) => {
                    tracing::warn!(%error, "retention: pruning failed; next pass retries")
                }
            }
        }
    }
}
