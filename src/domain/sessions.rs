//! Self-service identity (`AuthService`): logging in, refresh-token
//! rotation, logging out, one's own password and sessions.
//!
//! A session is one chain of refresh tokens. It ends when revoked, when its
//! refresh token is not used for the refresh lifetime, or at its absolute
//! lifetime, which refreshing cannot extend. Refresh tokens are stored only
//! as SHA-256 hashes and are single-use: a spent one presented again revokes
//! the whole session (it may have been stolen).

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::NaiveDateTime;
use rand::RngCore as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{
    Actor,
    accounts::{Account, account_of, shown_account},
    api_keys,
    audit::{AuditAction, AuditEvent, AuditTrail, session_resource},
    throttle::{
        AttemptKeys, AttemptOutcome, AttemptSubject, LoginLimits, LoginThrottle, ThrottlePolicy,
        login_fingerprint,
    },
};
use crate::{
    auth::{
        LoginRules,
        caller::Caller,
        callers::{CachedCaller, CallerCache, Credential, Lookup},
        client::ClientInfo,
        passwords::PasswordHasher,
        tokens::{TokenKeys, TokenSubject},
    },
    db::{self, DbPool},
    error::AppError,
    store::{self, models::SessionRow, sessions, users},
};

/// Every failed login answers exactly this, whatever went wrong.
const LOGIN_FAILED: &str = "invalid login or password";

/// What a login or a refresh hands out. Its `Debug` leaves the tokens out.
#[derive(Clone)]
pub struct IssuedTokens {
    /// Signed JWT for `authorization: Bearer`.
    pub access_token: String,
    /// Its lifetime.
    pub access_ttl: Duration,
    /// Opaque single-use refresh token.
    pub refresh_token: String,
    /// When the refresh token expires.
    pub refresh_expires_at: NaiveDateTime,
    /// The account, on login.
    pub account: Option<Account>,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// One of the caller's live sessions.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The row.
    pub session: SessionRow,
    /// Whether it is the session of the calling token.
    pub current: bool,
}

/// How sessions are configured.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// Lifetime of a refresh token: a session idle longer ends.
    pub refresh_ttl: Duration,
    /// Longest a session lives, however often it is refreshed.
    pub max_lifetime: Duration,
}

/// The self-service identity service.
#[derive(Clone)]
pub struct Sessions {
    pool: DbPool,
    tokens: TokenKeys,
    passwords: PasswordHasher,
    throttle: LoginThrottle,
    audit: AuditTrail,
    policy: SessionPolicy,
    callers: CallerCache,
}

/// The throttle's policies for the configured limits: each failure beyond a
/// limit doubles the lock, up to the 15-minute window failures are counted
/// in; a network (an IPv6 /48) may fail 16 times what one client may.
pub fn login_limits(rules: LoginRules) -> LoginLimits {
    let window = Duration::from_secs(15 * 60);
    let policy = |max_failures: i32| ThrottlePolicy {
        max_failures: max_failures.max(1),
        base_lockout: rules.lockout,
        max_lockout: window,
        window,
    };
    LoginLimits {
        per_client_and_account: policy(rules.max_failures),
        per_account: policy(rules.max_failures_per_account),
        per_client: policy(rules.max_failures_per_ip),
        per_network: policy(rules.max_failures_per_ip.saturating_mul(16)),
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

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::days(36_500))
}

impl Sessions {
    /// The service over its collaborators.
    pub fn new(
        pool: DbPool,
        tokens: TokenKeys,
        passwords: PasswordHasher,
        throttle: LoginThrottle,
        audit: AuditTrail,
        policy: SessionPolicy,
    ) -> Self {
        Self {
            pool,
            tokens,
            passwords,
            throttle,
            audit,
            policy,
            callers: CallerCache::disabled(),
        }
    }

    /// The same service answering from `callers` when it can (the server's
    /// per-replica cache, kept by its listener).
    pub fn with_caller_cache(mut self, callers: CallerCache) -> Self {
        self.callers = callers;
        self
    }

    /// The hasher, whose rules decoders check new passwords against.
    pub fn passwords(&self) -> &PasswordHasher {
        &self.passwords
    }

    fn first_expiry(&self, now: NaiveDateTime) -> NaiveDateTime {
        now + chrono_duration(self.policy.refresh_ttl.min(self.policy.max_lifetime))
    }

