//! API keys: credentials for machines. A key is `acp_<id>_<secret>`; only a
//! SHA-256 of the secret is stored. Every call with a key resolves it
//! (revoked, expired, owner inactive: refused) and acts with the
//! intersection of the key's scope and its owner's roles at that moment,
//! from the replica's cache of callers when it holds the key (as current as
//! the database: see `auth::callers`), else from the database.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;
use rand::RngCore as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{
    Actor, Page,
    audit::{AuditAction, AuditEvent, AuditTrail},
    authority::{ensure_covers, ensure_may_grant},
    validate,
};
use crate::{
    auth::{
        caller::Caller,
        callers::{CachedCaller, CallerCache, Credential, Lookup},
        policy::grants,
    },
    db::{self, DbPool},
    error::AppError,
    store::{
        self,
        api_keys::{self as rows, ApiKeyRow},
        pagination::{Cursor, PageRequest},
        users,
    },
};

/// What every key starts with, so that it is never mistaken for a JWT (and
/// secret scanners can find leaked ones).
pub const KEY_PREFIX: &str = "acp_";

/// A key to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    /// Whose; `None`: the caller's own.
    pub user_id: Option<Uuid>,
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<NaiveDateTime>,
}

/// The key management service.
#[derive(Clone)]
pub struct ApiKeys {
    pool: DbPool,
}

fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a presented key into its id and secret; `None` when it is not
/// shaped like a key.
fn parse_key(key: &str) -> Option<(Uuid, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id = Uuid::try_parse(id).ok()?;
    (secret.len() == 43).then_some((id, secret))
}

/// Whether a bearer credential is an API key rather than a JWT.
pub fn is_api_key(bearer: &str) -> bool {
    bearer.starts_with(KEY_PREFIX)
}

/// The caller a presented key acts as, now.
pub async fn authenticate(
    pool: &DbPool,
    callers: &CallerCache,
    key: &str,
) -> Result<Caller, AppError> {
    let refused = || AppError::Unauthenticated("invalid, expired or revoked API key".into());
    let (id, secret) = parse_key(key).ok_or_else(refused)?;
    let credential = Credential::ApiKey(id);
    let ticket = match callers.lookup(credential, store::now()) {
        Lookup::Hit(entry) => {
            // Digests of a secret the caller chose: comparing them leaks
            // nothing about the stored secret.
            return match entry.secret_hash {
                Some(hash) if hash == secret_hash(secret) => {
                    crate::telemetry::names::api_key_used();
                    Ok(entry.caller)
                }
                _ => Err(refused()),
            };
        }
        Lookup::Miss(ticket) => ticket,
    };
    let entry = resolve(pool, id).await?.ok_or_else(refused)?;
    if entry.secret_hash.as_deref() != Some(secret_hash(secret).as_slice()) {
        return Err(refused());
    }
    crate::telemetry::names::api_key_used();
    let caller = entry.caller.clone();
    if let Some(ticket) = ticket {
        callers.fill(ticket, credential, entry);
    }
    Ok(caller)
}

/// Re-checks the key of a caller (an open stream's) in the database: `None`
/// when it no longer works.
pub async fn recheck(pool: &DbPool, id: Uuid) -> Result<Option<Caller>, AppError> {
    Ok(resolve(pool, id).await?.map(|entry| entry.caller))
}

async fn resolve(pool: &DbPool, id: Uuid) -> Result<Option<CachedCaller>, AppError> {
    let now = store::now();
    let resolved = db::with_connection(pool, "api_keys.resolve", async |conn| {
        Ok(rows::resolve(conn, id, now).await?)
    })
    .await?;
    Ok(resolved.map(|(key, held)| CachedCaller {
        caller: Caller {
            user_id: key.user_id,
            session_id: key.id,
            permissions: held,
            scope: Some(store::models::permission_list(&key.permissions)),
            api_key: Some(key.id),
        },
        expires_at: key.expires_at,
        secret_hash: Some(key.secret_hash),
    }))
}

