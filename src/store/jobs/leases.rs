//! The worker side of the `jobs` table once leased: extending and taking
//! leases (claiming is `claim.rs`; settling reports and handing jobs back is
//! `settle.rs`).
//! Every statement that changes a leased row locks rows in id order (or
//! skips locked ones), then the concurrency keys of those it ends in key
//! order, so they never deadlock with each other.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{
        Array, BigInt, Integer, Interval, Jsonb, Nullable, Text, Timestamp, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{attempts::record, interval};

/// A report quoting one lease: (job, attempt, stream holding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRef {
    pub job: Uuid,
    pub attempt: i32,
    pub stream: Uuid,
}

/// A lease taken from its holder: the job and the stream that held it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct LostLease {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = SqlUuid)]
    pub holder: Uuid,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub hook: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub module_name: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub error: Option<serde_json::Value>,
}

/// A job going back to PENDING is held (out of the dispatch index) when
/// its module is not ENABLED, like the jobs the module's disable held, or
/// when a pause holds its queue (its name's or its module's: see
/// `queues.rs`). Hook jobs are never held.
pub(super) const HELD_UNLESS_ENABLED: &str = r#"(jobs.hook IS NULL AND (
    (jobs."moduleName" IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM modules m
                     WHERE m.name = jobs."moduleName" AND m.status = 'ENABLED'))
    OR EXISTS (SELECT 1 FROM queue_pauses p
               WHERE (p.kind = 'job' AND p.name = jobs.name)
                  OR (p.kind = 'module' AND p.name = jobs."moduleName"))))"#;

/// The SET clause of a lost lease: back to PENDING while attempts remain
/// (without backoff: the worker vanished, the job did not fail), FAILED on
/// the last one; the loss is kept as the job's error.
const LOSE_LEASE: &str = r#"
    status = CASE WHEN jobs.attempts >= jobs."maxAttempts"
                  THEN 'FAILED'::"JobStatus" ELSE 'PENDING'::"JobStatus" END,
    "failedAt" = CASE WHEN jobs.attempts >= jobs."maxAttempts" THEN LOCALTIMESTAMP END,
    error = jsonb_build_object('message', $1::text, 'attempt', jobs.attempts,
                               'cause', 'lease_lost'),
    "leaseExpiresAt" = NULL, "leasedBy" = NULL, "updatedAt" = LOCALTIMESTAMP"#;

/// The concurrency keys of the leases a statement takes (CTE `keys`, of the
/// CTE `lost`), locked in key order before the jobs change: ending a keyed
/// lease changes its key's `running` (a trigger on `jobs`), and a statement
/// that let the trigger lock its keys in the order its rows happen to be
/// updated could deadlock with a report batch ending leases of the same
/// keys (see [`lock_in_order`]). The statement must read `keys` before it
/// updates a row, in a condition of its own.
const LOST_KEYS: &str = r#"keys AS MATERIALIZED (
               SELECT k.key FROM concurrency_keys k
               JOIN (SELECT DISTINCT key FROM lost WHERE key IS NOT NULL) l ON l.key = k.key
               ORDER BY k.key
               FOR NO KEY UPDATE OF k
           )"#;

const LOST_COLUMNS: &str = r#"jobs.id, jobs.attempts AS attempt, lost.holder,
    jobs.status::text AS status, jobs.hook, jobs."moduleName" AS module_name, jobs.error,
    jobs."workerId" AS worker_id, jobs."startedAt" AS leased_at"#;

/// The statement's end for a lost lease: the `ended` CTE's attempts go in
/// the history as `outcome`, with the reason (`$1`) as their error, and
/// the [`LostLease`]s are returned.
fn record_lost(outcome: &str) -> String {
    let recorded = record(&format!(
        "SELECT id, attempt, worker_id, holder, leased_at, '{outcome}', $1::text FROM ended"
    ));
    format!(
        "recorded AS ({recorded})
         SELECT id, attempt, holder, status, hook, module_name, error FROM ended"
    )
}

