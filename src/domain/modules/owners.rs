//! Which module a job belongs to. A job's module follows from what the job
//! is, not from a field its creator may leave out: a job name belongs to the
//! module its namespace names (`backup.run` is module `backup`'s) and to
//! every module whose manifest declares it (recorded in `module_job_types`
//! whenever a manifest is written). Such a job is its module's whatever the
//! request says: it needs `modules:execute`, its module must be ENABLED,
//! and it is held while its module is not. Hook job types (those a manifest
//! names under `hooks`) are created by the module's lifecycle alone.
//!
//! The service keeps names unambiguous: a manifest may not declare a job
//! type another module declares or whose namespace is another module, and a
//! module may not be registered under a name whose namespace another module
//! declares types in. A module that takes names (by registering, or by a
//! new manifest) takes back the jobs already holding them: they were created
//! without its rules and are cancelled. The lock of
//! [`rows::lock_job_names`] makes that race-free against concurrent creates.

use std::{collections::HashMap, sync::Arc};

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{
    cache::{ManifestCache, Stamp},
    manifest::{JobTypes, Manifest},
};
use crate::{
    domain::{
        events::{QueueChanges, RevokeCause},
        validate,
    },
    error::AppError,
    store::{
        jobs as job_rows,
        modules::{self as rows, ModuleRow, ModuleStatus},
    },
};

/// A module as job creation sees it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub id: Uuid,
    pub name: String,
    pub status: ModuleStatus,
    /// What its manifest declares (shared with the cache).
    pub types: Arc<JobTypes>,
}

/// The modules the jobs of one create (or retry) may belong to, read once
/// and share-locked until the transaction ends.
#[derive(Debug, Default)]
pub struct Owners {
    modules: Vec<Owner>,
    /// Job name → indexes into `modules` of the modules declaring it.
    declared: HashMap<String, Vec<usize>>,
    /// Module name → index into `modules`.
    by_name: HashMap<String, usize>,
}

/// Takes, for the rest of the transaction, the shared side of the lock on
/// which module a job name belongs to: every create and retry does, first.
pub async fn lock_for_create(conn: &mut AsyncPgConnection) -> Result<(), AppError> {
    Ok(rows::lock_job_names(conn, false).await?)
}

