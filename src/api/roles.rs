//! `RoleService`: roles and their assignment, guarded against escalation
//! (nobody grants what they do not hold) and against losing the last admin.

use diesel_async::AsyncConnection as _;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{AuditEntry, mask_paths, parse_id, timestamp, users::ensure_not_last_admin};
use crate::{
    auth::{
        caller::{Caller, ClientInfo, caller_of, client_of},
        policy::validate_permission,
    },
    db,
    error::AppError,
    proto::automation_v1::{self as pb, role_service_server::RoleService},
    seed::ADMIN_ROLE,
    server::AppState,
    store::{
        self, audit,
        models::{NewRole, RoleRow, UserRoleRow},
        pagination::{Cursor, page_size},
        roles::{self, RoleChanges},
        users,
    },
};

/// The permission the built-in admin role always keeps.
const ALL_PERMISSIONS: &str = "*:*";

/// Handlers of `automation.v1.RoleService`.
#[derive(Clone)]
pub struct RoleApi {
    state: AppState,
}

impl RoleApi {
    /// Handlers over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

pub(crate) fn role_message(row: RoleRow) -> pb::Role {
    pb::Role {
        permissions: row.permission_list(),
        id: row.id.to_string(),
        name: row.name,
        description: row.description,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

fn assignment_message(assignment: UserRoleRow, role: RoleRow) -> pb::RoleAssignment {
    pb::RoleAssignment {
        role: Some(role_message(role)),
        assign_time: Some(timestamp(assignment.assigned_at)),
        assigned_by: assignment
            .assigned_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

fn validate_role_name(field: &str, name: &str) -> Result<(), AppError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.parse::<Uuid>().is_err();
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            field,
            "must be 1 to 64 lowercase letters, digits, '-' or '_'",
        ))
    }
}

/// Validates and de-duplicates permission strings.
fn validate_permissions(field: &str, permissions: &[String]) -> Result<Vec<String>, AppError> {
    if permissions.is_empty() {
        return Err(AppError::invalid(
            field,
            "must name at least one permission",
        ));
    }
    let mut unique: Vec<String> = Vec::with_capacity(permissions.len());
    for permission in permissions {
        validate_permission(permission).map_err(|message| AppError::invalid(field, message))?;
        if !unique.contains(permission) {
            unique.push(permission.clone());
        }
    }
    Ok(unique)
}

async fn find_role(
    conn: &mut diesel_async::AsyncPgConnection,
    key: &str,
    field: &str,
) -> Result<RoleRow, AppError> {
    if key.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    roles::find(conn, key)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("role {key}")))
}

