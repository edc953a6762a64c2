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
/// held by the statement or its transaction beforehand (taken in key order,
/// or with `SKIP LOCKED` as a claim does), so that it never waits for one
/// and two such statements cannot deadlock.
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

/// Whether this database's trigger stands down for [`STATEMENT_COUNTS_KEYS`]
/// (the migration `statement_counts_keys` ran). Where it does not — a
/// binary started with `SKIP_MIGRATIONS` on an older schema, a schema
/// migrated down — the trigger counts every change, and statements that
/// counted too would count twice: the setting is then never turned on.
const TRIGGER_STANDS_DOWN: &str = r#"EXISTS (
    SELECT 1 FROM pg_trigger t
    WHERE t.tgrelid = 'jobs'::regclass AND t.tgname = 'jobs_key_running_update'
      AND pg_get_triggerdef(t.oid) LIKE '%statement_counts_keys%')"#;

/// How long [`count_keys_by_statement`] keeps its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountingScope {
    /// Until the transaction ends (a settle).
    Transaction,
    /// For the connection's session (the claimer's own connection).
    Session,
}

/// Turns [`STATEMENT_COUNTS_KEYS`] on (where the trigger stands down for
/// it, see [`TRIGGER_STANDS_DOWN`]) or off, for `scope`: on only around
/// statements that count their keys themselves (they use
/// [`counted_by_statement`]) and whose key rows are already held; off again
/// before anything else changes jobs. Answers whether it is on.
pub async fn count_keys_by_statement(
    conn: &mut AsyncPgConnection,
    on: bool,
    scope: CountingScope,
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        on: bool,
    }
    let setting: Setting = diesel::sql_query(format!(
        "SELECT set_config($1, CASE WHEN $2 AND {TRIGGER_STANDS_DOWN} THEN 'on' ELSE 'off' END, \
                           $3) = 'on' AS on"
    ))
    .bind::<Text, _>(STATEMENT_COUNTS_KEYS)
    .bind::<diesel::sql_types::Bool, _>(on)
    .bind::<diesel::sql_types::Bool, _>(scope == CountingScope::Transaction)
    .get_result(conn)
    .await?;
    Ok(setting.on)
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

/// The statement of [`recount_running`] (`$1` the keys), public so that
/// its plan can be read.
pub const RECOUNT_RUNNING: &str = r#"UPDATE concurrency_keys k SET running = c.n
    FROM (SELECT t.key, coalesce(r.n, 0)::int AS n
          FROM unnest($1::text[]) AS t(key)
          LEFT JOIN (SELECT j."concurrencyKey" AS key, count(*) AS n FROM jobs j
                     WHERE j.status = 'RUNNING' AND j."concurrencyKey" = ANY($1::text[])
                     GROUP BY j."concurrencyKey") r ON r.key = t.key) c
    WHERE k.key = c.key AND k.running <> c.n"#;

/// The statement of [`forget_emptied`] (`$1` the keys), public so that its
/// plan can be read.
pub const FORGET_EMPTIED: &str = r#"DELETE FROM concurrency_keys k
    WHERE k.key = ANY($1::text[]) AND k.running = 0
      AND NOT EXISTS (SELECT 1 FROM jobs o
                      WHERE o."concurrencyKey" = k.key
                        AND o.status IN ('PENDING', 'RUNNING')
                      OFFSET 0)"#;

/// Tends the locked `keys` (see [`lock_key_rows`]): sets each count that
/// differs from the key's RUNNING jobs, then deletes the rows of keys left
/// without an open job. Returns how many counts were wrong.
pub async fn tend_key_rows(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<usize> {
    let wrong = recount_running(conn, keys).await?;
    forget_emptied(conn, keys).await?;
    Ok(wrong)
}

/// Sets the count of the locked `keys` whose count differs from their
/// RUNNING jobs; returns how many were wrong.
///
/// The RUNNING jobs of all the keys are counted in one pass, grouped: its
/// cost is bounded by the jobs running, whichever of the indexes holding
/// them the planner takes.
/// A count per key could be planned as a walk of `jobs_status_idx` per key
/// when `jobs` was last analysed with nothing running — every running job
/// read once per key, 60 ms for 354 keys in the job bench, with the key
/// rows locked against every settle meanwhile (BENCHMARKS.md, issue 15,
/// run 13).
async fn recount_running(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<usize> {
    diesel::sql_query(RECOUNT_RUNNING)
        .bind::<Array<Text>, _>(keys)
        .execute(conn)
        .await
}

/// Deletes the rows of the locked `keys` that no PENDING or RUNNING job
/// names; returns how many. Only keys counted with nothing running are
/// probed: it runs after [`recount_running`], in [`tend_key_rows`].
///
/// Each is probed on its own (`OFFSET 0` keeps the probe a subplan per
/// key, answered by the first open job of the key's index): an anti join
/// of the keys with the open jobs was planned, when `jobs` had been
/// analysed with nothing pending, as a loop that re-read every open job for
/// each key (100 ms for 500 keys in the job bench, key rows locked). Which
/// index the probe takes is still the planner's choice: `jobs_key_open_idx`
/// answers it from the key's first entry, but `jobs_status_idx` would
/// walk every open job; `claim_plans::` reads the plan under statistics of
/// a queue with nothing pending.
async fn forget_emptied(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<usize> {
    diesel::sql_query(FORGET_EMPTIED)
        .bind::<Array<Text>, _>(keys)
        .execute(conn)
        .await
}