impl Owners {
    /// The modules that `job_names` belong to, and the modules `named`
    /// (those a request names in `module_name`), with their manifests from
    /// `cache` (read and parsed only for modules whose stored manifest
    /// changed since it was kept).
    pub async fn read(
        conn: &mut AsyncPgConnection,
        cache: &ManifestCache,
        job_names: &[&str],
        named: &[&str],
    ) -> Result<Self, AppError> {
        let mut modules: Vec<String> = job_names
            .iter()
            .filter_map(|job| validate::job_namespace(job))
            .chain(named.iter().copied())
            .map(str::to_owned)
            .collect();
        modules.sort_unstable();
        modules.dedup();
        let mut jobs: Vec<String> = job_names.iter().map(|job| (*job).to_owned()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        let found = rows::job_name_owners(conn, &modules, &jobs).await?;
        let mut owners = Self::default();
        let mut missing = Vec::new();
        let mut stamps = Vec::new();
        for row in found {
            let at = match owners.by_name.get(&row.name) {
                Some(&at) => at,
                None => {
                    let stamp = Stamp {
                        version: row.version.clone(),
                        row_version: row.row_version,
                    };
                    let types = cache.get(row.id, &stamp).unwrap_or_else(|| {
                        missing.push(row.id);
                        Arc::default()
                    });
                    owners.modules.push(Owner {
                        id: row.id,
                        name: row.name.clone(),
                        status: row.status,
                        types,
                    });
                    stamps.push(stamp);
                    owners
                        .by_name
                        .insert(row.name.clone(), owners.modules.len() - 1);
                    owners.modules.len() - 1
                }
            };
            if let Some(job) = row.declares {
                let declaring = owners.declared.entry(job).or_default();
                if !declaring.contains(&at) {
                    declaring.push(at);
                }
            }
        }
        if !missing.is_empty() {
            for (id, raw) in rows::manifests(conn, &missing).await? {
                let Some(at) = owners.modules.iter().position(|m| m.id == id) else {
                    continue;
                };
                let types = Manifest::from_stored(raw).types;
                owners.modules[at].types = cache.insert(id, stamps[at].clone(), types);
            }
        }
        Ok(owners)
    }

    /// The modules job name `job` belongs to: the one its namespace names
    /// and those declaring it.
    pub fn of(&self, job: &str) -> Vec<&Owner> {
        let mut owners: Vec<&Owner> = Vec::new();
        if let Some(&at) = validate::job_namespace(job).and_then(|ns| self.by_name.get(ns)) {
            owners.push(&self.modules[at]);
        }
        for &at in self.declared.get(job).into_iter().flatten() {
            if !owners.iter().any(|o| o.id == self.modules[at].id) {
                owners.push(&self.modules[at]);
            }
        }
        owners
    }

    /// The module named `name`, if it exists.
    pub fn named(&self, name: &str) -> Option<&Owner> {
        self.by_name.get(name).map(|&at| &self.modules[at])
    }

    /// The module a job named `job` is created for, when the request names
    /// `named` in its `module_name` (or none): the module the name belongs
    /// to, or the one named for a name no module owns; `None` for a job of
    /// no module. Refuses hook job types (INVALID_ARGUMENT on `name_field`),
    /// a named module the job does not belong to (on `module_field`) and a
    /// named module that does not exist (NOT_FOUND).
    pub fn module_of(
        &self,
        job: &str,
        named: Option<&str>,
        name_field: &str,
        module_field: &str,
    ) -> Result<Option<&Owner>, AppError> {
        let owners = self.of(job);
        for owner in &owners {
            if let Some(kind) = owner.types.hook_of(job) {
                return Err(AppError::invalid(
                    name_field,
                    format!(
                        "'{job}' is the {} hook of module {}: hook jobs are created only by the \
                         module's lifecycle (EnableModule, UpdateModule, DeleteModule)",
                        kind.key(),
                        owner.name
                    ),
                ));
            }
        }
        let list = || {
            owners
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match named {
            Some(name) => {
                if !owners.is_empty() && !owners.iter().any(|o| o.name == name) {
                    return Err(AppError::invalid(
                        module_field,
                        format!("job type '{job}' belongs to module {}, not {name}", list()),
                    ));
                }
                self.named(name)
                    .map(Some)
                    .ok_or_else(|| AppError::NotFound(format!("module {name} ({module_field})")))
            }
            None => match owners.as_slice() {
                [] => Ok(None),
                [owner] => Ok(Some(owner)),
                _ => Err(AppError::invalid(
                    module_field,
                    format!(
                        "job type '{job}' belongs to modules {}: name one of them",
                        list()
                    ),
                )),
            },
        }
    }
}

/// Records that `module` declares what `types` holds, after checking that
/// no other module owns those names (and, for a `new` module, that no other
/// module declares job types in its namespace); `field` is the manifest's
/// request field. With `keep_previous` (an update whose hook is about to
/// run) the types the module declared before stay its own until the hook
/// settles, since a failed hook restores them. Jobs that already held the
/// names are taken back (cancelled, their workers told); returns how many.
/// Needs the exclusive [`rows::lock_job_names`], taken first in the
/// transaction.
pub(super) async fn claim(
    conn: &mut AsyncPgConnection,
    module: &ModuleRow,
    types: &JobTypes,
    field: &str,
    new: bool,
    keep_previous: bool,
) -> Result<usize, AppError> {
    let names: Vec<String> = types.names().map(str::to_owned).collect();
    let mut namespaces: Vec<String> = names
        .iter()
        .filter_map(|job| validate::job_namespace(job))
        .filter(|namespace| *namespace != module.name)
        .map(str::to_owned)
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let taken = rows::other_modules_named(conn, &namespaces, module.id).await?;
    if let Some((index, job)) = names.iter().enumerate().find(|(_, job)| {
        validate::job_namespace(job).is_some_and(|ns| taken.iter().any(|t| t == ns))
    }) {
        let owner = validate::job_namespace(job).unwrap_or_default();
        return Err(AppError::invalid(
            format!("{field}.jobs[{index}].name"),
            format!("'{job}' is in the namespace of module {owner} ({owner}.…)"),
        ));
    }
    let declared = rows::declared_by_others(conn, &names, module.id).await?;
    if let Some((index, clash)) = names
        .iter()
        .enumerate()
        .find_map(|(index, job)| declared.iter().find(|d| d.job == *job).map(|d| (index, d)))
    {
        return Err(AppError::invalid(
            format!("{field}.jobs[{index}].name"),
            format!(
                "module {} declares job type '{}' already",
                clash.module, clash.job
            ),
        ));
    }
    if new && let Some(clash) = rows::declared_in_namespace(conn, &module.name, module.id).await? {
        return Err(AppError::invalid(
            "name",
            format!(
                "module {} declares job type '{}', which is in this name's namespace",
                clash.module, clash.job
            ),
        ));
    }
    rows::add_job_types(conn, module.id, &names).await?;
    if !keep_previous {
        rows::keep_job_types(conn, module.id, &names).await?;
    }
    take_back(conn, &module.name, &names).await
}

/// After an update's hook settled: the module declares what its manifest
/// now says (the new one, or the one the failure restored).
pub(super) async fn settle_declared(
    conn: &mut AsyncPgConnection,
    module: Uuid,
    manifest: &serde_json::Value,
) -> Result<(), AppError> {
    let types = Manifest::from_stored(manifest.clone()).types;
    let names: Vec<String> = types.names().map(str::to_owned).collect();
    rows::add_job_types(conn, module, &names).await?;
    rows::keep_job_types(conn, module, &names).await?;
    Ok(())
}

/// Cancels the jobs that hold names `module` now owns without being its
/// own, telling the workers running them.
async fn take_back(
    conn: &mut AsyncPgConnection,
    module: &str,
    names: &[String],
) -> Result<usize, AppError> {
    let reason = format!(
        "module {module} took this job's name after the job was created; create it again as \
         that module's job"
    );
    let cancelled = job_rows::cancel_jobs_taken_by(conn, module, names, &reason).await?;
    if cancelled.is_empty() {
        return Ok(0);
    }
    let mut changes = QueueChanges::default();
    changes.note_cancelled(&cancelled, RevokeCause::Cancelled);
    changes.announce(conn).await?;
    Ok(cancelled.len())
}
