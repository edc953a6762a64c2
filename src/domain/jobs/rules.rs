//! The rules a job must meet to be retried or cancelled, shared by the
//! single calls (RetryJob, CancelJob) and the batch ones, which apply them
//! to every job of a page.

use super::{AppError, JobRow, JobStatus, ensure_enabled, ensure_may_execute, owners::Owners};
use crate::domain::Actor;

/// A job may be retried only once it is FAILED or CANCELLED, and never
/// when it is a module's lifecycle hook.
pub(super) fn may_retry_state(job: &JobRow) -> Result<(), AppError> {
    let id = job.id;
    if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is {}: only FAILED or CANCELLED jobs can be retried",
            job.status.label()
        )));
    }
    if let Some(hook) = &job.hook {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is the {hook} hook of module {}: its transition was undone when it \
             ended; start the transition again instead",
            job.module_name.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// A retried job comes back as a job of the module that owns its name now
/// (`owners`, read in the retry's transaction), which must be ENABLED and
/// still declare it; a module's job needs `modules:execute`.
pub(super) fn may_retry_owned(
    actor: &Actor,
    owners: &Owners,
    job: &JobRow,
) -> Result<(), AppError> {
    let id = job.id;
    // A module registered (or declaring the name) after the job was
    // created took the job back; it cannot come back as a job of
    // another module, or of none, that the module's workers take.
    let belongs = owners.of(&job.name);
    if !belongs.is_empty()
        && !belongs
            .iter()
            .any(|owner| Some(&owner.name) == job.module_name.as_ref())
    {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is named '{}', which belongs to module {} now: create it again as \
             that module's job",
            job.name, belongs[0].name
        )));
    }
    if let Some(owner) = belongs
        .iter()
        .find(|o| o.types.hook_of(&job.name).is_some())
    {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is named '{}', which is a hook of module {} now: hook jobs are \
             created only by the module's lifecycle",
            job.name, owner.name
        )));
    }
    if let Some(module) = &job.module_name {
        ensure_may_execute(actor)?;
        let owner = owners
            .named(module)
            .ok_or_else(|| AppError::NotFound(format!("module {module} (id)")))?;
        ensure_enabled(owner)?;
        if !owner.types.is_empty() && owner.types.job(&job.name).is_none() {
            return Err(AppError::FailedPrecondition(format!(
                "module {module} no longer declares job type '{}'",
                job.name
            )));
        }
    }
    Ok(())
}

/// What a batch may cancel: PENDING or RUNNING jobs, of a module only with
/// `modules:execute`, and never a lifecycle hook (cancelling one undoes a
/// module's transition: that is CancelJob's, one at a time, with the
/// permission of the transition).
pub(super) fn may_cancel_in_batch(actor: &Actor, job: &JobRow) -> Result<(), AppError> {
    let id = job.id;
    if job.status.is_terminal() {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is {}: only PENDING or RUNNING jobs can be cancelled",
            job.status.label()
        )));
    }
    if let Some(hook) = &job.hook {
        return Err(AppError::FailedPrecondition(format!(
            "job {id} is the {hook} hook of module {}: cancel it with CancelJob",
            job.module_name.as_deref().unwrap_or_default()
        )));
    }
    if job.module_name.is_some() {
        ensure_may_execute(actor)?;
    }
    Ok(())
}

/// A retried job takes tokens from the bucket it names when leased, so the
/// bucket must still exist (a deleted one would leave the job pending for
/// good); the buckets are key-share locked until the retry commits, so a
/// concurrent DeleteRateLimit waits and then sees the job.
pub(super) async fn may_retry_buckets(
    conn: &mut diesel_async::AsyncPgConnection,
    jobs: &[&JobRow],
) -> Result<(), AppError> {
    let mut names: Vec<String> = jobs.iter().filter_map(|j| j.rate_limit.clone()).collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    names.dedup();
    let existing = crate::store::rate_limits::lock_existing(conn, &names).await?;
    match jobs.iter().find_map(|job| {
        job.rate_limit
            .as_ref()
            .filter(|name| !existing.contains(name))
            .map(|name| (job.id, name))
    }) {
        Some((id, name)) => Err(AppError::FailedPrecondition(format!(
            "job {id} takes its tokens from rate limit '{name}', which was deleted: \
             PutRateLimit it again before retrying"
        ))),
        None => Ok(()),
    }
}
