//! The authorization layer: a tower layer in front of every `automation.v1`
//! service. It looks up the RPC's declared rule, verifies the bearer token,
//! reads the caller's live permissions and either lets the call through with
//! a [`Caller`] in its extensions or answers UNAUTHENTICATED /
//! PERMISSION_DENIED itself (and audits the denial). Health and reflection are
//! not `automation.v1` and pass untouched.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderMap;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::{
    caller::{AuditEntry, Caller, ClientInfo},
    policy::{self, AccessRule},
    tokens::TokenKeys,
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{audit, sessions},
};

/// Shared state of the layer.
#[derive(Clone)]
pub struct Authorizer {
    /// The database, for live session and permission checks.
    pub pool: DbPool,
    /// Token verification.
    pub keys: TokenKeys,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

const PACKAGE_PREFIX: &str = "/automation.v1.";

impl Authorizer {
    /// Decides a call. `Ok(None)`: public, no caller.
    async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        client: &ClientInfo,
    ) -> Result<Option<Caller>, AppError> {
        let Some(rule) = policy::rule_for(path) else {
            return Err(AppError::PermissionDenied(
                "this method declares no access rule".into(),
            ));
        };
        if rule == AccessRule::Public {
            return Ok(None);
        }
        let token = bearer_token(headers)?;
        let subject = self.keys.verify(token)?;
        let permissions = {
            let mut conn = db::connect(&self.pool).await?;
            sessions::caller_permissions(&mut conn, subject.session_id, subject.user_id).await?
        }
        .ok_or_else(|| AppError::Unauthenticated("session is no longer valid".into()))?;
        let caller = Caller {
            user_id: subject.user_id,
            session_id: subject.session_id,
            permissions,
        };
        if let AccessRule::Permission(required) = rule
            && !caller.holds(required)
        {
            let denial = AppError::PermissionDenied(format!("missing permission {required}"));
            self.audit_denial(path, Some(caller.user_id), client, &denial)
                .await;
            return Err(denial);
        }
        Ok(Some(caller))
    }

    async fn audit_denial(
        &self,
        path: &str,
        user_id: Option<uuid::Uuid>,
        client: &ClientInfo,
        error: &AppError,
    ) {
        let row = AuditEntry {
            user_id,
            client,
            action: "auth.denied",
            resource: path.trim_start_matches('/').to_owned(),
            success: false,
            details: serde_json::json!({
                "code": format!("{:?}", error.code()),
                "reason": error.to_string(),
            }),
        }
        .row();
        let result = match db::connect(&self.pool).await {
            Ok(mut conn) => audit::insert(&mut conn, &row).await.map_err(AppError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(%error, "could not audit a denied call");
        }
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
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if !path.starts_with(PACKAGE_PREFIX) {
                return inner.call(request).await;
            }
            let client = ClientInfo::from_http(&request, &authorizer.trusted_proxies);
            match authorizer
                .authorize(&path, request.headers(), &client)
                .await
            {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    request.extensions_mut().insert(client);
                    inner.call(request).await
                }
                Err(error) => {
                    if error.code() == tonic::Code::Unauthenticated {
                        authorizer.audit_denial(&path, None, &client, &error).await;
                    }
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}
