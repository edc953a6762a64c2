//! `ModuleService`: the module registry and its lifecycle. Handlers decode,
//! call the registry ([`crate::domain::modules`]) and encode.

use tonic::{Request, Response, Status};

use super::{
    actor_of,
    json::{json_to_struct, struct_to_json},
    mask_paths, timestamp,
};
use crate::{
    dispatch::Dispatcher,
    domain::modules::{ModuleUpdate, Modules, Registration, Removal},
    error::AppError,
    proto::automation_v1::{self as pb, module_service_server::ModuleService},
    store::{
        modules::{ModuleRow, ModuleStatus},
        pagination::PageRequest,
    },
};

/// Handlers of `automation.v1.ModuleService`.
#[derive(Clone)]
pub struct ModuleApi {
    modules: Modules,
    dispatcher: Dispatcher,
}

impl ModuleApi {
    /// Handlers over the registry and this replica's dispatcher (which
    /// serves WatchModule).
    pub fn new(modules: Modules, dispatcher: Dispatcher) -> Self {
        Self {
            modules,
            dispatcher,
        }
    }
}

fn status_message(status: ModuleStatus) -> pb::ModuleStatus {
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
pub(crate) fn module_message(row: ModuleRow) -> pb::Module {
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

fn decode_status(status: i32) -> Result<Option<ModuleStatus>, AppError> {
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

fn decode_update(request: pb::UpdateModuleRequest) -> Result<(String, ModuleUpdate), AppError> {
    let paths: Vec<String> = mask_paths(
        request.update_mask.as_ref(),
        &["display_name", "description", "version", "manifest"],
    )?
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
        manifest: wants("manifest").then(|| {
            module
                .manifest
                .clone()
                .map(struct_to_json)
                .unwrap_or_else(|| serde_json::json!({}))
        }),
    };
    Ok((module.id, update))
}

#[tonic::async_trait]
impl ModuleService for ModuleApi {
    async fn register_module(
        &self,
        request: Request<pb::RegisterModuleRequest>,
    ) -> Result<Response<pb::RegisterModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let module = self
            .modules
            .register(
                &actor,
                Registration {
                    name: request.name,
                    version: request.version,
                    display_name: request.display_name,
                    description: request.description,
                    manifest: request
                        .manifest
                        .map(struct_to_json)
                        .unwrap_or_else(|| serde_json::json!({})),
                },
            )
            .await?;
        Ok(Response::new(pb::RegisterModuleResponse {
            module: Some(module_message(module)),
        }))
    }

    async fn get_module(
        &self,
        request: Request<pb::GetModuleRequest>,
    ) -> Result<Response<pb::GetModuleResponse>, Status> {
        let module = self.modules.get(&request.get_ref().id).await?;
        Ok(Response::new(pb::GetModuleResponse {
            module: Some(module_message(module)),
        }))
    }

    async fn list_modules(
        &self,
        request: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        let request = request.into_inner();
        let status = decode_status(request.status)?;
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let page = self.modules.list(status, page).await?;
        Ok(Response::new(pb::ListModulesResponse {
            modules: page.items.into_iter().map(module_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_module(
        &self,
        request: Request<pb::UpdateModuleRequest>,
    ) -> Result<Response<pb::UpdateModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let (key, update) = decode_update(request.into_inner())?;
        let module = self.modules.update(&actor, &key, update).await?;
        Ok(Response::new(pb::UpdateModuleResponse {
            module: Some(module_message(module)),
        }))
    }

    async fn enable_module(
        &self,
        request: Request<pb::EnableModuleRequest>,
    ) -> Result<Response<pb::EnableModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let module = self.modules.enable(&actor, &request.get_ref().id).await?;
        Ok(Response::new(pb::EnableModuleResponse {
            module: Some(module_message(module)),
        }))
    }

    async fn disable_module(
        &self,
        request: Request<pb::DisableModuleRequest>,
    ) -> Result<Response<pb::DisableModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let module = self.modules.disable(&actor, &request.get_ref().id).await?;
        Ok(Response::new(pb::DisableModuleResponse {
            module: Some(module_message(module)),
        }))
    }

    async fn delete_module(
        &self,
        request: Request<pb::DeleteModuleRequest>,
    ) -> Result<Response<pb::DeleteModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let (module, deleted) = match self.modules.delete(&actor, &request.get_ref().id).await? {
            Removal::Started(module) => (module, false),
            Removal::Deleted(module) => (module, true),
        };
        Ok(Response::new(pb::DeleteModuleResponse {
            module: Some(module_message(module)),
            deleted,
        }))
    }

    type WatchModuleStream = crate::dispatch::WatchModuleStream;

    async fn watch_module(
        &self,
        request: Request<pb::WatchModuleRequest>,
    ) -> Result<Response<Self::WatchModuleStream>, Status> {
        let actor = actor_of(&request)?;
        let stream = self
            .dispatcher
            .watch_module(actor, &request.get_ref().id)
            .await?;
        Ok(Response::new(stream))
    }
}
