//! Signing in to the console, and who each request comes from.
//!
//! A console login is a real session (`Sessions::login`: the same throttle,
//! the same audit rows as the Login RPC). The browser keeps only a cookie
//! naming the session and the account, signed with the console's key
//! (`HttpOnly`, `SameSite=Strict`, `Path=/console`, `Secure` when TLS is
//! configured); the refresh token is never handed out. Every request
//! resolves the caller from that session through the lookup the gRPC
//! authorization layer uses, so logout (here or by RPC), revocation and
//! deactivation end the console session on its next request.
//!
//! Every form carries a CSRF token: a signature of the session id. A POST
//! without it, with a wrong one, or by someone lacking the RPC's permission
//! is refused with 403 and audited as a denial, like a refused RPC.

use std::net::SocketAddr;

use axum::{
    Form,
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

pub use super::viewer::Viewer;
use super::{Console, ConsoleSlot, Ctx, rpc, views};
use crate::{
    auth::{
        client::ClientInfo,
        policy::{self, AccessRule},
        tokens::TokenSubject,
    },
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent},
    },
    error::AppError,
};

/// The session cookie.
pub const COOKIE: &str = "console_session";
/// The login form's double-submit cookie (there is no session to sign yet).
pub const LOGIN_COOKIE: &str = "console_login";

impl Viewer {
    /// Lets a read through, or answers 403 (audited as a denial).
    pub async fn require(&self, ctx: &Ctx, rpc: &str) -> Result<(), Response> {
        if self.may(rpc) {
            return Ok(());
        }
        Err(self.deny(ctx, rpc, &missing(rpc)).await)
    }

    /// Lets an action through when its CSRF token is right and the caller
    /// may call `rpc`; otherwise answers 403, audited as a denial.
    pub async fn authorize(&self, ctx: &Ctx, csrf: &str, rpc: &str) -> Result<(), Response> {
        if !ctx
            .key
            .verify(&csrf_message(self.caller().session_id), csrf)
        {
            return Err(self.deny(ctx, rpc, "missing or wrong CSRF token").await);
        }
        self.require(ctx, rpc).await
    }

    async fn deny(&self, ctx: &Ctx, rpc: &str, reason: &str) -> Response {
        let method = rpc.trim_start_matches('/');
        let event = AuditEvent::failure(AuditAction::Denied, Some(self.caller().user_id), method)
            .with_details(serde_json::json!({
                "code": "PermissionDenied",
                "reason": reason,
                "via": "console",
            }));
        let key = format!("denied|{}|{method}|console|{reason}", self.caller().user_id);
        ctx.identity
            .audit
            .record_sampled(key, &self.actor.client, &event)
            .await;
        views::message_page(StatusCode::FORBIDDEN, "Not allowed", reason)
    }
}

fn missing(rpc: &str) -> String {
    match policy::rule_for(rpc) {
        Some(AccessRule::Permission(required)) => format!("missing permission {required}"),
        _ => "not allowed".into(),
    }
}

fn csrf_message(session: Uuid) -> String {
    format!("csrf|{session}")
}

fn cookie_message(subject: &TokenSubject) -> String {
    format!("session|{}|{}", subject.session_id, subject.user_id)
}

/// The cookie value for a session: `<session>.<user>.<signature>`.
fn cookie_value(ctx: &Ctx, subject: &TokenSubject) -> String {
    format!(
        "{}.{}.{}",
        subject.session_id.simple(),
        subject.user_id.simple(),
        ctx.key.sign(&cookie_message(subject))
    )
}

fn parse_cookie_value(ctx: &Ctx, value: &str) -> Option<TokenSubject> {
    let mut parts = value.split('.');
    let session_id = Uuid::try_parse(parts.next()?).ok()?;
    let user_id = Uuid::try_parse(parts.next()?).ok()?;
    let signature = parts.next()?;
    let subject = TokenSubject {
        user_id,
        session_id,
    };
    (parts.next().is_none() && ctx.key.verify(&cookie_message(&subject), signature))
        .then_some(subject)
}

