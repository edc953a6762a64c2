//! `ApiKey` messages and the requests of `ApiKeyService`.

use uuid::Uuid;

use super::time::{optional_time, timestamp};
use crate::{
    domain::{api_keys::NewApiKey, validate},
    error::AppError,
    proto::automation_v1 as pb,
    store::{api_keys::ApiKeyRow, models::permission_list},
};

/// The wire `ApiKey` of a row (never its hash).
pub fn key_message(row: ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id.to_string(),
        user_id: row.user_id.to_string(),
        name: row.name,
        permissions: permission_list(&row.permissions),
        expire_time: row.expires_at.map(timestamp),
        revoke_time: row.revoked_at.map(timestamp),
        create_time: Some(timestamp(row.created_at)),
        creator: row.created_by.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// An optional user id: empty means the caller.
pub fn optional_user(field: &str, value: &str) -> Result<Option<Uuid>, AppError> {
    if value.is_empty() {
        Ok(None)
    } else {
        validate::id(field, value).map(Some)
    }
}

/// A `CreateApiKeyRequest` as a new key (its shapes are checked by the key
/// service).
pub fn new_api_key(request: pb::CreateApiKeyRequest) -> Result<NewApiKey, AppError> {
    Ok(NewApiKey {
        user_id: optional_user("user_id", &request.user_id)?,
        name: request.name,
        permissions: request.permissions,
        expires_at: optional_time("expire_time", request.expire_time.as_ref())?,
    })
}
