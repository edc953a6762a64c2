//! Which job names have work a claim could take: what the dispatcher asks
//! before claiming for workers that found nothing the last time (see
//! `dispatch::idle`), so that a fleet of idle workers, each with a job name
//! of its own, costs one read per look instead of one claim per worker.
//!
//! A look costs what the names *with* work cost, not what the idle names
//! cost: [`pending_names`] walks the distinct names of pending jobs (a
//! loose index scan, one descent of `jobs_pending_name_idx` per name), and
//! [`names_with_work`] looks at the idle names among them only. Ten
//! thousand idle names and no backlog cost a few descents. A step of the
//! walk costs about four probes of one name (measured: ~12 µs against
//! ~3 µs), so the dispatcher stops the walk past a quarter of the idle
//! names and asks about each idle name instead (one descent each).

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection as _};

/// Pending jobs of a name looked at for a key or a bucket with room: past
/// this many, the name counts as having work (a claim will tell).
const LIMITED_LOOK: i64 = 16;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

/// Planner settings for the probes, set in their transaction
/// (`SET LOCAL`): no sort. Each probe asks for its rows in the order of the
/// one index meant to answer it, so that it is a few index descents
/// whatever `jobs`' statistics say. When `jobs` was last analysed with
/// nothing pending they say that no job is: `jobs_status_idx` (on the
/// status alone) then looks like the cheapest way to pending jobs, and the
/// probes were planned as walks of every pending job, once per name asked
/// about (`claim_plans::idle_probes_stay_on_their_indexes_…`).
pub const PROBE_SETTINGS: &str = "SET LOCAL enable_sort = off";

/// Sets [`PROBE_SETTINGS`] for the rest of the caller's transaction.
pub async fn plan_as_probe(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    conn.batch_execute(PROBE_SETTINGS).await
}

/// The statement of [`pending_names`] (`$1` the cap), public so that its
/// plan can be read.
pub const PENDING_NAMES: &str = r#"WITH RECURSIVE pending(name, depth) AS (
               (SELECT j.name::text, 1 FROM jobs j WHERE j.status = 'PENDING'
                ORDER BY j.name LIMIT 1)
               UNION ALL
               SELECT (SELECT j.name FROM jobs j
                       WHERE j.status = 'PENDING' AND j.name > p.name
                       ORDER BY j.name LIMIT 1),
                      p.depth + 1
               FROM pending p WHERE p.name IS NOT NULL AND p.depth < $1)
           SELECT name FROM pending WHERE name IS NOT NULL"#;

/// The distinct names of pending jobs (held, waiting and future ones
/// included), at most `cap` of them: a loose index scan of
/// `jobs_pending_name_idx`, one descent per name.
pub async fn pending_names(conn: &mut AsyncPgConnection, cap: usize) -> QueryResult<Vec<String>> {
    let rows: Vec<Name> = diesel::sql_query(PENDING_NAMES)
        .bind::<BigInt, _>(i64::try_from(cap).unwrap_or(i64::MAX))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|row| row.name).collect())
}

/// The statement of [`names_with_work`] (`$1` the names, `$2`
/// [`LIMITED_LOOK`]), public so that its plan can be read.
pub const NAMES_WITH_WORK: &str = r#"SELECT n.name FROM unnest($1::text[]) AS n(name),
           LATERAL (SELECT 1 FROM jobs j WHERE j.name = n.name AND j.status = 'PENDING'
                    ORDER BY j.id LIMIT 1) pending,
           LATERAL (
               (SELECT 1 FROM jobs j
                WHERE j.name = n.name AND j.status = 'PENDING' AND NOT j.held
                  AND NOT j.waiting AND j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL
                  AND j."scheduledAt" <= LOCALTIMESTAMP
                ORDER BY j.priority DESC, j."scheduledAt", j.id
                LIMIT 1)
               UNION ALL
               (SELECT 1 FROM (
                    SELECT j.held, j.waiting, j."concurrencyKey" AS k, j."rateLimit" AS r
                    FROM jobs j
                    WHERE j.name = n.name AND j.status = 'PENDING'
                    ORDER BY j.id
                    LIMIT $2) p
                HAVING bool_or(NOT p.held AND NOT p.waiting
                               AND (p.k IS NOT NULL OR p.r IS NOT NULL))
                    OR count(*) >= $2)
               LIMIT 1) hit"#;

/// Of `names`, those that may have a runnable job. A name is answered
/// exactly for jobs of no key and no bucket (the names dispatch index: one
/// probe), and for the others by looking at its first [`LIMITED_LOOK`]
/// pending jobs: a name with more counts as having work. So a name is
/// never left out that a claim could serve; a name put in wrongly costs one
/// claim that finds nothing. A name with no pending job costs one descent
/// of `jobs_pending_name_idx`; the others one or two more. Nothing is
/// locked or written.
pub async fn names_with_work(
    conn: &mut AsyncPgConnection,
    names: &[String],
) -> QueryResult<Vec<String>> {
    // Each probe is a LATERAL with a LIMIT, which PostgreSQL keeps as a
    // nested loop over the index (an EXISTS would be flattened into a join
    // that may scan the table).
    let rows: Vec<Name> = diesel::sql_query(NAMES_WITH_WORK)
        .bind::<Array<Text>, _>(names)
        .bind::<BigInt, _>(LIMITED_LOOK)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|row| row.name).collect())
}

/// The statement of [`anything_runnable`], public so that its plan can be
/// read.
pub const ANYTHING_RUNNABLE: &str = r#"SELECT (
               (SELECT 1 FROM jobs j
                WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                  AND j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL
                  AND j."scheduledAt" <= LOCALTIMESTAMP
                ORDER BY j.priority DESC, j."scheduledAt", j.id
                LIMIT 1) IS NOT NULL
               OR (SELECT 1 FROM jobs j
                   WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                     AND j."concurrencyKey" IS NOT NULL
                   ORDER BY j."concurrencyKey", j.priority DESC, j."scheduledAt", j.id
                   LIMIT 1) IS NOT NULL
               OR (SELECT 1 FROM jobs j
                   WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                     AND j."rateLimit" IS NOT NULL
                   ORDER BY j."rateLimit", j.priority DESC, j."scheduledAt", j.id
                   LIMIT 1) IS NOT NULL) AS found"#;

/// Whether some job is runnable at all (for workers that take any name):
/// three index probes.
pub async fn anything_runnable(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Found = diesel::sql_query(ANYTHING_RUNNABLE)
        .get_result(conn)
        .await?;
    Ok(row.found)
}
