//! Settling what workers report on their leases: completions, failures
//! (retried after a backoff or final) and hand-backs, each only while the
//! lease is still what the report quotes; and recognising a completion
//! already settled by the stream that quotes it.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Array, Bool, Integer, Jsonb, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{HELD_UNLESS_ENABLED, LeaseRef, attempts::record, counted_by_statement};

/// What a settled report changed.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Settled {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The attempt the applied report quoted.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// The stream that sent it.
    #[diesel(sql_type = SqlUuid)]
    pub stream: Uuid,
    /// The job's new state.
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Timestamp)]
    pub scheduled_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<Text>)]
    pub hook: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub module_name: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub error: Option<serde_json::Value>,
}

const SETTLED_COLUMNS: &str = r#"jobs.id, r.attempt, r.stream, jobs.status::text AS status,
    jobs."scheduledAt" AS scheduled_at, jobs.hook, jobs."moduleName" AS module_name,
    jobs.error"#;

/// What the `ended` CTE of a settling statement also returns for its
/// attempt's history row (see [`record`]): the worker and when it leased.
/// And its key, for the count of the key's RUNNING jobs (see
/// [`counted_by_statement`]).
const ATTEMPT_COLUMNS: &str = r#"jobs."workerId" AS worker_id, jobs."startedAt" AS leased_at,
    jobs."concurrencyKey" AS concurrency_key"#;

/// The columns of [`Settled`], read from `ended`.
const SETTLED_NAMES: &str = "id, attempt, stream, status, scheduled_at, hook, module_name, error";

/// Completes the attempts whose lease is still what the report quotes; the
/// rest change nothing. The completing stream stays in `"leasedBy"` (see
/// [`already_completed`]). Each completed attempt's history row is written
/// by the same statement.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseRef],
    results: &[serde_json::Value],
) -> QueryResult<Vec<Settled>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = record(
        "SELECT id, attempt, worker_id, stream, leased_at, 'COMPLETED', NULL::text FROM ended",
    );
    let counted = counted_by_statement("ended", "-");
    diesel::sql_query(format!(
        r#"WITH ended AS (
           UPDATE jobs
           SET status = 'COMPLETED', result = r.result, "completedAt" = LOCALTIMESTAMP,
               "leaseExpiresAt" = NULL, "updatedAt" = LOCALTIMESTAMP
           FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::jsonb[])
                AS r(id, attempt, stream, result)
           WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'RUNNING'
           RETURNING {SETTLED_COLUMNS}, {ATTEMPT_COLUMNS}
           ),
           recorded AS ({recorded}),
           {counted}
           SELECT {SETTLED_NAMES} FROM ended"#
    ))
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.job).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.stream).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(results)
    .load(conn)
    .await
}

/// Of these leases, the attempts that are already COMPLETED by the stream
/// that quotes them. [`complete`] leaves the completing stream in
/// `"leasedBy"` (a finished row is never leased again, and every lease
/// operation also asks for RUNNING), so that a report settled again after
/// a commit whose outcome was lost with the connection is recognised as
/// settled, not refused.
pub async fn already_completed(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseRef],
) -> QueryResult<Vec<Uuid>> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Id> = diesel::sql_query(
        r#"SELECT jobs.id FROM jobs
           JOIN unnest($1::uuid[], $2::int[], $3::uuid[]) AS r(id, attempt, stream)
             ON jobs.id = r.id
           WHERE jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'COMPLETED'"#,
    )
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.job).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.stream).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// How long a failed attempt waits before the next one: `base · 2^(n-1)`,
/// capped, with ±25 % jitter, computed in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: std::time::Duration,
    pub cap: std::time::Duration,
}

/// Fails the attempts whose lease is still what the report quotes: back to
/// PENDING after a backoff while attempts remain (and the failure is not
/// permanent), FAILED otherwise. The error is kept either way, and its
/// message in the attempt's history row, written by the same statement.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseRef],
    errors: &[serde_json::Value],
    permanent: &[bool],
    backoff: Backoff,
) -> QueryResult<Vec<Settled>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = record(
        "SELECT id, attempt, worker_id, stream, leased_at, 'FAILED', error->>'message' FROM ended",
    );
    let counted = counted_by_statement("ended", "-");
    diesel::sql_query(format!(
        r#"WITH ended AS (
           UPDATE jobs
           SET status = CASE WHEN r.permanent OR jobs.attempts >= jobs."maxAttempts"
                             THEN 'FAILED'::"JobStatus" ELSE 'PENDING'::"JobStatus" END,
               "failedAt" = CASE WHEN r.permanent OR jobs.attempts >= jobs."maxAttempts"
                                 THEN LOCALTIMESTAMP END,
               "scheduledAt" = CASE WHEN r.permanent OR jobs.attempts >= jobs."maxAttempts"
                                    THEN jobs."scheduledAt"
                                    ELSE LOCALTIMESTAMP + make_interval(secs =>
                                        LEAST($6::float8, $5::float8 * power(2, LEAST(jobs.attempts - 1, 62)))
                                        * (0.75 + random() * 0.5)) END,
               error = r.error, "leaseExpiresAt" = NULL, "leasedBy" = NULL,
               held = {HELD_UNLESS_ENABLED},
               waiting = NOT (r.permanent OR jobs.attempts >= jobs."maxAttempts"),
               "updatedAt" = LOCALTIMESTAMP
           FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::jsonb[], $7::bool[])
                AS r(id, attempt, stream, error, permanent)
           WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'RUNNING'
           RETURNING {SETTLED_COLUMNS}, {ATTEMPT_COLUMNS}
           ),
           recorded AS ({recorded}),
           {counted}
           SELECT {SETTLED_NAMES} FROM ended"#
    ))
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.job).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.stream).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(errors)
    .bind::<diesel::sql_types::Double, _>(backoff.base.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(backoff.cap.as_secs_f64())
    .bind::<Array<Bool>, _>(permanent)
    .load(conn)
    .await
}

