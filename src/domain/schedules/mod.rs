//! Schedules (`ScheduleService`): jobs created on a calendar. A schedule is
//! a standing CreateJob: writing one needs what creating its jobs needs
//! (`jobs:write`, and `modules:execute` for a module's job) besides
//! `schedules:write`, so that a schedule is never a way around either; its
//! template is checked as CreateJob checks a request when it is written,
//! and its jobs are created through CreateJob's rules when it fires
//! ([`firing`]).
//!
//! Architecture invariant: schedules sit above the queue ([`super::jobs`]),
//! which creates their jobs; the queue and the module registry never name
//! schedules. A module's schedules follow it through the database: they are
//! not claimed while it is not ENABLED and are deleted with it (a foreign
//! key), and a module becoming ENABLED wakes the firing loops through
//! [`super::events`].

pub mod cron;
pub mod firing;
mod limits;
mod spec;

pub use cron::{CronSchedule, MissedFirePolicy};
pub use spec::{
    JobTemplate, OverlapPolicy, ScheduleSpec, ScheduleUpdate, TEMPLATE_PAYLOAD_MAX_BYTES,
};

use std::{sync::Arc, time::Duration};

use diesel_async::AsyncPgConnection;
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    events::QueueChanges,
    jobs::{Jobs, scheduled::TemplateCaller},
    validate,
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{
        jobs::JobRow,
        pagination::{Cursor, PageRequest},
        schedules::{self as rows, ScheduleChanges, ScheduleKey, ScheduleRow},
    },
};

/// Reading schedules.
pub const READ: &str = "schedules:read";
/// Writing schedules (with what creating their jobs needs).
pub const WRITE: &str = "schedules:write";
/// What a schedule's jobs need of whoever writes the schedule.
const JOBS_WRITE: &str = "jobs:write";

/// How the firing loop behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// A fire time later than this when claimed counts as missed (no server
    /// acted on it in time) and follows the schedule's missed-fire policy
    /// (`SCHEDULE_MISFIRE_GRACE_MS`).
    pub misfire_grace: Duration,
    /// Longest the loop sleeps without looking (a safety net: it is woken
    /// when any replica changes a schedule).
    pub max_sleep: Duration,
    /// Shortest time between two fire times of an expression a schedule
    /// may be written with (`SCHEDULE_MIN_INTERVAL_SECS`): every schedule
    /// is a standing rate of job creation.
    pub min_interval: Duration,
    /// Most schedules one account may have created (`SCHEDULES_MAX`).
    pub max_per_creator: u64,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            misfire_grace: Duration::from_secs(60),
            max_sleep: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
            max_per_creator: 1_000,
        }
    }
}

/// The schedules of the control plane.
#[derive(Clone)]
pub struct Schedules {
    pool: DbPool,
    jobs: Jobs,
    settings: ScheduleSettings,
    /// Wakes this replica's firing loop at once after a local change (other
    /// replicas hear the NOTIFY).
    wake: Arc<Notify>,
    /// Failed claims in a row of each schedule, as this replica saw them:
    /// how long a failing schedule backs off ([`firing`]).
    failures: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, u32>>>,
}

