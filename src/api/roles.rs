//! `RoleService`: roles and who holds them.

use tonic::{Request, Response, Status};

use super::{actor_of, mask_paths, role_message, timestamp};
use crate::{
    domain::{
        roles::{Assignment, NewRoleSpec, RoleUpdate, Roles},
        validate,
    },
    error::AppError,
    proto::automation_v1::{self as pb, role_service_server::RoleService},
    store::pagination::PageRequest,
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

fn assignment_message(assignment: Assignment) -> pb::RoleAssignment {
    pb::RoleAssignment {
        assign_time: Some(timestamp(assignment.assignment.assigned_at)),
        assigned_by: assignment
            .assignment
            .assigned_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        role: Some(role_message(assignment.role)),
    }
}

fn decode_update(request: pb::UpdateRoleRequest) -> Result<(uuid::Uuid, RoleUpdate), AppError> {
    let paths = mask_paths(
        request.update_mask.as_ref(),
        &["name", "description", "permissions"],
    )?;
    let role = request
        .role
        .as_ref()
        .ok_or_else(|| AppError::invalid("role", "is required"))?;
    let id = validate::id("role.id", &role.id)?;
    let mut update = RoleUpdate {
        fields: paths.iter().map(|p| p.to_string()).collect(),
        ..RoleUpdate::default()
    };
    for path in paths {
        match path {
            "name" => update.name = Some(validate::role_name("role.name", &role.name)?),
            "description" => {
                update.description = Some(validate::text("role.description", &role.description)?)
            }
            _ => {
                update.permissions = Some(validate::permissions(
                    "role.permissions",
                    &role.permissions,
                )?)
            }
        }
    }
    Ok((id, update))
}

/// A role reference: an id or a name.
fn role_key<'a>(field: &str, key: &'a str) -> Result<&'a str, AppError> {
    validate::required(field, key)
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.into_inner();
        let spec = NewRoleSpec {
            name: validate::role_name("name", &body.name)?,
            description: validate::text("description", &body.description)?,
            permissions: validate::permissions("permissions", &body.permissions)?,
        };
        let role = self.roles.create(&actor, spec).await?;
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
        let (id, update) = decode_update(request.into_inner())?;
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
        let id = validate::id("id", &request.get_ref().id)?;
        self.roles.delete(&actor, id).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(
        &self,
        request: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.get_ref();
        let user_id = validate::id("user_id", &body.user_id)?;
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
        let user_id = validate::id("user_id", &body.user_id)?;
        self.roles
            .unassign(&actor, user_id, role_key("role", &body.role)?)
            .await?;
        Ok(Response::new(pb::UnassignRoleResponse {}))
    }

    async fn list_user_roles(
        &self,
        request: Request<pb::ListUserRolesRequest>,
    ) -> Result<Response<pb::ListUserRolesResponse>, Status> {
        let user_id = validate::id("user_id", &request.get_ref().user_id)?;
        let assignments = self.roles.of_user(user_id).await?;
        Ok(Response::new(pb::ListUserRolesResponse {
            assignments: assignments.into_iter().map(assignment_message).collect(),
        }))
    }
}
