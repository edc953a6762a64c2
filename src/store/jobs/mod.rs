//! The `jobs` table: the queue. Every time here is the database's clock
//! (`LOCALTIMESTAMP`, UTC on our connections), so that replicas agree on
//! schedules and leases. Batched statements take arrays and `unnest` them:
//! one round trip for many jobs.

use chrono::NaiveDateTime;
use diesel::{
    data_types::PgInterval,
    prelude::*,
    sql_types::{Array, Bool, Integer, Jsonb, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{jobs, sql_types};

mod claim;
mod leases;
mod queues;
mod settle;
pub use claim::*;
pub use leases::*;
pub use queues::*;
mod progress;
pub use progress::*;
pub use settle::*;
mod walks;
pub use walks::*;
mod keys;
pub use keys::*;
mod runnable;
pub use runnable::*;
mod attempts;
pub use attempts::*;
mod listing;
pub use listing::*;
#[cfg(test)]
mod sample;

/// The notification channel of the queue. Payloads: `w` (runnable work now),
/// `w <unix ms>` (runnable then), `c <id>,<id>…` (jobs changed),
/// `x <stream> <job> <attempt> <cause>` (a lease was taken away), `sc`
/// (schedules changed).
pub const CHANNEL: &str = "automation_jobs";

super::pg_enum! {
    /// A job's state, as the seed's `"JobStatus"` enum.
    JobStatus => sql_types::JobStatus {
        Pending = "PENDING",
        Running = "RUNNING",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
}

impl JobStatus {
    /// Whether the job will never change again by itself.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// A `jobs` row.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct JobRow {
    pub id: Uuid,
    pub name: String,
    pub module_name: Option<String>,
    pub status: JobStatus,
    pub priority: i32,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub scheduled_at: NaiveDateTime,
    pub started_at: Option<NaiveDateTime>,
    pub completed_at: Option<NaiveDateTime>,
    pub failed_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub leased_by: Option<Uuid>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub worker_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_by: Option<Uuid>,
    pub attempt_budget: Option<i32>,
    pub hook: Option<String>,
    /// The W3C `traceparent` of the call that created it.
    pub traceparent: Option<String>,
    /// What its worker last reported (`percent`, `message`, `details`).
    pub progress: Option<serde_json::Value>,
    /// The attempt `progress` was reported on.
    pub progress_attempt: Option<i32>,
    /// When `progress` was stored.
    pub progress_at: Option<NaiveDateTime>,
    /// The schedule that created it, if one did.
    pub schedule_id: Option<Uuid>,
    /// At most its key's maximum jobs of this key run at once.
    pub concurrency_key: Option<String>,
    /// The key's maximum this job was created with.
    pub concurrency_max: Option<i32>,
    /// The rate limit it takes a token from when leased.
    pub rate_limit: Option<String>,
}

/// A job to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: Uuid,
    pub name: String,
    pub module_name: Option<String>,
    pub priority: i32,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    /// `None`: now, in the database's clock.
    pub scheduled_at: Option<NaiveDateTime>,
    pub idempotency_key: Option<String>,
    pub created_by: Option<Uuid>,
    /// For module lifecycle jobs: `install`, `update` or `remove`.
    pub hook: Option<String>,
    /// The W3C `traceparent` of the call that creates it.
    pub traceparent: Option<String>,
    /// Its concurrency key and the key's maximum (both or neither).
    pub concurrency: Option<(String, i32)>,
    /// The rate limit it takes a token from (the bucket must exist).
    pub rate_limit: Option<String>,
}

/// The attempts a cancelling statement ended, for [`attempts::record`]:
/// its `ended` CTE returns the job's columns (by their Rust names), the
/// status it had (`was_status`) and the stream that held it (`holder`).
pub(super) const CANCELLED_ATTEMPTS: &str = r#"SELECT id, attempts, worker_id, holder, started_at,
           'CANCELLED', NULL::text FROM ended
    WHERE was_status = 'RUNNING' AND status = 'CANCELLED'"#;

/// Every column of a job under its Rust name, for raw statements returning
/// [`JobRow`]s (which are read by name).
const JOB_COLUMNS: &str = r#"jobs.id, jobs.name, jobs."moduleName" AS module_name, jobs.status,
    jobs.priority, jobs.payload, jobs.result, jobs.error, jobs.attempts,
    jobs."maxAttempts" AS max_attempts, jobs."scheduledAt" AS scheduled_at,
    jobs."startedAt" AS started_at, jobs."completedAt" AS completed_at,
    jobs."failedAt" AS failed_at, jobs."createdAt" AS created_at,
    jobs."updatedAt" AS updated_at, jobs."leasedBy" AS leased_by,
    jobs."leaseExpiresAt" AS lease_expires_at, jobs."workerId" AS worker_id,
    jobs."idempotencyKey" AS idempotency_key, jobs."createdBy" AS created_by,
    jobs."attemptBudget" AS attempt_budget, jobs.hook, jobs.traceparent,
    jobs.progress, jobs."progressAttempt" AS progress_attempt,
    jobs."progressAt" AS progress_at, jobs."scheduleId" AS schedule_id,
    jobs."concurrencyKey" AS concurrency_key, jobs."concurrencyMax" AS concurrency_max,
    jobs."rateLimit" AS rate_limit"#;

fn interval(duration: std::time::Duration) -> PgInterval {
    PgInterval::from_microseconds(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX))
}

/// Inserts jobs in one statement. A job whose idempotency key a job of the
/// same creator already holds is not inserted (keys are scoped to their
/// creator); the rows returned are the inserted ones.
///
/// Rows go in in key order, whatever the request's order: an insert waits
/// on a key another transaction is inserting, so two batches of one caller
/// naming the same keys in different orders ({a, b} and {b, a}) would each
/// hold one key while waiting for the other, a deadlock PostgreSQL breaks
/// only after a second by aborting one. The rows returned are matched to
/// the requests by id, never by position.
///
/// A job scheduled later goes in `waiting` (out of the dispatch indexes
/// until [`promote_due`]). A job with a concurrency key creates or updates
/// its key's row (the key's maximum becomes this job's) and holds that row
/// locked until the transaction commits: a claim deleting the key as empty
/// (see [`claim`]) either sees this job or runs after it.
pub async fn insert(conn: &mut AsyncPgConnection, new: &[NewJob]) -> QueryResult<Vec<JobRow>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        r#"WITH inserted AS (
           INSERT INTO jobs (id, name, "moduleName", status, priority, payload, attempts,
               "maxAttempts", "attemptBudget", "scheduledAt", "createdAt", "updatedAt",
               "idempotencyKey", "createdBy", hook, traceparent, held, "concurrencyKey",
               "concurrencyMax", waiting, "rateLimit")
           SELECT n.id, n.name, n.module, 'PENDING', n.priority, n.payload, 0, n.max, n.max,
                  COALESCE(n.scheduled, LOCALTIMESTAMP), LOCALTIMESTAMP, LOCALTIMESTAMP,
                  n.key, n.creator, n.hook, n.trace, {HELD_NEW}, n.ckey, n.cmax,
                  COALESCE(n.scheduled > LOCALTIMESTAMP, false), n.rate
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::jsonb[], $6::int[],
                       $7::timestamp[], $8::text[], $9::uuid[], $10::text[], $11::text[],
                       $12::text[], $13::int[], $14::text[])
                AS n(id, name, module, priority, payload, max, scheduled, key, creator, hook,
                     trace, ckey, cmax, rate)
           ORDER BY n.creator, n.key, n.id
           ON CONFLICT ("createdBy", "idempotencyKey") WHERE "idempotencyKey" IS NOT NULL
           DO NOTHING
           RETURNING {JOB_COLUMNS}
           ),
           keys AS (
               INSERT INTO concurrency_keys (key, max)
               SELECT DISTINCT ON (concurrency_key) concurrency_key, concurrency_max
               FROM inserted WHERE concurrency_key IS NOT NULL
               ORDER BY concurrency_key, concurrency_max DESC
               ON CONFLICT (key) DO UPDATE SET max = EXCLUDED.max
           )
           SELECT * FROM inserted"#
    ))
    .bind::<Array<SqlUuid>, _>(new.iter().map(|j| j.id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(new.iter().map(|j| j.name.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        new.iter()
            .map(|j| j.module_name.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Integer>, _>(new.iter().map(|j| j.priority).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(new.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(new.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind::<Array<Nullable<Timestamp>>, _>(new.iter().map(|j| j.scheduled_at).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        new.iter()
            .map(|j| j.idempotency_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<SqlUuid>>, _>(new.iter().map(|j| j.created_by).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(new.iter().map(|j| j.hook.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        new.iter()
            .map(|j| j.traceparent.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        new.iter()
            .map(|j| j.concurrency.as_ref().map(|(key, _)| key.clone()))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Integer>>, _>(
        new.iter()
            .map(|j| j.concurrency.as_ref().map(|(_, max)| *max))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(new.iter().map(|j| j.rate_limit.clone()).collect::<Vec<_>>())
    .load(conn)
    .await
}

/// The jobs of `creator` holding these idempotency keys (another caller's
/// job holding the same key is never found).
pub async fn find_by_keys(
    conn: &mut AsyncPgConnection,
    creator: Uuid,
    keys: &[String],
) -> QueryResult<Vec<JobRow>> {
    jobs::table
        .filter(jobs::created_by.eq(creator))
        .filter(jobs::idempotency_key.eq_any(keys))
        .select(JobRow::as_select())
        .load(conn)
        .await
}

/// One job.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<JobRow>> {
    jobs::table
        .find(id)
        .select(JobRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// One job, locked until the transaction ends.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<JobRow>> {
    jobs::table
        .find(id)
        .select(JobRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Sets a locked job's state; returns the row after. A running attempt
/// that this cancels is recorded (CANCELLED) by the same statement.
pub async fn set_status(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: JobStatus,
) -> QueryResult<JobRow> {
    let recorded = attempts::record(CANCELLED_ATTEMPTS);
    diesel::sql_query(format!(
        r#"WITH was AS (
               SELECT id, status AS was_status, "leasedBy" AS holder FROM jobs WHERE id = $1
           ),
           ended AS (
           UPDATE jobs SET status = $2::"JobStatus", "leaseExpiresAt" = NULL, "leasedBy" = NULL,
               "updatedAt" = LOCALTIMESTAMP
           FROM was WHERE jobs.id = was.id
           RETURNING {JOB_COLUMNS}, was.was_status, was.holder
           ),
           recorded AS ({recorded})
           SELECT * FROM ended"#
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(status.label())
    .get_result(conn)
    .await
}

/// Puts a locked FAILED or CANCELLED job back in the queue, now, with a
/// fresh attempt budget and its free hand-backs restored. A job with a
/// concurrency key recreates its key's row (the rows of keys without open
/// jobs are deleted), locked until the transaction commits.
pub async fn requeue(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<JobRow> {
    diesel::sql_query(format!(
        r#"WITH requeued AS (
           UPDATE jobs SET status = 'PENDING', held = {HELD_UNLESS_ENABLED}, waiting = false,
               "freeReturns" = 0,
               "maxAttempts" = attempts + COALESCE("attemptBudget", "maxAttempts"),
               "scheduledAt" = LOCALTIMESTAMP, "failedAt" = NULL, "completedAt" = NULL,
               "leaseExpiresAt" = NULL, "leasedBy" = NULL, "updatedAt" = LOCALTIMESTAMP
           WHERE id = $1 RETURNING {JOB_COLUMNS}
           ),
           keys AS (
               INSERT INTO concurrency_keys (key, max)
               SELECT concurrency_key, COALESCE(concurrency_max, 1)
               FROM requeued WHERE concurrency_key IS NOT NULL
               ON CONFLICT (key) DO UPDATE SET max = EXCLUDED.max
           )
           SELECT * FROM requeued"#
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
}

#[derive(QueryableByName)]
struct NextRun {
    #[diesel(sql_type = Nullable<Timestamp>)]
    next: Option<NaiveDateTime>,
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

/// How long until the earliest waiting job falls due (zero when one is
/// due and not promoted yet); `None` when none waits.
pub async fn time_to_next_scheduled(
    conn: &mut AsyncPgConnection,
) -> QueryResult<Option<std::time::Duration>> {
    let row: NextRun = diesel::sql_query(
        r#"SELECT (SELECT min("scheduledAt") FROM jobs WHERE status = 'PENDING' AND waiting)
                  AS next,
                  LOCALTIMESTAMP AS now"#,
    )
    .get_result(conn)
    .await?;
    Ok(row
        .next
        .map(|next| (next - row.now).to_std().unwrap_or_default()))
}

/// Promotes up to `limit` waiting jobs that fell due into the dispatch
/// indexes; returns how many. Waiting jobs stay out of those indexes so that
/// a claim never walks past jobs scheduled later (a million high-priority
/// jobs due tomorrow sit at the head of a `priority DESC` order otherwise).
/// Rows another statement holds are left for the next call.
pub async fn promote_due(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<usize> {
    diesel::sql_query(
        r#"WITH due AS (
               SELECT id FROM jobs
               WHERE status = 'PENDING' AND waiting AND "scheduledAt" <= LOCALTIMESTAMP
               ORDER BY "scheduledAt"
               LIMIT $1
               FOR UPDATE SKIP LOCKED
           )
           UPDATE jobs SET waiting = false FROM due WHERE jobs.id = due.id"#,
    )
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .execute(conn)
    .await
}

/// Sends `payload` on the queue's channel when the transaction commits.
pub async fn notify(conn: &mut AsyncPgConnection, payload: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// Holds (or releases) the pending jobs of `module` other than its hooks:
/// held jobs leave the dispatch index until their module is ENABLED again.
pub async fn hold_jobs_of_module(
    conn: &mut AsyncPgConnection,
    module: &str,
    held: bool,
) -> QueryResult<usize> {
    // Enabled, a job stays held while a pause holds its queue.
    diesel::sql_query(format!(
        r#"UPDATE jobs SET held = $2 OR {PAUSED}
           WHERE "moduleName" = $1 AND status = 'PENDING' AND hook IS NULL
             AND held <> ($2 OR {PAUSED})"#
    ))
    .bind::<Text, _>(module)
    .bind::<Bool, _>(held)
    .execute(conn)
    .await
}

/// What a module's cancelling statement returns for the history, beside
/// the [`CancelledJob`] columns (see [`DOOMED_ATTEMPTS`]).
const DOOMED_ATTEMPT: &str = r#"doomed.was_status, jobs."workerId" AS worker_id,
    jobs."startedAt" AS leased_at"#;

/// The running attempts a module's cancelling statement ended, for
/// [`attempts::record`] (with the reason, when the statement gives one).
const DOOMED_ATTEMPTS: &str = r#"SELECT id, attempt, worker_id, holder, leased_at, 'CANCELLED',
           NULL::text FROM ended WHERE was_status = 'RUNNING'"#;

/// A job cancelled because its module is being removed.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct CancelledJob {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// The stream that held it, when it was running.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub holder: Option<Uuid>,
}

/// The concurrency keys of the RUNNING jobs a cancelling statement ends
/// (CTE `keys`, of CTE `of` with columns `key` and `was_status`), locked in
/// key order before any row changes: ending a keyed lease changes its
/// key's `running` (a trigger on `jobs`), and a statement that let the
/// trigger lock keys in the order its rows happen to be updated could
/// deadlock with a report batch, which locks them in key order
/// (`lock_in_order`). The statement's UPDATE reads `keys` in a condition
/// of its own, so that the locks come first.
pub(crate) fn cancelled_keys(of: &str) -> String {
    format!(
        r#"keys AS MATERIALIZED (
               SELECT k.key FROM concurrency_keys k
               JOIN (SELECT DISTINCT key FROM {of}
                     WHERE was_status = 'RUNNING' AND key IS NOT NULL) c ON c.key = k.key
               ORDER BY k.key
               FOR NO KEY UPDATE OF k
           )"#
    )
}

/// Cancels the pending and running jobs of `module` other than its
/// lifecycle hooks (it is being removed); returns them with the streams
/// that held the running ones, which must be told.
pub async fn cancel_jobs_of_module(
    conn: &mut AsyncPgConnection,
    module: &str,
) -> QueryResult<Vec<CancelledJob>> {
    diesel::sql_query(format!(
        r#"WITH doomed AS (
               SELECT id, "leasedBy" AS holder, status AS was_status, "concurrencyKey" AS key
               FROM jobs
               WHERE "moduleName" = $1 AND hook IS NULL AND status IN ('PENDING', 'RUNNING')
               ORDER BY id
               FOR UPDATE),
           {keys},
           ended AS (
           UPDATE jobs SET status = 'CANCELLED', "leaseExpiresAt" = NULL, "leasedBy" = NULL,
               "updatedAt" = LOCALTIMESTAMP
           FROM doomed WHERE jobs.id = doomed.id AND (SELECT count(*) FROM keys) >= 0
           RETURNING jobs.id, jobs.attempts AS attempt, doomed.holder, {DOOMED_ATTEMPT}
           ),
           recorded AS ({recorded})
           SELECT id, attempt, holder FROM ended"#,
        keys = cancelled_keys("doomed"),
        recorded = attempts::record(DOOMED_ATTEMPTS)
    ))
    .bind::<Text, _>(module)
    .load(conn)
    .await
}

/// Cancels the pending and running jobs, other than lifecycle hooks and
/// other than `module`'s own, whose name now belongs to `module`: its
/// namespace (`<module>.…`) or one of `job_names`, which it declares. They
/// were created before the module took the name, without its rules, and
/// must not run as its jobs. Returns them with the streams holding the
/// running ones, which must be told.
pub async fn cancel_jobs_taken_by(
    conn: &mut AsyncPgConnection,
    module: &str,
    job_names: &[String],
    reason: &str,
) -> QueryResult<Vec<CancelledJob>> {
    diesel::sql_query(format!(
        r#"WITH doomed AS (
               SELECT id, "leasedBy" AS holder, status AS was_status, "concurrencyKey" AS key
               FROM jobs
               WHERE status IN ('PENDING', 'RUNNING') AND hook IS NULL
                 AND "moduleName" IS DISTINCT FROM $1
                 AND (left(name, length($1) + 1) = $1 || '.' OR name = ANY($2))
               ORDER BY id
               FOR UPDATE),
           {keys},
           ended AS (
           UPDATE jobs SET status = 'CANCELLED', "leaseExpiresAt" = NULL, "leasedBy" = NULL,
               error = jsonb_build_object('message', $3::text, 'cause', 'module_took_name'),
               "updatedAt" = LOCALTIMESTAMP
           FROM doomed WHERE jobs.id = doomed.id AND (SELECT count(*) FROM keys) >= 0
           RETURNING jobs.id, jobs.attempts AS attempt, doomed.holder, {DOOMED_ATTEMPT}
           ),
           recorded AS ({recorded})
           SELECT id, attempt, holder FROM ended"#,
        keys = cancelled_keys("doomed"),
        recorded = attempts::record(DOOMED_ATTEMPTS)
    ))
    .bind::<Text, _>(module)
    .bind::<Array<Text>, _>(job_names)
    .bind::<Text, _>(reason)
    .load(conn)
    .await
}