/// Takes the leases `jobs` of a stream that closed or was cut off (those it
/// still holds), locking them in id order; their attempts are recorded as
/// LEASE_LOST by the same statement.
pub async fn lose_leases_of(
    conn: &mut AsyncPgConnection,
    stream: Uuid,
    jobs: &[Uuid],
    reason: &str,
) -> QueryResult<Vec<LostLease>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        r#"WITH lost AS (
               SELECT id, "leasedBy" AS holder, "concurrencyKey" AS key FROM jobs
               WHERE status = 'RUNNING' AND "leasedBy" = $2 AND id = ANY($3)
               ORDER BY id
               FOR UPDATE
           ),
           {LOST_KEYS},
           ended AS (
           UPDATE jobs SET {LOSE_LEASE}, held = {HELD_UNLESS_ENABLED}
           FROM lost WHERE jobs.id = lost.id AND (SELECT count(*) FROM keys) >= 0
           RETURNING {LOST_COLUMNS}
           ),
           {}"#,
        record_lost("LEASE_LOST")
    ))
    .bind::<Text, _>(reason)
    .bind::<SqlUuid, _>(stream)
    .bind::<Array<SqlUuid>, _>(jobs)
    .load(conn)
    .await
}

/// Takes up to `limit` leases that expired (their holder stopped
/// heartbeating), skipping rows another replica is reaping; their attempts
/// are recorded as LEASE_EXPIRED by the same statement.
pub async fn reap_expired(
    conn: &mut AsyncPgConnection,
    reason: &str,
    limit: i64,
) -> QueryResult<Vec<LostLease>> {
    diesel::sql_query(format!(
        r#"WITH lost AS (
               SELECT id, "leasedBy" AS holder, "concurrencyKey" AS key FROM jobs
               WHERE status = 'RUNNING' AND "leaseExpiresAt" < LOCALTIMESTAMP
               ORDER BY "leaseExpiresAt"
               LIMIT $2
               FOR UPDATE SKIP LOCKED
           ),
           {LOST_KEYS},
           ended AS (
           UPDATE jobs SET {LOSE_LEASE}, held = {HELD_UNLESS_ENABLED}
           FROM lost WHERE jobs.id = lost.id AND (SELECT count(*) FROM keys) >= 0
           RETURNING {LOST_COLUMNS}
           ),
           {}"#,
        record_lost("LEASE_EXPIRED")
    ))
    .bind::<Text, _>(reason)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// A lease that a heartbeat extended.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct ExtendedLease {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Timestamp)]
    pub lease_expires_at: NaiveDateTime,
}

/// A lease's new end: `$2` from the moment the row is written, not from
/// when the statement began (`LOCALTIMESTAMP`): a heartbeat that waited
/// on a lock or a slow database still grants a whole lease.
const LEASE_FROM_NOW: &str = "(clock_timestamp() AT TIME ZONE 'UTC') + $2";

/// Extends the leases a stream still holds (all of them, or those of
/// `only`), never shortening one; returns the ones extended. Rows are locked in id order first:
/// a heartbeat runs beside report batches settling some of the same rows,
/// and two statements locking shared rows in different orders deadlock
/// (PostgreSQL then waits `deadlock_timeout`, a second, and aborts one).
pub async fn extend_leases(
    conn: &mut AsyncPgConnection,
    stream: Uuid,
    only: Option<&[Uuid]>,
    lease: std::time::Duration,
) -> QueryResult<Vec<ExtendedLease>> {
    diesel::sql_query(format!(
        r#"WITH locked AS (
               SELECT id FROM jobs
               WHERE status = 'RUNNING' AND "leasedBy" = $1
                 AND ($3::uuid[] IS NULL OR id = ANY($3))
               ORDER BY id
               FOR UPDATE
           )
           UPDATE jobs SET "leaseExpiresAt" = GREATEST("leaseExpiresAt", {LEASE_FROM_NOW})
           FROM locked
           WHERE jobs.id = locked.id AND jobs.status = 'RUNNING' AND jobs."leasedBy" = $1
           RETURNING jobs.id, jobs.attempts, jobs."leaseExpiresAt" AS lease_expires_at"#
    ))
    .bind::<SqlUuid, _>(stream)
    .bind::<Interval, _>(interval(lease))
    .bind::<Nullable<Array<SqlUuid>>, _>(only.map(<[Uuid]>::to_vec))
    .load(conn)
    .await
}

