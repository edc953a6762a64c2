//! Queue control over the `jobs` table: pauses (`queue_pauses`), the
//! figures of ListQueues, the dead-letter filters of ListJobs and the rows
//! of the batch actions.
//!
//! A pause keeps its queue's pending jobs out of the dispatch index through
//! the `held` column, which every statement making a job PENDING computes
//! ([`super::HELD_UNLESS_ENABLED`], [`HELD_NEW`]); the claim itself never
//! reads `queue_pauses`, so a million paused jobs cost it nothing. No
//! table lock orders a pause against those statements: the walk that
//! follows a change (`walks.rs`, which argues why it misses no job) fixes
//! what they computed from the state before it.

use chrono::NaiveDateTime;
use diesel::{
    dsl::sql,
    prelude::*,
    sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{HELD_UNLESS_ENABLED, JOB_COLUMNS, JobFilter, JobRow, JobStatus};
use crate::schema::jobs;

/// Whether a pause holds the job of the row `jobs` (its name's or its
/// module's queue).
pub(super) const PAUSED: &str = r#"EXISTS (SELECT 1 FROM queue_pauses p
    WHERE (p.kind = 'job' AND p.name = jobs.name)
       OR (p.kind = 'module' AND p.name = jobs."moduleName"))"#;

/// [`super::HELD_UNLESS_ENABLED`] for a row being inserted from the
/// `unnest` of [`super::insert`] (`n.name`, `n.module`, `n.hook`).
pub(super) const HELD_NEW: &str = r#"(n.hook IS NULL AND (
    (n.module IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM modules m WHERE m.name = n.module AND m.status = 'ENABLED'))
    OR EXISTS (SELECT 1 FROM queue_pauses p
               WHERE (p.kind = 'job' AND p.name = n.name)
                  OR (p.kind = 'module' AND p.name = n.module))))"#;

/// What a pause applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKey {
    /// The jobs of one job name.
    Job(String),
    /// The jobs of a module (its hooks excepted).
    Module(String),
}

impl QueueKey {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Job(_) => "job",
            Self::Module(_) => "module",
        }
    }

    /// The job or module name.
    pub fn name(&self) -> &str {
        match self {
            Self::Job(name) | Self::Module(name) => name,
        }
    }
}

/// A `queue_pauses` row.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct PauseRow {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Timestamp)]
    pub paused_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub paused_by: Option<Uuid>,
}

impl PauseRow {
    /// What it pauses; `None` for a kind this version does not know.
    pub fn key(&self) -> Option<QueueKey> {
        match self.kind.as_str() {
            "job" => Some(QueueKey::Job(self.name.clone())),
            "module" => Some(QueueKey::Module(self.name.clone())),
            _ => None,
        }
    }
}

const PAUSE_COLUMNS: &str = r#"kind, name, "pausedAt" AS paused_at, "pausedBy" AS paused_by"#;

/// Stores a pause unless there is one; returns the pause that holds.
pub async fn insert_pause(
    conn: &mut AsyncPgConnection,
    key: &QueueKey,
    by: Uuid,
) -> QueryResult<(PauseRow, bool)> {
    let inserted: Option<PauseRow> = diesel::sql_query(format!(
        r#"INSERT INTO queue_pauses (kind, name, "pausedAt", "pausedBy")
           VALUES ($1, $2, LOCALTIMESTAMP, $3)
           ON CONFLICT (kind, name) DO NOTHING
           RETURNING {PAUSE_COLUMNS}"#
    ))
    .bind::<Text, _>(key.kind())
    .bind::<Text, _>(key.name())
    .bind::<SqlUuid, _>(by)
    .get_result(conn)
    .await
    .optional()?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing = diesel::sql_query(format!(
        "SELECT {PAUSE_COLUMNS} FROM queue_pauses WHERE kind = $1 AND name = $2"
    ))
    .bind::<Text, _>(key.kind())
    .bind::<Text, _>(key.name())
    .get_result(conn)
    .await?;
    Ok((existing, false))
}

/// Removes a pause; false when there was none.
pub async fn delete_pause(conn: &mut AsyncPgConnection, key: &QueueKey) -> QueryResult<bool> {
    let deleted = diesel::sql_query("DELETE FROM queue_pauses WHERE kind = $1 AND name = $2")
        .bind::<Text, _>(key.kind())
        .bind::<Text, _>(key.name())
        .execute(conn)
        .await?;
    Ok(deleted == 1)
}

