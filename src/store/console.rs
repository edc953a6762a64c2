//! The web console's Overview: what finished in the last hour. Both
//! statements read finished jobs only through the partial index
//! `jobs_finished_updatedAt_idx` (migration `…000005_console`), so they cost
//! the last hour's rows whatever the size of the table; unfinished jobs are
//! counted by [`super::stats::unfinished_jobs`]. The Dead letters page
//! groups the newest failures ([`failure_groups`]).

use chrono::NaiveDateTime;
use diesel::{
    QueryResult, QueryableByName,
    sql_types::{BigInt, Integer, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

/// Jobs of one name that failed for good since a moment.
#[derive(Debug, Clone, QueryableByName)]
pub struct FailedCount {
    /// The job name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Failed jobs by name since `since`.
pub async fn failed_since(
    conn: &mut AsyncPgConnection,
    since: NaiveDateTime,
) -> QueryResult<Vec<FailedCount>> {
    diesel::sql_query(
        r#"SELECT name, count(*) AS count FROM jobs
           WHERE status IN ('COMPLETED', 'FAILED') AND "updatedAt" >= $1 AND status = 'FAILED'
           GROUP BY name"#,
    )
    .bind::<Timestamp, _>(since)
    .load(conn)
    .await
}

/// Jobs finished in one minute.
#[derive(Debug, Clone, QueryableByName)]
pub struct MinuteCount {
    /// The minute.
    #[diesel(sql_type = Timestamp)]
    pub minute: NaiveDateTime,
    /// Completed in it.
    #[diesel(sql_type = BigInt)]
    pub completed: i64,
    /// Failed for good in it.
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
}

/// Finished jobs per minute since `since` (minutes with none are absent).
pub async fn finished_per_minute(
    conn: &mut AsyncPgConnection,
    since: NaiveDateTime,
) -> QueryResult<Vec<MinuteCount>> {
    diesel::sql_query(
        r#"SELECT date_trunc('minute', "updatedAt") AS minute,
                  count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                  count(*) FILTER (WHERE status = 'FAILED') AS failed
           FROM jobs
           WHERE status IN ('COMPLETED', 'FAILED') AND "updatedAt" >= $1
           GROUP BY 1 ORDER BY 1"#,
    )
    .bind::<Timestamp, _>(since)
    .load(conn)
    .await
}

/// Failed jobs of one name whose error messages start alike.
#[derive(Debug, Clone, QueryableByName)]
pub struct FailureGroup {
    /// The job name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Its module, if it has one.
    #[diesel(sql_type = Nullable<Text>)]
    pub module_name: Option<String>,
    /// The messages' common start (empty: no message).
    #[diesel(sql_type = Text)]
    pub prefix: String,
    /// How many (among the failures read).
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    /// The newest failure's time and job.
    #[diesel(sql_type = Timestamp)]
    pub newest_at: NaiveDateTime,
    #[diesel(sql_type = SqlUuid)]
    pub newest_id: Uuid,
}

/// The dead letters: the newest `scan` FAILED jobs since `since` (of
/// `name` only when given), grouped by name and the first `chars`
/// characters of their error message, newest group first, at most
/// `groups` of them. The failures are read newest first through the
/// partial index `jobs_failed_idx`, so a call costs at most `scan` rows
/// however many jobs failed.
pub async fn failure_groups(
    conn: &mut AsyncPgConnection,
    since: NaiveDateTime,
    name: Option<&str>,
    chars: i32,
    scan: i64,
    groups: i64,
) -> QueryResult<Vec<FailureGroup>> {
    diesel::sql_query(
        r#"SELECT name, max(module_name) AS module_name, prefix, count(*) AS count,
                  max(failed_at) AS newest_at,
                  (array_agg(id ORDER BY failed_at DESC))[1] AS newest_id
           FROM (SELECT name, "moduleName" AS module_name, "failedAt" AS failed_at, id,
                        left(coalesce(error ->> 'message', ''), $2) AS prefix
                 FROM jobs
                 WHERE status = 'FAILED' AND "failedAt" >= $1
                   AND ($3::text IS NULL OR name = $3)
                 ORDER BY "failedAt" DESC LIMIT $4) AS failures
           GROUP BY name, prefix
           ORDER BY newest_at DESC, name, prefix
           LIMIT $5"#,
    )
    .bind::<Timestamp, _>(since)
    .bind::<Integer, _>(chars)
    .bind::<Nullable<Text>, _>(name)
    .bind::<BigInt, _>(scan)
    .bind::<BigInt, _>(groups)
    .load(conn)
    .await
}
