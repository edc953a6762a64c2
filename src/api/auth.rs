//! `AuthService`: login, refresh-token rotation and the caller's own
//! account and sessions.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    auth::caller::client_of,
    domain::sessions::Sessions,
    proto::automation_v1::{self as pb, auth_service_server::AuthService},
    wire::{
        self,
        sessions::{TOKEN_TYPE, expires_in, session_message},
        time::timestamp,
        users::user_message,
    },
};

/// Handlers of `automation.v1.AuthService`.
#[derive(Clone)]
pub struct AuthApi {
    sessions: Sessions,
}

impl AuthApi {
    /// Handlers over the session service.
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = client_of(&request);
        let body = request.into_inner();
        let tokens = self
            .sessions
            .login(&client, &body.login, &body.password)
            .await?;
        Ok(Response::new(pb::LoginResponse {
            expires_in: expires_in(&tokens),
            token_type: TOKEN_TYPE.into(),
            refresh_expire_time: Some(timestamp(tokens.refresh_expires_at)),
            user: tokens.account.map(user_message),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let client = client_of(&request);
        let tokens = self
            .sessions
            .refresh(&client, &request.get_ref().refresh_token)
            .await?;
        Ok(Response::new(pb::RefreshResponse {
            expires_in: expires_in(&tokens),
            token_type: TOKEN_TYPE.into(),
            refresh_expire_time: Some(timestamp(tokens.refresh_expires_at)),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.sessions.logout(&actor_of(&request)?).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let account = self.sessions.current_account(&actor_of(&request)?).await?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(user_message(account)),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.into_inner();
        self.sessions
            .change_password(&actor, &body.current_password, &body.new_password)
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let sessions = self.sessions.list(&actor_of(&request)?).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.into_iter().map(session_message).collect(),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = wire::id("id", &request.get_ref().id)?;
        self.sessions.revoke(&actor, id).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }
}
