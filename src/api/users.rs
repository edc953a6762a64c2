//! `UserService`: accounts, administered by callers holding `users:*`.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    domain::accounts::Accounts,
    proto::automation_v1::{self as pb, user_service_server::UserService},
    store::pagination::PageRequest,
    wire::{
        self,
        users::{account_changes, account_query, new_account, user_message},
    },
};

/// Handlers of `automation.v1.UserService`.
#[derive(Clone)]
pub struct UserApi {
    accounts: Accounts,
}

impl UserApi {
    /// Handlers over the account service.
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let actor = actor_of(&request)?;
        let new = new_account(request.into_inner());
        let account = self.accounts.create(&actor, new).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_message(account)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = wire::id("id", &request.get_ref().id)?;
        let account = self.accounts.get(id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_message(account)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let body = request.into_inner();
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let query = account_query(&body);
        let page = self.accounts.list(query, page).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.into_iter().map(user_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let actor = actor_of(&request)?;
        let (id, changes) = account_changes(request.into_inner())?;
        let account = self.accounts.update(&actor, id, changes).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user_message(account)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = wire::id("id", &request.get_ref().id)?;
        self.accounts.delete(&actor, id).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn reset_user_password(
        &self,
        request: Request<pb::ResetUserPasswordRequest>,
    ) -> Result<Response<pb::ResetUserPasswordResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.into_inner();
        let id = wire::id("id", &body.id)?;
        self.accounts
            .reset_password(&actor, id, &body.new_password)
            .await?;
        Ok(Response::new(pb::ResetUserPasswordResponse {}))
    }
}