/// Locks the rows of `ids` in id order until the transaction ends. A
/// transaction that changes leases in several statements (a report batch:
/// completions, then failures, then releases) takes every row it may touch
/// first, in the one order every lease statement uses, so it never holds
/// one row while waiting for another that a heartbeat or a hand-back holds.
///
/// Then, in key order, the rows of the concurrency keys of those jobs that
/// are RUNNING: ending them changes their keys' `running` counts (the
/// settling statements themselves, see [`super::counted_by_statement`], or
/// a trigger on `jobs`), and two batches settling jobs of
/// the same keys would otherwise lock the keys in the order their rows
/// happen to be updated, and could deadlock. Jobs of no key lock nothing
/// more. Returns how many jobs and keys were locked.
pub async fn lock_in_order(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Locked> {
    if ids.is_empty() {
        return Ok(Locked { jobs: 0, keys: 0 });
    }
    // The select list's subqueries run in order: every job is locked (and
    // `locked` materialized) before the first key is.
    let locked: Locked = diesel::sql_query(
        r#"WITH locked AS MATERIALIZED (
               SELECT id, status, "concurrencyKey" AS key FROM jobs
               WHERE id = ANY($1) ORDER BY id FOR UPDATE
           ),
           keys AS MATERIALIZED (
               SELECT k.key FROM concurrency_keys k
               JOIN (SELECT DISTINCT key FROM locked
                     WHERE key IS NOT NULL AND status = 'RUNNING') l ON l.key = k.key
               ORDER BY k.key
               FOR NO KEY UPDATE OF k
           )
           SELECT (SELECT count(*) FROM locked) AS jobs, (SELECT count(*) FROM keys) AS keys"#,
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .get_result(conn)
    .await?;
    Ok(locked)
}

/// What [`lock_in_order`] locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Locked {
    /// Jobs.
    #[diesel(sql_type = BigInt)]
    pub jobs: i64,
    /// Concurrency keys of RUNNING jobs among them.
    #[diesel(sql_type = BigInt)]
    pub keys: i64,
}

/// Extends exactly these leases (job, attempt and holding stream) where
/// they still stand, never shortening one; returns those extended. The
/// server keeps alive this way the leases its worker cannot be asked to:
/// assignments still on their way to the worker, and leases whose report
/// the server holds and is settling. Rows are locked in id order.
pub async fn extend_exact(
    conn: &mut AsyncPgConnection,
    leases: &[LeaseRef],
    lease: std::time::Duration,
) -> QueryResult<Vec<ExtendedLease>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        r#"WITH r AS (
               SELECT * FROM unnest($1::uuid[], $3::int[], $4::uuid[]) AS r(id, attempt, stream)
           ),
           locked AS (
               SELECT jobs.id FROM jobs JOIN r ON jobs.id = r.id
               WHERE jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
                 AND jobs.status = 'RUNNING'
               ORDER BY jobs.id
               FOR UPDATE OF jobs
           )
           UPDATE jobs SET "leaseExpiresAt" = GREATEST("leaseExpiresAt", {LEASE_FROM_NOW})
           FROM r JOIN locked ON locked.id = r.id
           WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'RUNNING'
           RETURNING jobs.id, jobs.attempts, jobs."leaseExpiresAt" AS lease_expires_at"#
    ))
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.job).collect::<Vec<_>>())
    .bind::<Interval, _>(interval(lease))
    .bind::<Array<Integer>, _>(leases.iter().map(|l| l.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(leases.iter().map(|l| l.stream).collect::<Vec<_>>())
    .load(conn)
    .await
}

/// The leases held by jobs running on `streams` (a replica's connected
/// streams): after a claim whose answer was lost, the dispatcher compares
/// them with what its streams know they hold, and hands back the others.
pub async fn leases_held_by(
    conn: &mut AsyncPgConnection,
    streams: &[Uuid],
) -> QueryResult<Vec<LeaseRef>> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Integer)]
        attempts: i32,
        #[diesel(sql_type = SqlUuid)]
        stream: Uuid,
    }
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let held: Vec<Held> = diesel::sql_query(
        r#"SELECT id, attempts, "leasedBy" AS stream FROM jobs
           WHERE status = 'RUNNING' AND "leasedBy" = ANY($1)"#,
    )
    .bind::<Array<SqlUuid>, _>(streams)
    .load(conn)
    .await?;
    Ok(held
        .into_iter()
        .map(|h| LeaseRef {
            job: h.id,
            attempt: h.attempts,
            stream: h.stream,
        })
        .collect())
}