/// The value of cookie `name` in the request's headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn set_cookie(ctx: &Ctx, name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let secure = if ctx.settings.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let age = max_age.map_or_else(String::new, |age| format!("; Max-Age={age}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The client of a request, as the gRPC layer reads it (peer address,
/// `x-forwarded-for` from trusted proxies, user agent).
pub fn client_of(ctx: &Ctx, parts: &Parts) -> ClientInfo {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    ClientInfo::from_parts(peer, &parts.headers, &ctx.trusted_proxies)
}

/// The client of a request, as an extractor.
pub struct Client(pub ClientInfo);

impl<S> FromRequestParts<S> for Client
where
    ConsoleSlot: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Console(ctx) = Console::from_request_parts(parts, state).await?;
        Ok(Self(client_of(&ctx, parts)))
    }
}

impl<S> FromRequestParts<S> for Viewer
where
    ConsoleSlot: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    /// The signed-in person, or a redirect to the login page (a signed-out
    /// browser, an ended session, a deactivated account).
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Console(ctx) = Console::from_request_parts(parts, state).await?;
        let to_login = || Redirect::to("/console/login").into_response();
        let subject = cookie(&parts.headers, COOKIE)
            .and_then(|value| parse_cookie_value(&ctx, value))
            .ok_or_else(to_login)?;
        let caller = match ctx.identity.sessions.authenticate_session(subject).await {
            Ok(caller) => caller,
            Err(AppError::Unauthenticated(_)) => return Err(to_login()),
            Err(error) => return Err(views::error_response(&error)),
        };
        let client = client_of(&ctx, parts);
        let csrf = ctx.key.sign(&csrf_message(caller.session_id));
        Ok(Self {
            actor: Actor { caller, client },
            csrf,
        })
    }
}

/// `GET /console/login`
pub async fn login_page(Console(ctx): Console, headers: HeaderMap) -> Response {
    login_form(&ctx, &headers, StatusCode::OK, None)
}

/// The login form, with a fresh double-submit token unless the browser
/// already holds one.
fn login_form(ctx: &Ctx, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let token = cookie(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let mut response = (status, views::login::page(&token, error)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(ctx, LOGIN_COOKIE, &token, None),
    );
    response
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/login`: a real login (throttled and audited like the
/// Login RPC); on success the session cookie and a redirect to the
/// Overview.
pub async fn login(
    Console(ctx): Console,
    Client(client): Client,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || expected != form.csrf {
        return login_form(
            &ctx,
            &headers,
            StatusCode::FORBIDDEN,
            Some("The form expired: please sign in again."),
        );
    }
    let issued = ctx
        .identity
        .sessions
        .login(&client, &form.login, &form.password)
        .await;
    // A successful login sets the account's `lastLogin`, which every
    // replica's cache of accounts must have dropped before anyone hears
    // back (as the Login RPC does). A failed one writes nothing to wait
    // for: a flood of them must not cost a fence each.
    if issued.is_ok() {
        ctx.callers.fence().await;
    }
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => {
            let status = views::status_of(&error);
            return login_form(&ctx, &headers, status, Some(&error.to_string()));
        }
    };
    let subject = match ctx.identity.sessions.verify_token(&issued.access_token) {
        Ok(subject) => subject,
        Err(error) => return views::error_response(&error),
    };
    let mut response = Redirect::to("/console/").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(&ctx, COOKIE, &cookie_value(&ctx, &subject), None),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(&ctx, LOGIN_COOKIE, "", Some(0)),
    );
    response
}

/// A form with only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /console/logout`: ends the session (as the Logout RPC does) and
/// forgets the cookie.
pub async fn logout(Console(ctx): Console, viewer: Viewer, Form(form): Form<CsrfForm>) -> Response {
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc::LOGOUT).await {
        return refused;
    }
    if let Err(error) = ctx.identity.sessions.logout(&viewer.actor).await {
        return views::error_response(&error);
    }
    ctx.callers.fence().await;
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&ctx, COOKIE, "", Some(0)));
    response
}
