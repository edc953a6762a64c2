//! The walk that follows a pause or a resume: `held` recomputed for a
//! queue's pending jobs in short batches, and the `queue_walks` rows that
//! say a walk is owed.
//!
//! Why no job is missed, without a table lock. A statement making a job
//! PENDING computes `held` from `queue_pauses` as its snapshot shows it.
//! Let C be the commit of a pause (or of a resume). A statement whose
//! snapshot was taken after C computes `held` from C's state (or a later
//! one, whose own walk follows). A statement whose snapshot was taken
//! before C belongs to a transaction that started before C. The walk
//! starts at T >= C and first waits until every transaction that started
//! before T has ended ([`older_transactions`]): those jobs are committed
//! (or never will be) when the walk reads them, and each batch reads the
//! jobs afresh and recomputes `held` per row, in the UPDATE itself, from
//! the pause state as it is then. So every pending job of the queue ends
//! with the `held` of the last change. Batches lock the module rows of
//! their jobs `FOR SHARE` before the UPDATE, so a module being disabled
//! (or enabled) concurrently is either seen by the batch or waits for it
//! and then holds (releases) the jobs itself.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{HELD_UNLESS_ENABLED, QueueKey};

/// Takes the lock that orders pauses and resumes of one queue, for the rest
/// of the transaction, if it is free; false when another call holds it.
pub async fn try_lock_queue(conn: &mut AsyncPgConnection, key: &QueueKey) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let row: Locked =
        diesel::sql_query("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS locked")
            .bind::<Text, _>(format!("queue_pauses/{}/{}", key.kind(), key.name()))
            .get_result(conn)
            .await?;
    Ok(row.locked)
}

/// Records that the queue's jobs are owed a walk; returns the generation
/// the walk must reach to settle it.
pub async fn owe_walk(conn: &mut AsyncPgConnection, key: &QueueKey) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Generation {
        #[diesel(sql_type = BigInt)]
        generation: i64,
    }
    let row: Generation = diesel::sql_query(
        r#"INSERT INTO queue_walks (kind, name, "owedSince", generation)
           VALUES ($1, $2, LOCALTIMESTAMP, 1)
           ON CONFLICT (kind, name) DO UPDATE
               SET generation = queue_walks.generation + 1, "owedSince" = LOCALTIMESTAMP
           RETURNING generation"#,
    )
    .bind::<Text, _>(key.kind())
    .bind::<Text, _>(key.name())
    .get_result(conn)
    .await?;
    Ok(row.generation)
}

/// A walk owed.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct OwedWalk {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub generation: i64,
}

impl OwedWalk {
    /// The queue; `None` for a kind this version does not know.
    pub fn key(&self) -> Option<QueueKey> {
        match self.kind.as_str() {
            "job" => Some(QueueKey::Job(self.name.clone())),
            "module" => Some(QueueKey::Module(self.name.clone())),
            _ => None,
        }
    }
}

/// The walks owed for at least `age_secs`, oldest first, at most `limit`.
pub async fn owed_walks(
    conn: &mut AsyncPgConnection,
    age_secs: i64,
    limit: i64,
) -> QueryResult<Vec<OwedWalk>> {
    diesel::sql_query(
        r#"SELECT kind, name, generation FROM queue_walks
           WHERE "owedSince" <= LOCALTIMESTAMP - make_interval(secs => $1)
           ORDER BY "owedSince", kind, name
           LIMIT $2"#,
    )
    .bind::<BigInt, _>(age_secs)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Marks the walk of `generation` done, unless a later change owes another.
pub async fn settle_walk(
    conn: &mut AsyncPgConnection,
    key: &QueueKey,
    generation: i64,
) -> QueryResult<bool> {
    let deleted = diesel::sql_query(
        "DELETE FROM queue_walks WHERE kind = $1 AND name = $2 AND generation = $3",
    )
    .bind::<Text, _>(key.kind())
    .bind::<Text, _>(key.name())
    .bind::<BigInt, _>(generation)
    .execute(conn)
    .await?;
    Ok(deleted == 1)
}

/// The database's clock now (not the transaction's start).
pub async fn database_now(conn: &mut AsyncPgConnection) -> QueryResult<DateTime<Utc>> {
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
    }
    let row: Now = diesel::sql_query("SELECT clock_timestamp() AS now")
        .get_result(conn)
        .await?;
    Ok(row.now)
}

/// Client sessions of this database (other than this one) in a
/// transaction that started before `since`: a job they write may carry a
/// `held` computed before a pause changed (see the module's documentation).
/// Sessions of other roles count when the role may read their activity
/// (`pg_read_all_stats`; the service's own sessions always).
pub async fn older_transactions(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let row: Count = diesel::sql_query(
        r#"SELECT count(*) AS count FROM pg_stat_activity
           WHERE datname = current_database() AND backend_type = 'client backend'
             AND pid <> pg_backend_pid() AND xact_start < $1"#,
    )
    .bind::<Timestamptz, _>(since)
    .get_result(conn)
    .await?;
    Ok(row.count)
}

/// The job names of `module` with pending jobs, through
/// `jobs_pending_queue_idx` one name at a time (a loose index scan).
pub async fn pending_names_of_module(
    conn: &mut AsyncPgConnection,
    module: &str,
) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let names: Vec<Name> = diesel::sql_query(
        r#"WITH RECURSIVE names(name) AS (
               (SELECT name FROM jobs WHERE status = 'PENDING' AND "moduleName" = $1
                ORDER BY name LIMIT 1)
               UNION ALL
               SELECT (SELECT j.name FROM jobs j
                       WHERE j.status = 'PENDING' AND j."moduleName" = $1 AND j.name > names.name
                       ORDER BY j.name LIMIT 1)
               FROM names WHERE names.name IS NOT NULL
           )
           SELECT name FROM names WHERE name IS NOT NULL"#,
    )
    .bind::<Text, _>(module)
    .load(conn)
    .await?;
    Ok(names.into_iter().map(|n| n.name).collect())
}

