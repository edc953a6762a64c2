//! `ModuleService`: the module registry and its lifecycle. Handlers decode,
//! call the registry ([`crate::domain::modules`]) and encode.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    dispatch::Dispatcher,
    domain::modules::{Modules, Removal},
    proto::automation_v1::{self as pb, module_service_server::ModuleService},
    store::pagination::PageRequest,
    wire::modules::{module_message, module_update, registration, status_filter},
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

#[tonic::async_trait]
impl ModuleService for ModuleApi {
    async fn register_module(
        &self,
        request: Request<pb::RegisterModuleRequest>,
    ) -> Result<Response<pb::RegisterModuleResponse>, Status> {
        let actor = actor_of(&request)?;
        let module = self
            .modules
            .register(&actor, registration(request.into_inner()))
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
        let status = status_filter(request.status)?;
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
        let (key, update) = module_update(request.into_inner())?;
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
