//! Roles (named sets of permissions) and who holds them.
//!
//! Creating, changing, deleting, assigning or unassigning a role needs every
//! permission that role holds (before and after a change); unassigning also
//! acts on the account, so it needs every permission the account holds. The
//! built-in `admin` role cannot be deleted, renamed or lose `*:*`, and the
//! last active admin keeps it.

use serde_json::json;
use uuid::Uuid;

use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    authority::{
        ADMIN_ROLE, ALL_PERMISSIONS, ensure_covers, ensure_may_grant, ensure_not_last_admin,
        serialize_admin_changes,
    },
    validate,
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{
        self,
        models::{NewRole, RoleRow, UserRoleRow},
        pagination::{Cursor, PageRequest},
        roles::{self, RoleChanges},
        users,
    },
};

/// A new role, as CreateRole asks for it; [`NewRoleSpec::validated`] checks
/// its shapes.
#[derive(Debug, Clone)]
pub struct NewRoleSpec {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

/// Changes to a role, as UpdateRole asks for them (checked by
/// [`RoleUpdate::validated`]); `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct RoleUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
    /// The names of the fields changed, for the audit trail.
    pub fields: Vec<String>,
}

impl NewRoleSpec {
    /// The role with its fields' shapes checked and normalized (a trimmed
    /// description, permissions without duplicates), each named as
    /// CreateRole names it.
    pub fn validated(self) -> Result<Self, AppError> {
        Ok(Self {
            name: validate::role_name("name", &self.name)?,
            description: validate::text("description", &self.description)?,
            permissions: validate::permissions("permissions", &self.permissions)?,
        })
    }
}

impl RoleUpdate {
    /// The changes with their fields' shapes checked and normalized, each
    /// named as UpdateRole names it (`role.name`), in the order `fields`
    /// names them.
    pub fn validated(mut self) -> Result<Self, AppError> {
        let mut order = ["name", "description", "permissions"];
        order.sort_by_key(|f| {
            self.fields
                .iter()
                .position(|p| p == f)
                .unwrap_or(usize::MAX)
        });
        for field in order {
            match field {
                "name" => {
                    if let Some(name) = &self.name {
                        self.name = Some(validate::role_name("role.name", name)?);
                    }
                }
                "description" => {
                    if let Some(description) = &self.description {
                        self.description = Some(validate::text("role.description", description)?);
                    }
                }
                _ => {
                    if let Some(permissions) = &self.permissions {
                        self.permissions =
                            Some(validate::permissions("role.permissions", permissions)?);
                    }
                }
            }
        }
        Ok(self)
    }
}

/// A role held by a user.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The assignment row.
    pub assignment: UserRoleRow,
    /// The role.
    pub role: RoleRow,
}

/// The role service.
#[derive(Clone)]
pub struct Roles {
    pool: DbPool,
}

