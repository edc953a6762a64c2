//! Which job names have work a claim could take: what the dispatcher asks
//! before claiming for workers that found nothing the last time (see
//! `dispatch::idle`), so that a fleet of idle workers, each with a job name
//! of its own, costs one read per look instead of one claim per worker.

use diesel::{
    prelude::*,
    sql_types::{Array, Bool, Nullable, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Pending jobs of a name looked at for a key or a bucket with room: past
/// this many, the name counts as having work (a claim will tell).
const LIMITED_LOOK: i64 = 16;

#[derive(QueryableByName)]
struct Hit {
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
}

/// Of `names`, those that may have a runnable job (a `None` in the answer
/// stands for "some job is runnable at all", asked when `any` is set). A
/// name is answered exactly for jobs of no key and no bucket (the names
/// dispatch index: one probe), and for the others by looking at its first
/// [`LIMITED_LOOK`] pending jobs: a name with more counts as having work.
/// So a name is never left out that a claim could serve; a name put in
/// wrongly costs one claim that finds nothing. Each name costs one or two
/// index probes; nothing is locked or written.
pub async fn names_with_work(
    conn: &mut AsyncPgConnection,
    names: &[String],
    any: bool,
) -> QueryResult<(Vec<String>, bool)> {
    // Each probe is a LATERAL with a LIMIT, which PostgreSQL keeps as a
    // nested loop over the index (an EXISTS would be flattened into a join
    // that may scan the table).
    let hits: Vec<Hit> = diesel::sql_query(
        r#"SELECT n.name FROM unnest($1::text[]) AS n(name), LATERAL (
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
                    LIMIT $3) p
                HAVING bool_or(NOT p.held AND NOT p.waiting
                               AND (p.k IS NOT NULL OR p.r IS NOT NULL))
                    OR count(*) >= $3)
               LIMIT 1) hit
           UNION ALL
           SELECT NULL WHERE $2 AND (
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
                   LIMIT 1) IS NOT NULL)"#,
    )
    .bind::<Array<Text>, _>(names)
    .bind::<Bool, _>(any)
    .bind::<diesel::sql_types::BigInt, _>(LIMITED_LOOK)
    .load(conn)
    .await?;
    let mut found = Vec::with_capacity(hits.len());
    let mut some = false;
    for hit in hits {
        match hit.name {
            Some(name) => found.push(name),
            None => some = true,
        }
    }
    Ok((found, some))
}
