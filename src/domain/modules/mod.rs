//! The module registry and its lifecycle. Every change of a module locks its
//! row, asks [`lifecycle::next`] where the change leads and applies the
//! answer as a compare-and-swap in one transaction with the hook job it
//! enqueues, the jobs it cancels, the notifications it sends and its audit
//! row. Hook jobs settle the transition they carry out in [`hooks`], inside
//! the transaction that settles the job.
//!
//! Architecture invariant: the registry sits below the job queue
//! ([`super::jobs`]) and never names it. It writes job rows (hook jobs, jobs
//! cancelled with their module) through the store, tells other replicas
//! through [`super::events`], and answers the queue's questions (who owns a
//! job name: [`owners`]; what a finished hook job means: [`hooks::settle`]).

pub mod cache;
pub mod hooks;
pub mod lifecycle;
pub mod manifest;
pub mod owners;

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use self::{
    lifecycle::{Event, Target},
    manifest::{HookKind, Manifest},
};
use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    events::QueueChanges,
    validate,
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{
        self,
        modules::{self as rows, ModuleChanges, ModuleRow, ModuleStatus, NewModule},
        pagination::{Cursor, PageRequest},
    },
};

/// The permission a change needs on top of its RPC's when it runs a hook:
/// running a module's code as a job.
pub const EXECUTE: &str = "modules:execute";

/// A module to register, as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleRegistration {
    pub name: String,
    pub version: String,
    pub display_name: String,
    pub description: String,
    pub manifest: serde_json::Value,
}

/// The fields an UpdateModule sets; `None` leaves one alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    pub manifest: Option<serde_json::Value>,
}

/// What a DeleteModule did.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    /// The module is REMOVING while its remove hook runs.
    Started(ModuleRow),
    /// The module is gone; this is its last state.
    Deleted(ModuleRow),
}

/// The registry.
#[derive(Clone)]
pub struct Modules {
    pool: DbPool,
    /// Wakes this replica's dispatch when a change makes jobs runnable.
    wake: Arc<Notify>,
}

impl Modules {
    /// The registry in `pool`'s database; `wake` is this replica's dispatch.
    pub fn new(pool: DbPool, wake: Arc<Notify>) -> Self {
        Self { pool, wake }
    }

    /// Registers a module; it starts REGISTERED. Its namespace and the job
    /// types its manifest declares become its own (refused if another module
    /// owns one); jobs that held those names are taken back.
    pub async fn register(
        &self,
        actor: &Actor,
        new: ModuleRegistration,
    ) -> Result<ModuleRow, AppError> {
        let name = validate::module_name("name", &new.name)?;
        let version = parse_version("version", &new.version)?;
        let display_name = validate::text("display_name", &new.display_name)?;
        validate::required("display_name", &display_name)?;
        let description = validate::text("description", &new.description)?;
        let manifest = Manifest::parse("manifest", new.manifest)?;
        db::transaction(&self.pool, "modules.register", async |conn| {
            rows::lock_job_names(conn, true).await?;
            let now = store::now();
            let module = rows::insert(
                conn,
                &NewModule {
                    id: Uuid::now_v7(),
                    name: &name,
                    version: &version.to_string(),
                    display_name: &display_name,
                    description: &description,
                    status: ModuleStatus::Registered,
                    manifest: manifest.raw.clone(),
                    updated_at: now,
                    created_at: now,
                },
            )
            .await?;
            let taken_back =
                owners::claim(conn, &module, &manifest.types, "manifest", true, false).await?;
            record(
                conn,
                actor,
                AuditAction::RegisterModule,
                &module,
                json!({
                    "version": module.version,
                    "job_types": manifest.types.len(),
                    "cancelled_jobs": taken_back,
                }),
            )
            .await?;
            Ok((module, taken_back))
        })
        .await
        .map(|(module, taken_back)| {
            crate::telemetry::names::jobs_cancelled("name_taken", taken_back);
            module
        })
    }

    /// One module by id or name.
    pub async fn get(&self, key: &str) -> Result<ModuleRow, AppError> {
        let key = module_key("id", key)?;
        db::with_connection(&self.pool, "modules.get", async |conn| {
            rows::find(conn, &key).await?.ok_or_else(|| not_found(&key))
        })
        .await
    }