impl ApiKeys {
    /// Keys in `pool`'s database.
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// Creates a key; returns it and its secret, which is never stored.
    pub async fn create(
        &self,
        actor: &Actor,
        new: NewApiKey,
    ) -> Result<(ApiKeyRow, String), AppError> {
        refuse_keys(actor)?;
        let name = validate::text("name", &new.name)?;
        validate::required("name", &name)?;
        let permissions = validate::permissions("permissions", &new.permissions)?;
        if permissions.is_empty() {
            return Err(AppError::invalid(
                "permissions",
                "is required: the permissions the key may use (e.g. jobs:execute)",
            ));
        }
        ensure_may_grant(&actor.caller, &permissions)?;
        let now = store::now();
        if new.expires_at.is_some_and(|at| at <= now) {
            return Err(AppError::invalid("expire_time", "must be in the future"));
        }
        let owner = new.user_id.unwrap_or(actor.caller.user_id);
        let id = Uuid::now_v7();
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let key = format!("{KEY_PREFIX}{}_{secret}", id.simple());
        let row = ApiKeyRow {
            id,
            user_id: owner,
            name,
            secret_hash: secret_hash(&secret),
            permissions: json!(permissions),
            expires_at: new.expires_at,
            revoked_at: None,
            created_by: Some(actor.caller.user_id),
            created_at: now,
        };
        let row = db::transaction(&self.pool, "api_keys.create", async |conn| {
            ensure_may_manage(conn, actor, owner).await?;
            if owner != actor.caller.user_id {
                // A key never holds what its owner does not: it would gain
                // it silently when the owner is promoted.
                let held = users::held_permissions_locked(conn, owner).await?;
                if let Some(missing) = permissions.iter().find(|p| !grants(&held, p)) {
                    return Err(AppError::PermissionDenied(format!(
                        "user {owner} does not hold '{missing}': a key cannot hold more than \
                         its owner"
                    )));
                }
            }
            let row = rows::insert(conn, &row).await?;
            record(conn, actor, AuditAction::CreateApiKey, &row).await?;
            Ok(row)
        })
        .await?;
        Ok((row, key))
    }

    /// Keys of an account (the caller's own when `user_id` is `None`).
    pub async fn list(
        &self,
        actor: &Actor,
        user_id: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<ApiKeyRow>, AppError> {
        refuse_keys(actor)?;
        let owner = user_id.unwrap_or(actor.caller.user_id);
        let before = page.after_time()?;
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "api_keys.list", async |conn| {
            if owner != actor.caller.user_id {
                ensure_may_manage(conn, actor, owner).await?;
            }
            Ok(rows::list(conn, owner, before, limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |key| {
            Cursor::at_time(key.created_at, key.id)
        }))
    }

    /// A key's name (the console's Workers page names the key a worker
    /// connected with); `None` when it is gone.
    pub async fn name_of(&self, id: Uuid) -> Result<Option<String>, AppError> {
        db::with_connection(&self.pool, "api_keys.name", async |conn| {
            Ok(rows::find(conn, id).await?.map(|key| key.name))
        })
        .await
    }

    /// Revokes a key; revoking it again changes nothing.
    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> Result<ApiKeyRow, AppError> {
        refuse_keys(actor)?;
        db::transaction(&self.pool, "api_keys.revoke", async |conn| {
            let key = rows::find_for_update(conn, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("API key {id}")))?;
            if key.user_id != actor.caller.user_id {
                // NOT_FOUND rather than PERMISSION_DENIED would hide nothing:
                // ids are unguessable and listing needs the same rule.
                ensure_may_manage(conn, actor, key.user_id).await?;
            }
            if key.revoked_at.is_some() {
                return Ok(key);
            }
            let key = rows::revoke(conn, id, store::now()).await?;
            record(conn, actor, AuditAction::RevokeApiKey, &key).await?;
            Ok(key)
        })
        .await
    }
}

/// A key cannot mint, list or revoke keys: a leaked key must not be able to
/// copy itself into another key that survives its revocation. (What a key's
/// permissions let it create — an account, with `users:write` — does outlive
/// it; the README's API key section says so, and the audit trail names the
/// key that made it.)
fn refuse_keys(actor: &Actor) -> Result<(), AppError> {
    if actor.caller.api_key.is_some() {
        return Err(AppError::PermissionDenied(
            "API keys cannot manage API keys: log in as the account".into(),
        ));
    }
    Ok(())
}

/// Keys of another account: `users:write` and every permission it holds.
async fn ensure_may_manage(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    owner: Uuid,
) -> Result<(), AppError> {
    if owner == actor.caller.user_id {
        return Ok(());
    }
    if !actor.caller.holds("users:write") {
        return Err(AppError::PermissionDenied(
            "managing another account's API keys needs users:write".into(),
        ));
    }
    users::find_for_update(conn, owner)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("user {owner}")))?;
    let held = users::held_permissions_locked(conn, owner).await?;
    ensure_covers(&actor.caller, &held, &format!("user {owner}"))
}

async fn record(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: AuditAction,
    key: &ApiKeyRow,
) -> Result<(), AppError> {
    let event = AuditEvent::success(
        action,
        Some(actor.caller.user_id),
        format!("api_keys/{}", key.id),
    )
    .with_details(json!({
        "owner": key.user_id,
        "name": key.name,
        "permissions": key.permissions,
        "expires_at": key.expires_at,
    }));
    AuditTrail::record(conn, &actor.client, &event).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_parse() {
        let id = Uuid::now_v7();
        let secret = "a".repeat(43);
        let key = format!("{KEY_PREFIX}{}_{secret}", id.simple());
        assert_eq!(parse_key(&key), Some((id, secret.as_str())));
        assert!(is_api_key(&key));
        assert!(!is_api_key("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
        for bad in [
            "acp_".to_owned(),
            format!("acp_{}", id.simple()),
            format!("acp_{}_short", id.simple()),
            format!("acp_not-a-uuid_{secret}"),
            format!("xyz_{}_{secret}", id.simple()),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }
}
