//! The `schedules` table, and the columns of `jobs` that tie a job to the
//! schedule that created it (`"scheduleId"`, `"scheduleFireAt"`, the latter
//! unique per schedule: one job per fire time, whatever the number of
//! replicas). Times are UTC, compared with the database's clock
//! (`LOCALTIMESTAMP`) so that replicas agree on what is due.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Array, Nullable, Text, Timestamp, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{jobs, schedules};

/// A `schedules` row.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = schedules, check_for_backend(diesel::pg::Pg))]
pub struct ScheduleRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub cron: String,
    pub time_zone: String,
    pub job_name: String,
    /// The module the template's job belongs to.
    pub module_name: Option<String>,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: Option<i32>,
    /// `ALLOW`, `SKIP` or `CANCEL_PREVIOUS`.
    pub overlap_policy: String,
    /// `SKIP` or `RUN_ONCE`.
    pub missed_fire_policy: String,
    pub paused: bool,
    pub next_fire_at: Option<NaiveDateTime>,
    pub last_fire_at: Option<NaiveDateTime>,
    pub last_job_id: Option<Uuid>,
    pub last_error: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Column changes of an update; `None` leaves a column alone (`Some(None)`
/// clears a nullable one).
#[derive(Debug, Default, Clone, AsChangeset)]
#[diesel(table_name = schedules)]
pub struct ScheduleChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub job_name: Option<String>,
    pub module_name: Option<Option<String>>,
    pub payload: Option<serde_json::Value>,
    pub priority: Option<i32>,
    pub max_attempts: Option<Option<i32>>,
    pub overlap_policy: Option<String>,
    pub missed_fire_policy: Option<String>,
    pub paused: Option<bool>,
    pub next_fire_at: Option<Option<NaiveDateTime>>,
    pub last_fire_at: Option<Option<NaiveDateTime>>,
    pub last_job_id: Option<Option<Uuid>>,
    pub last_error: Option<Option<String>>,
    pub updated_at: Option<NaiveDateTime>,
}

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

/// The database's clock, in UTC, to the millisecond (as `TIMESTAMP(3)`
/// columns keep it).
pub async fn database_now(conn: &mut AsyncPgConnection) -> QueryResult<NaiveDateTime> {
    let row: Now = diesel::sql_query("SELECT LOCALTIMESTAMP(3) AS now")
        .get_result(conn)
        .await?;
    Ok(row.now)
}

/// Inserts a schedule; a clash on the name is a unique violation.
pub async fn insert(conn: &mut AsyncPgConnection, row: &ScheduleRow) -> QueryResult<ScheduleRow> {
    diesel::insert_into(schedules::table)
        .values(row.clone())
        .returning(ScheduleRow::as_returning())
        .get_result(conn)
        .await
}

/// One schedule by id or name, locked until the transaction ends when
/// `lock`.
pub async fn find(
    conn: &mut AsyncPgConnection,
    key: &ScheduleKey,
    lock: bool,
) -> QueryResult<Option<ScheduleRow>> {
    let query = schedules::table.select(ScheduleRow::as_select());
    match (key, lock) {
        (ScheduleKey::Id(id), false) => query.filter(schedules::id.eq(*id)).first(conn).await,
        (ScheduleKey::Id(id), true) => {
            query
                .filter(schedules::id.eq(*id))
                .for_update()
                .first(conn)
                .await
        }
        (ScheduleKey::Name(name), false) => {
            query.filter(schedules::name.eq(name)).first(conn).await
        }
        (ScheduleKey::Name(name), true) => {
            query
                .filter(schedules::name.eq(name))
                .for_update()
                .first(conn)
                .await
        }
    }
    .optional()
}

/// How a request names a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleKey {
    Id(Uuid),
    Name(String),
}