    /// Modules by name, one page at a time, only in `status` when given.
    pub async fn list(
        &self,
        status: Option<ModuleStatus>,
        page: PageRequest,
    ) -> Result<Page<ModuleRow>, AppError> {
        let after = page.after.map(|cursor| cursor.key);
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "modules.list", async |conn| {
            Ok(rows::list(conn, status, after.as_deref(), limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |module| Cursor {
            key: module.name.clone(),
            id: module.id,
        }))
    }

    /// Changes a module's fields. A new version must be higher; on an
    /// installed module whose new manifest declares an update hook it runs
    /// that hook (UPDATING) and keeps what to restore if it fails.
    pub async fn update(
        &self,
        actor: &Actor,
        key: &str,
        update: ModuleUpdate,
    ) -> Result<ModuleRow, AppError> {
        let key = module_key("module.id", key)?;
        let display_name = update
            .display_name
            .map(|name| {
                let name = validate::text("module.display_name", &name)?;
                validate::required("module.display_name", &name)?;
                Ok::<_, AppError>(name)
            })
            .transpose()?;
        let description = update
            .description
            .map(|text| validate::text("module.description", &text))
            .transpose()?;
        let version = update
            .version
            .map(|v| parse_version("module.version", &v))
            .transpose()?;
        let new_manifest = update
            .manifest
            .map(|raw| Manifest::parse("module.manifest", raw))
            .transpose()?;
        let module = db::transaction(&self.pool, "modules.update", async |conn| {
            if new_manifest.is_some() {
                // Before the row lock, as creates take it.
                rows::lock_job_names(conn, true).await?;
            }
            let module = lock(conn, &key).await?;
            let mut changes = ModuleChanges {
                display_name: display_name.clone(),
                description: description.clone(),
                updated_at: Some(store::now()),
                ..ModuleChanges::default()
            };
            let lifecycle_change = version.is_some() || new_manifest.is_some();
            if lifecycle_change && lifecycle::is_transition(module.status) {
                return Err(AppError::FailedPrecondition(format!(
                    "module {} is {}: its version and manifest cannot change until the hook job \
                     {} finishes",
                    module.name,
                    module.status.label(),
                    module
                        .hook_job_id
                        .map(|id| id.to_string())
                        .unwrap_or_default()
                )));
            }
            let current = Manifest::from_stored(module.manifest.clone());
            if let Some(manifest) = &new_manifest
                && !manifest.same_hooks(&current)
                && !actor.caller.holds(EXECUTE)
            {
                return Err(AppError::PermissionDenied(format!(
                    "changing the hooks of module {} changes the code its transitions run: \
                     this needs {EXECUTE} as well",
                    module.name
                )));
            }
            let manifest = new_manifest.clone().unwrap_or(current);
            if let Some(manifest) = &new_manifest {
                changes.manifest = Some(manifest.raw.clone());
            }
            let mut hook = None;
            if let Some(version) = &version {
                ensure_higher(&module, version)?;
                changes.version = Some(version.to_string());
                let hooked = manifest.hook(HookKind::Update).is_some();
                let target = transition(&module, Event::NewVersion { hooked })?;
                if target == Target::Status(ModuleStatus::Updating) {
                    hook = Some(HookKind::Update);
                }
            }
            let mut job = None;
            if let Some(kind) = hook {
                let target_version = changes.version.clone().unwrap_or_default();
                job = Some(
                    hooks::begin(
                        conn,
                        actor,
                        &module,
                        &manifest,
                        kind,
                        &target_version,
                        &mut changes,
                    )
                    .await?,
                );
            } else if version.is_some() {
                // A direct version change succeeded: the last failure is
                // history.
                changes.last_error = Some(None);
            }
            let updated = compare_and_set(
                conn,
                &module,
                &changes,
                Event::NewVersion {
                    hooked: hook.is_some(),
                },
            )
            .await?;
            let mut taken_back = 0;
            if let Some(manifest) = &new_manifest {
                let field = "module.manifest";
                let keep_previous = updated.status == ModuleStatus::Updating;
                taken_back =
                    owners::claim(conn, &updated, &manifest.types, field, false, keep_previous)
                        .await?;
            }
            announce(conn, &updated, false).await?;
            record(
                conn,
                actor,
                AuditAction::UpdateModule,
                &updated,
                json!({
                    "version": { "from": module.version, "to": updated.version },
                    "manifest_changed": new_manifest.is_some(),
                    "cancelled_jobs": taken_back,
                    "status": updated.status.label(),
                    "hook_job": job,
                }),
            )
            .await?;
            Ok((updated, taken_back))
        })
        .await?;
        crate::telemetry::names::jobs_cancelled("name_taken", module.1);
        let module = module.0;
        self.wake.notify_one();
        Ok(module)
    }

    /// Installs a REGISTERED module (INSTALLING while its install hook
    /// runs, else ENABLED at once) or re-enables a DISABLED one.
    pub async fn enable(&self, actor: &Actor, key: &str) -> Result<ModuleRow, AppError> {
        let key = module_key("id", key)?;
        let module = db::transaction(&self.pool, "modules.enable", async |conn| {
            let module = lock(conn, &key).await?;
            let manifest = Manifest::from_stored(module.manifest.clone());
            let hooked = manifest.hook(HookKind::Install).is_some();
            let event = Event::Enable { hooked };
            let target = transition(&module, event)?;
            let now = store::now();
            let mut changes = ModuleChanges {
                updated_at: Some(now),
                ..ModuleChanges::default()
            };
            let mut job = None;
            if target == Target::Status(ModuleStatus::Installing) {
                let version = module.version.clone();
                job = Some(
                    hooks::begin(
                        conn,
                        actor,
                        &module,
                        &manifest,
                        HookKind::Install,
                        &version,
                        &mut changes,
                    )
                    .await?,
                );
            } else {
                changes.status = Some(ModuleStatus::Enabled);
                changes.enabled_at = Some(Some(now));
                changes.last_error = Some(None);
                if module.status == ModuleStatus::Registered {
                    changes.installed_at = Some(Some(now));
                }
            }
            let updated = compare_and_set(conn, &module, &changes, event).await?;
            announce(conn, &updated, updated.status == ModuleStatus::Enabled).await?;
            record(
                conn,
                actor,
                AuditAction::EnableModule,
                &updated,
                json!({
                    "from": module.status.label(),
                    "to": updated.status.label(),
                    "hook_job": job,
                }),
            )
            .await?;
            Ok(updated)
        })
        .await?;
        self.wake.notify_one();
        Ok(module)
    }

    /// Suspends an ENABLED module: its pending jobs are held until it is
    /// enabled again.
    pub async fn disable(&self, actor: &Actor, key: &str) -> Result<ModuleRow, AppError> {
        let key = module_key("id", key)?;
        db::transaction(&self.pool, "modules.disable", async |conn| {
            let module = lock(conn, &key).await?;
            transition(&module, Event::Disable)?;
            let now = store::now();
            let changes = ModuleChanges {
                status: Some(ModuleStatus::Disabled),
                disabled_at: Some(Some(now)),
                updated_at: Some(now),
                ..ModuleChanges::default()
            };
            let updated = compare_and_set(conn, &module, &changes, Event::Disable).await?;
            announce(conn, &updated, false).await?;
            record(conn, actor, AuditAction::DisableModule, &updated, json!({})).await?;
            Ok(updated)
        })
        .await
    }

    /// Removes a module: cancels its jobs (telling the workers running
    /// them), then runs its remove hook (REMOVING) or deletes it at once.
    pub async fn delete(&self, actor: &Actor, key: &str) -> Result<Removal, AppError> {
        let key = module_key("id", key)?;
        let removal = db::transaction(&self.pool, "modules.delete", async |conn| {
            let module = lock(conn, &key).await?;
            let manifest = Manifest::from_stored(module.manifest.clone());
            let hooked = manifest.hook(HookKind::Remove).is_some();
            let event = Event::Delete { hooked };
            let target = transition(&module, event)?;
            if target == Target::Status(ModuleStatus::Removing) {
                // Refuse before cancelling anything.
                ensure_may_execute(actor, &module, HookKind::Remove)?;
            }
            let cancelled = hooks::cancel_jobs_of(conn, &module.name).await?;
            let (removal, job) = if target == Target::Deleted {
                if !rows::delete_if(conn, module.id, module.status).await? {
                    return Err(raced(&module));
                }
                // A module registered again under the name starts unpaused.
                crate::store::jobs::delete_pauses_of_module(conn, &module.name).await?;
                announce(conn, &module, false).await?;
                (Removal::Deleted(module.clone()), None)
            } else {
                let mut changes = ModuleChanges {
                    updated_at: Some(store::now()),
                    ..ModuleChanges::default()
                };
                let version = module.version.clone();
                let job = hooks::begin(
                    conn,
                    actor,
                    &module,
                    &manifest,
                    HookKind::Remove,
                    &version,
                    &mut changes,
                )
                .await?;
                let updated = compare_and_set(conn, &module, &changes, event).await?;
                announce(conn, &updated, false).await?;
                (Removal::Started(updated), Some(job))
            };
            record(
                conn,
                actor,
                AuditAction::DeleteModule,
                &module,
                json!({
                    "was": module.status.label(),
                    "deleted": matches!(removal, Removal::Deleted(_)),
                    "cancelled_jobs": cancelled,
                    "hook_job": job,
                }),
            )
            .await?;
            Ok((removal, cancelled))
        })
        .await?;
        crate::telemetry::names::jobs_cancelled("module_removed", removal.1);
        let removal = removal.0;
        self.wake.notify_one();
        Ok(removal)
    }
}

/// A module key (the request's `field`): a UUID or a module name.
fn module_key(field: &str, key: &str) -> Result<String, AppError> {
    if key.parse::<Uuid>().is_ok() {
        return Ok(key.to_owned());
    }
    validate::module_name(field, key).map_err(|_| {
        AppError::invalid(
            field,
            "must be a module's id (a UUID) or its name (kebab-case)",
        )
    })
}

fn not_found(key: &str) -> AppError {
    AppError::NotFound(format!("module {key}"))
}

async fn lock(conn: &mut AsyncPgConnection, key: &str) -> Result<ModuleRow, AppError> {
    rows::find_for_update(conn, key)
        .await?
        .ok_or_else(|| not_found(key))
}

/// A semantic version, as the semver crate reads it.
fn parse_version(field: &str, version: &str) -> Result<semver::Version, AppError> {
    semver::Version::parse(version.trim()).map_err(|error| {
        AppError::invalid(
            field,
            format!("is not a semantic version such as 1.4.0 or 2.0.0-rc.1 ({error})"),
        )
    })
}

/// A new version must be higher than the current one; a current version
/// that is not semantic (written by another backend) is simply replaced.
fn ensure_higher(module: &ModuleRow, version: &semver::Version) -> Result<(), AppError> {
    match semver::Version::parse(&module.version) {
        Ok(current) if *version <= current => Err(AppError::invalid(
            "module.version",
            format!(
                "must be higher than the current version {current} (semantic versioning order)"
            ),
        )),
        _ => Ok(()),
    }
}

fn transition(module: &ModuleRow, event: Event) -> Result<Target, AppError> {
    lifecycle::next(module.status, event).ok_or_else(|| {
        AppError::FailedPrecondition(lifecycle::refusal(&module.name, module.status, event))
    })
}

/// Applies `changes` if the module is still in the state it was read in.
/// The row is locked, so this always matches; it stays a compare-and-swap so
/// that the rule holds even for a writer that did not lock.
async fn compare_and_set(
    conn: &mut AsyncPgConnection,
    module: &ModuleRow,
    changes: &ModuleChanges,
    event: Event,
) -> Result<ModuleRow, AppError> {
    match rows::compare_and_set(conn, module.id, module.status, changes).await? {
        Some(updated) => Ok(updated),
        None => {
            let now = rows::find(conn, &module.id.to_string()).await?;
            Err(match now {
                Some(now) => {
                    AppError::FailedPrecondition(lifecycle::refusal(&now.name, now.status, event))
                }
                None => not_found(&module.name),
            })
        }
    }
}

fn raced(module: &ModuleRow) -> AppError {
    AppError::Aborted(format!(
        "module {} changed during the call; read it again",
        module.name
    ))
}

fn ensure_may_execute(actor: &Actor, module: &ModuleRow, kind: HookKind) -> Result<(), AppError> {
    if actor.caller.holds(EXECUTE) {
        return Ok(());
    }
    Err(AppError::PermissionDenied(format!(
        "module {} declares a {} hook, which runs as a job: this change needs {EXECUTE} as well",
        module.name,
        kind.key()
    )))
}

/// Tells watchers of the module that it changed, and dispatch when its jobs
/// became runnable; holds its pending jobs unless it is ENABLED.
async fn announce(
    conn: &mut AsyncPgConnection,
    module: &ModuleRow,
    jobs_runnable: bool,
) -> Result<(), AppError> {
    hooks::hold_jobs_unless_enabled(conn, module).await?;
    QueueChanges {
        changed: vec![module.id],
        runnable_now: jobs_runnable,
        // Its schedules may fire again.
        schedules: module.status == ModuleStatus::Enabled,
        ..QueueChanges::default()
    }
    .announce(conn)
    .await
}

async fn record(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: AuditAction,
    module: &ModuleRow,
    details: serde_json::Value,
) -> Result<(), AppError> {
    let mut details = details;
    details["name"] = json!(module.name);
    let event = AuditEvent::success(action, Some(actor.caller.user_id), resource(module))
        .with_details(details);
    AuditTrail::record(conn, &actor.client, &event).await
}

fn resource(module: &ModuleRow) -> String {
    format!("modules/{}", module.id)
}
