//! `Role` messages and the requests of `RoleService`: roles and
//! assignments to the wire, new roles and changes to the domain, whose
//! [`NewRoleSpec::validated`] and [`RoleUpdate::validated`] check the
//! fields' shapes.

use uuid::Uuid;

use super::{mask::mask_paths, time::timestamp};
use crate::{
    domain::{
        roles::{Assignment, NewRoleSpec, RoleUpdate},
        validate,
    },
    error::AppError,
    proto::automation_v1 as pb,
    store::models::RoleRow,
};

/// The fields UpdateRole may change.
const UPDATABLE: [&str; 3] = ["name", "description", "permissions"];

/// The wire `Role` of a row.
pub fn role_message(row: RoleRow) -> pb::Role {
    pb::Role {
        permissions: row.permission_list(),
        id: row.id.to_string(),
        name: row.name,
        description: row.description,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

/// The wire `RoleAssignment` of a role held.
pub fn assignment_message(assignment: Assignment) -> pb::RoleAssignment {
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

/// A `CreateRoleRequest` as a new role, as sent.
pub fn new_role(request: pb::CreateRoleRequest) -> NewRoleSpec {
    NewRoleSpec {
        name: request.name,
        description: request.description,
        permissions: request.permissions,
    }
}

/// An `UpdateRoleRequest` as the role's id and the changes its mask names,
/// as sent.
pub fn role_update(request: pb::UpdateRoleRequest) -> Result<(Uuid, RoleUpdate), AppError> {
    let paths = mask_paths(request.update_mask.as_ref(), &UPDATABLE)?;
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
            "name" => update.name = Some(role.name.clone()),
            "description" => update.description = Some(role.description.clone()),
            _ => update.permissions = Some(role.permissions.clone()),
        }
    }
    Ok((id, update))
}

/// A role reference: an id or a name, required.
pub fn role_key<'a>(field: &str, key: &'a str) -> Result<&'a str, AppError> {
    validate::required(field, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_names_the_masked_fields_only() {
        let request = pb::UpdateRoleRequest {
            role: Some(pb::Role {
                id: Uuid::nil().to_string(),
                name: "ignored".into(),
                permissions: vec!["jobs:read".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["permissions".into()],
            }),
        };
        let (_, update) = role_update(request).unwrap();
        assert_eq!(update.fields, ["permissions"]);
        assert_eq!(update.permissions, Some(vec!["jobs:read".to_owned()]));
        assert_eq!(update.name, None);
    }

    #[test]
    fn a_blank_role_key_is_refused() {
        assert_eq!(
            role_key("role", " ").unwrap_err().to_string(),
            "role: is required"
        );
        assert_eq!(role_key("role", " admin ").unwrap(), "admin");
    }
}
