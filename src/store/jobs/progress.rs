//! Storing what workers report about their running jobs' progress: one
//! statement for many jobs, fenced like reports (only while the attempt it
//! quotes is still the job's lease held by the reporting stream).

use diesel::{
    prelude::*,
    sql_types::{Array, Integer, Jsonb, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::LeaseRef;

/// The latest progress of one lease, to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressWrite {
    pub lease: LeaseRef,
    /// `{"percent": …, "message": …, "details": …}`.
    pub progress: serde_json::Value,
}

/// Stores each lease's progress while the job still runs on that attempt
/// for that stream; returns the jobs written. `updatedAt` is left alone:
/// progress is not a change of the job's state (it has its own time).
/// Rows are taken in id order, like every statement that locks several
/// jobs, so that it never waits on a report batch in a cycle.
pub async fn write_progress(
    conn: &mut AsyncPgConnection,
    writes: &[ProgressWrite],
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Id> = diesel::sql_query(
        r#"WITH r AS (
               SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::jsonb[])
                   AS r(id, attempt, stream, progress)
           ),
           locked AS (
               SELECT jobs.id FROM jobs JOIN r ON jobs.id = r.id
               WHERE jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
                 AND jobs.status = 'RUNNING'
               ORDER BY jobs.id
               FOR UPDATE OF jobs
           )
           UPDATE jobs
           SET progress = r.progress, "progressAttempt" = r.attempt,
               "progressAt" = LOCALTIMESTAMP
           FROM r JOIN locked ON locked.id = r.id
           WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs."leasedBy" = r.stream
             AND jobs.status = 'RUNNING'
           RETURNING jobs.id"#,
    )
    .bind::<Array<SqlUuid>, _>(writes.iter().map(|w| w.lease.job).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(writes.iter().map(|w| w.lease.attempt).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(writes.iter().map(|w| w.lease.stream).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(
        writes
            .iter()
            .map(|w| w.progress.clone())
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}
