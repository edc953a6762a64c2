//! The web console's Overview: what finished in the last hour. Both
//! statements read finished jobs only through the partial index
//! `jobs_finished_updatedAt_idx` (migration `…000005_console`), so they cost
//! the last hour's rows whatever the size of the table; unfinished jobs are
//! counted by [`super::stats::unfinished_jobs`].

use chrono::NaiveDateTime;
use diesel::{
    QueryResult, QueryableByName,
    sql_types::{BigInt, Text, Timestamp},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

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
