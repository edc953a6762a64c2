//! Lifecycle hooks as jobs: enqueueing the job that carries out a
//! transition, and settling the transition when that job ends — inside the
//! transaction that ends it, so a module never stays INSTALLING, UPDATING or
//! REMOVING after its hook job is finished, whichever way it finished (a
//! worker's report, a lost lease on its last attempt, a cancel).

use diesel_async::AsyncPgConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Actor,
    lifecycle::{self, Event, Target},
    manifest::{HookKind, Manifest},
};
use crate::{
    auth::client::ClientInfo,
    domain::{
        audit::{AuditAction, AuditEvent, AuditTrail},
        events::{QueueChanges, RevokeCause},
        validate::DEFAULT_MAX_ATTEMPTS,
    },
    error::AppError,
    store::{
        self,
        jobs::{self as job_rows, JobRow, JobStatus, NewJob},
        modules::{self as rows, ModuleChanges, ModuleRow, ModuleStatus},
    },
};

/// The state a module is in while the hook of `kind` runs.
fn status_during(kind: HookKind) -> ModuleStatus {
    match kind {
        HookKind::Install => ModuleStatus::Installing,
        HookKind::Update => ModuleStatus::Updating,
        HookKind::Remove => ModuleStatus::Removing,
    }
}

/// The hook a module in a transition waits for.
fn running_hook(status: ModuleStatus) -> Option<HookKind> {
    [HookKind::Install, HookKind::Update, HookKind::Remove]
        .into_iter()
        .find(|kind| status_during(*kind) == status)
}

/// Starts the transition `kind` carries out for `module` (moving it to
/// `version`): checks that the caller may run the module's code, enqueues
/// the hook job and puts into `changes` the transition's state, its job and
/// what to restore if it fails. Returns the job's id.
pub(super) async fn begin(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    module: &ModuleRow,
    manifest: &Manifest,
    kind: HookKind,
    version: &str,
    changes: &mut ModuleChanges,
) -> Result<Uuid, AppError> {
    super::ensure_may_execute(actor, module, kind)?;
    let job = enqueue(conn, actor, module, manifest, kind, version).await?;
    changes.status = Some(status_during(kind));
    changes.hook_job_id = Some(Some(job.id));
    changes.rollback = Some(Some(rollback(actor, module, module.status)));
    Ok(job.id)
}

/// Enqueues the job that carries out `kind` for `module` (whose manifest is
/// `manifest`), moving it to `version`.
async fn enqueue(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    module: &ModuleRow,
    manifest: &Manifest,
    kind: HookKind,
    version: &str,
) -> Result<JobRow, AppError> {
    let declaration = manifest
        .hook(kind)
        .ok_or_else(|| AppError::internal("a hook the manifest does not declare"))?;
    let new = NewJob {
        id: Uuid::now_v7(),
        name: declaration.name.clone(),
        module_name: Some(module.name.clone()),
        priority: declaration.priority.unwrap_or(0),
        payload: json!({
            "module": module.name,
            "hook": kind.key(),
            "version": version,
            "previous_version": module.version,
        }),
        max_attempts: declaration.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        scheduled_at: None,
        idempotency_key: None,
        created_by: Some(actor.caller.user_id),
        hook: Some(kind.key().to_owned()),
        traceparent: None,
        concurrency: None,
        rate_limit: None,
    };
    let job = job_rows::insert(conn, std::slice::from_ref(&new))
        .await?
        .pop()
        .ok_or_else(|| AppError::internal("a hook job was not inserted"))?;
    QueueChanges {
        runnable_now: true,
        ..QueueChanges::default()
    }
    .announce(conn)
    .await?;
    Ok(job)
}

/// What a transition keeps to undo itself: the state the module `left`
/// (and its version and manifest, which an update replaces), and who began
/// it, to whom its end is audited.
fn rollback(actor: &Actor, module: &ModuleRow, left: ModuleStatus) -> Value {
    json!({
        "left": left.label(),
        "version": module.version,
        "manifest": module.manifest,
        "by": actor.caller.user_id,
    })
}

/// Cancels the pending and running jobs of a module being removed and
/// tells the workers running them; returns how many.
pub(super) async fn cancel_jobs_of(
    conn: &mut AsyncPgConnection,
    module: &str,
) -> Result<usize, AppError> {
    let cancelled = job_rows::cancel_jobs_of_module(conn, module).await?;
    let mut changes = QueueChanges::default();
    changes.note_cancelled(&cancelled, RevokeCause::ModuleRemoved);
    changes.announce(conn).await?;
    Ok(cancelled.len())
}

/// Keeps the module's pending jobs out of dispatch while it is not ENABLED
/// (and puts them back when it is). A deleted module's jobs were cancelled.
pub(super) async fn hold_jobs_unless_enabled(
    conn: &mut AsyncPgConnection,
    module: &ModuleRow,
) -> Result<(), AppError> {
    job_rows::hold_jobs_of_module(conn, &module.name, module.status != ModuleStatus::Enabled)
        .await?;
    Ok(())
}

