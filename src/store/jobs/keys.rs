//! Tending the concurrency keys' rows: recounting each key's RUNNING jobs
//! and deleting the rows of keys left without an open job. Both statements
//! run after the rows are locked, each with a snapshot of its own taken
//! after the lock: a job whose create (which writes its key's row) or whose
//! status change (whose trigger writes the row) committed before the lock
//! is seen, and one that did not waits for this transaction and applies on
//! top of what it wrote. A claim must not do this inside its own statement:
//! its snapshot predates the lock, and it could delete the row of a key
//! whose first job was created meanwhile, leaving that job unclaimable.

use diesel::{
    QueryResult, QueryableByName,
    sql_types::{Array, BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

#[derive(QueryableByName)]
struct KeyName {
    #[diesel(sql_type = Text)]
    key: String,
}

/// Locks up to `limit` key rows after `after`, in key order, passing over
/// rows a claim, a create or a settle holds (they are tended next time).
pub async fn lock_key_rows(
    conn: &mut AsyncPgConnection,
    after: &str,
    limit: i64,
) -> QueryResult<Vec<String>> {
    let rows: Vec<KeyName> = diesel::sql_query(
        r#"SELECT key FROM concurrency_keys WHERE key > $1
           ORDER BY key LIMIT $2
           FOR UPDATE SKIP LOCKED"#,
    )
    .bind::<Text, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.key).collect())
}

/// Sets the count of the locked `keys` whose count differs from their
/// RUNNING jobs; returns how many were wrong.
pub async fn recount_running(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<usize> {
    diesel::sql_query(
        r#"UPDATE concurrency_keys k SET running = c.n
           FROM (SELECT t.key, (SELECT count(*) FROM jobs j
                                WHERE j."concurrencyKey" = t.key AND j.status = 'RUNNING')::int AS n
                 FROM unnest($1::text[]) AS t(key)) c
           WHERE k.key = c.key AND k.running <> c.n"#,
    )
    .bind::<Array<Text>, _>(keys)
    .execute(conn)
    .await
}

/// Deletes the rows of the locked `keys` that no PENDING or RUNNING job
/// names; returns how many.
pub async fn forget_emptied(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<usize> {
    diesel::sql_query(
        r#"DELETE FROM concurrency_keys k
           WHERE k.key = ANY($1::text[])
             AND NOT EXISTS (SELECT 1 FROM jobs o
                             WHERE o."concurrencyKey" = k.key
                               AND o.status IN ('PENDING', 'RUNNING'))"#,
    )
    .bind::<Array<Text>, _>(keys)
    .execute(conn)
    .await
}
