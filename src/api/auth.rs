//! `AuthService`: login, refresh-token rotation and the caller's own sessions.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::NaiveDateTime;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{AuditEntry, parse_id, timestamp, user_message};
use crate::{
    auth::{
        caller::{ClientInfo, caller_of, client_of},
        tokens::TokenSubject,
    },
    db,
    error::AppError,
    proto::automation_v1::{self as pb, auth_service_server::AuthService},
    server::AppState,
    store::{
        self, audit,
        models::{SessionRow, UserRow},
        sessions,
        throttle::{self, Admission},
        users,
    },
};

/// Every failed login answers exactly this, whatever went wrong.
const LOGIN_FAILED: &str = "invalid login or password";

/// Handlers of `automation.v1.AuthService`.
#[derive(Clone)]
pub struct AuthApi {
    state: AppState,
}

impl AuthApi {
    /// Handlers over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// A fresh refresh token and the hash that is stored instead of it.
fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The user with roles and effective permissions.
pub(crate) async fn full_user(
    conn: &mut AsyncPgConnection,
    row: UserRow,
) -> Result<pb::User, AppError> {
    let (_, roles, permissions) = users::roles_and_permissions(conn, &[row.id])
        .await?
        .pop()
        .unwrap_or_default();
    Ok(user_message(row, roles, permissions))
}

impl AuthApi {
    fn refresh_expiry(&self, now: NaiveDateTime) -> NaiveDateTime {
        now + chrono::Duration::from_std(self.state.auth.refresh_ttl)
            .unwrap_or(chrono::Duration::days(7))
    }

    async fn audit_now(&self, entry: AuditEntry<'_>) -> Result<(), AppError> {
        let mut conn = db::connect(&self.state.pool).await?;
        audit::insert(&mut conn, &entry.row()).await?;
        Ok(())
    }

    /// Counts the attempt against the client IP and the account; refuses when
    /// either is locked.
    async fn admit_login(
        &self,
        conn: &mut AsyncPgConnection,
        account_key: &str,
        ip_key: &str,
    ) -> Result<Admission, AppError> {
        let settings = self.state.auth.clone();
        let (account_key, ip_key) = (account_key.to_owned(), ip_key.to_owned());
        conn.transaction::<_, AppError, _>(async move |conn| {
            let now = store::now();
            let by_ip = throttle::admit(conn, &ip_key, &settings.ip_throttle, now).await?;
            if let Admission::Locked(_) = by_ip {
                return Ok(by_ip);
            }
            Ok(throttle::admit(conn, &account_key, &settings.account_throttle, now).await?)
        })
        .await
    }

    async fn inner_login(
        &self,
        client: ClientInfo,
        request: pb::LoginRequest,
    ) -> Result<pb::LoginResponse, AppError> {
        let login = request.login.trim();
        if login.is_empty() {
            return Err(AppError::invalid("login", "is required"));
        }
        if request.password.is_empty() {
            return Err(AppError::invalid("password", "is required"));
        }
        // No connection is held across the bcrypt work below: a pool slot
        // per in-flight login would let a burst of logins starve the pool.
        let (user, admission, account_key, ip_key) = {
            let mut conn = db::connect(&self.state.pool).await?;
            let user = users::find_by_login(&mut conn, login).await?;
            let account_key = match &user {
                Some(user) => format!("user:{}", user.id),
                None => format!("login:{}", login.to_lowercase()),
            };
            let ip_key = format!("ip:{}", client.ip);
            let admission = self.admit_login(&mut conn, &account_key, &ip_key).await?;
            (user, admission, account_key, ip_key)
        };
        let known_user_id = user.as_ref().map(|u| u.id);
        let failure = |reason: &'static str| AuditEntry {
            user_id: known_user_id,
            client: &client,
            action: "auth.login",
            resource: "auth/login".into(),
            success: false,
            details: serde_json::json!({ "login": login, "reason": reason }),
        };

        if let Admission::Locked(until) = admission {
            self.audit_now(failure("throttled")).await?;
            let wait = (until - store::now()).to_std().unwrap_or_default();
            return Err(AppError::ResourceExhausted {
                message: "too many failed logins".into(),
                retry_after: wait,
            });
        }

        let hasher = &self.state.auth.passwords;
        let verified = match &user {
            Some(user) => {
                hasher
                    .verify(&request.password, &user.password_hash)
                    .await?
            }
            None => {
                hasher.verify_dummy(&request.password).await?;
                false
            }
        };
        let user = match user {
            Some(user) if verified && user.is_active => user,
            Some(user) if verified => {
                let _ = user;
                self.audit_now(failure("inactive")).await?;
                return Err(AppError::Unauthenticated(LOGIN_FAILED.into()));
            }
            _ => {
                self.audit_now(failure("bad credentials")).await?;
                return Err(AppError::Unauthenticated(LOGIN_FAILED.into()));
            }
        };