/// What one batch of a walk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkBatch {
    /// The last id of the batch; `None` when the queue had no job left.
    pub last: Option<Uuid>,
    /// Jobs the batch read.
    pub picked: i64,
    /// Jobs that became held.
    pub held: i64,
    /// Jobs that became dispatchable.
    pub released: i64,
    /// Jobs of the batch held after it.
    pub held_now: i64,
}

/// One batch of a walk, in its own (short) transaction: the next `limit`
/// pending jobs named `name` (of `module` only, when given) after `after`
/// by id, through `jobs_pending_name_idx`, with `held` recomputed per row.
pub async fn walk_batch(
    conn: &mut AsyncPgConnection,
    name: &str,
    module: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<WalkBatch> {
    #[derive(QueryableByName)]
    struct Picked {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Nullable<Text>)]
        module: Option<String>,
    }
    let after_clause = if after.is_some() { "AND id > $3" } else { "" };
    let picked: Vec<Picked> = diesel::sql_query(format!(
        r#"SELECT id, "moduleName" AS module FROM jobs
           WHERE name = $1 AND status = 'PENDING' AND ($2::text IS NULL OR "moduleName" = $2)
             {after_clause}
           ORDER BY id LIMIT $4"#
    ))
    .bind::<Text, _>(name)
    .bind::<Nullable<Text>, _>(module)
    .bind::<SqlUuid, _>(after.unwrap_or_default())
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    let Some(last) = picked.last().map(|p| p.id) else {
        return Ok(WalkBatch::default());
    };
    let mut modules: Vec<String> = picked.iter().filter_map(|p| p.module.clone()).collect();
    modules.sort_unstable();
    modules.dedup();
    if !modules.is_empty() {
        diesel::sql_query("SELECT 1 FROM modules WHERE name = ANY($1) ORDER BY name FOR SHARE")
            .bind::<Array<Text>, _>(&modules)
            .execute(conn)
            .await?;
    }
    let ids: Vec<Uuid> = picked.iter().map(|p| p.id).collect();
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        held: i64,
        #[diesel(sql_type = BigInt)]
        released: i64,
    }
    let counts: Counts = diesel::sql_query(format!(
        r#"WITH changed AS (
               UPDATE jobs SET held = {HELD_UNLESS_ENABLED}
               WHERE id = ANY($1) AND status = 'PENDING' AND hook IS NULL
                 AND held <> {HELD_UNLESS_ENABLED}
               RETURNING held
           )
           SELECT count(*) FILTER (WHERE held) AS held,
                  count(*) FILTER (WHERE NOT held) AS released
           FROM changed"#
    ))
    .bind::<Array<SqlUuid>, _>(&ids)
    .get_result(conn)
    .await?;
    #[derive(QueryableByName)]
    struct HeldNow {
        #[diesel(sql_type = BigInt)]
        held_now: i64,
    }
    let held_now: HeldNow = diesel::sql_query(
        "SELECT count(*) AS held_now FROM jobs WHERE id = ANY($1) AND status = 'PENDING' AND held",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .get_result(conn)
    .await?;
    Ok(WalkBatch {
        last: Some(last),
        picked: ids.len() as i64,
        held: counts.held,
        released: counts.released,
        held_now: held_now.held_now,
    })
}

/// How many pending jobs of the queue are held. Run it in a transaction:
/// it turns sequential scans off for the rest of it (the queue's pending
/// rows are read through their partial index, whatever the statistics).
pub async fn held_count(conn: &mut AsyncPgConnection, key: &QueueKey) -> QueryResult<i64> {
    diesel::sql_query("SET LOCAL enable_seqscan = off")
        .execute(conn)
        .await?;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let column = match key {
        QueueKey::Job(_) => "name",
        QueueKey::Module(_) => r#""moduleName""#,
    };
    let row: Count = diesel::sql_query(format!(
        "SELECT count(*) AS count FROM jobs WHERE {column} = $1 AND status = 'PENDING' AND held"
    ))
    .bind::<Text, _>(key.name())
    .get_result(conn)
    .await?;
    Ok(row.count)
}

/// Whether a walk is owed for `key`.
pub async fn walk_owed(conn: &mut AsyncPgConnection, key: &QueueKey) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Owed {
        #[diesel(sql_type = Bool)]
        owed: bool,
    }
    let row: Owed = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM queue_walks WHERE kind = $1 AND name = $2) AS owed",
    )
    .bind::<Text, _>(key.kind())
    .bind::<Text, _>(key.name())
    .get_result(conn)
    .await?;
    Ok(row.owed)
}

/// Removes the pauses (and walks owed) of a module being deleted, so that
/// a module registered again under its name does not start paused.
pub async fn delete_pauses_of_module(
    conn: &mut AsyncPgConnection,
    module: &str,
) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM queue_walks WHERE kind = 'module' AND name = $1")
        .bind::<Text, _>(module)
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM queue_pauses WHERE kind = 'module' AND name = $1")
        .bind::<Text, _>(module)
        .execute(conn)
        .await
}

/// How many pauses are stored.
pub async fn pause_count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let row: Count = diesel::sql_query("SELECT count(*) AS count FROM queue_pauses")
        .get_result(conn)
        .await?;
    Ok(row.count)
}
