//! `UserService`: accounts, administered by callers holding `users:*`.

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{AuditEntry, auth::full_user, mask_paths, parse_id, user_message};
use crate::{
    auth::caller::{Caller, ClientInfo, caller_of, client_of},
    db,
    error::AppError,
    proto::automation_v1::{self as pb, user_service_server::UserService},
    seed::ADMIN_ROLE,
    server::AppState,
    store::{
        self, audit,
        models::{NewUser, UserRoleRow},
        pagination::{Cursor, page_size},
        roles, sessions, throttle,
        users::{self, UserChanges, UserFilter},
    },
};

/// Handlers of `automation.v1.UserService`.
#[derive(Clone)]
pub struct UserApi {
    state: AppState,
}

impl UserApi {
    /// Handlers over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// Checks an email address: one `@`, a non-empty local part, a dotted domain,
/// no spaces, at most 254 characters.
pub(crate) fn validate_email(field: &str, email: &str) -> Result<(), AppError> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(field, "is not a valid email address"))
    }
}

/// Checks a username: 3 to 64 letters, digits, `.`, `_` or `-`.
pub(crate) fn validate_username(field: &str, username: &str) -> Result<(), AppError> {
    let ok = (3..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            field,
            "must be 3 to 64 letters, digits, '.', '_' or '-'",
        ))
    }
}

