//! The authorization layer: a tower layer in front of every `automation.v1`
//! service. It looks up the RPC's declared rule, verifies the bearer token,
//! reads the caller's live permissions and either lets the call through with
//! a [`Caller`] in its extensions or answers UNAUTHENTICATED /
//! PERMISSION_DENIED itself (and audits the denial, sampled: denials cost a
//! caller nothing, so a flood of them must not cost the database a row
//! each). Health and reflection are not `automation.v1` and pass untouched.
//!
//! A call that may change a caller or an account's view (see
//! [`changes_callers`]; a Login only when it succeeds, since only then does
//! it write `lastLogin`) answers only once every replica has applied the
//! change to its caches of callers and accounts (the fence of
//! `auth::callers::listener`), so that the change holds on the next call
//! wherever it lands.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderMap;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::{
    auth::{
        caller::Caller,
        callers::listener::CallerFeed,
        client::{ClientInfo, TrustedProxies},
        policy::{self, AccessRule},
    },
    domain::{
        audit::{AuditAction, AuditEvent, AuditTrail},
        sessions::Sessions,
    },
    error::AppError,
};

/// Shared state of the layer.
#[derive(Clone)]
pub struct Authorizer {
    /// Token verification and the live caller lookup.
    pub sessions: Sessions,
    /// Where denials are recorded.
    pub audit: AuditTrail,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: TrustedProxies,
    /// The replica's cache of callers and its fence.
    pub callers: CallerFeed,
}

const PACKAGE_PREFIX: &str = "/automation.v1.";

/// Self-service of a person's sessions and password: never with an API key
/// (nor key management, which the key service refuses itself).
const KEYLESS_METHODS: &[&str] = &[
    "/automation.v1.AuthService/Logout",
    "/automation.v1.AuthService/ChangePassword",
    "/automation.v1.AuthService/ListSessions",
    "/automation.v1.AuthService/RevokeSession",
];

/// The services whose writes can change what a caller may do: sessions
/// (AuthService), accounts, roles and assignments, API keys.
const IDENTITY_SERVICES: &[&str] = &[
    "/automation.v1.AuthService/",
    "/automation.v1.UserService/",
    "/automation.v1.RoleService/",
    "/automation.v1.ApiKeyService/",
];

/// Whether a call to `path` may change a caller (end a session, deactivate,
/// delete or reset an account, change a role's permissions or who holds
/// it, revoke a key) or what GetUser shows of an account (the replica's
/// cache of accounts): every method of the identity services that is not a
/// read (`Get…`, `List…`) — including Refresh, which revokes a session
/// whose spent token comes back, and Login, which sets the account's
/// `lastLogin`. Creations are included: cheap, rare, and it keeps the rule
/// one line. A new writing RPC of these services is covered without a list
/// to maintain.
fn changes_callers(path: &str) -> bool {
    IDENTITY_SERVICES.iter().any(|service| {
        path.strip_prefix(service)
            .is_some_and(|method| !method.starts_with("Get") && !method.starts_with("List"))
    })
}

/// The Login RPC, which changes an account's view only when it succeeds.
const LOGIN: &str = "/automation.v1.AuthService/Login";

/// Whether a unary call answered OK: tonic puts a refusal's `grpc-status`
/// in the response headers (a trailers-only answer), a success's in the
/// trailers.
fn succeeded<E>(response: &Result<http::Response<Body>, E>) -> bool {
    response.as_ref().is_ok_and(|response| {
        response
            .headers()
            .get("grpc-status")
            .is_none_or(|status| status == "0")
    })
}

impl Authorizer {
    /// Decides a call. `Ok(None)`: public, no caller. A refusal carries the
    /// caller when it was authenticated (a permission denial), so that the
    /// audit row names the account and the key.
    async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Caller>, (AppError, Option<Caller>)> {
        let Some(rule) = policy::rule_for(path) else {
            return Err((
                AppError::Unimplemented(format!(
                    "{} is not a method of this server",
                    path.trim_start_matches('/')
                        .chars()
                        .take(200)
                        .collect::<String>()
                )),
                None,
            ));
        };
        if rule == AccessRule::Public {
            return Ok(None);
        }
        let caller = match bearer_token(headers) {
            Ok(bearer) => self.sessions.authenticate(bearer).await,
            Err(error) => Err(error),
        }
        .map_err(|error| (error, None))?;
        if caller.api_key.is_some() && KEYLESS_METHODS.contains(&path) {
            let error = AppError::PermissionDenied(
                "an API key cannot end sessions or change a password: log in as the account".into(),
            );
            return Err((error, Some(caller)));
        }
        if let AccessRule::Permission(required) = rule
            && !caller.holds(required)
        {
            let error = AppError::PermissionDenied(format!("missing permission {required}"));
            return Err((error, Some(caller)));
        }
        Ok(Some(caller))
    }

