//! `ApiKeyService`: credentials for machines. Handlers decode, call the key
//! service ([`crate::domain::api_keys`]) and encode.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    domain::api_keys::ApiKeys,
    proto::automation_v1::{self as pb, api_key_service_server::ApiKeyService},
    store::pagination::PageRequest,
    wire::{
        self,
        api_keys::{key_message, new_api_key, optional_user},
    },
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

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let actor = actor_of(&request)?;
        let new = new_api_key(request.into_inner())?;
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
        let id = wire::id("id", &request.get_ref().id)?;
        let key = self.keys.revoke(&actor, id).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(key_message(key)),
        }))
    }
}