impl RoleApi {
    async fn inner_create(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::CreateRoleRequest,
    ) -> Result<pb::Role, AppError> {
        validate_role_name("name", &request.name)?;
        let permissions = validate_permissions("permissions", &request.permissions)?;
        caller.ensure_holds_all(&permissions)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let now = store::now();
            let role = roles::insert(
                conn,
                &NewRole {
                    id: Uuid::now_v7(),
                    name: &request.name,
                    description: request.description.trim(),
                    permissions: serde_json::json!(permissions),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "roles.create",
                resource: format!("roles/{}", role.id),
                success: true,
                details: serde_json::json!({ "name": role.name, "permissions": permissions }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(role_message(role))
        })
        .await
    }

    async fn inner_list(
        &self,
        request: pb::ListRolesRequest,
    ) -> Result<pb::ListRolesResponse, AppError> {
        let limit = page_size(request.page_size)?;
        let after = Cursor::decode(&request.page_token)?.map(|c| c.key);
        let mut conn = db::connect(&self.state.pool).await?;
        let mut rows = roles::list(&mut conn, after.as_deref(), limit + 1).await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|last| {
                    Cursor {
                        key: last.name.clone(),
                        id: last.id,
                    }
                    .encode()
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListRolesResponse {
            roles: rows.into_iter().map(role_message).collect(),
            next_page_token,
        })
    }

    async fn inner_update(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::UpdateRoleRequest,
    ) -> Result<pb::Role, AppError> {
        let paths = mask_paths(
            request.update_mask.as_ref(),
            &["name", "description", "permissions"],
        )?;
        let role = request
            .role
            .ok_or_else(|| AppError::invalid("role", "is required"))?;
        let id = parse_id("role.id", &role.id)?;
        let mut changes = RoleChanges {
            updated_at: Some(store::now()),
            ..RoleChanges::default()
        };
        for path in &paths {
            match *path {
                "name" => {
                    validate_role_name("role.name", &role.name)?;
                    changes.name = Some(role.name.clone());
                }
                "description" => changes.description = Some(role.description.trim().to_owned()),
                _ => {
                    let permissions = validate_permissions("role.permissions", &role.permissions)?;
                    caller.ensure_holds_all(&permissions)?;
                    changes.permissions = Some(serde_json::json!(permissions));
                }
            }
        }
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let current = find_role(conn, &id.to_string(), "role.id").await?;
            if current.name == ADMIN_ROLE {
                if changes.name.as_deref().is_some_and(|n| n != ADMIN_ROLE) {
                    return Err(AppError::FailedPrecondition(
                        "the built-in admin role cannot be renamed".into(),
                    ));
                }
                if changes
                    .permissions
                    .as_ref()
                    .is_some_and(|p| !store::models::permission_list(p).iter().any(|p| p == ALL_PERMISSIONS))
                {
                    return Err(AppError::FailedPrecondition(
                        "the built-in admin role must keep *:*".into(),
                    ));
                }
            }
            let updated = roles::update(conn, id, &changes)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("role {id}")))?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "roles.update",
                resource: format!("roles/{id}"),
                success: true,
                details: serde_json::json!({ "fields": paths, "permissions": updated.permission_list() }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(role_message(updated))
        })
        .await
    }

    async fn inner_delete(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::DeleteRoleRequest,
    ) -> Result<(), AppError> {
        let id = parse_id("id", &request.id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let role = find_role(conn, &id.to_string(), "id").await?;
            if role.name == ADMIN_ROLE {
                return Err(AppError::FailedPrecondition(
                    "the built-in admin role cannot be deleted".into(),
                ));
            }
            roles::delete(conn, id).await?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "roles.delete",
                resource: format!("roles/{id}"),
                success: true,
                details: serde_json::json!({ "name": role.name }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }

    async fn inner_assign(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::AssignRoleRequest,
    ) -> Result<pb::RoleAssignment, AppError> {
        let user_id = parse_id("user_id", &request.user_id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let role = find_role(conn, &request.role, "role").await?;
            caller.ensure_holds_all(&role.permission_list())?;
            if users::find(conn, user_id).await?.is_none() {
                return Err(AppError::NotFound(format!("user {user_id}")));
            }
            let assignment = roles::assign(
                conn,
                &UserRoleRow {
                    id: Uuid::now_v7(),
                    user_id,
                    role_id: role.id,
                    assigned_at: store::now(),
                    assigned_by: Some(caller.user_id),
                },
            )
            .await?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "roles.assign",
                resource: format!("users/{user_id}/roles/{}", role.id),
                success: true,
                details: serde_json::json!({ "role": role.name }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(assignment_message(assignment, role))
        })
        .await
    }

    async fn inner_unassign(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::UnassignRoleRequest,
    ) -> Result<(), AppError> {
        let user_id = parse_id("user_id", &request.user_id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let role = find_role(conn, &request.role, "role").await?;
            if role.name == ADMIN_ROLE {
                ensure_not_last_admin(conn, user_id).await?;
            }
            if !roles::unassign(conn, user_id, role.id).await? {
                return Err(AppError::NotFound(format!(
                    "assignment of role {} to user {user_id}",
                    role.name
                )));
            }
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "roles.unassign",
                resource: format!("users/{user_id}/roles/{}", role.id),
                success: true,
                details: serde_json::json!({ "role": role.name }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }

    async fn inner_list_user_roles(
        &self,
        request: pb::ListUserRolesRequest,
    ) -> Result<pb::ListUserRolesResponse, AppError> {
        let user_id = parse_id("user_id", &request.user_id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        if users::find(&mut conn, user_id).await?.is_none() {
            return Err(AppError::NotFound(format!("user {user_id}")));
        }
        let assignments = roles::of_user(&mut conn, user_id).await?;
        Ok(pb::ListUserRolesResponse {
            assignments: assignments
                .into_iter()
                .map(|(a, r)| assignment_message(a, r))
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        let role = self
            .inner_create(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::CreateRoleResponse { role: Some(role) }))
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::GetRoleResponse>, Status> {
        let mut conn = db::connect(&self.state.pool).await?;
        let role = find_role(&mut conn, &request.get_ref().id, "id").await?;
        Ok(Response::new(pb::GetRoleResponse {
            role: Some(role_message(role)),
        }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        Ok(Response::new(self.inner_list(request.into_inner()).await?))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        let role = self
            .inner_update(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::UpdateRoleResponse { role: Some(role) }))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        self.inner_delete(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn assign_role(
        &self,
        request: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        let assignment = self
            .inner_assign(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::AssignRoleResponse {
            assignment: Some(assignment),
        }))
    }

    async fn unassign_role(
        &self,
        request: Request<pb::UnassignRoleRequest>,
    ) -> Result<Response<pb::UnassignRoleResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        self.inner_unassign(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::UnassignRoleResponse {}))
    }

    async fn list_user_roles(
        &self,
        request: Request<pb::ListUserRolesRequest>,
    ) -> Result<Response<pb::ListUserRolesResponse>, Status> {
        Ok(Response::new(
            self.inner_list_user_roles(request.into_inner()).await?,
        ))
    }
}
