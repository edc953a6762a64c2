//! `ModuleService`. The module registry is built with the module lifecycle
//! work; until then its RPCs answer UNIMPLEMENTED (after the permission
//! check).

use tonic::{Request, Response, Status};

use crate::proto::automation_v1::{self as pb, module_service_server::ModuleService};

/// Handlers of `automation.v1.ModuleService`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModuleApi;

fn not_built() -> Status {
    Status::unimplemented("the module registry is not built yet")
}

#[tonic::async_trait]
impl ModuleService for ModuleApi {
    async fn register_module(
        &self,
        _: Request<pb::RegisterModuleRequest>,
    ) -> Result<Response<pb::RegisterModuleResponse>, Status> {
        Err(not_built())
    }
    async fn get_module(
        &self,
        _: Request<pb::GetModuleRequest>,
    ) -> Result<Response<pb::GetModuleResponse>, Status> {
        Err(not_built())
    }
    async fn list_modules(
        &self,
        _: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        Err(not_built())
    }
    async fn update_module(
        &self,
        _: Request<pb::UpdateModuleRequest>,
    ) -> Result<Response<pb::UpdateModuleResponse>, Status> {
        Err(not_built())
    }
    async fn enable_module(
        &self,
        _: Request<pb::EnableModuleRequest>,
    ) -> Result<Response<pb::EnableModuleResponse>, Status> {
        Err(not_built())
    }
    async fn disable_module(
        &self,
        _: Request<pb::DisableModuleRequest>,
    ) -> Result<Response<pb::DisableModuleResponse>, Status> {
        Err(not_built())
    }
    async fn delete_module(
        &self,
        _: Request<pb::DeleteModuleRequest>,
    ) -> Result<Response<pb::DeleteModuleResponse>, Status> {
        Err(not_built())
    }
}
