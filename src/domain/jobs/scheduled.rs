//! The queue as schedules use it ([`crate::domain::schedules`]): checking a
//! schedule's job template as CreateJob checks a request, and creating a
//! schedule's jobs through CreateJob's own rules (module ownership, the
//! module's state and declared types, its manifest's defaults) inside the
//! schedule's transaction. A schedule's jobs are created as its creator's,
//! like hook jobs as their transition's caller's, and carry no idempotency
//! key or trace context; the schedule ties them to itself
//! (`store::schedules::attach_jobs`).

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{Actor, JobSpec, Jobs, ensure_may_execute, job_module};
use crate::{
    domain::{
        events::{QueueChanges, Revocation, RevokeCause},
        modules::owners::{self, Owners},
    },
    error::AppError,
    store::jobs::{self as rows, JobRow, JobStatus, NewJob},
};

/// Who a schedule's job is created for.
#[derive(Debug, Clone, Copy)]
pub enum TemplateCaller<'a> {
    /// A caller running the schedule now (TriggerSchedule): checked as a
    /// CreateJob caller.
    Caller(&'a Actor),
    /// A fire time: created as the schedule's creator's (`None` once that
    /// account is gone), unchecked, since the schedule's writer was checked.
    Fire { creator: Option<Uuid> },
}

impl Jobs {
    /// Checks a schedule's job template for `actor` as CreateJob checks a
    /// request, the module's state aside (a schedule of a disabled module is
    /// held, not refused): the shapes, the module the job belongs to (with
    /// `modules:execute` for a module's job) and the type its manifest
    /// declares. Returns that module's name. `prefix` names the template's
    /// fields (`job_template.`).
    pub async fn check_template(
        &self,
        conn: &mut AsyncPgConnection,
        actor: &Actor,
        spec: &JobSpec,
        prefix: &str,
    ) -> Result<Option<String>, AppError> {
        spec.validate(prefix, &self.settings)?;
        owners::lock_for_create(conn).await?;
        let named: Vec<&str> = spec.module_name.as_deref().into_iter().collect();
        let owners = Owners::read(conn, &self.manifests, &[&spec.name], &named).await?;
        let name_field = format!("{prefix}name");
        let Some(module) = owners.module_of(
            &spec.name,
            spec.module_name.as_deref(),
            &name_field,
            &format!("{prefix}module_name"),
        )?
        else {
            return Ok(None);
        };
        ensure_may_execute(actor)?;
        if !module.types.is_empty() && module.types.job(&spec.name).is_none() {
            return Err(AppError::invalid(
                name_field,
                format!(
                    "module {} declares no job type '{}'",
                    module.name, spec.name
                ),
            ));
        }
        Ok(Some(module.name.clone()))
    }

    /// Creates one job of a schedule from its template, in the caller's
    /// transaction, by CreateJob's rules: its module must be ENABLED and
    /// still declare the type. `module` is the module the schedule was
    /// written for: a job name that has since come to belong to another
    /// module (or to none) is refused, since the schedule's writer was never
    /// checked for it. Dispatch is told at commit.
    pub async fn create_from_template(
        &self,
        conn: &mut AsyncPgConnection,
        caller: TemplateCaller<'_>,
        spec: &JobSpec,
        module: Option<&str>,
    ) -> Result<JobRow, AppError> {
        owners::lock_for_create(conn).await?;
        let named: Vec<&str> = spec.module_name.as_deref().into_iter().collect();
        let owners = Owners::read(conn, &self.manifests, &[&spec.name], &named).await?;
        let actor = match caller {
            TemplateCaller::Caller(actor) => Some(actor),
            TemplateCaller::Fire { .. } => None,
        };
        let (owner, defaults) = job_module(actor, &owners, spec, "job_template.", false)?;
        let owner_name = owner.map(|o| o.name.as_str());
        if owner_name != module {
            return Err(AppError::FailedPrecondition(format!(
                "job type '{}' belongs to {} now, not to {}: update the schedule's job template",
                spec.name,
                owner_name.map_or("no module".to_owned(), |m| format!("module {m}")),
                module.map_or("no module".to_owned(), |m| format!("module {m}")),
            )));
        }
        let created_by = match caller {
            TemplateCaller::Caller(actor) => Some(actor.caller.user_id),
            TemplateCaller::Fire { creator } => creator,
        };
        let new = NewJob {
            id: Uuid::now_v7(),
            name: spec.name.clone(),
            module_name: owner_name.map(str::to_owned),
            priority: defaults.priority,
            payload: spec.payload.clone(),
            max_attempts: defaults.max_attempts,
            scheduled_at: None,
            idempotency_key: None,
            created_by,
            hook: None,
            traceparent: None,
            concurrency: defaults.concurrency,
            rate_limit: defaults.rate_limit,
        };
        let job = rows::insert(conn, std::slice::from_ref(&new))
            .await?
            .pop()
            .ok_or_else(|| AppError::internal("a scheduled job was not inserted"))?;
        QueueChanges {
            runnable_now: true,
            ..QueueChanges::default()
        }
        .announce(conn)
        .await?;
        Ok(job)
    }

    /// Cancels unfinished jobs of a schedule (its overlap policy), as
    /// CancelJob does: the workers running them are told, wherever they are
    /// connected. Jobs that finished meanwhile are left alone. Returns how
    /// many were cancelled.
    pub async fn cancel_for_schedule(
        &self,
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
    ) -> Result<usize, AppError> {
        let mut changes = QueueChanges::default();
        for &id in ids {
            let Some(job) = rows::find_for_update(conn, id).await? else {
                continue;
            };
            if job.status.is_terminal() {
                continue;
            }
            rows::set_status(conn, id, JobStatus::Cancelled).await?;
            changes.changed.push(id);
            if let (JobStatus::Running, Some(stream)) = (job.status, job.leased_by) {
                changes.revoked.push(Revocation {
                    stream,
                    job: id,
                    attempt: job.attempts,
                    cause: RevokeCause::Cancelled,
                });
            }
        }
        changes.announce(conn).await?;
        Ok(changes.changed.len())
    }

    /// Wakes this replica's dispatch after a commit that created jobs (other
    /// replicas hear the NOTIFY).
    pub fn wake_dispatch(&self) {
        self.wake.notify_one();
    }
}