    /// Exchanges a login (email or username) and password for tokens.
    pub async fn login(
        &self,
        client: &ClientInfo,
        login: &str,
        password: &str,
    ) -> Result<IssuedTokens, AppError> {
        let login = login.trim();
        if login.is_empty() {
            return Err(AppError::invalid("login", "is required"));
        }
        if password.is_empty() {
            return Err(AppError::invalid("password", "is required"));
        }
        // No connection is held across the bcrypt work below: a pool slot
        // per in-flight login would let a burst of logins starve the pool.
        let user = db::with_connection(&self.pool, "sessions.find_login", async |conn| {
            Ok(users::find_by_login(conn, login).await?)
        })
        .await?;
        let subject = match &user {
            Some(user) => AttemptSubject::Account(user.id),
            None => AttemptSubject::UnknownLogin(login.to_owned()),
        };
        // The login as typed is kept only when it names an account: people
        // paste passwords into login fields.
        let login_detail = match &user {
            Some(_) => json!({ "login": login }),
            None => {
                json!({ "login_fingerprint": login_fingerprint(login), "login_length": login.chars().count() })
            }
        };
        let user_id = user.as_ref().map(|u| u.id);
        let failure = |reason: &str| {
            let mut details = login_detail.clone();
            details["reason"] = json!(reason);
            AuditEvent::failure(AuditAction::Login, user_id, "auth/login").with_details(details)
        };
        let keys = AttemptKeys::new(&subject, client);
        let attempt = match self.throttle.admit(keys.clone()).await {
            Ok(attempt) => attempt,
            Err(refusal) => {
                // Keyed by client only: a locked client probing fresh names
                // must not buy itself a row each.
                let sample_key = format!("throttled|{}", client.throttle_bucket());
                self.audit
                    .record_sampled(sample_key, client, &failure("throttled"))
                    .await;
                crate::telemetry::names::login("throttled");
                return Err(refusal);
            }
        };

        let verified = match &user {
            Some(user) => self.passwords.verify(password, &user.password_hash).await?,
            None => {
                self.passwords.verify_dummy(password).await?;
                false
            }
        };
        let user = match user {
            Some(user) if verified && user.is_active => user,
            _ => {
                let event = failure(if verified {
                    "inactive"
                } else {
                    "bad credentials"
                });
                db::transaction(&self.pool, "sessions.login_failed", async |conn| {
                    attempt.record(conn, AttemptOutcome::Failed).await?;
                    AuditTrail::record(conn, client, &event).await
                })
                .await?;
                crate::telemetry::names::login("failure");
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
            ip_address: client.ip_text(),
            expires_at: self.first_expiry(now),
            created_at: now,
            revoked_at: None,
        };
        let event = AuditEvent::success(
            AuditAction::Login,
            Some(user.id),
            session_resource(session.id),
        )
        .with_details(login_detail.clone());
        let account = db::transaction(&self.pool, "sessions.login", async |conn| {
            attempt.record(conn, AttemptOutcome::Succeeded).await?;
            sessions::insert(conn, &session).await?;
            users::touch_last_login(conn, user.id, now).await?;
            AuditTrail::record(conn, client, &event).await?;
            let mut user = user;
            user.last_login = Some(now);
            account_of(conn, user).await
        })
        .await?;
        crate::telemetry::names::login("success");
        Ok(IssuedTokens {
            access_token: self.tokens.issue(TokenSubject {
                user_id: account.user.id,
                session_id: session.id,
            })?,
            access_ttl: self.tokens.access_ttl,
            refresh_token,
            refresh_expires_at: session.expires_at,
            account: Some(account),
        })
    }

    /// Exchanges a refresh token for a new pair; the presented one is spent.
    pub async fn refresh(
        &self,
        client: &ClientInfo,
        refresh_token: &str,
    ) -> Result<IssuedTokens, AppError> {
        if refresh_token.is_empty() {
            return Err(AppError::invalid("refresh_token", "is required"));
        }
        enum Outcome {
            Rotated(SessionRow),
            Reused,
            Unknown,
        }
        let presented = hash_refresh_token(refresh_token);
        let (new_token, new_hash) = new_refresh_token();
        let now = store::now();
        let expiry = now + chrono_duration(self.policy.refresh_ttl);
        let max_lifetime = chrono_duration(self.policy.max_lifetime);
        let outcome = db::transaction(&self.pool, "sessions.refresh", async |conn| {
            if let Some(session) =
                sessions::rotate(conn, &presented, &new_hash, expiry, max_lifetime, now).await?
            {
                let event = AuditEvent::success(
                    AuditAction::Refresh,
                    Some(session.user_id),
                    session_resource(session.id),
                );
                AuditTrail::record(conn, client, &event).await?;
                return Ok(Outcome::Rotated(session));
            }
            if let Some(session) = sessions::session_of_spent_token(conn, &presented).await? {
                // A spent token came back: whoever holds the chain, it may
                // be stolen. End the session for everyone (RFC 9700).
                sessions::revoke(conn, session.id, session.user_id, now).await?;
                let event = AuditEvent::failure(
                    AuditAction::RefreshReuse,
                    Some(session.user_id),
                    session_resource(session.id),
                )
                .with_details(
                    json!({ "reason": "spent refresh token presented; session revoked" }),
                );
                AuditTrail::record(conn, client, &event).await?;
                return Ok(Outcome::Reused);
            }
            Ok(Outcome::Unknown)
        })
        .await?;
        let session = match outcome {
            Outcome::Rotated(session) => session,
            Outcome::Reused => {
                return Err(AppError::Unauthenticated(
                    "invalid or expired refresh token".into(),
                ));
            }
            Outcome::Unknown => {
                // Guessing tokens costs the guesser nothing: sampled.
                let event = AuditEvent::failure(AuditAction::Refresh, None, "auth/refresh")
                    .with_details(json!({ "reason": "unknown, expired or revoked refresh token" }));
                let key = format!("refresh|{}", client.throttle_bucket());
                self.audit.record_sampled(key, client, &event).await;
                return Err(AppError::Unauthenticated(
                    "invalid or expired refresh token".into(),
                ));
            }
        };
        Ok(IssuedTokens {
            access_token: self.tokens.issue(TokenSubject {
                user_id: session.user_id,
                session_id: session.id,
            })?,
            access_ttl: self.tokens.access_ttl,
            refresh_token: new_token,
            refresh_expires_at: session.expires_at,
            account: None,
        })
    }

    /// Ends the caller's session.
    pub async fn logout(&self, actor: &Actor) -> Result<(), AppError> {
        let caller = &actor.caller;
        db::transaction(&self.pool, "sessions.logout", async |conn| {
            sessions::revoke(conn, caller.session_id, caller.user_id, store::now()).await?;
            let event = AuditEvent::success(
                AuditAction::Logout,
                Some(caller.user_id),
                session_resource(caller.session_id),
            );
            AuditTrail::record(conn, &actor.client, &event).await
        })
        .await
    }

    /// The caller's account (from the replica's cache when it holds it).
    pub async fn current_account(&self, actor: &Actor) -> Result<Account, AppError> {
        let id = actor.caller.user_id;
        shown_account(&self.pool, &self.callers, "sessions.current_user", id)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))
    }

    /// Changes the caller's password (the current one is checked, under the
    /// same throttling as logins: a stolen access token must not become a
    /// way to guess it) and ends the caller's other sessions.
    pub async fn change_password(
        &self,
        actor: &Actor,
        current: &str,
        new: &str,
    ) -> Result<(), AppError> {
        if current.is_empty() {
            return Err(AppError::invalid("current_password", "is required"));
        }
        self.passwords.validate("new_password", new)?;
        let caller = &actor.caller;
        let user = db::with_connection(&self.pool, "sessions.find_user", async |conn| {
            users::find(conn, caller.user_id)
                .await?
                .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))
        })
        .await?;
        let keys = AttemptKeys::new(&AttemptSubject::Account(user.id), &actor.client);
        let attempt = self.throttle.admit(keys).await?;
        let verified = self.passwords.verify(current, &user.password_hash).await?;
        let new_hash = if verified {
            Some(self.passwords.hash(new).await?)
        } else {
            None
        };
        db::transaction(&self.pool, "sessions.change_password", async |conn| {
            let now = store::now();
            let outcome = if verified {
                AttemptOutcome::Succeeded
            } else {
                AttemptOutcome::Failed
            };
            attempt.record(conn, outcome).await?;
            let mut event = AuditEvent::failure(
                AuditAction::ChangePassword,
                Some(user.id),
                format!("users/{}", user.id),
            )
            .with_details(json!({ "reason": "wrong current password" }));
            if let Some(hash) = &new_hash {
                users::set_password_hash(conn, user.id, hash, now).await?;
                let revoked =
                    sessions::revoke_all_of_user(conn, user.id, Some(caller.session_id), now)
                        .await?;
                event = AuditEvent::success(
                    AuditAction::ChangePassword,
                    Some(user.id),
                    format!("users/{}", user.id),
                )
                .with_details(json!({ "sessions_revoked": revoked }));
            }
            AuditTrail::record(conn, &actor.client, &event).await
        })
        .await?;
        if new_hash.is_none() {
            return Err(AppError::invalid("current_password", "is not correct"));
        }
        Ok(())
    }

    /// The caller's live sessions, newest first.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<SessionInfo>, AppError> {
        let caller = &actor.caller;
        let rows = db::with_connection(&self.pool, "sessions.list", async |conn| {
            Ok(sessions::list_live(conn, caller.user_id, store::now()).await?)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|session| SessionInfo {
                current: session.id == caller.session_id,
                session,
            })
            .collect())
    }

    /// Ends one of the caller's sessions.
    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> Result<(), AppError> {
        let caller = &actor.caller;
        db::transaction(&self.pool, "sessions.revoke", async |conn| {
            if !sessions::revoke(conn, id, caller.user_id, store::now()).await? {
                return Err(AppError::NotFound(format!("session {id}")));
            }
            let event = AuditEvent::success(
                AuditAction::RevokeSession,
                Some(caller.user_id),
                session_resource(id),
            );
            AuditTrail::record(conn, &actor.client, &event).await
        })
        .await
    }

    /// The caller behind a verified access token, read from the database
    /// (never from the cache: stream re-checks use it too) so that logout,
    /// expiry, deactivation and role changes apply at once on every
    /// replica. UNAUTHENTICATED when the session or the account is no
    /// longer live.
    pub async fn resolve_caller(&self, subject: TokenSubject) -> Result<Caller, AppError> {
        Ok(self.read_caller(subject).await?.caller)
    }

    async fn read_caller(&self, subject: TokenSubject) -> Result<CachedCaller, AppError> {
        let (expires_at, permissions) =
            db::with_connection(&self.pool, "sessions.caller", async |conn| {
                Ok(sessions::caller_permissions(
                    conn,
                    subject.session_id,
                    subject.user_id,
                    store::now(),
                )
                .await?)
            })
            .await?
            .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))?;
        Ok(CachedCaller {
            caller: Caller {
                user_id: subject.user_id,
                session_id: subject.session_id,
                permissions,
                scope: None,
                api_key: None,
            },
            expires_at: Some(expires_at),
            secret_hash: None,
        })
    }

    /// The caller of a bearer credential: an access token (its session
    /// checked) or an API key (checked likewise), from the replica's cache
    /// of callers when it holds them (`auth::callers` says why that is as
    /// current as the database), else from the database.
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller, AppError> {
        if api_keys::is_api_key(bearer) {
            return api_keys::authenticate(&self.pool, &self.callers, bearer).await;
        }
        let subject = self.verify_token(bearer)?;
        self.authenticate_session(subject).await
    }

    /// The caller of a session whose identity was verified otherwise (the
    /// web console's signed cookie): the same lookup as for an access
    /// token, so that logout, revocation, deactivation and role changes
    /// apply to the console as they do to the API.
    pub async fn authenticate_session(&self, subject: TokenSubject) -> Result<Caller, AppError> {
        let credential = Credential::Session(subject.session_id);
        let ticket = match self.callers.lookup(credential, store::now()) {
            // The token is signed: its session belongs to its user, but
            // nothing is lost by checking.
            Lookup::Hit(entry) if entry.caller.user_id == subject.user_id => {
                return Ok(entry.caller);
            }
            Lookup::Hit(_) => None,
            Lookup::Miss(ticket) => ticket,
        };
        let entry = self.read_caller(subject).await?;
        let caller = entry.caller.clone();
        if let Some(ticket) = ticket {
            self.callers.fill(ticket, credential, entry);
        }
        Ok(caller)
    }

    /// The caller of an open stream, now: its session (or key) still live
    /// and its permissions as they are now.
    pub async fn recheck(&self, caller: &Caller) -> Result<Caller, AppError> {
        match caller.api_key {
            Some(key) => api_keys::recheck(&self.pool, key).await?.ok_or_else(|| {
                AppError::Unauthenticated("the API key was revoked or expired".into())
            }),
            None => {
                self.resolve_caller(TokenSubject {
                    user_id: caller.user_id,
                    session_id: caller.session_id,
                })
                .await
            }
        }
    }

    /// Verifies an access token's signature and claims (no database).
    pub fn verify_token(&self, token: &str) -> Result<TokenSubject, AppError> {
        self.tokens.verify(token)
    }

    /// Forgets spent refresh tokens of sessions that ended a while ago.
    pub async fn prune(&self) -> Result<usize, AppError> {
        let before = store::now() - chrono::Duration::days(1);
        db::with_connection(&self.pool, "sessions.prune", async |conn| {
            Ok(sessions::prune_spent_tokens(conn, before).await?)
        })
        .await
    }
}
