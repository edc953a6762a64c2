//! `RoleService`: roles and who holds them.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    domain::roles::Roles,
    proto::automation_v1::{self as pb, role_service_server::RoleService},
    store::pagination::PageRequest,
    wire::{
        self,
        roles::{assignment_message, new_role, role_key, role_message, role_update},
    },
};

/// Handlers of `automation.v1.RoleService`.
#[derive(Clone)]
pub struct RoleApi {
    roles: Roles,
}

impl RoleApi {
    /// Handlers over the role service.
    pub fn new(roles: Roles) -> Self {
        Self { roles }
    }
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let role = self
            .roles
            .create(&actor, new_role(request.into_inner()))
            .await?;
        Ok(Response::new(pb::CreateRoleResponse {
            role: Some(role_message(role)),
        }))
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::GetRoleResponse>, Status> {
        let key = role_key("id", &request.get_ref().id)?;
        let role = self.roles.get(key).await?;
        Ok(Response::new(pb::GetRoleResponse {
            role: Some(role_message(role)),
        }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let body = request.into_inner();
        let page = self
            .roles
            .list(PageRequest::parse(body.page_size, &body.page_token)?)
            .await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.into_iter().map(role_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let (id, update) = role_update(request.into_inner())?;
        let role = self.roles.update(&actor, id, update).await?;
        Ok(Response::new(pb::UpdateRoleResponse {
            role: Some(role_message(role)),
        }))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = wire::id("id", &request.get_ref().id)?;
        self.roles.delete(&actor, id).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(
        &self,
        request: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.get_ref();
        let user_id = wire::id("user_id", &body.user_id)?;
        let assignment = self
            .roles
            .assign(&actor, user_id, role_key("role", &body.role)?)
            .await?;
        Ok(Response::new(pb::AssignRoleResponse {
            assignment: Some(assignment_message(assignment)),
        }))
    }

    async fn unassign_role(
        &self,
        request: Request<pb::UnassignRoleRequest>,
    ) -> Result<Response<pb::UnassignRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.get_ref();
        let user_id = wire::id("user_id", &body.user_id)?;
        self.roles
            .unassign(&actor, user_id, role_key("role", &body.role)?)
            .await?;
        Ok(Response::new(pb::UnassignRoleResponse {}))
    }

    async fn list_user_roles(
        &self,
        request: Request<pb::ListUserRolesRequest>,
    ) -> Result<Response<pb::ListUserRolesResponse>, Status> {
        let user_id = wire::id("user_id", &request.get_ref().user_id)?;
        let assignments = self.roles.of_user(user_id).await?;
        Ok(Response::new(pb::ListUserRolesResponse {
            assignments: assignments.into_iter().map(assignment_message).collect(),
        }))
    }
}
