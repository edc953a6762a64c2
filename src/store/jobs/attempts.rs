//! Attempt history (`job_attempts`): one row per ended attempt, inserted by
//! the very statement that ends it (each such statement is a CTE whose
//! `ended` part updates the job and whose next part inserts here, see
//! [`record`]), so that no ended attempt is lost and none costs a round
//! trip; and the listing, which adds the running attempt from the job row.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{BigInt, Integer, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The most characters of an attempt's error text kept (the whole error
/// stays on the job row); the table's check says the same.
pub const ATTEMPT_ERROR_MAX_CHARS: usize = 1024;

/// How an attempt ended (`job_attempts.outcome`), or `Running` for the
/// job's current attempt, which is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Running,
    Completed,
    /// The worker reported a failure (the job may be retried).
    Failed,
    /// The lease was given back unfinished (the worker released it, or the
    /// server ended the stream).
    HandedBack,
    /// The worker's stream ended (closed, reset, cut off) while it held the
    /// lease.
    LeaseLost,
    /// The worker stopped heartbeating and the reaper took the lease.
    LeaseExpired,
    /// The job was cancelled while it ran.
    Cancelled,
}

impl AttemptOutcome {
    /// The stored label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::HandedBack => "HANDED_BACK",
            Self::LeaseLost => "LEASE_LOST",
            Self::LeaseExpired => "LEASE_EXPIRED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The outcome of a stored label.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::HandedBack,
            Self::LeaseLost,
            Self::LeaseExpired,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|outcome| outcome.label() == label)
    }
}

/// The `INSERT` that records ended attempts: `rows` is a `SELECT` of, in
/// order, job id, attempt, worker id, stream id, leased at, outcome (a
/// label) and error text (cut to [`ATTEMPT_ERROR_MAX_CHARS`] here), read
/// from the statement's `ended` CTE. An attempt already recorded is left as
/// it is: history must never make a settle fail (attempt numbers only grow,
/// so a conflict would be a bug, not a second ending).
pub(super) fn record(rows: &str) -> String {
    format!(
        r#"INSERT INTO job_attempts ("jobId", attempt, "workerId", "streamId", "leasedAt",
                                     "endedAt", outcome, error)
           SELECT a.job, a.attempt, a.worker, a.stream, a.leased, LOCALTIMESTAMP, a.outcome,
                  left(a.error, {ATTEMPT_ERROR_MAX_CHARS})
           FROM ({rows}) AS a(job, attempt, worker, stream, leased, outcome, error)
           ON CONFLICT ("jobId", attempt) DO NOTHING"#
    )
}

/// One attempt of a job, ended or running.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct AttemptRow {
    #[diesel(sql_type = SqlUuid)]
    pub job_id: Uuid,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub worker_id: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub stream_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub leased_at: Option<NaiveDateTime>,
    /// `None` while it runs.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub ended_at: Option<NaiveDateTime>,
    /// A label of [`AttemptOutcome`].
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    /// While it runs: when its lease ends unless the worker heartbeats.
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub lease_expires_at: Option<NaiveDateTime>,
}

/// Up to `limit` attempts of `job` numbered above `after`, oldest first:
/// the ended ones, then the running one (read from the job row) when the
/// job is RUNNING.
pub async fn list_attempts(
    conn: &mut AsyncPgConnection,
    job: Uuid,
    after: i32,
    limit: i64,
) -> QueryResult<Vec<AttemptRow>> {
    diesel::sql_query(
        r#"SELECT * FROM (
               SELECT "jobId" AS job_id, attempt, "workerId" AS worker_id,
                      "streamId" AS stream_id, "leasedAt" AS leased_at,
                      "endedAt" AS ended_at, outcome::text AS outcome, error,
                      NULL::timestamp AS lease_expires_at
               FROM job_attempts WHERE "jobId" = $1 AND attempt > $2
               UNION ALL
               SELECT id, attempts, "workerId", "leasedBy", "startedAt", NULL, 'RUNNING',
                      NULL, "leaseExpiresAt"
               FROM jobs WHERE id = $1 AND status = 'RUNNING' AND attempts > $2
           ) AS attempts
           ORDER BY attempt
           LIMIT $3"#,
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Integer, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::AttemptOutcome;

    #[test]
    fn every_outcome_reads_back_from_its_label() {
        for outcome in [
            AttemptOutcome::Running,
            AttemptOutcome::Completed,
            AttemptOutcome::Failed,
            AttemptOutcome::HandedBack,
            AttemptOutcome::LeaseLost,
            AttemptOutcome::LeaseExpired,
            AttemptOutcome::Cancelled,
        ] {
            assert_eq!(AttemptOutcome::from_label(outcome.label()), Some(outcome));
        }
        assert_eq!(AttemptOutcome::from_label("SOMETHING"), None);
    }
}