    /// Records a denial: the first of its kind per client, method and
    /// reason in each window, then a count.
    async fn audit_denial(
        &self,
        path: &str,
        caller: Option<uuid::Uuid>,
        client: &ClientInfo,
        error: &AppError,
    ) {
        let method = path.trim_start_matches('/');
        let event = AuditEvent::failure(AuditAction::Denied, caller, method).with_details(
            serde_json::json!({
                "code": format!("{:?}", error.code()),
                "reason": error.to_string(),
            }),
        );
        // Anonymous callers are counted by network (an IPv6 /48), so that
        // rotating through addresses does not make each call a first one.
        let who = caller.map_or_else(
            || {
                client
                    .network_bucket()
                    .unwrap_or_else(|| client.throttle_bucket())
            },
            |id| id.to_string(),
        );
        let key = format!("denied|{who}|{method}|{:?}", error.code());
        self.audit.record_sampled(key, client, &event).await;
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, AppError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| AppError::Unauthenticated("missing access token".into()))?
        .to_str()
        .map_err(|_| AppError::Unauthenticated("malformed authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AppError::Unauthenticated("expected 'Bearer <token>'".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AppError::Unauthenticated(
            "expected 'Bearer <token>'".into(),
        ));
    }
    Ok(token.trim())
}

/// Puts [`AuthMiddleware`] in front of a service.
#[derive(Clone)]
pub struct AuthLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthLayer {
    /// A layer deciding with `authorizer`.
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer: Arc::new(authorizer),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for AuthMiddleware<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if !path.starts_with(PACKAGE_PREFIX) {
                return inner.call(request).await;
            }
            let (response, handled) = authorizer.serve(&path, inner, request).await;
            if handled && changes_callers(&path) && (path != LOGIN || succeeded(&response)) {
                // Unary: the handler (and its commit) has run when the
                // response future resolves. Whatever its outcome (a refused
                // refresh may have revoked a session), every replica
                // applies what it wrote before the caller hears back. A
                // Login writes (`lastLogin`) only when it succeeds: a flood
                // of failed, throttled or malformed logins must not cost a
                // fence each.
                authorizer.callers.fence().await;
            }
            response
        })
    }
}

impl Authorizer {
    /// Authorizes the call and passes it on, or answers the refusal; says
    /// whether the handler ran.
    async fn serve<S>(
        &self,
        path: &str,
        mut inner: S,
        mut request: http::Request<Body>,
    ) -> (Result<S::Response, S::Error>, bool)
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send,
        S::Future: Send,
    {
        let mut client = ClientInfo::from_http(&request, &self.trusted_proxies);
        match self.authorize(path, request.headers()).await {
            Ok(caller) => {
                if let Some(caller) = caller {
                    if let Some(key) = caller.api_key {
                        // Every row this call writes names the key, and the
                        // key's use is on the trail: the first call per
                        // window, then a count.
                        client.api_key = Some(key);
                        let event = AuditEvent::success(
                            AuditAction::ApiKeyUsed,
                            Some(caller.user_id),
                            format!("api_keys/{key}"),
                        )
                        .with_details(
                            serde_json::json!({ "method": path.trim_start_matches('/') }),
                        );
                        self.audit
                            .record_sampled(format!("api_key|{key}"), &client, &event)
                            .await;
                    }
                    request.extensions_mut().insert(caller);
                }
                request.extensions_mut().insert(client);
                (inner.call(request).await, true)
            }
            Err((error, denied)) => {
                if matches!(
                    error.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) {
                    client.api_key = denied.as_ref().and_then(|caller| caller.api_key);
                    let caller = denied
                        .map(|caller| caller.user_id)
                        .or_else(|| caller_hint(self, request.headers()));
                    self.audit_denial(path, caller, &client, &error).await;
                }
                (Ok(Status::from(error).into_http()), false)
            }
        }
    }
}

/// The account a denied call came from, when its token verified (a
/// permission denial); `None` for anonymous or forged callers.
fn caller_hint(authorizer: &Authorizer, headers: &HeaderMap) -> Option<uuid::Uuid> {
    let token = bearer_token(headers).ok()?;
    authorizer
        .sessions
        .verify_token(token)
        .ok()
        .map(|s| s.user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_write_and_only_those_waits_for_the_replicas() {
        let fenced: Vec<&str> = policy::METHOD_ACCESS
            .iter()
            .map(|(path, _)| *path)
            .filter(|path| changes_callers(path))
            .collect();
        for path in [
            "/automation.v1.AuthService/Login",
            "/automation.v1.AuthService/Logout",
            "/automation.v1.AuthService/Refresh",
            "/automation.v1.AuthService/ChangePassword",
            "/automation.v1.AuthService/RevokeSession",
            "/automation.v1.UserService/UpdateUser",
            "/automation.v1.UserService/DeleteUser",
            "/automation.v1.UserService/ResetUserPassword",
            "/automation.v1.RoleService/UpdateRole",
            "/automation.v1.RoleService/DeleteRole",
            "/automation.v1.RoleService/AssignRole",
            "/automation.v1.RoleService/UnassignRole",
            "/automation.v1.ApiKeyService/RevokeApiKey",
        ] {
            assert!(fenced.contains(&path), "{path}");
        }
        for path in &fenced {
            assert!(!path.contains("/Get") && !path.contains("/List"), "{path}");
            assert!(
                !path.contains("JobService") && !path.contains("ModuleService"),
                "{path}"
            );
        }
    }
}