fn validate_name(field: &str, name: &str) -> Result<Option<String>, AppError> {
    let name = name.trim();
    if name.chars().count() > 100 {
        return Err(AppError::invalid(field, "must be at most 100 characters"));
    }
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// Refuses when `user_id` is the last active holder of the admin role. Locks
/// the admins' rows so that two concurrent removals cannot both pass.
pub(crate) async fn ensure_not_last_admin(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<(), AppError> {
    let admins = users::lock_active_holders(conn, ADMIN_ROLE).await?;
    if admins.contains(&user_id) && admins.len() == 1 {
        return Err(AppError::FailedPrecondition(
            "this is the last active admin: make another user admin first".into(),
        ));
    }
    Ok(())
}

impl UserApi {
    async fn inner_create(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::CreateUserRequest,
    ) -> Result<pb::User, AppError> {
        let email = request.email.trim();
        validate_email("email", email)?;
        validate_username("username", &request.username)?;
        let first_name = validate_name("first_name", &request.first_name)?;
        let last_name = validate_name("last_name", &request.last_name)?;
        let auth = &self.state.auth;
        auth.passwords
            .validate("password", &request.password, auth.password_min_length)?;

        let wanted_roles = {
            let mut conn = db::connect(&self.state.pool).await?;
            roles::find_by_names(&mut conn, &request.roles).await?
        };
        if let Some(missing) = request
            .roles
            .iter()
            .find(|name| !wanted_roles.iter().any(|r| &r.name == *name))
        {
            return Err(AppError::invalid(
                "roles",
                format!("no role named '{missing}'"),
            ));
        }
        for role in &wanted_roles {
            caller.ensure_holds_all(&role.permission_list())?;
        }
        // Hashed with no connection held: bcrypt is slow on purpose.
        let hash = auth.passwords.hash(&request.password).await?;
        let mut conn = db::connect(&self.state.pool).await?;
        let user = conn
            .transaction::<_, AppError, _>(async |conn| {
                let now = store::now();
                let user = users::insert(
                    conn,
                    &NewUser {
                        id: Uuid::now_v7(),
                        email,
                        username: &request.username,
                        password_hash: &hash,
                        first_name: first_name.as_deref(),
                        last_name: last_name.as_deref(),
                        is_active: true,
                        created_at: now,
                        updated_at: now,
                    },
                )
                .await?;
                for role in &wanted_roles {
                    roles::assign(
                        conn,
                        &UserRoleRow {
                            id: Uuid::now_v7(),
                            user_id: user.id,
                            role_id: role.id,
                            assigned_at: now,
                            assigned_by: Some(caller.user_id),
                        },
                    )
                    .await?;
                }
                let entry = AuditEntry {
                    user_id: Some(caller.user_id),
                    client: &client,
                    action: "users.create",
                    resource: format!("users/{}", user.id),
                    success: true,
                    details: serde_json::json!({
                        "email": user.email, "username": user.username, "roles": request.roles,
                    }),
                };
                audit::insert(conn, &entry.row()).await?;
                Ok(user)
            })
            .await?;
        full_user(&mut conn, user).await
    }

    async fn inner_get(&self, request: pb::GetUserRequest) -> Result<pb::User, AppError> {
        let id = parse_id("id", &request.id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        let user = users::find(&mut conn, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
        full_user(&mut conn, user).await
    }

    async fn inner_list(
        &self,
        request: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse, AppError> {
        let limit = page_size(request.page_size)?;
        let after = match Cursor::decode(&request.page_token)? {
            Some(cursor) => Some((cursor.time()?, cursor.id)),
            None => None,
        };
        let query = request.query.trim();
        let filter = UserFilter {
            query: (!query.is_empty()).then(|| query.to_owned()),
            is_active: request.is_active,
            after,
        };
        let mut conn = db::connect(&self.state.pool).await?;
        let mut rows = users::list(&mut conn, &filter, limit + 1).await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|last| Cursor::at_time(last.created_at, last.id).encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let grants = users::roles_and_permissions(&mut conn, &ids).await?;
        let users = rows
            .into_iter()
            .zip(grants)
            .map(|(row, (_, roles, permissions))| user_message(row, roles, permissions))
            .collect();
        Ok(pb::ListUsersResponse {
            users,
            next_page_token,
        })
    }

    async fn inner_update(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::UpdateUserRequest,
    ) -> Result<pb::User, AppError> {
        let paths = mask_paths(
            request.update_mask.as_ref(),
            &["email", "username", "first_name", "last_name", "is_active"],
        )?;
        let user = request
            .user
            .ok_or_else(|| AppError::invalid("user", "is required"))?;
        let id = parse_id("user.id", &user.id)?;
        let mut changes = UserChanges {
            updated_at: Some(store::now()),
            ..UserChanges::default()
        };
        for path in &paths {
            match *path {
                "email" => {
                    validate_email("user.email", user.email.trim())?;
                    changes.email = Some(user.email.trim().to_owned());
                }
                "username" => {
                    validate_username("user.username", &user.username)?;
                    changes.username = Some(user.username.clone());
                }
                "first_name" => {
                    changes.first_name = Some(validate_name("user.first_name", &user.first_name)?)
                }
                "last_name" => {
                    changes.last_name = Some(validate_name("user.last_name", &user.last_name)?)
                }
                _ => changes.is_active = Some(user.is_active),
            }
        }
        let deactivating = changes.is_active == Some(false);
        let mut conn = db::connect(&self.state.pool).await?;
        let row = conn
            .transaction::<_, AppError, _>(async |conn| {
                if deactivating {
                    ensure_not_last_admin(conn, id).await?;
                }
                let row = users::update(conn, id, &changes)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
                if deactivating {
                    sessions::revoke_all_of_user(conn, id, None, store::now()).await?;
                }
                let entry = AuditEntry {
                    user_id: Some(caller.user_id),
                    client: &client,
                    action: "users.update",
                    resource: format!("users/{id}"),
                    success: true,
                    details: serde_json::json!({ "fields": paths }),
                };
                audit::insert(conn, &entry.row()).await?;
                Ok(row)
            })
            .await?;
        full_user(&mut conn, row).await
    }

    async fn inner_delete(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::DeleteUserRequest,
    ) -> Result<(), AppError> {
        let id = parse_id("id", &request.id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            ensure_not_last_admin(conn, id).await?;
            let target = users::find(conn, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
            // Recorded before the delete, so that a self-deletion's record
            // simply loses its user (ON DELETE SET NULL) like the others.
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "users.delete",
                resource: format!("users/{id}"),
                success: true,
                details: serde_json::json!({ "email": target.email, "username": target.username }),
            };
            audit::insert(conn, &entry.row()).await?;
            users::delete(conn, id).await?;
            Ok(())
        })
        .await
    }

    async fn inner_reset_password(
        &self,
        caller: Caller,
        client: ClientInfo,
        request: pb::ResetUserPasswordRequest,
    ) -> Result<(), AppError> {
        let id = parse_id("id", &request.id)?;
        let auth = &self.state.auth;
        auth.passwords.validate(
            "new_password",
            &request.new_password,
            auth.password_min_length,
        )?;
        let hash = auth.passwords.hash(&request.new_password).await?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let now = store::now();
            if !users::set_password_hash(conn, id, &hash, now).await? {
                return Err(AppError::NotFound(format!("user {id}")));
            }
            let revoked = sessions::revoke_all_of_user(conn, id, None, now).await?;
            // A reset is also how an admin lifts a lockout.
            throttle::clear(conn, &format!("user:{id}")).await?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "users.reset_password",
                resource: format!("users/{id}"),
                success: true,
                details: serde_json::json!({ "sessions_revoked": revoked }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        let user = self
            .inner_create(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::CreateUserResponse { user: Some(user) }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let user = self.inner_get(request.into_inner()).await?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user) }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Ok(Response::new(self.inner_list(request.into_inner()).await?))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        let user = self
            .inner_update(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::UpdateUserResponse { user: Some(user) }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        self.inner_delete(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn reset_user_password(
        &self,
        request: Request<pb::ResetUserPasswordRequest>,
    ) -> Result<Response<pb::ResetUserPasswordResponse>, Status> {
        let (caller, client) = (caller_of(&request)?, client_of(&request));
        self.inner_reset_password(caller, client, request.into_inner())
            .await?;
        Ok(Response::new(pb::ResetUserPasswordResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_usernames_are_checked() {
        assert!(validate_email("email", "a@b.co").is_ok());
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a b@c.d", "a@b@c.d", "a@b.co.",
        ] {
            assert!(validate_email("email", bad).is_err(), "{bad}");
        }
        assert!(validate_username("username", "ops.bot-1").is_ok());
        assert!(validate_username("username", "ab").is_err());
        assert!(validate_username("username", "has space").is_err());
    }
}
