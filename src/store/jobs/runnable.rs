//! Which job names have work a claim could take: what the dispatcher asks
//! before claiming for workers that found nothing the last time (see
//! `dispatch::idle`), so that a fleet of idle workers, each with a job name
//! of its own, costs one read per look instead of one claim per worker.
//!
//! The read costs what the names *with* work cost, not what the idle names
//! cost: it first walks the distinct names of pending jobs (a loose index
//! scan, one descent of `jobs_pending_name_idx` per name) and looks at the
//! idle names among them only. Ten thousand idle names and no backlog cost
//! a few descents. A step of the walk costs about four probes of one name
//! (measured: ~12 µs against ~3 µs), so when more names have pending jobs
//! than a quarter of the idle names, the walk stops there and each idle
//! name is probed instead (one descent each): a probe costs at most about
//! twice the cheaper of the two.

use std::collections::HashSet;

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Pending jobs of a name looked at for a key or a bucket with room: past
/// this many, the name counts as having work (a claim will tell).
const LIMITED_LOOK: i64 = 16;

/// Up to this many idle names are probed one by one without walking the
/// pending names first (a walk would cost a round trip of its own).
const DIRECT: usize = 32;

/// The walk of pending names stops after one name per this many idle
/// names (see the module's note).
const WALK_SHARE: usize = 4;

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

/// Of `names`, those that may have a runnable job, and, when `any` is
/// set, whether some job is runnable at all. A name is answered exactly
/// for jobs of no key and no bucket (the names dispatch index: one probe),
/// and for the others by looking at its first [`LIMITED_LOOK`] pending
/// jobs: a name with more counts as having work. So a name is never left
/// out that a claim could serve; a name put in wrongly costs one claim
/// that finds nothing. Nothing is locked or written.
///
/// The reads are not one snapshot: a job committed before the call began
/// is seen by both; one committed while it runs is announced by its own
/// notice, which asks for another probe.
pub async fn names_with_work(
    conn: &mut AsyncPgConnection,
    names: &[String],
    any: bool,
) -> QueryResult<(Vec<String>, bool)> {
    let found = if names.len() <= DIRECT {
        with_work(conn, names).await?
    } else {
        let cap = names.len() / WALK_SHARE;
        let pending = pending_names(conn, cap).await?;
        if pending.len() >= cap {
            with_work(conn, names).await?
        } else {
            let pending: HashSet<&str> = pending.iter().map(String::as_str).collect();
            let candidates: Vec<String> = names
                .iter()
                .filter(|name| pending.contains(name.as_str()))
                .cloned()
                .collect();
            with_work(conn, &candidates).await?
        }
    };
    let some = any && anything_runnable(conn).await?;
    Ok((found, some))
}

/// The distinct names of pending jobs (held, waiting and future ones
/// included), at most `cap` of them: a loose index scan of
/// `jobs_pending_name_idx`, one descent per name.
async fn pending_names(conn: &mut AsyncPgConnection, cap: usize) -> QueryResult<Vec<String>> {
    let rows: Vec<Name> = diesel::sql_query(
        r#"WITH RECURSIVE pending(name, depth) AS (
               (SELECT j.name::text, 1 FROM jobs j WHERE j.status = 'PENDING'
                ORDER BY j.name LIMIT 1)
               UNION ALL
               SELECT (SELECT j.name FROM jobs j
                       WHERE j.status = 'PENDING' AND j.name > p.name
                       ORDER BY j.name LIMIT 1),
                      p.depth + 1
               FROM pending p WHERE p.name IS NOT NULL AND p.depth < $1)
           SELECT name FROM pending WHERE name IS NOT NULL"#,
    )
    .bind::<BigInt, _>(i64::try_from(cap).unwrap_or(i64::MAX))
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.name).collect())
}

/// Of `names`, those that may have a runnable job (see
/// [`names_with_work`]): a name with no pending job costs one descent of
/// `jobs_pending_name_idx`; the others one or two more.
async fn with_work(conn: &mut AsyncPgConnection, names: &[String]) -> QueryResult<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // Each probe is a LATERAL with a LIMIT, which PostgreSQL keeps as a
    // nested loop over the index (an EXISTS would be flattened into a join
    // that may scan the table).
    let rows: Vec<Name> = diesel::sql_query(
        r#"SELECT n.name FROM unnest($1::text[]) AS n(name),
           LATERAL (SELECT 1 FROM jobs j WHERE j.name = n.name AND j.status = 'PENDING'
                    LIMIT 1) pending,
           LATERAL (
               (SELECT 1 FROM jobs j
                WHERE j.name = n.name AND j.status = 'PENDING' AND NOT j.held
                  AND NOT j.waiting AND j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL
                  AND j."scheduledAt" <= LOCALTIMESTAMP
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
               LIMIT 1) hit"#,
    )
    .bind::<Array<Text>, _>(names)
    .bind::<BigInt, _>(LIMITED_LOOK)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.name).collect())
}

/// Whether some job is runnable at all (for workers that take any name):
/// three index probes.
async fn anything_runnable(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Found = diesel::sql_query(
        r#"SELECT (
               (SELECT 1 FROM jobs j
                WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                  AND j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL
                  AND j."scheduledAt" <= LOCALTIMESTAMP
                LIMIT 1) IS NOT NULL
               OR (SELECT 1 FROM jobs j
                   WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                     AND j."concurrencyKey" IS NOT NULL
                   LIMIT 1) IS NOT NULL
               OR (SELECT 1 FROM jobs j
                   WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                     AND j."rateLimit" IS NOT NULL
                   LIMIT 1) IS NOT NULL) AS found"#,
    )
    .get_result(conn)
    .await?;
    Ok(row.found)
}
