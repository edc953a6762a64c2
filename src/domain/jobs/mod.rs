//! The job queue, as clients use it (`JobService`): enqueueing, reading,
//! cancelling and retrying jobs. The worker side — leases, reports, the
//! reaper — is in [`leases`]; the notifications that tie replicas together
//! are in [`super::events`].
//!
//! Architecture invariant: the queue sits above the module registry. A job
//! may belong to a module, so the queue asks [`super::modules`] who owns a
//! job name ([`owners`]) and settles a hook job's transition
//! ([`modules::hooks::settle`]); the registry never names the queue. What
//! both write to other replicas (jobs changed, leases revoked, work to pick
//! up) is [`super::events`], below both.

mod attempts;
mod batch;
mod idle;
pub mod leases;
pub mod limits;
mod module_jobs;
mod queues;
pub mod rate_limits;
mod rules;
pub mod scheduled;
mod settings;

pub use batch::{BatchSelection, MAX_BATCH_PAGE, Skipped};
use module_jobs::{ensure_enabled, job_module};
pub use queues::{QueuePage, Walked};
pub use settings::{JobSettings, StreamLimits};

use std::sync::Arc;

use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    events::{QueueChanges, Revocation, RevokeCause},
    modules::{
        self,
        cache::ManifestCache,
        hooks::HookOutcome,
        owners::{self, Owners},
    },
    validate,
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{
        jobs::{self as rows, JobFilter, JobRow, JobStatus, NewJob},
        pagination::{Cursor, PageRequest},
    },
};

// The bounds of a job's fields live with the other shapes of input, where a
// module's manifest (whose job declarations carry the same fields) reads
// them too.
pub use super::validate::{DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT, PRIORITY_RANGE};
/// Most jobs one BatchCreateJobs creates.
pub const MAX_BATCH: usize = 1000;
/// Times a job may be handed back unfinished (a worker's release, a drain,
/// a stream cut off) since it was created or last retried without spending
/// an attempt; past them each hand-back spends one like a failure.
pub const FREE_RETURNS: i32 = 10;

