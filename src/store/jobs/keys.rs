//! Counting each key's RUNNING jobs in the statements that start and end
//! them, and tending the keys' rows: recounting each key's RUNNING jobs
//! and deleting the rows of keys left without an open job. Both tending
//! statements run after the rows are locked, each with a snapshot of its
//! own taken after the lock: a job whose create (which writes its key's
//! row) or whose status change (which writes the row, itself or through
//! the trigger) committed before the lock
//! is seen, and one that did not waits for this transaction and applies on
//! top of what it wrote. A claim must not do this inside its own statement:
//! its snapshot predates the lock, and it could delete the row of a key
//! whose first job was created meanwhile, leaving that job unclaimable.

use diesel::{
    QueryResult, QueryableByName,
    sql_types::{Array, BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

/// The setting by which statements say they count their own changes of
/// each key's RUNNING jobs, so that the row trigger that otherwise counts
/// them (one `UPDATE` of the key per job, ~19 µs each) stands down
/// (migration `statement_counts_keys`). On for the claimer's connection
/// (a session setting) and within a settle's transaction, between
/// [`count_keys_by_statement`] calls; off everywhere else, so every other
/// writer (a cancel, the reaper, the platform's own backend, an older
/// replica) is counted by the trigger.
pub const STATEMENT_COUNTS_KEYS: &str = "automation.statement_counts_keys";

/// A CTE named `counted` that adds `delta` (`+ 1` or `- 1`) to the
/// `running` count of each key once per row of `source`, a CTE of the
/// same statement whose rows changed status into or out of RUNNING and
/// return their `concurrency_key`. It writes only while
/// [`STATEMENT_COUNTS_KEYS`] is on, which is exactly when the trigger does
/// not: both read the setting in the same statement, so a change is
/// counted once whichever side counts it. The key rows it writes must be
/// locked by the statement or its transaction beforehand (in key order),
/// or two such statements could deadlock.
pub(super) fn counted_by_statement(source: &str, delta: &str) -> String {
    format!(
        r#"counted AS (
               UPDATE concurrency_keys k SET running = k.running {delta} t.n
               FROM (SELECT concurrency_key, count(*) AS n FROM {source}
                     WHERE concurrency_key IS NOT NULL
                     GROUP BY concurrency_key) t
               WHERE k.key = t.concurrency_key
                 AND current_setting('{STATEMENT_COUNTS_KEYS}', true) = 'on'
               RETURNING 1
           )"#
    )
}

/// Turns [`STATEMENT_COUNTS_KEYS`] on or off until the transaction ends:
/// on only around statements that count their keys themselves (they use
/// [`counted_by_statement`]) and whose key rows the transaction already
/// holds; off again before anything else changes jobs.
pub async fn count_keys_by_statement(conn: &mut AsyncPgConnection, on: bool) -> QueryResult<()> {
    diesel::sql_query("SELECT set_config($1, $2, true)")
        .bind::<Text, _>(STATEMENT_COUNTS_KEYS)
        .bind::<Text, _>(if on { "on" } else { "off" })
        .execute(conn)
        .await
        .map(drop)
}

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
