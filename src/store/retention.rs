//! Deleting what retention says is old, in small batches: each statement
//! takes at most `limit` rows, locks only those (`FOR UPDATE SKIP LOCKED`:
//! a row another transaction holds is left for the next pass, never waited
//! for), and commits on its own, so no lock is held for long and the
//! queue's hot rows are never touched.

use chrono::NaiveDateTime;
use diesel::{
    sql_query,
    sql_types::{BigInt, Timestamp},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

/// Key of the transaction-level advisory lock that lets one replica prune
/// at a time ("retain" in ASCII).
pub const PRUNE_LOCK_KEY: i64 = 0x7265_7461_696e;

#[derive(diesel::QueryableByName)]
struct Flag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    flag: bool,
}

/// Takes the pruning lock for the current transaction, without waiting;
/// false when another replica holds it.
pub async fn try_lock(conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
    sql_query("SELECT pg_try_advisory_xact_lock($1) AS flag")
        .bind::<BigInt, _>(PRUNE_LOCK_KEY)
        .get_result::<Flag>(conn)
        .await
        .map(|row| row.flag)
}

/// Runs one batched `DELETE` whose `$1` is the cutoff and `$2` the most
/// rows it takes.
async fn delete_batch(
    conn: &mut AsyncPgConnection,
    statement: &'static str,
    before: NaiveDateTime,
    limit: i64,
) -> diesel::QueryResult<usize> {
    sql_query(statement)
        .bind::<Timestamp, _>(before)
        .bind::<BigInt, _>(limit)
        .execute(conn)
        .await
}

/// Deletes up to `limit` COMPLETED jobs that completed before `before`.
pub async fn delete_completed_jobs(
    conn: &mut AsyncPgConnection,
    before: NaiveDateTime,
    limit: i64,
) -> diesel::QueryResult<usize> {
    // A job completes after it is created: the "createdAt" bound is implied,
    // and lets the planner read only the old end of its index.
    delete_batch(
        conn,
        r#"DELETE FROM jobs WHERE id IN (
               SELECT id FROM jobs
               WHERE status = 'COMPLETED' AND "createdAt" < $1 AND "completedAt" < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)"#,
        before,
        limit,
    )
    .await
}

/// Deletes up to `limit` FAILED or CANCELLED jobs that ended before
/// `before` (a cancelled job that never failed ended when it was last
/// updated).
pub async fn delete_failed_jobs(
    conn: &mut AsyncPgConnection,
    before: NaiveDateTime,
    limit: i64,
) -> diesel::QueryResult<usize> {
    delete_batch(
        conn,
        r#"DELETE FROM jobs WHERE id IN (
               SELECT id FROM jobs
               WHERE status IN ('FAILED', 'CANCELLED') AND "createdAt" < $1
                 AND COALESCE("failedAt", "completedAt", "updatedAt") < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)"#,
        before,
        limit,
    )
    .await
}

/// Deletes up to `limit` audit rows written before `before`.
pub async fn delete_audit(
    conn: &mut AsyncPgConnection,
    before: NaiveDateTime,
    limit: i64,
) -> diesel::QueryResult<usize> {
    delete_batch(
        conn,
        r#"DELETE FROM audit_logs WHERE id IN (
               SELECT id FROM audit_logs WHERE "createdAt" < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)"#,
        before,
        limit,
    )
    .await
}

/// Deletes up to `limit` sessions that expired or were revoked before
/// `before`, with their spent refresh tokens (the foreign key cascades).
pub async fn delete_ended_sessions(
    conn: &mut AsyncPgConnection,
    before: NaiveDateTime,
    limit: i64,
) -> diesel::QueryResult<usize> {
    delete_batch(
        conn,
        r#"DELETE FROM sessions WHERE id IN (
               SELECT id FROM sessions WHERE "expiresAt" < $1 OR "revokedAt" < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)"#,
        before,
        limit,
    )
    .await
}
