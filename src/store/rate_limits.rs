//! The `rate_limits` table: named token buckets. A bucket stores the tokens
//! it held when it was last drawn from (`refilledAt`); what it holds now is
//! computed from the database's clock, so every replica agrees. Only a claim
//! draws tokens (see `jobs::claim`), under the bucket's row lock.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Timestamp},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// A `rate_limits` row, its tokens refilled to now.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct RateLimitRow {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Integer)]
    pub units: i32,
    #[diesel(sql_type = BigInt)]
    pub interval_ms: i64,
    #[diesel(sql_type = Integer)]
    pub burst: i32,
    /// Tokens held now.
    #[diesel(sql_type = Double)]
    pub tokens: f64,
    #[diesel(sql_type = Timestamp)]
    pub created_at: NaiveDateTime,
    #[diesel(sql_type = Timestamp)]
    pub updated_at: NaiveDateTime,
}

/// The tokens bucket `r` holds at the transaction's time: what it held,
/// plus `units` per `intervalMs` since `refilledAt`, at most `burst`.
pub(crate) const TOKENS_NOW: &str = r#"LEAST(r.burst::float8, r.tokens
    + GREATEST(EXTRACT(EPOCH FROM (LOCALTIMESTAMP - r."refilledAt"))::float8 * 1000, 0)
      / r."intervalMs" * r.units)"#;

fn columns() -> String {
    format!(
        r#"r.name, r.units, r."intervalMs" AS interval_ms, r.burst, {TOKENS_NOW} AS tokens,
           r."createdAt" AS created_at, r."updatedAt" AS updated_at"#
    )
}

/// A bucket to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRateLimit {
    pub name: String,
    pub units: i32,
    pub interval_ms: i64,
    pub burst: i32,
}

/// Creates a bucket (full) or replaces one's rule (keeping its tokens, at
/// most the new burst); returns it (a new one has `created_at ==
/// updated_at`).
pub async fn put(conn: &mut AsyncPgConnection, new: &NewRateLimit) -> QueryResult<RateLimitRow> {
    diesel::sql_query(format!(
        r#"INSERT INTO rate_limits AS r (name, units, "intervalMs", burst, tokens, "refilledAt",
               "servedAt", "createdAt", "updatedAt")
           VALUES ($1, $2, $3, $4, $4, LOCALTIMESTAMP, LOCALTIMESTAMP, LOCALTIMESTAMP,
                   LOCALTIMESTAMP)
           ON CONFLICT (name) DO UPDATE SET units = EXCLUDED.units,
               "intervalMs" = EXCLUDED."intervalMs", burst = EXCLUDED.burst,
               tokens = LEAST(EXCLUDED.burst::float8, {TOKENS_NOW}),
               "refilledAt" = GREATEST(r."refilledAt", LOCALTIMESTAMP),
               "updatedAt" = LOCALTIMESTAMP
           RETURNING {}"#,
        columns()
    ))
    .bind::<Text, _>(&new.name)
    .bind::<Integer, _>(new.units)
    .bind::<BigInt, _>(new.interval_ms)
    .bind::<Integer, _>(new.burst)
    .get_result(conn)
    .await
}

/// Buckets by name, after `after`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<RateLimitRow>> {
    diesel::sql_query(format!(
        r#"SELECT {} FROM rate_limits r
           WHERE ($1::text IS NULL OR r.name > $1)
           ORDER BY r.name
           LIMIT $2"#,
        columns()
    ))
    .bind::<Nullable<Text>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Of `names`, those that exist, share-locked on their key until the
/// transaction ends: a job created naming a bucket keeps a concurrent
/// [`delete`] waiting (which then sees the job), while claims, which lock
/// buckets `FOR NO KEY UPDATE`, are not held up.
pub async fn lock_existing(
    conn: &mut AsyncPgConnection,
    names: &[String],
) -> QueryResult<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Name> = diesel::sql_query(
        "SELECT name FROM rate_limits WHERE name = ANY($1) ORDER BY name FOR KEY SHARE",
    )
    .bind::<Array<Text>, _>(names)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.name).collect())
}

/// Locks bucket `name` for deletion; false when there is none.
pub async fn lock_for_delete(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<bool> {
    let rows: Vec<Name> =
        diesel::sql_query("SELECT name FROM rate_limits WHERE name = $1 FOR UPDATE")
            .bind::<Text, _>(name)
            .load(conn)
            .await?;
    Ok(!rows.is_empty())
}

/// Whether a PENDING or RUNNING job names bucket `name`. Run after
/// [`lock_for_delete`], in a statement of its own: it then sees every job
/// created naming the bucket before the lock was taken.
pub async fn named_by_open_jobs(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<bool> {
    let rows: Vec<Name> = diesel::sql_query(
        r#"SELECT "rateLimit" AS name FROM jobs
           WHERE "rateLimit" = $1 AND status IN ('PENDING', 'RUNNING') LIMIT 1"#,
    )
    .bind::<Text, _>(name)
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Deletes bucket `name`.
pub async fn delete(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM rate_limits WHERE name = $1")
        .bind::<Text, _>(name)
        .execute(conn)
        .await
}