impl Schedules {
    /// Schedules in `pool`'s database, creating jobs through `jobs`; `wake`
    /// is this replica's firing loop.
    pub fn new(pool: DbPool, jobs: Jobs, settings: ScheduleSettings, wake: Arc<Notify>) -> Self {
        Self {
            pool,
            jobs,
            settings,
            wake,
            failures: Arc::default(),
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    /// Creates a schedule.
    pub async fn create(&self, actor: &Actor, spec: ScheduleSpec) -> Result<ScheduleRow, AppError> {
        ensure_may_write(actor, None)?;
        let name = validate::job_name("name", &spec.name)?;
        let description = description("description", &spec.description)?;
        let cron = CronSchedule::parse(
            &spec.cron_expression,
            &spec.time_zone,
            "cron_expression",
            "time_zone",
        )?;
        self.check_interval(&cron, "cron_expression")?;
        let template = spec.job_template.ok_or_else(|| {
            AppError::invalid(
                "job_template",
                "is required: the job to create at each fire time",
            )
        })?;
        let row = db::transaction(&self.pool, "schedules.create", async |conn| {
            self.ensure_below_max(conn, actor).await?;
            let module = self
                .check_template(conn, actor, &template, "job_template.")
                .await?;
            let now = rows::database_now(conn).await?;
            let next = if spec.paused {
                None
            } else {
                Some(first_fire(&cron, now, "cron_expression")?)
            };
            let row = ScheduleRow {
                id: Uuid::now_v7(),
                name: name.clone(),
                description: description.clone(),
                cron: spec.cron_expression.trim().to_owned(),
                time_zone: cron.zone_name().to_owned(),
                job_name: template.name.clone(),
                module_name: module,
                payload: template.payload.clone(),
                priority: template.priority,
                max_attempts: template.max_attempts,
                overlap_policy: spec.overlap_policy.unwrap_or_default().label().to_owned(),
                missed_fire_policy: missed_label(
                    spec.missed_fire_policy.unwrap_or(MissedFirePolicy::Skip),
                )
                .to_owned(),
                paused: spec.paused,
                next_fire_at: next,
                last_fire_at: None,
                last_job_id: None,
                last_error: None,
                created_by: Some(actor.caller.user_id),
                created_at: now,
                updated_at: now,
            };
            let row = rows::insert(conn, &row).await?;
            announce(conn).await?;
            record(
                conn,
                actor,
                AuditAction::CreateSchedule,
                &row,
                json!({
                    "cron": row.cron, "time_zone": row.time_zone, "job": row.job_name,
                    "module": row.module_name, "paused": row.paused,
                }),
            )
            .await?;
            Ok(row)
        })
        .await?;
        self.wake.notify_one();
        Ok(row)
    }

    /// One schedule by id or name.
    pub async fn get(&self, key: &str) -> Result<ScheduleRow, AppError> {
        let key = schedule_key("id", key)?;
        db::with_connection(&self.pool, "schedules.get", async |conn| {
            rows::find(conn, &key, false)
                .await?
                .ok_or_else(|| not_found(&key))
        })
        .await
    }

    /// Schedules by name, one page at a time, optionally of one module.
    pub async fn list(
        &self,
        module: Option<String>,
        page: PageRequest,
    ) -> Result<Page<ScheduleRow>, AppError> {
        if let Some(module) = &module {
            validate::module_name("module_name", module)?;
        }
        let after = page.after.as_ref().map(|cursor| cursor.key.clone());
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "schedules.list", async |conn| {
            Ok(rows::list(conn, module.as_deref(), after.as_deref(), limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |row| Cursor {
            key: row.name.clone(),
            id: row.id,
        }))
    }

    /// Changes the fields `update` names; a new expression or zone takes
    /// effect from now.
    pub async fn update(
        &self,
        actor: &Actor,
        key: &str,
        update: ScheduleUpdate,
    ) -> Result<ScheduleRow, AppError> {
        let key = schedule_key("schedule.id", key)?;
        let mut changes = ScheduleChanges::default();
        if let Some(name) = &update.name {
            changes.name = Some(validate::job_name("schedule.name", name)?);
        }
        if let Some(text) = &update.description {
            changes.description = Some(description("schedule.description", text)?);
        }
        changes.overlap_policy = update.overlap_policy.map(|p| p.label().to_owned());
        changes.missed_fire_policy = update
            .missed_fire_policy
            .map(|p| missed_label(p).to_owned());
        let row = db::transaction(&self.pool, "schedules.update", async |conn| {
            let row = lock(conn, &key).await?;
            ensure_may_write(actor, row.module_name.as_deref())?;
            let now = rows::database_now(conn).await?;
            let mut changes = changes.clone();
            if update.cron_expression.is_some() || update.time_zone.is_some() {
                let expression = update.cron_expression.as_deref().unwrap_or(&row.cron);
                let zone = update.time_zone.as_deref().unwrap_or(&row.time_zone);
                let cron = CronSchedule::parse(
                    expression,
                    zone,
                    "schedule.cron_expression",
                    "schedule.time_zone",
                )?;
                self.check_interval(&cron, "schedule.cron_expression")?;
                let next = first_fire(&cron, now, "schedule.cron_expression")?;
                changes.cron = Some(expression.trim().to_owned());
                changes.time_zone = Some(cron.zone_name().to_owned());
                if !row.paused {
                    changes.next_fire_at = Some(Some(next));
                }
            }
            if let Some(template) = &update.job_template {
                let module = self
                    .check_template(conn, actor, template, "schedule.job_template.")
                    .await?;
                changes.job_name = Some(template.name.clone());
                changes.module_name = Some(module);
                changes.payload = Some(template.payload.clone());
                changes.priority = Some(template.priority);
                changes.max_attempts = Some(template.max_attempts);
                changes.last_error = Some(None);
            }
            changes.updated_at = Some(now);
            let updated = rows::update(conn, row.id, &changes).await?;
            announce(conn).await?;
            record(
                conn,
                actor,
                AuditAction::UpdateSchedule,
                &updated,
                json!({
                    "fields": update.fields(),
                }),
            )
            .await?;
            Ok(updated)
        })
        .await?;
        self.wake.notify_one();
        Ok(row)
    }

    /// Deletes a schedule; its jobs stay.
    pub async fn delete(&self, actor: &Actor, key: &str) -> Result<(), AppError> {
        let key = schedule_key("id", key)?;
        db::transaction(&self.pool, "schedules.delete", async |conn| {
            let row = lock(conn, &key).await?;
            ensure_may_write(actor, row.module_name.as_deref())?;
            rows::delete(conn, row.id).await?;
            record(conn, actor, AuditAction::DeleteSchedule, &row, json!({})).await
        })
        .await
    }

    /// Pauses (`paused`) or resumes a schedule. Resuming fires next at the
    /// first fire time after now.
    pub async fn set_paused(
        &self,
        actor: &Actor,
        key: &str,
        paused: bool,
    ) -> Result<ScheduleRow, AppError> {
        let key = schedule_key("id", key)?;
        let (op, action) = if paused {
            ("schedules.pause", AuditAction::PauseSchedule)
        } else {
            ("schedules.resume", AuditAction::ResumeSchedule)
        };
        let row = db::transaction(&self.pool, op, async |conn| {
            let row = lock(conn, &key).await?;
            ensure_may_write(actor, row.module_name.as_deref())?;
            if row.paused == paused {
                return Ok(row);
            }
            let now = rows::database_now(conn).await?;
            let next = if paused {
                None
            } else {
                let cron = stored_cron(&row)?;
                Some(first_fire(&cron, now, "cron_expression")?)
            };
            let changes = ScheduleChanges {
                paused: Some(paused),
                next_fire_at: Some(next),
                updated_at: Some(now),
                ..ScheduleChanges::default()
            };
            let updated = rows::update(conn, row.id, &changes).await?;
            announce(conn).await?;
            record(conn, actor, action, &updated, json!({})).await?;
            Ok(updated)
        })
        .await?;
        self.wake.notify_one();
        Ok(row)
    }

    /// Runs a schedule now: one job from its template, created as the
    /// caller's by CreateJob's rules. Not a fire time.
    pub async fn trigger(
        &self,
        actor: &Actor,
        key: &str,
    ) -> Result<(JobRow, ScheduleRow), AppError> {
        let key = schedule_key("id", key)?;
        let result = db::transaction(&self.pool, "schedules.trigger", async |conn| {
            let row = lock(conn, &key).await?;
            ensure_may_write(actor, row.module_name.as_deref())?;
            let spec = spec::job_spec(&row);
            let job = self
                .jobs
                .create_from_template(
                    conn,
                    TemplateCaller::Caller(actor),
                    &spec,
                    row.module_name.as_deref(),
                )
                .await?;
            rows::attach_jobs(conn, row.id, &[(job.id, None)]).await?;
            let changes = ScheduleChanges {
                last_job_id: Some(Some(job.id)),
                ..ScheduleChanges::default()
            };
            let updated = rows::update(conn, row.id, &changes).await?;
            let mut job = job;
            job.schedule_id = Some(row.id);
            record(
                conn,
                actor,
                AuditAction::TriggerSchedule,
                &updated,
                json!({
                    "job": job.id,
                }),
            )
            .await?;
            Ok((job, updated))
        })
        .await?;
        self.jobs.wake_dispatch();
        Ok(result)
    }

    /// How long until the next fire time of a schedule that may fire now.
    pub async fn time_to_next_fire(&self) -> Result<Option<Duration>, AppError> {
        db::with_connection(&self.pool, "schedules.next_fire", async |conn| {
            Ok(rows::time_to_next_fire(conn).await?)
        })
        .await
    }

    /// Checks a template as CreateJob checks a request (see
    /// [`Jobs::check_template`]), with a payload bound of its own; returns
    /// the module its job belongs to. `prefix` names its fields.
    async fn check_template(
        &self,
        conn: &mut AsyncPgConnection,
        actor: &Actor,
        template: &JobTemplate,
        prefix: &str,
    ) -> Result<Option<String>, AppError> {
        let spec = template.job_spec();
        validate::json_document(
            &format!("{prefix}payload"),
            &spec.payload,
            spec::TEMPLATE_PAYLOAD_MAX_BYTES,
        )?;
        self.jobs.check_template(conn, actor, &spec, prefix).await
    }
}

/// Refuses a writer who lacks what the schedule's jobs need: `jobs:write`,
/// and `modules:execute` for a module's schedule (a schedule must not be a
/// way around CreateJob's permissions, nor around CancelJob's: pausing or
/// deleting a module's schedule is acting on the module's jobs).
fn ensure_may_write(actor: &Actor, module: Option<&str>) -> Result<(), AppError> {
    if !actor.caller.holds(JOBS_WRITE) {
        return Err(AppError::PermissionDenied(format!(
            "a schedule creates jobs: writing one needs {JOBS_WRITE} as well as {WRITE}"
        )));
    }
    if let Some(module) = module
        && !actor.caller.holds(super::modules::EXECUTE)
    {
        return Err(AppError::PermissionDenied(format!(
            "this schedule creates jobs of module {module}, which run its code: writing it needs \
             {} as well",
            super::modules::EXECUTE
        )));
    }
    Ok(())
}

/// The first fire time after `now`, refusing (on `field`) an expression
/// that never fires.
fn first_fire(
    cron: &CronSchedule,
    now: chrono::NaiveDateTime,
    field: &str,
) -> Result<chrono::NaiveDateTime, AppError> {
    cron.next_after(now)
        .ok_or_else(|| AppError::invalid(field, "never fires (no fire time within a year)"))
}

/// The expression of a stored schedule.
fn stored_cron(row: &ScheduleRow) -> Result<CronSchedule, AppError> {
    CronSchedule::parse(&row.cron, &row.time_zone, "cron_expression", "time_zone")
}

fn missed_label(policy: MissedFirePolicy) -> &'static str {
    match policy {
        MissedFirePolicy::Skip => "SKIP",
        MissedFirePolicy::RunOnce => "RUN_ONCE",
    }
}

/// The stored missed-fire policy (SKIP for anything unknown).
pub fn missed_policy(label: &str) -> MissedFirePolicy {
    match label {
        "RUN_ONCE" => MissedFirePolicy::RunOnce,
        _ => MissedFirePolicy::Skip,
    }
}

/// Free text of at most 1,000 characters.
fn description(field: &str, text: &str) -> Result<String, AppError> {
    let text = validate::text(field, text)?;
    if text.chars().count() > 1000 {
        return Err(AppError::invalid(field, "must be at most 1000 characters"));
    }
    Ok(text)
}

/// A schedule named by id or name.
fn schedule_key(field: &str, key: &str) -> Result<ScheduleKey, AppError> {
    if let Ok(id) = key.parse::<Uuid>() {
        return Ok(ScheduleKey::Id(id));
    }
    Ok(ScheduleKey::Name(validate::job_name(field, key)?))
}

fn not_found(key: &ScheduleKey) -> AppError {
    match key {
        ScheduleKey::Id(id) => AppError::NotFound(format!("schedule {id}")),
        ScheduleKey::Name(name) => AppError::NotFound(format!("schedule {name}")),
    }
}

async fn lock(conn: &mut AsyncPgConnection, key: &ScheduleKey) -> Result<ScheduleRow, AppError> {
    rows::find(conn, key, true)
        .await?
        .ok_or_else(|| not_found(key))
}

/// Wakes every replica's firing loop when the transaction commits.
async fn announce(conn: &mut AsyncPgConnection) -> Result<(), AppError> {
    QueueChanges {
        schedules: true,
        ..QueueChanges::default()
    }
    .announce(conn)
    .await
}

async fn record(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: AuditAction,
    row: &ScheduleRow,
    details: serde_json::Value,
) -> Result<(), AppError> {
    let mut details = details;
    details["name"] = json!(row.name);
    let event = AuditEvent::success(
        action,
        Some(actor.caller.user_id),
        format!("schedules/{}", row.id),
    )
    .with_details(details);
    AuditTrail::record(conn, &actor.client, &event).await
}