/// What a hand-back costs. A job may be handed back unfinished `free`
/// times (since it was created or last retried) without spending its attempt
/// budget; past that, each hand-back spends the attempt like a failure (the
/// job FAILED once the budget is spent), so a worker that releases
/// everything it gets cannot keep a job alive forever. Every delivered
/// hand-back also puts the job off by `base · 2^(earlier hand-backs)`, at
/// most `cap`, so a release loop cannot spin claim after claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnRule {
    pub free: i32,
    pub base: std::time::Duration,
    pub cap: std::time::Duration,
}

/// Hands leases back unfinished. A delivered lease (the worker had it:
/// released, drained, cut off) goes back to PENDING after the growing delay
/// of [`ReturnRule`], free while the job's free returns last (`maxAttempts`
/// grows by one, so the attempt number is used but not the budget), charged
/// like a failure after that (FAILED on the last attempt, with an error
/// saying why). `undelivered` leases (claimed for a stream that closed
/// before it got them) give their attempt number back instead, free and
/// runnable at once. Rows are locked in id order, like every statement that
/// takes leases, so that two of them never wait on each other in a cycle.
/// A delivered lease's attempt gets its history row (HANDED_BACK, with the
/// reason when it was charged) in the same statement; an undelivered one
/// none (its number is used again).
pub async fn hand_back(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseRef],
    undelivered: bool,
    rule: ReturnRule,
) -> QueryResult<Vec<Settled>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    // `charged`: delivered, and the free returns are used up; `spent`:
    // charged, and that was the last attempt.
    let charged = r#"($4::int = 0 AND jobs."freeReturns" >= $5::int)"#;
    let spent = format!(r#"({charged} AND jobs.attempts >= jobs."maxAttempts")"#);
    // After the update a delivered hand-back counted one more return:
    // it was charged when the count now exceeds the free ones.
    let recorded = record(
        r#"SELECT id, attempt, worker_id, stream, leased_at, 'HANDED_BACK',
                  CASE WHEN charged THEN $8::text END
           FROM ended WHERE $4::int = 0"#,
    );
    let counted = counted_by_statement("ended", "-");
    diesel::sql_query(format!(
        r#"WITH r AS (
               SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS r(id, attempt, stream)
           ),
           locked AS (
               SELECT jobs.id FROM jobs JOIN r ON jobs.id = r.id
               WHERE jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
                 AND jobs.status = 'RUNNING'
               ORDER BY jobs.id
               FOR UPDATE OF jobs
           ),
           ended AS (
           UPDATE jobs
           SET status = CASE WHEN {spent} THEN 'FAILED'::"JobStatus"
                             ELSE 'PENDING'::"JobStatus" END,
               "failedAt" = CASE WHEN {spent} THEN LOCALTIMESTAMP ELSE jobs."failedAt" END,
               attempts = jobs.attempts - $4::int,
               "maxAttempts" = CASE WHEN $4::int = 1 OR {charged} THEN jobs."maxAttempts"
                                    ELSE jobs."maxAttempts" + 1 END,
               "freeReturns" = jobs."freeReturns" + 1 - $4::int,
               "scheduledAt" = CASE WHEN $4::int = 1 OR {spent} THEN jobs."scheduledAt"
                                    ELSE LOCALTIMESTAMP + make_interval(secs =>
                                        LEAST($7::float8, $6::float8
                                              * power(2::float8, LEAST(jobs."freeReturns", 62))))
                               END,
               error = CASE WHEN {charged}
                            THEN jsonb_build_object('message', $8::text,
                                                    'attempt', jobs.attempts,
                                                    'cause', 'handed_back_too_often')
                            ELSE jobs.error END,
               held = {HELD_UNLESS_ENABLED},
               waiting = NOT ($4::int = 1 OR {spent}),
               "leaseExpiresAt" = NULL, "leasedBy" = NULL, "updatedAt" = LOCALTIMESTAMP
           FROM r JOIN locked ON locked.id = r.id
           WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'RUNNING'
           RETURNING {SETTLED_COLUMNS}, {ATTEMPT_COLUMNS},
                     ($4::int = 0 AND jobs."freeReturns" > $5::int) AS charged
           ),
           recorded AS ({recorded}),
           {counted}
           SELECT {SETTLED_NAMES} FROM ended"#
    ))
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.job).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.stream).collect::<Vec<_>>())
    .bind::<Integer, _>(i32::from(undelivered))
    .bind::<Integer, _>(rule.free)
    .bind::<diesel::sql_types::Double, _>(rule.base.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(rule.cap.as_secs_f64())
    .bind::<Text, _>(format!(
        "handed back unfinished more than {} times: each further hand-back spends an attempt",
        rule.free
    ))
    .load(conn)
    .await
}
