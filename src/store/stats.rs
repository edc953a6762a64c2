//! Statistics for the metrics sampler: counts of unfinished jobs, and what
//! PostgreSQL's statistics views say about tables, indexes and locks. Every
//! query here is cheap enough to run every few seconds whatever the size of
//! the tables: jobs are counted only where they are unfinished (the
//! `status` index), finished ones never (they are counted as they finish).

use diesel::{
    QueryResult, QueryableByName,
    sql_types::{BigInt, Double, Nullable, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

/// Unfinished jobs of one name in one status.
#[derive(Debug, Clone, QueryableByName)]
pub struct JobCount {
    /// The job name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// `PENDING` or `RUNNING`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    /// For pending jobs: seconds since the oldest due one became due
    /// (`None` when none is due: all scheduled later, or held).
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_due_secs: Option<f64>,
}

/// Unfinished jobs by name and status, with the age of the oldest due
/// pending one.
pub async fn unfinished_jobs(conn: &mut AsyncPgConnection) -> QueryResult<Vec<JobCount>> {
    diesel::sql_query(
        r#"SELECT name, status::text AS status, count(*) AS count,
                  EXTRACT(EPOCH FROM LOCALTIMESTAMP - min("scheduledAt")
                      FILTER (WHERE status = 'PENDING' AND NOT held
                              AND "scheduledAt" <= LOCALTIMESTAMP))::float8 AS oldest_due_secs
           FROM jobs WHERE status IN ('PENDING', 'RUNNING')
           GROUP BY name, status"#,
    )
    .load(conn)
    .await
}

/// One table's row counts and size.
#[derive(Debug, Clone, QueryableByName)]
pub struct TableStats {
    /// The table.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Live rows (estimated by PostgreSQL).
    #[diesel(sql_type = BigInt)]
    pub live_rows: i64,
    /// Dead rows not yet vacuumed.
    #[diesel(sql_type = BigInt)]
    pub dead_rows: i64,
    /// Bytes on disk, indexes and TOAST included.
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
}

/// Every user table's statistics (`pg_stat_user_tables`).
pub async fn tables(conn: &mut AsyncPgConnection) -> QueryResult<Vec<TableStats>> {
    diesel::sql_query(
        "SELECT relname::text AS name, n_live_tup AS live_rows, n_dead_tup AS dead_rows, \
                pg_total_relation_size(relid) AS bytes \
         FROM pg_stat_user_tables",
    )
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct Ratio {
    #[diesel(sql_type = Nullable<Double>)]
    ratio: Option<f64>,
}

/// Share of index blocks read from shared buffers rather than disk, over
/// all user indexes since the statistics were reset (`None` before any
/// index was read).
pub async fn index_hit_ratio(conn: &mut AsyncPgConnection) -> QueryResult<Option<f64>> {
    diesel::sql_query(
        "SELECT (sum(idx_blks_hit) / NULLIF(sum(idx_blks_hit + idx_blks_read), 0))::float8 \
                AS ratio \
         FROM pg_statio_user_indexes",
    )
    .get_result::<Ratio>(conn)
    .await
    .map(|r| r.ratio)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Lock requests waiting now, in this database.
pub async fn lock_waits(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    diesel::sql_query(
        "SELECT count(*) AS count FROM pg_locks \
         WHERE NOT granted AND database = (SELECT oid FROM pg_database \
                                            WHERE datname = current_database())",
    )
    .get_result::<Count>(conn)
    .await
    .map(|c| c.count)
}

/// Sessions neither revoked nor expired.
pub async fn active_sessions(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    diesel::sql_query(
        r#"SELECT count(*) AS count FROM sessions
           WHERE "revokedAt" IS NULL AND "expiresAt" > LOCALTIMESTAMP"#,
    )
    .get_result::<Count>(conn)
    .await
    .map(|c| c.count)
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// Versions recorded in diesel's migration table.
pub async fn applied_migrations(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations")
        .load::<Version>(conn)
        .await
        .map(|rows| rows.into_iter().map(|r| r.version).collect())
}
