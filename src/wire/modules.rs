//! `Module` messages and the requests of `ModuleService`: modules and their
//! states to the wire, registrations, updates and list filters to the
//! domain.

use super::{
    json::{json_to_struct, struct_to_json},
    mask::mask_paths,
    time::timestamp,
};
use crate::{
    domain::modules::{ModuleRegistration, ModuleUpdate},
    error::AppError,
    proto::automation_v1 as pb,
    store::modules::{ModuleRow, ModuleStatus},
};

/// The fields UpdateModule may change.
const UPDATABLE: [&str; 4] = ["display_name", "description", "version", "manifest"];

/// The wire state of a module.
pub fn status_message(status: ModuleStatus) -> pb::ModuleStatus {
    match status {
        ModuleStatus::Registered => pb::ModuleStatus::Registered,
        ModuleStatus::Installing => pb::ModuleStatus::Installing,
        ModuleStatus::Enabled => pb::ModuleStatus::Enabled,
        ModuleStatus::Disabled => pb::ModuleStatus::Disabled,
        ModuleStatus::Updating => pb::ModuleStatus::Updating,
        ModuleStatus::Removing => pb::ModuleStatus::Removing,
    }
}

/// The wire `Module` of a row.
pub fn module_message(row: ModuleRow) -> pb::Module {
    pb::Module {
        id: row.id.to_string(),
        name: row.name,
        version: row.version,
        display_name: row.display_name,
        description: row.description,
        status: status_message(row.status).into(),
        manifest: Some(json_to_struct(row.manifest)),
        install_time: row.installed_at.map(timestamp),
        enable_time: row.enabled_at.map(timestamp),
        disable_time: row.disabled_at.map(timestamp),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        last_error: row.last_error.map(json_to_struct),
        hook_job_id: row.hook_job_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// A manifest as JSON; unset is `{}`.
fn manifest(manifest: Option<prost_types::Struct>) -> serde_json::Value {
    manifest
        .map(struct_to_json)
        .unwrap_or_else(|| serde_json::json!({}))
}

/// A `RegisterModuleRequest` as a registration (its shapes are checked by
/// the registry).
pub fn registration(request: pb::RegisterModuleRequest) -> ModuleRegistration {
    ModuleRegistration {
        name: request.name,
        version: request.version,
        display_name: request.display_name,
        description: request.description,
        manifest: manifest(request.manifest),
    }
}

/// The state a list filters on; `UNSPECIFIED` is every state.
pub fn status_filter(status: i32) -> Result<Option<ModuleStatus>, AppError> {
    Ok(match pb::ModuleStatus::try_from(status) {
        Ok(pb::ModuleStatus::Unspecified) => None,
        Ok(pb::ModuleStatus::Registered) => Some(ModuleStatus::Registered),
        Ok(pb::ModuleStatus::Installing) => Some(ModuleStatus::Installing),
        Ok(pb::ModuleStatus::Enabled) => Some(ModuleStatus::Enabled),
        Ok(pb::ModuleStatus::Disabled) => Some(ModuleStatus::Disabled),
        Ok(pb::ModuleStatus::Updating) => Some(ModuleStatus::Updating),
        Ok(pb::ModuleStatus::Removing) => Some(ModuleStatus::Removing),
        Err(_) => return Err(AppError::invalid("status", "is not a ModuleStatus")),
    })
}

/// An `UpdateModuleRequest` as the module's key (id or name, as sent) and
/// the fields its mask names.
pub fn module_update(request: pb::UpdateModuleRequest) -> Result<(String, ModuleUpdate), AppError> {
    let paths: Vec<String> = mask_paths(request.update_mask.as_ref(), &UPDATABLE)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let module = request
        .module
        .ok_or_else(|| AppError::invalid("module", "is required"))?;
    let wants = |field: &str| paths.iter().any(|p| p == field);
    let update = ModuleUpdate {
        display_name: wants("display_name").then(|| module.display_name.clone()),
        description: wants("description").then(|| module.description.clone()),
        version: wants("version").then(|| module.version.clone()),
        manifest: wants("manifest").then(|| manifest(module.manifest.clone())),
    };
    Ok((module.id, update))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_changes_only_what_its_mask_names() {
        let request = pb::UpdateModuleRequest {
            module: Some(pb::Module {
                id: "backup".into(),
                version: "2.0.0".into(),
                description: "ignored".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["version".into(), "manifest".into()],
            }),
        };
        let (key, update) = module_update(request).unwrap();
        assert_eq!(key, "backup");
        assert_eq!(update.version.as_deref(), Some("2.0.0"));
        assert_eq!(update.description, None);
        // A manifest named but unset is the empty one.
        assert_eq!(update.manifest, Some(serde_json::json!({})));
    }

    #[test]
    fn an_update_without_its_module_is_refused() {
        let request = pb::UpdateModuleRequest {
            module: None,
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["version".into()],
            }),
        };
        assert_eq!(
            module_update(request).unwrap_err().to_string(),
            "module: is required"
        );
    }

    #[test]
    fn an_unknown_status_filter_is_refused() {
        assert_eq!(status_filter(0).unwrap(), None);
        assert_eq!(
            status_filter(3).unwrap(),
            Some(ModuleStatus::Enabled),
            "ENABLED is 3 in modules.proto"
        );
        assert!(status_filter(-1).is_err());
    }
}
