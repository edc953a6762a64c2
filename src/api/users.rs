//! `UserService`: accounts, administered by callers holding `users:*`.

use tonic::{Request, Response, Status};

use super::{actor_of, mask_paths, user_message};
use crate::{
    domain::{
        accounts::{AccountChanges, AccountQuery, Accounts, NewAccount},
        validate,
    },
    error::AppError,
    proto::automation_v1::{self as pb, user_service_server::UserService},
    store::pagination::PageRequest,
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

fn decode_new(request: pb::CreateUserRequest) -> Result<NewAccount, AppError> {
    Ok(NewAccount {
        email: validate::email("email", &request.email)?,
        username: validate::username("username", &request.username)?,
        first_name: validate::personal_name("first_name", &request.first_name)?,
        last_name: validate::personal_name("last_name", &request.last_name)?,
        password: request.password,
        roles: request.roles,
    })
}

fn decode_changes(
    request: pb::UpdateUserRequest,
) -> Result<(uuid::Uuid, AccountChanges), AppError> {
    let paths = mask_paths(
        request.update_mask.as_ref(),
        &["email", "username", "first_name", "last_name", "is_active"],
    )?;
    let user = request
        .user
        .as_ref()
        .ok_or_else(|| AppError::invalid("user", "is required"))?;
    let id = validate::id("user.id", &user.id)?;
    let mut changes = AccountChanges {
        fields: paths.iter().map(|p| p.to_string()).collect(),
        ..AccountChanges::default()
    };
    for path in paths {
        match path {
            "email" => changes.email = Some(validate::email("user.email", &user.email)?),
            "username" => {
                changes.username = Some(validate::username("user.username", &user.username)?)
            }
            "first_name" => {
                changes.first_name = Some(validate::personal_name(
                    "user.first_name",
                    &user.first_name,
                )?)
            }
            "last_name" => {
                changes.last_name =
                    Some(validate::personal_name("user.last_name", &user.last_name)?)
            }
            _ => changes.is_active = Some(user.is_active),
        }
    }
    Ok((id, changes))
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let actor = actor_of(&request)?;
        let new = decode_new(request.into_inner())?;
        let account = self.accounts.create(&actor, new).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_message(account)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = validate::id("id", &request.get_ref().id)?;
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
        let text = body.query.trim();
        let query = AccountQuery {
            text: (!text.is_empty()).then(|| text.to_owned()),
            is_active: body.is_active,
        };
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
        let (id, changes) = decode_changes(request.into_inner())?;
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
        let id = validate::id("id", &request.get_ref().id)?;
        self.accounts.delete(&actor, id).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn reset_user_password(
        &self,
        request: Request<pb::ResetUserPasswordRequest>,
    ) -> Result<Response<pb::ResetUserPasswordResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.into_inner();
        let id = validate::id("id", &body.id)?;
        self.accounts
            .reset_password(&actor, id, &body.new_password)
            .await?;
        Ok(Response::new(pb::ResetUserPasswordResponse {}))
    }
}