/// A job to create, as a client asks for it (shapes already checked by
/// [`JobSpec::validate`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub module_name: Option<String>,
    pub payload: serde_json::Value,
    pub priority: i32,
    /// `None`: the module's default, else [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: Option<i32>,
    /// `None`: now.
    pub schedule_at: Option<NaiveDateTime>,
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` of the creating call, carried to the worker.
    pub traceparent: Option<String>,
    /// At most `concurrency_max` (default 1) jobs of this key run at once.
    pub concurrency_key: Option<String>,
    pub concurrency_max: Option<i32>,
    /// The rate limit it takes a token from (it must exist).
    pub rate_limit: Option<String>,
}

impl JobSpec {
    /// Checks the fields' shapes; `prefix` is the request's path
    /// (`requests[3].` in a batch).
    pub fn validate(&self, prefix: &str, settings: &JobSettings) -> Result<(), AppError> {
        let field = |name: &str| format!("{prefix}{name}");
        validate::job_name(&field("name"), &self.name)?;
        if let Some(module) = &self.module_name {
            validate::module_name(&field("module_name"), module)?;
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(AppError::invalid(
                field("priority"),
                format!(
                    "must be within {}..{}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ));
        }
        if let Some(max) = self.max_attempts
            && !(1..=MAX_ATTEMPTS_LIMIT).contains(&max)
        {
            return Err(AppError::invalid(
                field("max_attempts"),
                format!("must be within 1..{MAX_ATTEMPTS_LIMIT} (0 for the default)"),
            ));
        }
        if let Some(key) = &self.idempotency_key
            && (key.trim().is_empty() || key.chars().any(char::is_control))
        {
            return Err(AppError::invalid(
                field("idempotency_key"),
                "must be printable and not blank",
            ));
        }
        limits::validate(
            prefix,
            self.concurrency_key.as_deref(),
            self.concurrency_max,
        )?;
        limits::validate_rate_limit(
            prefix,
            self.rate_limit.as_deref(),
            self.concurrency_key.is_some(),
        )?;
        if !self.payload.is_object() {
            return Err(AppError::invalid(field("payload"), "must be a JSON object"));
        }
        validate::json_document(&field("payload"), &self.payload, settings.payload_max_bytes)
    }
}

/// The client side of the queue.
#[derive(Clone)]
pub struct Jobs {
    pool: DbPool,
    settings: JobSettings,
    /// Wakes this replica's dispatch at once after a local enqueue (other
    /// replicas hear the NOTIFY).
    wake: Arc<Notify>,
    /// Parsed manifests of the modules jobs are created for, per version.
    manifests: Arc<ManifestCache>,
}

impl Jobs {
    /// The queue in `pool`'s database; `wake` is this replica's dispatch.
    pub fn new(pool: DbPool, settings: JobSettings, wake: Arc<Notify>) -> Self {
        Self {
            pool,
            settings,
            wake,
            manifests: Arc::new(ManifestCache::new()),
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    /// Enqueues one job; with an idempotency key a job holds, returns that
    /// job and writes nothing.
    pub async fn create(&self, actor: &Actor, spec: JobSpec) -> Result<JobRow, AppError> {
        spec.validate("", &self.settings)?;
        let mut created = self
            .create_all(actor, vec![spec], AuditAction::CreateJob)
            .await?;
        created
            .pop()
            .ok_or_else(|| AppError::internal("a created job went missing"))
    }

    /// Enqueues up to [`MAX_BATCH`] jobs in one transaction, all or none.
    pub async fn create_batch(
        &self,
        actor: &Actor,
        specs: Vec<JobSpec>,
    ) -> Result<Vec<JobRow>, AppError> {
        if specs.is_empty() || specs.len() > MAX_BATCH {
            return Err(AppError::invalid(
                "requests",
                format!("must hold 1 to {MAX_BATCH} requests"),
            ));
        }
        for (index, spec) in specs.iter().enumerate() {
            spec.validate(&format!("requests[{index}]."), &self.settings)?;
        }
        self.create_all(actor, specs, AuditAction::BatchCreateJobs)
            .await
    }

    async fn create_all(
        &self,
        actor: &Actor,
        specs: Vec<JobSpec>,
        action: AuditAction,
    ) -> Result<Vec<JobRow>, AppError> {
        let batch = action == AuditAction::BatchCreateJobs;
        let prefix = |index: usize| request_prefix(batch, index);
        let creator = actor.caller.user_id;
        let jobs = db::transaction(&self.pool, "jobs.create", async |conn| {
            owners::lock_for_create(conn).await?;
            // A repeated create returns the job its key names even if the
            // module changed state since: the module is not asked again.
            // Keys are the caller's own: another caller's job holding the
            // same key is neither returned nor in the way.
            let keys: Vec<String> = specs
                .iter()
                .filter_map(|spec| spec.idempotency_key.clone())
                .collect();
            let held = if keys.is_empty() {
                Vec::new()
            } else {
                rows::find_by_keys(conn, creator, &keys).await?
            };
            // Every module the jobs may belong to, read (and share-locked)
            // once: a batch of a thousand jobs of one module costs one query.
            let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
            let named: Vec<&str> = specs
                .iter()
                .filter_map(|spec| spec.module_name.as_deref())
                .collect();
            let owners = Owners::read(conn, &self.manifests, &names, &named).await?;
            let mut new = Vec::with_capacity(specs.len());
            for (index, spec) in specs.iter().enumerate() {
                let repeated = spec.idempotency_key.is_some()
                    && held
                        .iter()
                        .any(|job| job.idempotency_key == spec.idempotency_key);
                let (module, defaults) =
                    job_module(Some(actor), &owners, spec, &prefix(index), repeated)?;
                new.push(NewJob {
                    id: Uuid::now_v7(),
                    name: spec.name.clone(),
                    module_name: module.map(|m| m.name.clone()),
                    priority: defaults.priority,
                    payload: spec.payload.clone(),
                    max_attempts: defaults.max_attempts,
                    scheduled_at: spec.schedule_at,
                    idempotency_key: spec.idempotency_key.clone(),
                    created_by: Some(creator),
                    hook: None,
                    traceparent: spec.traceparent.clone(),
                    concurrency: defaults.concurrency,
                    rate_limit: defaults.rate_limit,
                });
            }
            limits::lock_rate_limits(conn, &new, batch).await?;
            let inserted = rows::insert(conn, &new).await?;
            let jobs = resolve_idempotent(conn, creator, &new, inserted, batch).await?;
            let fresh: Vec<&JobRow> = jobs
                .iter()
                .filter(|job| new.iter().any(|n| n.id == job.id))
                .collect();
            if fresh.is_empty() {
                // Every request named a job that exists: nothing written.
                return Ok(jobs);
            }
            // New jobs have no watchers yet: only dispatch needs to hear.
            let changes = QueueChanges {
                runnable_now: fresh.iter().any(|j| j.scheduled_at <= j.created_at),
                runnable_later: fresh.iter().any(|j| j.scheduled_at > j.created_at),
                ..QueueChanges::default()
            };
            changes.announce(conn).await?;
            let resource = if batch {
                format!("jobs:batch/{}", fresh.len())
            } else {
                format!("jobs/{}", fresh[0].id)
            };
            let details = if batch {
                json!({ "count": fresh.len(), "first": fresh[0].id, "last": fresh[fresh.len() - 1].id })
            } else {
                json!({ "name": fresh[0].name, "module": fresh[0].module_name })
            };
            let event = AuditEvent::success(action, Some(actor.caller.user_id), resource)
                .with_details(details);
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(jobs)
        })
        .await?;
        self.wake.notify_one();
        Ok(jobs)
    }

    /// One job.
    pub async fn get(&self, id: Uuid) -> Result<JobRow, AppError> {
        db::with_connection(&self.pool, "jobs.get", async |conn| {
            rows::find(conn, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("job {id}")))
        })
        .await
    }

    /// Jobs newest first, one page at a time.
    pub async fn list(
        &self,
        filter: JobFilter,
        page: PageRequest,
    ) -> Result<Page<JobRow>, AppError> {
        let mut filter = filter;
        filter.before = page.after_time()?;
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "jobs.list", async |conn| {
            Ok(rows::list(conn, &filter, limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |job| {
            Cursor::at_time(job.created_at, job.id)
        }))
    }

    /// Cancels a PENDING or RUNNING job; the worker holding a running one is
    /// told, wherever it is connected.
    pub async fn cancel(&self, actor: &Actor, id: Uuid) -> Result<JobRow, AppError> {
        db::transaction(&self.pool, "jobs.cancel", async |conn| {
            let job = rows::find_for_update(conn, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("job {id}")))?;
            if job.module_name.is_some() {
                ensure_may_execute(actor)?;
            }
            if let Some(hook) = &job.hook {
                ensure_may_undo(actor, hook)?;
            }
            if job.status.is_terminal() {
                return Err(AppError::FailedPrecondition(format!(
                    "job {id} is {}: only PENDING or RUNNING jobs can be cancelled",
                    job.status.label()
                )));
            }
            let cancelled = rows::set_status(conn, id, JobStatus::Cancelled).await?;
            let mut changes = QueueChanges::default();
            changes.changed.push(id);
            if let (JobStatus::Running, Some(stream)) = (job.status, job.leased_by) {
                changes.revoked.push(Revocation {
                    stream,
                    job: id,
                    attempt: job.attempts,
                    cause: RevokeCause::Cancelled,
                });
            }
            changes.announce(conn).await?;
            // Cancelling a hook job abandons the transition it carries out.
            let hook = HookOutcome::of(id, job.hook.as_deref(), JobStatus::Cancelled, None);
            modules::hooks::settle(conn, hook.as_slice()).await?;
            let event = AuditEvent::success(
                AuditAction::CancelJob,
                Some(actor.caller.user_id),
                format!("jobs/{id}"),
            )
            .with_details(json!({ "was": job.status.label(), "attempt": job.attempts }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(cancelled)
        })
        .await
        .inspect(|_| crate::telemetry::names::jobs_cancelled("api", 1))
    }

    /// Puts a FAILED or CANCELLED job back in the queue with a fresh attempt
    /// budget.
    pub async fn retry(&self, actor: &Actor, id: Uuid) -> Result<JobRow, AppError> {
        let job = db::transaction(&self.pool, "jobs.retry", async |conn| {
            owners::lock_for_create(conn).await?;
            let job = rows::find_for_update(conn, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("job {id}")))?;
            rules::may_retry_state(&job)?;
            let named: Vec<&str> = job.module_name.as_deref().into_iter().collect();
            let owners = Owners::read(conn, &self.manifests, &[&job.name], &named).await?;
            rules::may_retry_owned(actor, &owners, &job)?;
            rules::may_retry_buckets(conn, &[&job]).await?;
            let requeued = rows::requeue(conn, id).await?;
            let mut changes = QueueChanges::default();
            changes.note(id, requeued.status, true);
            changes.announce(conn).await?;
            let event = AuditEvent::success(
                AuditAction::RetryJob,
                Some(actor.caller.user_id),
                format!("jobs/{id}"),
            )
            .with_details(
                json!({ "was": job.status.label(), "max_attempts": requeued.max_attempts }),
            );
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(requeued)
        })
        .await?;
        self.wake.notify_one();
        Ok(job)
    }
}

/// How errors name a request's fields: `requests[i].` in a batch.
fn request_prefix(batch: bool, index: usize) -> String {
    if batch {
        format!("requests[{index}].")
    } else {
        String::new()
    }
}

/// Jobs of a module run its code: creating, cancelling (which may undo a
/// module's transition) and retrying them needs `modules:execute` as well
/// as `jobs:write`.
fn ensure_may_execute(actor: &Actor) -> Result<(), AppError> {
    if actor.caller.holds(modules::EXECUTE) {
        return Ok(());
    }
    Err(AppError::PermissionDenied(format!(
        "jobs of a module run its code: this needs {} as well as jobs:write",
        modules::EXECUTE
    )))
}

/// Cancelling a module's hook job undoes the transition the hook carries
/// out (an install, an update, a removal): it needs the permission of the
/// call that started that transition, or `jobs:write` and `modules:execute`
/// would be enough to roll back a DeleteModule or an UpdateModule.
fn ensure_may_undo(actor: &Actor, hook: &str) -> Result<(), AppError> {
    // As the access options of ModuleService (modules.proto) say.
    let (needed, call) = match hook {
        "install" => ("modules:write", "EnableModule"),
        "update" => ("modules:write", "UpdateModule"),
        // `remove`, and anything unknown: the strictest.
        _ => ("modules:delete", "DeleteModule"),
    };
    if actor.caller.holds(needed) {
        return Ok(());
    }
    Err(AppError::PermissionDenied(format!(
        "this job is a module's {hook} hook: cancelling it undoes the {call} that started it, \
         which needs {needed}"
    )))
}

/// The jobs of a create, in request order: the inserted rows, and for
/// requests whose idempotency key a job of the same creator already held,
/// that job (refusing a key reused for a different job; the refusal names
/// the caller's own job, nobody else's).
async fn resolve_idempotent(
    conn: &mut AsyncPgConnection,
    creator: Uuid,
    new: &[NewJob],
    inserted: Vec<JobRow>,
    batch: bool,
) -> Result<Vec<JobRow>, AppError> {
    let missing_keys: Vec<String> = new
        .iter()
        .filter(|n| !inserted.iter().any(|row| row.id == n.id))
        .filter_map(|n| n.idempotency_key.clone())
        .collect();
    let existing = if missing_keys.is_empty() {
        Vec::new()
    } else {
        rows::find_by_keys(conn, creator, &missing_keys).await?
    };
    let mut jobs = Vec::with_capacity(new.len());
    for (index, request) in new.iter().enumerate() {
        if let Some(row) = inserted.iter().find(|row| row.id == request.id) {
            jobs.push(row.clone());
            continue;
        }
        let key = request.idempotency_key.as_deref().unwrap_or_default();
        let holder = existing
            .iter()
            .find(|row| row.idempotency_key.as_deref() == Some(key))
            .ok_or_else(|| AppError::internal(format!("no job holds idempotency key {key}")))?;
        if holder.name != request.name
            || holder.module_name != request.module_name
            || holder.payload != request.payload
        {
            return Err(AppError::Conflict {
                field: format!("{}idempotency_key", request_prefix(batch, index)),
                message: format!(
                    "job {} holds this key with a different name, module or payload",
                    holder.id
                ),
            });
        }
        jobs.push(holder.clone());
    }
    Ok(jobs)
}