/// Schedules by name, after `after_name`, optionally of one module.
pub async fn list(
    conn: &mut AsyncPgConnection,
    module: Option<&str>,
    after_name: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<ScheduleRow>> {
    let mut query = schedules::table
        .select(ScheduleRow::as_select())
        .into_boxed();
    if let Some(module) = module {
        query = query.filter(schedules::module_name.eq(module.to_owned()));
    }
    if let Some(name) = after_name {
        query = query.filter(schedules::name.gt(name.to_owned()));
    }
    query
        .order(schedules::name.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Applies `changes` to a (locked) schedule.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &ScheduleChanges,
) -> QueryResult<ScheduleRow> {
    diesel::update(schedules::table.find(id))
        .set(changes)
        .returning(ScheduleRow::as_returning())
        .get_result(conn)
        .await
}

/// Deletes a schedule; false when it was not there.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::delete(schedules::table.find(id))
        .execute(conn)
        .await
        .map(|n| n > 0)
}

/// The schedule whose next fire time is the earliest of those due now (by
/// the database's clock), locked, skipping those another replica holds: the
/// claim of the firing loop. A schedule whose module is not ENABLED is held
/// and not claimed (it is not due until the module is).
/// Schedules in `passed` (those that failed this round) are not claimed.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    passed: &[Uuid],
) -> QueryResult<Option<ScheduleRow>> {
    diesel::sql_query(
        r#"SELECT s.id, s.name, s.description, s.cron, s."timeZone" AS time_zone,
                  s."jobName" AS job_name, s."moduleName" AS module_name, s.payload,
                  s.priority, s."maxAttempts" AS max_attempts,
                  s."overlapPolicy" AS overlap_policy,
                  s."missedFirePolicy" AS missed_fire_policy, s.paused,
                  s."nextFireAt" AS next_fire_at, s."lastFireAt" AS last_fire_at,
                  s."lastJobId" AS last_job_id, s."lastError" AS last_error,
                  s."createdBy" AS created_by, s."createdAt" AS created_at,
                  s."updatedAt" AS updated_at
           FROM schedules s
           WHERE s."nextFireAt" IS NOT NULL AND s."nextFireAt" <= LOCALTIMESTAMP
             AND (s."moduleName" IS NULL OR EXISTS (
                    SELECT 1 FROM modules m
                    WHERE m.name = s."moduleName" AND m.status = 'ENABLED'))
             AND NOT (s.id = ANY($1::uuid[]))
           ORDER BY s."nextFireAt"
           LIMIT 1
           FOR UPDATE OF s SKIP LOCKED"#,
    )
    .bind::<Array<SqlUuid>, _>(passed)
    .get_result(conn)
    .await
    .optional()
}

/// Puts off a schedule whose claim failed: its next fire time becomes
/// `delay` from now and `lastError` says why, unless another replica has
/// moved it on since (`nextFireAt` is no longer `due`) or holds it now (its
/// claim deals with it). Returns whether it was put off.
pub async fn back_off(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    due: NaiveDateTime,
    delay: std::time::Duration,
    error: &str,
) -> QueryResult<bool> {
    diesel::sql_query(
        r#"UPDATE schedules
           SET "nextFireAt" = LOCALTIMESTAMP(3) + make_interval(secs => $3), "lastError" = $4
           WHERE id = (SELECT id FROM schedules WHERE id = $1 AND "nextFireAt" = $2
                       FOR UPDATE SKIP LOCKED)"#,
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Timestamp, _>(due)
    .bind::<diesel::sql_types::Double, _>(delay.as_secs_f64())
    .bind::<Text, _>(error)
    .execute(conn)
    .await
    .map(|n| n > 0)
}

/// Bounds how long the firing transaction waits for a row lock (a job of
/// the schedule that CANCEL_PREVIOUS cancels, held by a stuck transaction):
/// past it the claim fails and the schedule backs off.
pub async fn bound_lock_waits(
    conn: &mut AsyncPgConnection,
    wait: std::time::Duration,
) -> QueryResult<()> {
    diesel::sql_query(format!(
        "SET LOCAL lock_timeout = '{}ms'",
        wait.as_millis().max(1)
    ))
    .execute(conn)
    .await
    .map(|_| ())
}

/// How many schedules `creator` created (that still exist), after taking a
/// transaction-level lock on that count, so that two concurrent creates
/// cannot both pass the bound.
pub async fn count_created_by(conn: &mut AsyncPgConnection, creator: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('schedules:' || $1::text, 0))",
    )
    .bind::<SqlUuid, _>(creator)
    .execute(conn)
    .await?;
    let row: Count =
        diesel::sql_query(r#"SELECT count(*) AS count FROM schedules WHERE "createdBy" = $1"#)
            .bind::<SqlUuid, _>(creator)
            .get_result(conn)
            .await?;
    Ok(row.count)
}

