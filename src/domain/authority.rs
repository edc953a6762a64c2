//! Who may act on whom. One rule against escalation, everywhere: a caller may
//! grant, change, remove or act on something — a role, another account —
//! only if it holds every permission that thing holds. And the platform
//! always keeps one active administrator.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::{auth::caller::Caller, error::AppError, store::users};

/// Name of the built-in all-powerful role.
pub const ADMIN_ROLE: &str = "admin";

/// The permission the admin role always keeps.
pub const ALL_PERMISSIONS: &str = "*:*";

/// Refuses unless `caller` holds every permission in `held_by_target`;
/// `target` names the thing in the refusal (e.g. `user <id>`, `role ops`).
pub fn ensure_covers(
    caller: &Caller,
    held_by_target: &[String],
    target: &str,
) -> Result<(), AppError> {
    match caller.first_missing(held_by_target) {
        None => Ok(()),
        Some(missing) => Err(AppError::PermissionDenied(format!(
            "{target} holds '{missing}', which you do not hold: only a caller holding every \
             permission of {target} may do this"
        ))),
    }
}

/// Refuses unless `caller` holds every permission it would hand out.
pub fn ensure_may_grant(caller: &Caller, granted: &[String]) -> Result<(), AppError> {
    match caller.first_missing(granted) {
        None => Ok(()),
        Some(missing) => Err(AppError::PermissionDenied(format!(
            "you cannot grant '{missing}': you do not hold it yourself"
        ))),
    }
}

/// Serialises changes that could remove an active administrator; call it
/// first in their transaction, before any row lock, then
/// [`ensure_not_last_admin`] once the target is known.
pub async fn serialize_admin_changes(conn: &mut AsyncPgConnection) -> Result<(), AppError> {
    users::serialize_admin_changes(conn).await?;
    Ok(())
}

/// Refuses when `user_id` is the last active holder of the admin role. The
/// transaction must hold [`serialize_admin_changes`], so that two
/// concurrent removals of the last two admins cannot both pass.
pub async fn ensure_not_last_admin(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<(), AppError> {
    let admins = users::active_holders(conn, ADMIN_ROLE).await?;
    if admins.contains(&user_id) && admins.len() == 1 {
        return Err(AppError::FailedPrecondition(
            "this is the last active admin: make another user admin first".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(permissions: &[&str]) -> Caller {
        Caller {
            scope: None,
            api_key: None,
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn perms(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn acting_on_someone_needs_all_they_hold() {
        let helpdesk = caller(&["users:read", "users:write"]);
        assert!(ensure_covers(&helpdesk, &perms(&["*:*"]), "user x").is_err());
        assert!(ensure_covers(&helpdesk, &perms(&["users:read"]), "user x").is_ok());
        assert!(ensure_covers(&helpdesk, &perms(&["users:*"]), "user x").is_err());
        assert!(ensure_covers(&helpdesk, &[], "user x").is_ok());
        let admin = caller(&["*:*"]);
        assert!(ensure_covers(&admin, &perms(&["*:*", "jobs:write"]), "user x").is_ok());
        let jobs = caller(&["jobs:*"]);
        assert!(ensure_covers(&jobs, &perms(&["jobs:read", "jobs:*"]), "role r").is_ok());
        assert!(ensure_may_grant(&jobs, &perms(&["users:read"])).is_err());
    }
}