/// How a hook job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct HookOutcome {
    /// The job.
    pub job: Uuid,
    /// Completed (or else failed for good, or cancelled).
    pub succeeded: bool,
    /// The job's error when it failed.
    pub error: Option<Value>,
}

impl HookOutcome {
    /// The outcome of a hook job now in `status`; `None` while it may still
    /// run (pending a retry) or when it is not a hook job.
    pub fn of(
        job: Uuid,
        hook: Option<&str>,
        status: JobStatus,
        error: Option<Value>,
    ) -> Option<Self> {
        hook?;
        match status {
            JobStatus::Completed => Some(Self {
                job,
                succeeded: true,
                error: None,
            }),
            JobStatus::Failed | JobStatus::Cancelled => Some(Self {
                job,
                succeeded: false,
                error: Some(
                    error.unwrap_or_else(|| json!({ "message": "the hook job was cancelled" })),
                ),
            }),
            JobStatus::Pending | JobStatus::Running => None,
        }
    }
}

/// Settles the transitions that the ended hook jobs carried out, in the
/// caller's transaction. A job no module waits for any more (settled before,
/// or the module changed since) changes nothing.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    outcomes: &[HookOutcome],
) -> Result<(), AppError> {
    for outcome in outcomes {
        let Some(module) = rows::find_by_hook_job_for_update(conn, outcome.job).await? else {
            continue;
        };
        settle_one(conn, module, outcome).await?;
    }
    Ok(())
}

async fn settle_one(
    conn: &mut AsyncPgConnection,
    module: ModuleRow,
    outcome: &HookOutcome,
) -> Result<(), AppError> {
    let rollback = module.rollback.clone().unwrap_or(Value::Null);
    let left = rollback
        .get("left")
        .and_then(Value::as_str)
        .and_then(ModuleStatus::from_label)
        .unwrap_or(ModuleStatus::Registered);
    let event = if outcome.succeeded {
        Event::HookSucceeded { left }
    } else {
        Event::HookFailed { left }
    };
    let Some(target) = lifecycle::next(module.status, event) else {
        tracing::warn!(module = %module.name, status = module.status.label(), job = %outcome.job,
            "a hook job ended for a module not in a transition; left as it is");
        return Ok(());
    };
    let hook = running_hook(module.status).map_or("none", HookKind::key);
    let now = store::now();
    let mut announce = QueueChanges {
        changed: vec![module.id],
        ..QueueChanges::default()
    };
    let after = match target {
        Target::Deleted => {
            rows::delete_if(conn, module.id, module.status).await?;
            // A module registered again under the name starts unpaused.
            job_rows::delete_pauses_of_module(conn, &module.name).await?;
            None
        }
        Target::Status(status) => {
            let mut changes = ModuleChanges {
                status: Some(status),
                hook_job_id: Some(None),
                rollback: Some(None),
                updated_at: Some(now),
                ..ModuleChanges::default()
            };
            if outcome.succeeded {
                changes.last_error = Some(None);
                if module.status == ModuleStatus::Installing {
                    changes.installed_at = Some(Some(now));
                    changes.enabled_at = Some(Some(now));
                }
            } else {
                changes.last_error = Some(Some(json!({
                    "hook": hook,
                    "job": outcome.job,
                    "error": outcome.error,
                })));
                if module.status == ModuleStatus::Updating {
                    changes.version = rollback
                        .get("version")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    changes.manifest = rollback.get("manifest").cloned();
                }
            }
            announce.runnable_now = status == ModuleStatus::Enabled;
            // Its schedules may fire again.
            announce.schedules = status == ModuleStatus::Enabled;
            let after = rows::compare_and_set(conn, module.id, module.status, &changes).await?;
            if let Some(after) = &after {
                hold_jobs_unless_enabled(conn, after).await?;
                if module.status == ModuleStatus::Updating {
                    // The job types of both manifests were the module's
                    // while the hook ran; now only the kept one's are.
                    super::owners::settle_declared(conn, after.id, &after.manifest).await?;
                }
            }
            after
        }
    };
    announce.announce(conn).await?;
    let action = if outcome.succeeded {
        AuditAction::ModuleHookSucceeded
    } else {
        AuditAction::ModuleHookFailed
    };
    let by = rollback
        .get("by")
        .and_then(Value::as_str)
        .and_then(|id| id.parse::<Uuid>().ok());
    let make = if outcome.succeeded {
        AuditEvent::success
    } else {
        AuditEvent::failure
    };
    let event = make(action, by, format!("modules/{}", module.id)).with_details(json!({
        "name": module.name,
        "hook": hook,
        "job": outcome.job,
        "from": module.status.label(),
        "to": after.as_ref().map_or("deleted", |m| m.status.label()),
        "version": after.as_ref().map_or(module.version.as_str(), |m| m.version.as_str()),
    }));
    let client = ClientInfo {
        ip: None,
        user_agent: "hook job settlement".into(),
        api_key: None,
    };
    AuditTrail::record(conn, &client, &event).await
}
