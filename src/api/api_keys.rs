//! `ApiKeyService`: credentials for machines. Handlers decode, call the key
//! service ([`crate::domain::api_keys`]) and encode.

use tonic::{Request, Response, Status};

use super::{actor_of, naive_time, timestamp};
use crate::{
    domain::{
        api_keys::{ApiKeys, NewApiKey},
        validate,
    },
    proto::automation_v1::{self as pb, api_key_service_server::ApiKeyService},
    store::{api_keys::ApiKeyRow, models::permission_list, pagination::PageRequest},
};

/// Handlers of `automation.v1.ApiKeyService`.
#[derive(Clone)]
pub struct ApiKeyApi {
    keys: ApiKeys,
}

impl ApiKeyApi {
    /// Handlers over the key service.
    pub fn new(keys: ApiKeys) -> Self {
        Self { keys }
    }
}

/// The wire `ApiKey` of a row (never its hash).
fn key_message(row: ApiKeyRow) -> pb::ApiKey {
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

fn optional_user(field: &str, value: &str) -> Result<Option<uuid::Uuid>, crate::error::AppError> {
    if value.is_empty() {
        Ok(None)
    } else {
        validate::id(field, value).map(Some)
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let new = NewApiKey {
            user_id: optional_user("user_id", &request.user_id)?,
            name: request.name,
            permissions: request.permissions,
            expires_at: request
                .expire_time
                .as_ref()
                .map(|t| naive_time("expire_time", t))
                .transpose()?,
        };
        let (key, secret) = self.keys.create(&actor, new).await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(key_message(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let actor = actor_of(&request)?;
        let request = request.into_inner();
        let user = optional_user("user_id", &request.user_id)?;
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let page = self.keys.list(&actor, user, page).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: page.items.into_iter().map(key_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        let key = self.keys.revoke(&actor, id).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(key_message(key)),
        }))
    }
}