        let (refresh_token, refresh_hash) = new_refresh_token();
        let now = store::now();
        let session = SessionRow {
            id: Uuid::now_v7(),
            user_id: user.id,
            refresh_token_hash: refresh_hash,
            user_agent: client.user_agent.clone(),
            ip_address: client.ip.clone(),
            expires_at: self.refresh_expiry(now),
            created_at: now,
            revoked_at: None,
        };
        let audit_row = AuditEntry {
            user_id: Some(user.id),
            client: &client,
            action: "auth.login",
            resource: format!("sessions/{}", session.id),
            success: true,
            details: serde_json::json!({ "login": login }),
        }
        .row();
        let user_id = user.id;
        let session_row = session.clone();
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async move |conn| {
            throttle::clear(conn, &account_key).await?;
            throttle::forgive_one(conn, &ip_key).await?;
            sessions::insert(conn, &session_row).await?;
            users::touch_last_login(conn, user_id, now).await?;
            audit::insert(conn, &audit_row).await?;
            Ok(())
        })
        .await?;

        let access_token = self.state.auth.tokens.issue(TokenSubject {
            user_id: user.id,
            session_id: session.id,
        })?;
        let mut user = user;
        user.last_login = Some(now);
        Ok(pb::LoginResponse {
            access_token,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: self.state.auth.tokens.access_ttl.as_secs() as i64,
            user: Some(full_user(&mut conn, user).await?),
            refresh_expire_time: Some(timestamp(session.expires_at)),
        })
    }

    async fn inner_refresh(
        &self,
        client: ClientInfo,
        request: pb::RefreshRequest,
    ) -> Result<pb::RefreshResponse, AppError> {
        if request.refresh_token.is_empty() {
            return Err(AppError::invalid("refresh_token", "is required"));
        }
        enum Outcome {
            Rotated(SessionRow),
            Reused,
            Unknown,
        }
        let presented = hash_refresh_token(&request.refresh_token);
        let (new_token, new_hash) = new_refresh_token();
        let now = store::now();
        let expiry = self.refresh_expiry(now);
        let mut conn = db::connect(&self.state.pool).await?;
        let client_ref = &client;
        let outcome = conn
            .transaction::<_, AppError, _>(async move |conn| {
                if let Some(session) =
                    sessions::rotate(conn, &presented, &new_hash, expiry, now).await?
                {
                    let entry = AuditEntry {
                        user_id: Some(session.user_id),
                        client: client_ref,
                        action: "auth.refresh",
                        resource: format!("sessions/{}", session.id),
                        success: true,
                        details: serde_json::json!({}),
                    };
                    audit::insert(conn, &entry.row()).await?;
                    return Ok(Outcome::Rotated(session));
                }
                if let Some(session) = sessions::session_of_spent_token(conn, &presented).await? {
                    // A spent token came back: whoever holds the chain, it may
                    // be stolen. End the session for everyone (RFC 9700).
                    sessions::revoke(conn, session.id, session.user_id, now).await?;
                    let entry = AuditEntry {
                        user_id: Some(session.user_id),
                        client: client_ref,
                        action: "auth.refresh_reuse",
                        resource: format!("sessions/{}", session.id),
                        success: false,
                        details: serde_json::json!({ "reason": "spent refresh token presented; session revoked" }),
                    };
                    audit::insert(conn, &entry.row()).await?;
                    return Ok(Outcome::Reused);
                }
                let entry = AuditEntry {
                    user_id: None,
                    client: client_ref,
                    action: "auth.refresh",
                    resource: "auth/refresh".into(),
                    success: false,
                    details: serde_json::json!({ "reason": "unknown, expired or revoked refresh token" }),
                };
                audit::insert(conn, &entry.row()).await?;
                Ok(Outcome::Unknown)
            })
            .await?;
        let session = match outcome {
            Outcome::Rotated(session) => session,
            Outcome::Reused | Outcome::Unknown => {
                return Err(AppError::Unauthenticated(
                    "invalid or expired refresh token".into(),
                ));
            }
        };
        let access_token = self.state.auth.tokens.issue(TokenSubject {
            user_id: session.user_id,
            session_id: session.id,
        })?;
        Ok(pb::RefreshResponse {
            access_token,
            refresh_token: new_token,
            token_type: "Bearer".into(),
            expires_in: self.state.auth.tokens.access_ttl.as_secs() as i64,
            refresh_expire_time: Some(timestamp(expiry)),
        })
    }

    async fn inner_logout(&self, request: Request<pb::LogoutRequest>) -> Result<(), AppError> {
        let caller = caller_of(&request)?;
        let client = client_of(&request);
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            sessions::revoke(conn, caller.session_id, caller.user_id, store::now()).await?;
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "auth.logout",
                resource: format!("sessions/{}", caller.session_id),
                success: true,
                details: serde_json::json!({}),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }

    async fn inner_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<pb::User, AppError> {
        let caller = caller_of(&request)?;
        let mut conn = db::connect(&self.state.pool).await?;
        let user = users::find(&mut conn, caller.user_id)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))?;
        full_user(&mut conn, user).await
    }

    async fn inner_change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<(), AppError> {
        let caller = caller_of(&request)?;
        let client = client_of(&request);
        let body = request.get_ref();
        let settings = &self.state.auth;
        if body.current_password.is_empty() {
            return Err(AppError::invalid("current_password", "is required"));
        }
        settings.passwords.validate(
            "new_password",
            &body.new_password,
            settings.password_min_length,
        )?;
        let mut conn = db::connect(&self.state.pool).await?;
        let user = users::find(&mut conn, caller.user_id)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))?;
        let account_key = format!("user:{}", user.id);
        let ip_key = format!("ip:{}", client.ip);
        if let Admission::Locked(until) = self.admit_login(&mut conn, &account_key, &ip_key).await?
        {
            return Err(AppError::ResourceExhausted {
                message: "too many wrong passwords".into(),
                retry_after: (until - store::now()).to_std().unwrap_or_default(),
            });
        }
        if !settings
            .passwords
            .verify(&body.current_password, &user.password_hash)
            .await?
        {
            self.audit_now(AuditEntry {
                user_id: Some(user.id),
                client: &client,
                action: "auth.change_password",
                resource: format!("users/{}", user.id),
                success: false,
                details: serde_json::json!({ "reason": "wrong current password" }),
            })
            .await?;
            return Err(AppError::invalid("current_password", "is not correct"));
        }
        let new_hash = settings.passwords.hash(&body.new_password).await?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let now = store::now();
            throttle::clear(conn, &account_key).await?;
            users::set_password_hash(conn, user.id, &new_hash, now).await?;
            let revoked =
                sessions::revoke_all_of_user(conn, user.id, Some(caller.session_id), now).await?;
            let entry = AuditEntry {
                user_id: Some(user.id),
                client: &client,
                action: "auth.change_password",
                resource: format!("users/{}", user.id),
                success: true,
                details: serde_json::json!({ "sessions_revoked": revoked }),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }

    async fn inner_list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<pb::ListSessionsResponse, AppError> {
        let caller = caller_of(&request)?;
        let mut conn = db::connect(&self.state.pool).await?;
        let rows = sessions::list_live(&mut conn, caller.user_id, store::now()).await?;
        Ok(pb::ListSessionsResponse {
            sessions: rows
                .into_iter()
                .map(|s| pb::Session {
                    current: s.id == caller.session_id,
                    id: s.id.to_string(),
                    user_agent: s.user_agent,
                    ip_address: s.ip_address,
                    create_time: Some(timestamp(s.created_at)),
                    expire_time: Some(timestamp(s.expires_at)),
                })
                .collect(),
        })
    }

    async fn inner_revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<(), AppError> {
        let caller = caller_of(&request)?;
        let client = client_of(&request);
        let id = parse_id("id", &request.get_ref().id)?;
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            if !sessions::revoke(conn, id, caller.user_id, store::now()).await? {
                return Err(AppError::NotFound(format!("session {id}")));
            }
            let entry = AuditEntry {
                user_id: Some(caller.user_id),
                client: &client,
                action: "auth.revoke_session",
                resource: format!("sessions/{id}"),
                success: true,
                details: serde_json::json!({}),
            };
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = client_of(&request);
        Ok(Response::new(
            self.inner_login(client, request.into_inner()).await?,
        ))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let client = client_of(&request);
        Ok(Response::new(
            self.inner_refresh(client, request.into_inner()).await?,
        ))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.inner_logout(request).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let user = self.inner_current_user(request).await?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(user),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        self.inner_change_password(request).await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Ok(Response::new(self.inner_list_sessions(request).await?))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        self.inner_revoke_session(request).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }
}
