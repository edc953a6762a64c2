//! What a job gets from the module it belongs to: the module's permission,
//! its state and its manifest's defaults for the job type (priority,
//! attempts, concurrency key, rate limit).

use super::{DEFAULT_MAX_ATTEMPTS, JobSpec, ensure_may_execute, limits};
use crate::{
    domain::{
        Actor,
        modules::owners::{Owner, Owners},
    },
    error::AppError,
    store::modules::ModuleStatus,
};

/// What a job of a module gets from the module's manifest.
pub(super) struct ModuleDefaults {
    pub(super) priority: i32,
    pub(super) max_attempts: i32,
    /// The concurrency key and its maximum (see [`limits::resolve`]).
    pub(super) concurrency: Option<(String, i32)>,
    /// The rate limit (the request's, else the job type's).
    pub(super) rate_limit: Option<String>,
}

/// The module a job is created for, and what it gets from the module's
/// manifest. A job of a module (see [`owners`]: by its name, whatever the
/// request says) needs `modules:execute`, an ENABLED module and a job type
/// the manifest declares (when it declares any); hook job types are
/// refused. The request's priority (when not 0) and attempts win over the
/// manifest's defaults for the type, which win over the global ones. A
/// `repeated` request (its key names a job of the caller's) is checked for
/// the permission only: it writes nothing. Without an `actor` (a schedule
/// firing: its writer was checked when writing it) no permission is checked.
pub(super) fn job_module<'a>(
    actor: Option<&Actor>,
    owners: &'a Owners,
    spec: &JobSpec,
    prefix: &str,
    repeated: bool,
) -> Result<(Option<&'a Owner>, ModuleDefaults), AppError> {
    let module = owners.module_of(
        &spec.name,
        spec.module_name.as_deref(),
        &format!("{prefix}name"),
        &format!("{prefix}module_name"),
    )?;
    let given = |declaration| {
        limits::resolve(
            prefix,
            &spec.name,
            &spec.payload,
            spec.concurrency_key.as_deref(),
            spec.concurrency_max,
            declaration,
        )
    };
    let plain = ModuleDefaults {
        priority: spec.priority,
        max_attempts: spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        concurrency: given(None)?,
        rate_limit: spec.rate_limit.clone(),
    };
    let Some(module) = module else {
        return Ok((None, plain));
    };
    if let Some(actor) = actor {
        ensure_may_execute(actor)?;
    }
    if repeated {
        return Ok((Some(module), plain));
    }
    ensure_enabled(module)?;
    let declaration = if module.types.is_empty() {
        None
    } else {
        Some(module.types.job(&spec.name).ok_or_else(|| {
            AppError::invalid(
                format!("{prefix}name"),
                format!(
                    "module {} declares no job type '{}'",
                    module.name, spec.name
                ),
            )
        })?)
    };
    let defaults = ModuleDefaults {
        priority: match spec.priority {
            0 => declaration.and_then(|d| d.priority).unwrap_or(0),
            priority => priority,
        },
        max_attempts: spec
            .max_attempts
            .or(declaration.and_then(|d| d.max_attempts))
            .unwrap_or(DEFAULT_MAX_ATTEMPTS),
        concurrency: given(declaration)?,
        rate_limit: None,
    };
    // Whether the job ends up keyed (given a key, or derived from its
    // type's declaration) decides whether it may take a bucket: never both.
    let defaults = ModuleDefaults {
        rate_limit: limits::rate_limit_of(
            prefix,
            spec.rate_limit.as_deref(),
            defaults.concurrency.is_some(),
            declaration,
        )?,
        ..defaults
    };
    Ok((Some(module), defaults))
}

/// Refuses unless the module is ENABLED.
pub(super) fn ensure_enabled(module: &Owner) -> Result<(), AppError> {
    if module.status != ModuleStatus::Enabled {
        return Err(AppError::FailedPrecondition(format!(
            "module {} is {}: jobs can be created only while it is ENABLED",
            module.name,
            module.status.label()
        )));
    }
    Ok(())
}