#[derive(QueryableByName)]
struct NextFire {
    #[diesel(sql_type = Nullable<Timestamp>)]
    next: Option<NaiveDateTime>,
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

/// How long until the earliest next fire time of a schedule that may fire
/// (not paused, not held by its module); `None` when there is none. Zero
/// when one is due already.
pub async fn time_to_next_fire(
    conn: &mut AsyncPgConnection,
) -> QueryResult<Option<std::time::Duration>> {
    let row: NextFire = diesel::sql_query(
        r#"SELECT (SELECT min(s."nextFireAt") FROM schedules s
                   WHERE s."nextFireAt" IS NOT NULL
                     AND (s."moduleName" IS NULL OR EXISTS (
                            SELECT 1 FROM modules m
                            WHERE m.name = s."moduleName" AND m.status = 'ENABLED'))) AS next,
                  LOCALTIMESTAMP AS now"#,
    )
    .get_result(conn)
    .await?;
    Ok(row
        .next
        .map(|next| (next - row.now).to_std().unwrap_or_default()))
}

/// A job of a schedule that has not finished.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct UnfinishedRun {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub status: String,
}

/// The PENDING and RUNNING jobs of a schedule (through their own partial
/// index: the schedule's finished jobs are not walked).
pub async fn unfinished_runs(
    conn: &mut AsyncPgConnection,
    schedule: Uuid,
) -> QueryResult<Vec<UnfinishedRun>> {
    diesel::sql_query(
        r#"SELECT id, status::text AS status FROM jobs
           WHERE "scheduleId" = $1 AND status IN ('PENDING', 'RUNNING')
           ORDER BY id"#,
    )
    .bind::<SqlUuid, _>(schedule)
    .load(conn)
    .await
}

/// Marks freshly created jobs as made by `schedule`, for these fire times
/// (`None`: a run now, TriggerSchedule's). A second job for one fire time
/// is a unique violation. Kept apart from the queue's insert, which every
/// CreateJob runs, so that the hot path binds nothing more for a feature
/// that creates a job a second at most.
pub async fn attach_jobs(
    conn: &mut AsyncPgConnection,
    schedule: Uuid,
    jobs_and_fires: &[(Uuid, Option<NaiveDateTime>)],
) -> QueryResult<usize> {
    if jobs_and_fires.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = jobs_and_fires.iter().map(|(id, _)| *id).collect();
    let fires: Vec<Option<NaiveDateTime>> = jobs_and_fires.iter().map(|(_, at)| *at).collect();
    diesel::sql_query(
        r#"UPDATE jobs SET "scheduleId" = $1, "scheduleFireAt" = f.at
           FROM unnest($2::uuid[], $3::timestamp[]) AS f(id, at)
           WHERE jobs.id = f.id"#,
    )
    .bind::<SqlUuid, _>(schedule)
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Nullable<Timestamp>>, _>(fires)
    .execute(conn)
    .await
}

/// Whether a job of `schedule` exists for the fire time `at`.
pub async fn fired(
    conn: &mut AsyncPgConnection,
    schedule: Uuid,
    at: NaiveDateTime,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        jobs::table
            .filter(jobs::schedule_id.eq(schedule))
            .filter(jobs::schedule_fire_at.eq(at)),
    ))
    .get_result(conn)
    .await
}
