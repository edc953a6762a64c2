//! `AuthService`: login, refresh-token rotation and the caller's own sessions.

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::NaiveDateTime;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use rand::{Rng as _, RngCore as _};
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

/// How long an attempt waits for other checks of the same account or IP to
/// finish before it is refused as throttled.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// The throttle keys an attempt counts against.
struct AttemptKeys {
    /// `ip:<address>`.
    ip: String,
    /// `user:<id>`, or `login:<name>` for logins that match no user.
    account: String,
}

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

    /// Admits a password check for both keys of `attempt`, waiting (without
    /// holding a connection) while other checks of the same keys are
    /// running; refuses when either key is locked or the wait runs out.
    async fn admit_attempt(&self, attempt: &AttemptKeys) -> Result<(), AppError> {
        let settings = &self.state.auth;
        let deadline = Instant::now() + ADMISSION_WAIT;
        loop {
            let mut conn = db::connect(&self.state.pool).await?;
            let decision = conn
                .transaction::<_, AppError, _>(async |conn| {
                    let now = store::now();
                    let by_ip =
                        throttle::admit(conn, &attempt.ip, &settings.ip_throttle, now).await?;
                    if by_ip != Admission::Allowed {
                        return Ok(by_ip);
                    }
                    let by_account =
                        throttle::admit(conn, &attempt.account, &settings.account_throttle, now)
                            .await?;
                    if by_account != Admission::Allowed {
                        throttle::release(conn, &attempt.ip, &settings.ip_throttle, now).await?;
                    }
                    Ok(by_account)
                })
                .await?;
            drop(conn);
            match decision {
                Admission::Allowed => return Ok(()),
                Admission::Locked(until) => {
                    return Err(AppError::ResourceExhausted {
                        message: "too many failed attempts".into(),
                        retry_after: (until - store::now()).to_std().unwrap_or_default(),
                    });
                }
                Admission::Busy if Instant::now() >= deadline => {
                    return Err(AppError::ResourceExhausted {
                        message: "too many attempts in progress".into(),
                        retry_after: Duration::from_secs(1),
                    });
                }
                Admission::Busy => {
                    let pause = rand::rng().random_range(20..80);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
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
        let user = {
            let mut conn = db::connect(&self.state.pool).await?;
            users::find_by_login(&mut conn, login).await?
        };
        let attempt = AttemptKeys {
            ip: format!("ip:{}", client.ip),
            account: match &user {
                Some(user) => format!("user:{}", user.id),
                None => format!("login:{}", login.to_lowercase()),
            },
        };
        let failure = |reason: &'static str| AuditEntry {
            user_id: user.as_ref().map(|u| u.id),
            client: &client,
            action: "auth.login",
            resource: "auth/login".into(),
            success: false,
            details: serde_json::json!({ "login": login, "reason": reason }),
        };
        if let Err(refusal) = self.admit_attempt(&attempt).await {
            self.audit_now(failure("throttled")).await?;
            return Err(refusal);
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
        let active = user.as_ref().is_some_and(|u| u.is_active);
        if !verified || !active {
            let reason = if verified {
                "inactive"
            } else {
                "bad credentials"
            };
            let row = failure(reason).row();
            let mut conn = db::connect(&self.state.pool).await?;
            conn.transaction::<_, AppError, _>(async |conn| {
                self.record_attempt(conn, &attempt, verified).await?;
                audit::insert(conn, &row).await?;
                Ok(())
            })
            .await?;
            return Err(AppError::Unauthenticated(LOGIN_FAILED.into()));
        }
        let Some(mut user) = user else {
            return Err(AppError::Unauthenticated(LOGIN_FAILED.into()));
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
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            self.record_attempt(conn, &attempt, true).await?;
            sessions::insert(conn, &session).await?;
            users::touch_last_login(conn, user.id, now).await?;
            audit::insert(conn, &audit_row).await?;
            Ok(())
        })
        .await?;

        let access_token = self.state.auth.tokens.issue(TokenSubject {
            user_id: user.id,
            session_id: session.id,
        })?;
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

    /// Records the outcome of an admitted attempt for both its keys (IP
    /// first, the order `admit_attempt` locks them in).
    async fn record_attempt(
        &self,
        conn: &mut AsyncPgConnection,
        attempt: &AttemptKeys,
        succeeded: bool,
    ) -> Result<(), AppError> {
        let settings = &self.state.auth;
        let now = store::now();
        throttle::record_outcome(
            conn,
            &attempt.ip,
            &settings.ip_throttle,
            succeeded,
            false,
            now,
        )
        .await?;
        throttle::record_outcome(
            conn,
            &attempt.account,
            &settings.account_throttle,
            succeeded,
            true,
            now,
        )
        .await?;
        Ok(())
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
        let user = {
            let mut conn = db::connect(&self.state.pool).await?;
            users::find(&mut conn, caller.user_id)
                .await?
                .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))?
        };
        // A stolen access token must not become a way to guess the password.
        let attempt = AttemptKeys {
            ip: format!("ip:{}", client.ip),
            account: format!("user:{}", user.id),
        };
        self.admit_attempt(&attempt).await?;
        let verified = settings
            .passwords
            .verify(&body.current_password, &user.password_hash)
            .await?;
        let new_hash = if verified {
            Some(settings.passwords.hash(&body.new_password).await?)
        } else {
            None
        };
        let mut conn = db::connect(&self.state.pool).await?;
        conn.transaction::<_, AppError, _>(async |conn| {
            let now = store::now();
            self.record_attempt(conn, &attempt, verified).await?;
            let mut entry = AuditEntry {
                user_id: Some(user.id),
                client: &client,
                action: "auth.change_password",
                resource: format!("users/{}", user.id),
                success: false,
                details: serde_json::json!({ "reason": "wrong current password" }),
            };
            if let Some(hash) = &new_hash {
                users::set_password_hash(conn, user.id, hash, now).await?;
                let revoked =
                    sessions::revoke_all_of_user(conn, user.id, Some(caller.session_id), now)
                        .await?;
                entry.success = true;
                entry.details = serde_json::json!({ "sessions_revoked": revoked });
            }
            audit::insert(conn, &entry.row()).await?;
            Ok(())
        })
        .await?;
        if new_hash.is_none() {
            return Err(AppError::invalid("current_password", "is not correct"));
        }
        Ok(())
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
