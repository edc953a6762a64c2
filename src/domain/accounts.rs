//! Accounts administered by others (`UserService`): creating, changing,
//! deleting and resetting the password of users.
//!
//! The rule that guards them: a caller may act on another account only if it
//! holds every permission that account holds (so a helpdesk role holding
//! `users:write` cannot reset an administrator's password and become one).
//! Self-service — one's own password, one's own sessions — is `AuthService`'s.

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    authority::{ensure_covers, ensure_may_grant, ensure_not_last_admin, serialize_admin_changes},
    throttle::LoginThrottle,
    validate,
};
use crate::{
    auth::{
        callers::{CallerCache, Lookup},
        passwords::PasswordHasher,
    },
    db::{self, DbPool},
    error::AppError,
    store::{
        self, api_keys,
        models::{NewUser, UserRoleRow, UserRow},
        pagination::{Cursor, PageRequest},
        roles, sessions,
        users::{self, UserChanges, UserFilter},
    },
};

pub use crate::store::users::Account;

/// A new account, as CreateUser asks for it; [`NewAccount::validated`]
/// checks its shapes. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct NewAccount {
    pub email: String,
    pub username: String,
    /// The password in clear; only its hash is stored.
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Names of roles to assign at once.
    pub roles: Vec<String>,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("email", &self.email)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Changes to an account, as UpdateUser asks for them (checked by
/// [`AccountChanges::validated`]); `None` leaves one alone.
#[derive(Debug, Clone, Default)]
pub struct AccountChanges {
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub is_active: Option<bool>,
    /// The names of the fields changed, for the audit trail.
    pub fields: Vec<String>,
}

impl NewAccount {
    /// The account with its fields' shapes checked and normalized (trimmed;
    /// a blank name is none), each named as CreateUser names it. The
    /// password is checked apart, by the hasher's rules.
    pub fn validated(self) -> Result<Self, AppError> {
        let name = |field: &str, value: Option<String>| match value {
            Some(value) => validate::personal_name(field, &value),
            None => Ok(None),
        };
        Ok(Self {
            email: validate::email("email", &self.email)?,
            username: validate::username("username", &self.username)?,
            first_name: name("first_name", self.first_name)?,
            last_name: name("last_name", self.last_name)?,
            ..self
        })
    }
}

impl AccountChanges {
    /// The changes with their fields' shapes checked and normalized, each
    /// named as UpdateUser names it (`user.email`), in the order `fields`
    /// names them.
    pub fn validated(mut self) -> Result<Self, AppError> {
        let mut order = ["email", "username", "first_name", "last_name"];
        order.sort_by_key(|f| {
            self.fields
                .iter()
                .position(|p| p == f)
                .unwrap_or(usize::MAX)
        });
        let name = |field: &str, value: &Option<String>| {
            validate::personal_name(field, value.as_deref().unwrap_or_default())
        };
        for field in order {
            match field {
                "email" => {
                    if let Some(email) = &self.email {
                        self.email = Some(validate::email("user.email", email)?);
                    }
                }
                "username" => {
                    if let Some(username) = &self.username {
                        self.username = Some(validate::username("user.username", username)?);
                    }
                }
                "first_name" => {
                    if let Some(first) = &self.first_name {
                        self.first_name = Some(name("user.first_name", first)?);
                    }
                }
                _ => {
                    if let Some(last) = &self.last_name {
                        self.last_name = Some(name("user.last_name", last)?);
                    }
                }
            }
        }
        Ok(self)
    }
}

/// Filters of [`Accounts::list`].
#[derive(Debug, Clone, Default)]
pub struct AccountQuery {
    /// Substring of email, username, first or last name, any case.
    pub text: Option<String>,
    /// Only active or only inactive accounts.
    pub is_active: Option<bool>,
}

/// The account administration service.
#[derive(Clone)]
pub struct Accounts {
    pool: DbPool,
    passwords: PasswordHasher,
    callers: CallerCache,
}

impl Accounts {
    /// Accounts in `pool`'s database, hashing with `passwords`.
    pub fn new(pool: DbPool, passwords: PasswordHasher) -> Self {
        Self {
            pool,
            passwords,
            callers: CallerCache::disabled(),
        }
    }

    /// The same service answering [`Accounts::get`] from the replica's
    /// cache when it can (`auth::callers` says why that is as current as
    /// the database).
    pub fn with_caller_cache(mut self, callers: CallerCache) -> Self {
        self.callers = callers;
        self
    }

    /// The hasher, whose rules decoders check new passwords against.
    pub fn passwords(&self) -> &PasswordHasher {
        &self.passwords
    }

    /// Creates an account holding `new.roles`; the caller must hold every
    /// permission of each.
    pub async fn create(&self, actor: &Actor, new: NewAccount) -> Result<Account, AppError> {
        let new = new.validated()?;
        self.passwords.validate("password", &new.password)?;
        // Hashed with no connection held: bcrypt is slow on purpose.
        let hash = self.passwords.hash(&new.password).await?;
        let user = db::transaction(&self.pool, "accounts.create", async |conn| {
            let wanted = roles::find_by_names(conn, &new.roles).await?;
            if let Some(missing) = new
                .roles
                .iter()
                .find(|name| !wanted.iter().any(|r| &r.name == *name))
            {
                return Err(AppError::invalid(
                    "roles",
                    format!("no role named '{missing}'"),
                ));
            }
            for role in &wanted {
                ensure_may_grant(&actor.caller, &role.permission_list())?;
            }
            let now = store::now();
            let user = users::insert(
                conn,
                &NewUser {
                    id: Uuid::now_v7(),
                    email: &new.email,
                    username: &new.username,
                    password_hash: &hash,
                    first_name: new.first_name.as_deref(),
                    last_name: new.last_name.as_deref(),
                    is_active: true,
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            for role in &wanted {
                roles::assign(
                    conn,
                    &UserRoleRow {
                        id: Uuid::now_v7(),
                        user_id: user.id,
                        role_id: role.id,
                        assigned_at: now,
                        assigned_by: Some(actor.caller.user_id),
                    },
                )
                .await?;
            }
            let event = AuditEvent::success(
                AuditAction::CreateUser,
                Some(actor.caller.user_id),
                format!("users/{}", user.id),
            )
            .with_details(json!({
                "email": user.email, "username": user.username, "roles": new.roles,
            }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(user)
        })
        .await?;
        self.with_roles(user).await
    }

    /// One account.
    pub async fn get(&self, id: Uuid) -> Result<Account, AppError> {
        shown_account(&self.pool, &self.callers, "accounts.get", id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))
    }

    /// Accounts by creation time, one page at a time.
    pub async fn list(
        &self,
        query: AccountQuery,
        page: PageRequest,
    ) -> Result<Page<Account>, AppError> {
        let filter = UserFilter {
            query: query.text,
            is_active: query.is_active,
            after: page.after_time()?,
        };
        let limit = page.limit;
        db::with_connection(&self.pool, "accounts.list", async |conn| {
            let rows = users::list(conn, &filter, limit + 1).await?;
            let page = Page::from_rows(rows, limit, |row| Cursor::at_time(row.created_at, row.id));
            let ids: Vec<Uuid> = page.items.iter().map(|r| r.id).collect();
            let grants = users::roles_and_permissions(conn, &ids).await?;
            Ok(Page {
                items: page
                    .items
                    .into_iter()
                    .zip(grants)
                    .map(|(user, (_, roles, permissions))| Account {
                        user,
                        roles,
                        permissions,
                    })
                    .collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    /// Changes an account. Deactivating one ends its sessions; the last
    /// active admin stays active.
    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        changes: AccountChanges,
    ) -> Result<Account, AppError> {
        let changes = changes.validated()?;
        let deactivating = changes.is_active == Some(false);
        let user = db::transaction(&self.pool, "accounts.update", async |conn| {
            if deactivating {
                serialize_admin_changes(conn).await?;
            }
            lock_target(conn, actor, id).await?;
            if deactivating {
                ensure_not_last_admin(conn, id).await?;
            }
            let now = store::now();
            let row = users::update(
                conn,
                id,
                &UserChanges {
                    email: changes.email.clone(),
                    username: changes.username.clone(),
                    first_name: changes.first_name.clone(),
                    last_name: changes.last_name.clone(),
                    is_active: changes.is_active,
                    updated_at: Some(now),
                },
            )
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
            if deactivating {
                sessions::revoke_all_of_user(conn, id, None, now).await?;
                // Revoked, not only filtered out: reactivating the account
                // must not bring its old keys back.
                api_keys::revoke_all_of(conn, id, now).await?;
            }
            let event = AuditEvent::success(
                AuditAction::UpdateUser,
                Some(actor.caller.user_id),
                format!("users/{id}"),
            )
            .with_details(json!({ "fields": changes.fields }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(row)
        })
        .await?;
        self.with_roles(user).await
    }

    /// Deletes an account with its sessions and role assignments; its audit
    /// rows stay, with the user cleared.
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), AppError> {
        db::transaction(&self.pool, "accounts.delete", async |conn| {
            serialize_admin_changes(conn).await?;
            let target = lock_target(conn, actor, id).await?;
            ensure_not_last_admin(conn, id).await?;
            // Recorded before the delete, so that a self-deletion's record
            // simply loses its user (ON DELETE SET NULL) like the others.
            let event = AuditEvent::success(
                AuditAction::DeleteUser,
                Some(actor.caller.user_id),
                format!("users/{id}"),
            )
            .with_details(json!({ "email": target.email, "username": target.username }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            // Its own keys go with it; those it made for others stop too.
            api_keys::revoke_all_of(conn, id, store::now()).await?;
            users::delete(conn, id).await?;
            Ok(())
        })
        .await
    }

    /// Sets another account's password, ends its sessions and lifts any
    /// login lock on it. One's own password changes through
    /// `AuthService/ChangePassword`, which asks for the current one.
    pub async fn reset_password(
        &self,
        actor: &Actor,
        id: Uuid,
        password: &str,
    ) -> Result<(), AppError> {
        if id == actor.caller.user_id {
            return Err(AppError::FailedPrecondition(
                "use AuthService/ChangePassword for your own password: it asks for the current \
                 one, so a stolen token cannot take over the account"
                    .into(),
            ));
        }
        self.passwords.validate("new_password", password)?;
        let hash = self.passwords.hash(password).await?;
        db::transaction(&self.pool, "accounts.reset_password", async |conn| {
            // Login counters before the account, the order logins lock them.
            LoginThrottle::forget_account(conn, id).await?;
            lock_target(conn, actor, id).await?;
            let now = store::now();
            users::set_password_hash(conn, id, &hash, now).await?;
            let revoked = sessions::revoke_all_of_user(conn, id, None, now).await?;
            // A reset is how an admin takes an account back: its API keys
            // (and those it made for others) stop as well.
            let keys_revoked = api_keys::revoke_all_of(conn, id, now).await?;
            let event = AuditEvent::success(
                AuditAction::ResetUserPassword,
                Some(actor.caller.user_id),
                format!("users/{id}"),
            )
            .with_details(json!({ "sessions_revoked": revoked, "api_keys_revoked": keys_revoked }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(())
        })
        .await
    }

    async fn with_roles(&self, user: UserRow) -> Result<Account, AppError> {
        db::with_connection(&self.pool, "accounts.roles", async |conn| {
            account_of(conn, user).await
        })
        .await
    }
}

/// Account `id` as the reads that show one return it (GetUser,
/// GetCurrentUser), from the replica's cache when it holds it, else read
/// (timed as `operation`) and cached if no change raced the read. Never with
/// its password hash: the view is shown, and cached, without it.
pub async fn shown_account(
    pool: &DbPool,
    cache: &CallerCache,
    operation: &'static str,
    id: Uuid,
) -> Result<Option<Account>, AppError> {
    let ticket = match cache.lookup_account(id) {
        Lookup::Hit(account) => return Ok(Some(Account::clone(&account))),
        Lookup::Miss(ticket) => ticket,
    };
    let account = db::with_connection(pool, operation, async |conn| {
        Ok(users::find_with_grants(conn, id).await?)
    })
    .await?;
    Ok(account.map(|mut account| {
        account.user.password_hash = String::new();
        if let Some(ticket) = ticket {
            cache.fill_account(ticket, Arc::new(account.clone()));
        }
        account
    }))
}

/// The account with its roles and permissions.
pub async fn account_of(conn: &mut AsyncPgConnection, user: UserRow) -> Result<Account, AppError> {
    let (_, roles, permissions) = users::roles_and_permissions(conn, &[user.id])
        .await?
        .pop()
        .unwrap_or_default();
    Ok(Account {
        user,
        roles,
        permissions,
    })
}

/// Locks the account `id` and checks that the actor may act on it: it must
/// exist and hold nothing the actor does not.
async fn lock_target(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: Uuid,
) -> Result<UserRow, AppError> {
    let target = users::find_for_update(conn, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
    let held = users::held_permissions_locked(conn, id).await?;
    ensure_covers(&actor.caller, &held, &format!("user {id}"))?;
    Ok(target)
}