/// The pauses by kind and name, at most `limit`.
pub async fn pauses(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<PauseRow>> {
    diesel::sql_query(format!(
        "SELECT {PAUSE_COLUMNS} FROM queue_pauses ORDER BY kind, name LIMIT $1"
    ))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// The figures of one job name's queue.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct QueueFigures {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub module_name: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub scheduled: i64,
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    #[diesel(sql_type = BigInt)]
    pub failed_last_hour: i64,
    /// Microseconds the longest-waiting runnable job has waited.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub oldest_pending_micros: Option<i64>,
    #[diesel(sql_type = Bool)]
    pub paused: bool,
    /// A pause or resume of it is still walking its pending jobs.
    #[diesel(sql_type = Bool)]
    pub settling: bool,
}

/// The statement of [`queue_figures`] (`$1`: names after this one, `$2`:
/// only this module when not NULL, `$3`: at most this many). It first
/// picks the page's names cheaply: the pending ones by a loose index scan
/// (one descent of `jobs_pending_name_idx`, or of `jobs_pending_queue_idx`
/// for a module, per name), merged with the names of running jobs
/// (`jobs_leasedBy_idx`), of failures of the last hour (`jobs_failed_idx`)
/// and of pauses; then it counts the rows of those names only, so a page
/// costs its own queues, not every pending job
/// (tests/integration/queue_control.rs checks the plan and docs/api.md
/// shows it).
pub const QUEUE_FIGURES: &str = r#"
WITH RECURSIVE pending_names(name) AS (
    (SELECT name FROM jobs
     WHERE status = 'PENDING' AND name > $1 AND ($2::text IS NULL OR "moduleName" = $2)
     ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.name FROM jobs j
            WHERE j.status = 'PENDING' AND j.name > pending_names.name
              AND ($2::text IS NULL OR j."moduleName" = $2)
            ORDER BY j.name LIMIT 1)
    FROM pending_names WHERE pending_names.name IS NOT NULL
),
names AS (
    SELECT name FROM (
        (SELECT name FROM pending_names WHERE name IS NOT NULL LIMIT $3)
        UNION
        (SELECT DISTINCT name FROM jobs
         WHERE status = 'RUNNING' AND "leasedBy" IS NOT NULL AND name > $1
           AND ($2::text IS NULL OR "moduleName" = $2)
         ORDER BY name LIMIT $3)
        UNION
        (SELECT DISTINCT name FROM jobs
         WHERE status = 'FAILED' AND "failedAt" >= LOCALTIMESTAMP - interval '1 hour'
           AND name > $1 AND ($2::text IS NULL OR "moduleName" = $2)
         ORDER BY name LIMIT $3)
        UNION
        (SELECT p.name FROM queue_pauses p
         WHERE p.kind = 'job' AND p.name > $1 AND $2::text IS NULL
         ORDER BY p.name LIMIT $3)
    ) candidates
    ORDER BY name
    LIMIT $3
),
parts AS (
    SELECT name, "moduleName" AS module,
           count(*) FILTER (WHERE "scheduledAt" <= LOCALTIMESTAMP) AS pending,
           count(*) FILTER (WHERE "scheduledAt" > LOCALTIMESTAMP) AS scheduled,
           0::bigint AS running, 0::bigint AS failed,
           min("scheduledAt") FILTER (WHERE "scheduledAt" <= LOCALTIMESTAMP) AS oldest
    FROM jobs
    WHERE status = 'PENDING' AND name = ANY (ARRAY(SELECT name FROM names))
      AND ($2::text IS NULL OR "moduleName" = $2)
    GROUP BY name, "moduleName"
    UNION ALL
    SELECT name, "moduleName", 0, 0, count(*), 0, NULL
    FROM jobs
    WHERE status = 'RUNNING' AND "leasedBy" IS NOT NULL AND name = ANY (ARRAY(SELECT name FROM names))
      AND ($2::text IS NULL OR "moduleName" = $2)
    GROUP BY name, "moduleName"
    UNION ALL
    SELECT name, "moduleName", 0, 0, 0, count(*), NULL
    FROM jobs
    WHERE status = 'FAILED' AND "failedAt" >= LOCALTIMESTAMP - interval '1 hour'
      AND name = ANY (ARRAY(SELECT name FROM names)) AND ($2::text IS NULL OR "moduleName" = $2)
    GROUP BY name, "moduleName"
    UNION ALL
    SELECT n.name, NULL, 0, 0, 0, 0, NULL FROM names n
),
queues AS (
    SELECT name, max(module) AS module, sum(pending)::bigint AS pending,
           sum(scheduled)::bigint AS scheduled, sum(running)::bigint AS running,
           sum(failed)::bigint AS failed_last_hour, min(oldest) AS oldest
    FROM parts
    GROUP BY name
)
SELECT q.name, q.module AS module_name, q.pending, q.scheduled, q.running, q.failed_last_hour,
       (extract(epoch FROM LOCALTIMESTAMP - q.oldest) * 1000000)::bigint AS oldest_pending_micros,
       EXISTS (SELECT 1 FROM queue_pauses p
               WHERE (p.kind = 'job' AND p.name = q.name)
                  OR (p.kind = 'module' AND p.name = q.module)) AS paused,
       EXISTS (SELECT 1 FROM queue_walks w
               WHERE (w.kind = 'job' AND w.name = q.name)
                  OR (w.kind = 'module' AND w.name = q.module)) AS settling
FROM queues q
ORDER BY q.name"#;

/// The queues after `after` (by name), at most `limit`, of `module` only
/// when given. Run it in a transaction: it turns sequential scans off for
/// the rest of it (statistics of a queue are stale by nature, and a
/// planner that believes the table small would read every finished row).
pub async fn queue_figures(
    conn: &mut AsyncPgConnection,
    after: &str,
    module: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<QueueFigures>> {
    diesel::sql_query("SET LOCAL enable_seqscan = off")
        .execute(conn)
        .await?;
    diesel::sql_query(QUEUE_FIGURES)
        .bind::<Text, _>(after)
        .bind::<Nullable<Text>, _>(module)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// The ids (and sort keys) of the jobs matching `filter` in one of
/// `states`, lifecycle hooks left out, newest first after `filter.before`:
/// the page a batch action takes (unlocked; [`lock_jobs`] locks it).
pub async fn batch_candidates(
    conn: &mut AsyncPgConnection,
    filter: &JobFilter,
    states: &[JobStatus],
    limit: i64,
) -> QueryResult<Vec<JobRow>> {
    let mut query = super::listing::filtered(filter);
    let labels: Vec<String> = states.iter().map(|s| format!("'{}'", s.label())).collect();
    query = query
        .filter(sql::<Bool>(&format!(
            "jobs.status IN ({})",
            labels.join(", ")
        )))
        .filter(jobs::hook.is_null());
    query
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}

/// Locks these jobs in id order (the order of every statement that takes
/// leases) until the transaction ends, and returns them as they are now.
pub async fn lock_jobs(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<JobRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await
}

/// Puts locked FAILED or CANCELLED jobs back in the queue, as
/// [`super::requeue`] does one (their concurrency keys' rows recreated:
/// the rows of keys without open jobs are deleted).
pub async fn requeue_all(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<JobRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        r#"WITH requeued AS (
           UPDATE jobs SET status = 'PENDING', held = {HELD_UNLESS_ENABLED}, waiting = false,
               "freeReturns" = 0,
               "maxAttempts" = attempts + COALESCE("attemptBudget", "maxAttempts"),
               "scheduledAt" = LOCALTIMESTAMP, "failedAt" = NULL, "completedAt" = NULL,
               "leaseExpiresAt" = NULL, "leasedBy" = NULL, "updatedAt" = LOCALTIMESTAMP
           WHERE id = ANY($1) AND status IN ('FAILED', 'CANCELLED')
           RETURNING {JOB_COLUMNS}
           ),
           keys AS (
               INSERT INTO concurrency_keys (key, max)
               SELECT DISTINCT ON (concurrency_key) concurrency_key, COALESCE(concurrency_max, 1)
               FROM requeued WHERE concurrency_key IS NOT NULL
               ORDER BY concurrency_key
               ON CONFLICT (key) DO UPDATE SET max = EXCLUDED.max
           )
           SELECT * FROM requeued"#
    ))
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await
}

/// Cancels locked PENDING or RUNNING jobs, as [`super::set_status`] does
/// one (the running attempts recorded by the same statement).
pub async fn cancel_all(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<JobRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = super::attempts::record(super::CANCELLED_ATTEMPTS);
    let keys = super::cancelled_keys("was");
    diesel::sql_query(format!(
        r#"WITH was AS (
               SELECT id, status AS was_status, "leasedBy" AS holder, "concurrencyKey" AS key
               FROM jobs
               WHERE id = ANY($1) AND status IN ('PENDING', 'RUNNING')
           ),
           {keys},
           ended AS (
           UPDATE jobs SET status = 'CANCELLED', "leaseExpiresAt" = NULL, "leasedBy" = NULL,
               "updatedAt" = LOCALTIMESTAMP
           FROM was WHERE jobs.id = was.id AND (SELECT count(*) FROM keys) >= 0
           RETURNING {JOB_COLUMNS}, was.was_status, was.holder
           ),
           recorded AS ({recorded})
           SELECT * FROM ended"#
    ))
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await
}