impl Roles {
    /// Roles in `pool`'s database.
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// Creates a role; the caller must hold every permission it grants.
    pub async fn create(&self, actor: &Actor, spec: NewRoleSpec) -> Result<RoleRow, AppError> {
        let spec = spec.validated()?;
        ensure_may_grant(&actor.caller, &spec.permissions)?;
        db::transaction(&self.pool, "roles.create", async |conn| {
            let now = store::now();
            let role = roles::insert(
                conn,
                &NewRole {
                    id: Uuid::now_v7(),
                    name: &spec.name,
                    description: &spec.description,
                    permissions: json!(spec.permissions),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            let event = AuditEvent::success(
                AuditAction::CreateRole,
                Some(actor.caller.user_id),
                format!("roles/{}", role.id),
            )
            .with_details(json!({ "name": role.name, "permissions": spec.permissions }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(role)
        })
        .await
    }

    /// One role by id or name.
    pub async fn get(&self, key: &str) -> Result<RoleRow, AppError> {
        db::with_connection(&self.pool, "roles.get", async |conn| {
            roles::find(conn, key)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("role {key}")))
        })
        .await
    }

    /// Roles by name, one page at a time.
    pub async fn list(&self, page: PageRequest) -> Result<Page<RoleRow>, AppError> {
        let after = page.after.map(|cursor| cursor.key);
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "roles.list", async |conn| {
            Ok(roles::list(conn, after.as_deref(), limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |role| Cursor {
            key: role.name.clone(),
            id: role.id,
        }))
    }

    /// Changes a role; the caller must hold every permission it holds now and
    /// every permission it would hold.
    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        update: RoleUpdate,
    ) -> Result<RoleRow, AppError> {
        let update = update.validated()?;
        if let Some(permissions) = &update.permissions {
            ensure_may_grant(&actor.caller, permissions)?;
        }
        db::transaction(&self.pool, "roles.update", async |conn| {
            // Holders first, then the role: the order account changes lock
            // them in.
            let holders = users::lock_holders_of_role(conn, id).await?;
            let current = roles::find_for_update(conn, &id.to_string())
                .await?
                .ok_or_else(|| AppError::NotFound(format!("role {id}")))?;
            ensure_covers(
                &actor.caller,
                &current.permission_list(),
                &format!("role {}", current.name),
            )?;
            let narrows = update.permissions.as_ref().is_some_and(|new| {
                current
                    .permission_list()
                    .iter()
                    .any(|held| !new.contains(held))
            });
            if narrows {
                // Taking permissions from a role acts on everyone holding it.
                ensure_covers_holders(actor, &holders)?;
            }
            if current.name == ADMIN_ROLE {
                if update.name.as_deref().is_some_and(|n| n != ADMIN_ROLE) {
                    return Err(AppError::FailedPrecondition(
                        "the built-in admin role cannot be renamed".into(),
                    ));
                }
                if update
                    .permissions
                    .as_ref()
                    .is_some_and(|p| !p.iter().any(|p| p == ALL_PERMISSIONS))
                {
                    return Err(AppError::FailedPrecondition(
                        "the built-in admin role must keep *:*".into(),
                    ));
                }
            }
            let updated = roles::update(
                conn,
                id,
                &RoleChanges {
                    name: update.name.clone(),
                    description: update.description.clone(),
                    permissions: update.permissions.as_ref().map(|p| json!(p)),
                    updated_at: Some(store::now()),
                },
            )
            .await?
            .ok_or_else(|| AppError::NotFound(format!("role {id}")))?;
            let event = AuditEvent::success(
                AuditAction::UpdateRole,
                Some(actor.caller.user_id),
                format!("roles/{id}"),
            )
            .with_details(json!({
                "fields": update.fields,
                "permissions": updated.permission_list(),
            }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(updated)
        })
        .await
    }

    /// Deletes a role and its assignments; the caller must hold every
    /// permission it holds.
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), AppError> {
        db::transaction(&self.pool, "roles.delete", async |conn| {
            let holders = users::lock_holders_of_role(conn, id).await?;
            let role = roles::find_for_update(conn, &id.to_string())
                .await?
                .ok_or_else(|| AppError::NotFound(format!("role {id}")))?;
            ensure_covers(
                &actor.caller,
                &role.permission_list(),
                &format!("role {}", role.name),
            )?;
            // Deleting a role takes it from everyone holding it.
            ensure_covers_holders(actor, &holders)?;
            if role.name == ADMIN_ROLE {
                return Err(AppError::FailedPrecondition(
                    "the built-in admin role cannot be deleted".into(),
                ));
            }
            roles::delete(conn, id).await?;
            let event = AuditEvent::success(
                AuditAction::DeleteRole,
                Some(actor.caller.user_id),
                format!("roles/{id}"),
            )
            .with_details(json!({ "name": role.name }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(())
        })
        .await
    }

    /// Gives a role to a user; the caller must hold every permission of the
    /// role. Assigning a role the user holds returns the existing assignment.
    pub async fn assign(
        &self,
        actor: &Actor,
        user_id: Uuid,
        role_key: &str,
    ) -> Result<Assignment, AppError> {
        db::transaction(&self.pool, "roles.assign", async |conn| {
            users::find_for_update(conn, user_id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("user {user_id}")))?;
            let role = find_shared(conn, role_key).await?;
            ensure_may_grant(&actor.caller, &role.permission_list())?;
            let assignment = roles::assign(
                conn,
                &UserRoleRow {
                    id: Uuid::now_v7(),
                    user_id,
                    role_id: role.id,
                    assigned_at: store::now(),
                    assigned_by: Some(actor.caller.user_id),
                },
            )
            .await?;
            let event = AuditEvent::success(
                AuditAction::AssignRole,
                Some(actor.caller.user_id),
                format!("users/{user_id}/roles/{}", role.id),
            )
            .with_details(json!({ "role": role.name }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(Assignment { assignment, role })
        })
        .await
    }

    /// Takes a role from a user; the caller must hold every permission of
    /// the role and of the user.
    pub async fn unassign(
        &self,
        actor: &Actor,
        user_id: Uuid,
        role_key: &str,
    ) -> Result<(), AppError> {
        db::transaction(&self.pool, "roles.unassign", async |conn| {
            serialize_admin_changes(conn).await?;
            users::find_for_update(conn, user_id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("user {user_id}")))?;
            let role = find_shared(conn, role_key).await?;
            ensure_covers(
                &actor.caller,
                &role.permission_list(),
                &format!("role {}", role.name),
            )?;
            let held = users::held_permissions_locked(conn, user_id).await?;
            ensure_covers(&actor.caller, &held, &format!("user {user_id}"))?;
            if role.name == ADMIN_ROLE {
                ensure_not_last_admin(conn, user_id).await?;
            }
            if !roles::unassign(conn, user_id, role.id).await? {
                return Err(AppError::NotFound(format!(
                    "assignment of role {} to user {user_id}",
                    role.name
                )));
            }
            let event = AuditEvent::success(
                AuditAction::UnassignRole,
                Some(actor.caller.user_id),
                format!("users/{user_id}/roles/{}", role.id),
            )
            .with_details(json!({ "role": role.name }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(())
        })
        .await
    }

    /// The roles a user holds, by name.
    pub async fn of_user(&self, user_id: Uuid) -> Result<Vec<Assignment>, AppError> {
        db::with_connection(&self.pool, "roles.of_user", async |conn| {
            if users::find(conn, user_id).await?.is_none() {
                return Err(AppError::NotFound(format!("user {user_id}")));
            }
            Ok(roles::of_user(conn, user_id)
                .await?
                .into_iter()
                .map(|(assignment, role)| Assignment { assignment, role })
                .collect())
        })
        .await
    }
}

/// Refuses unless the caller holds every permission of every account in
/// `holders`.
fn ensure_covers_holders(actor: &Actor, holders: &[(Uuid, Vec<String>)]) -> Result<(), AppError> {
    for (holder, permissions) in holders {
        ensure_covers(
            &actor.caller,
            permissions,
            &format!("user {holder}, who holds this role,"),
        )?;
    }
    Ok(())
}

/// A role by id or name, share-locked: it cannot change until the
/// transaction ends.
async fn find_shared(
    conn: &mut diesel_async::AsyncPgConnection,
    key: &str,
) -> Result<RoleRow, AppError> {
    roles::find_shared(conn, key)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("role {key}")))
}
