//! The web console: server-rendered pages under `/console/` on the HTTP
//! port (`HTTP_ADDR`), for the operator who would rather look than type
//! grpcurl.
//!
//! - Pages are HTML rendered here (maud templates in [`views`]), one small
//!   stylesheet and one small script embedded in the binary: no build
//!   step, nothing fetched from elsewhere, a strict Content-Security-Policy
//!   (`default-src 'self'`, no inline script or style). Reading works with
//!   scripts off; the script only adds live updates (server-sent events of
//!   the watch machinery) and confirmations.
//! - It calls the domain layer directly with the gRPC API's rules: a person
//!   logs in with the same account (a real session, throttled like Login:
//!   [`session`]); each request resolves the caller through the same
//!   lookup the authorization layer uses, and each page and action needs
//!   the permission of the RPC it stands for (read from the same generated
//!   table, [`crate::auth::policy`]). Actions call the functions the RPC
//!   handlers call, which write the same audit rows; a refused one is
//!   audited as a denial.
//! - One module per page area; a new area adds its module, its routes in
//!   [`router`] and its entry in [`NAV`].

pub mod assets;
pub mod attempts;
pub mod audit;
pub mod dead_letters;
pub mod jobs;
pub mod keys;
pub mod modules;
pub mod overview;
pub mod people;
pub mod queues;
pub mod schedules;
pub mod session;
pub mod viewer;
pub mod views;
pub mod workers;

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get, post},
};

use crate::{
    auth::{callers::listener::CallerFeed, client::TrustedProxies, console_key::ConsoleKey},
    db::DbPool,
    dispatch::Dispatcher,
    domain::{Identity, api_keys::ApiKeys, jobs::Jobs, modules::Modules, schedules::Schedules},
    health::Readiness,
};

/// Where the console is served.
pub const BASE: &str = "/console";

/// One entry of the navigation bar: its path under [`BASE`], its label,
/// and the RPC whose permission it needs (`None`: any signed-in person).
#[derive(Debug, Clone, Copy)]
pub struct NavEntry {
    pub path: &'static str,
    pub label: &'static str,
    pub rpc: Option<&'static str>,
}

/// The navigation bar, in order. A new area adds an entry here and its
/// routes in [`router`].
pub const NAV: &[NavEntry] = &[
    NavEntry {
        path: "/",
        label: "Overview",
        rpc: Some(rpc::LIST_JOBS),
    },
    NavEntry {
        path: "/jobs",
        label: "Jobs",
        rpc: Some(rpc::LIST_JOBS),
    },
    NavEntry {
        path: "/queues",
        label: "Queues",
        rpc: Some(rpc::LIST_QUEUES),
    },
    NavEntry {
        path: "/dead-letters",
        label: "Dead letters",
        rpc: Some(rpc::LIST_JOBS),
    },
    NavEntry {
        path: "/schedules",
        label: "Schedules",
        rpc: Some(rpc::LIST_SCHEDULES),
    },
    NavEntry {
        path: "/workers",
        label: "Workers",
        rpc: Some(rpc::LIST_JOBS),
    },
    NavEntry {
        path: "/modules",
        label: "Modules",
        rpc: Some(rpc::LIST_MODULES),
    },
    NavEntry {
        path: "/users",
        label: "Users & roles",
        rpc: Some(rpc::LIST_USERS),
    },
    NavEntry {
        path: "/keys",
        label: "API keys",
        rpc: Some(rpc::LIST_API_KEYS),
    },
    NavEntry {
        path: "/audit",
        label: "Audit trail",
        rpc: Some(rpc::LIST_AUDIT_LOGS),
    },
];

/// The RPCs whose rules the console's pages and actions follow.
pub mod rpc {
    pub const LIST_JOBS: &str = "/automation.v1.JobService/ListJobs";
    pub const GET_JOB: &str = "/automation.v1.JobService/GetJob";
    pub const WATCH_JOB: &str = "/automation.v1.JobService/WatchJob";
    pub const CANCEL_JOB: &str = "/automation.v1.JobService/CancelJob";
    pub const RETRY_JOB: &str = "/automation.v1.JobService/RetryJob";
    pub const BATCH_RETRY_JOBS: &str = "/automation.v1.JobService/BatchRetryJobs";
    pub const BATCH_CANCEL_JOBS: &str = "/automation.v1.JobService/BatchCancelJobs";
    pub const LIST_QUEUES: &str = "/automation.v1.JobService/ListQueues";
    pub const PAUSE_QUEUE: &str = "/automation.v1.JobService/PauseQueue";
    pub const RESUME_QUEUE: &str = "/automation.v1.JobService/ResumeQueue";
    pub const LIST_SCHEDULES: &str = "/automation.v1.ScheduleService/ListSchedules";
    pub const GET_SCHEDULE: &str = "/automation.v1.ScheduleService/GetSchedule";
    pub const CREATE_SCHEDULE: &str = "/automation.v1.ScheduleService/CreateSchedule";
    pub const DELETE_SCHEDULE: &str = "/automation.v1.ScheduleService/DeleteSchedule";
    pub const PAUSE_SCHEDULE: &str = "/automation.v1.ScheduleService/PauseSchedule";
    pub const RESUME_SCHEDULE: &str = "/automation.v1.ScheduleService/ResumeSchedule";
    pub const TRIGGER_SCHEDULE: &str = "/automation.v1.ScheduleService/TriggerSchedule";
    pub const LIST_MODULES: &str = "/automation.v1.ModuleService/ListModules";
    pub const ENABLE_MODULE: &str = "/automation.v1.ModuleService/EnableModule";
    pub const DISABLE_MODULE: &str = "/automation.v1.ModuleService/DisableModule";
    pub const DELETE_MODULE: &str = "/automation.v1.ModuleService/DeleteModule";
    pub const LIST_USERS: &str = "/automation.v1.UserService/ListUsers";
    pub const CREATE_USER: &str = "/automation.v1.UserService/CreateUser";
    pub const UPDATE_USER: &str = "/automation.v1.UserService/UpdateUser";
    pub const LIST_ROLES: &str = "/automation.v1.RoleService/ListRoles";
    pub const ASSIGN_ROLE: &str = "/automation.v1.RoleService/AssignRole";
    pub const LIST_API_KEYS: &str = "/automation.v1.ApiKeyService/ListApiKeys";
    pub const CREATE_API_KEY: &str = "/automation.v1.ApiKeyService/CreateApiKey";
    pub const REVOKE_API_KEY: &str = "/automation.v1.ApiKeyService/RevokeApiKey";
    pub const LIST_AUDIT_LOGS: &str = "/automation.v1.AuditService/ListAuditLogs";
    pub const LOGOUT: &str = "/automation.v1.AuthService/Logout";
}

/// How the console is configured.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSettings {
    /// Mark the session cookie `Secure` (TLS is configured: the console is
    /// expected behind HTTPS).
    pub secure_cookie: bool,
}

/// What the console is built from: the server's own services.
#[derive(Clone)]
pub struct ConsoleParts {
    pub pool: DbPool,
    pub identity: Identity,
    pub jobs: Jobs,
    pub modules: Modules,
    pub schedules: Schedules,
    pub api_keys: ApiKeys,
    pub dispatcher: Dispatcher,
    pub readiness: Readiness,
    /// The replica's cache of callers: identity writes wait for its fence,
    /// as they do through the gRPC authorization layer.
    pub callers: CallerFeed,
    pub trusted_proxies: TrustedProxies,
    pub key: ConsoleKey,
    pub settings: ConsoleSettings,
    /// This replica among the others (the Workers page shows every
    /// replica's streams).
    pub fleet: crate::domain::fleet::Fleet,
}

/// The console's services, shared by every request.
pub type Ctx = Arc<ConsoleParts>;

/// The console's state, filled once the server's services exist (the HTTP
/// port starts before them, so that readiness answers during startup):
/// until then every page answers 503.
#[derive(Clone, Default)]
pub struct ConsoleSlot(Arc<OnceLock<Ctx>>);

impl std::fmt::Debug for ConsoleSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSlot")
            .field("ready", &self.0.get().is_some())
            .finish()
    }
}

impl ConsoleSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot (a second fill is ignored).
    pub fn fill(&self, parts: ConsoleParts) {
        let _ = self.0.set(Arc::new(parts));
    }
}

/// The console's services, as an extractor: 503 until the slot is filled.
pub struct Console(pub Ctx);

impl<S> FromRequestParts<S> for Console
where
    ConsoleSlot: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        ConsoleSlot::from_ref(state)
            .0
            .get()
            .cloned()
            .map(Console)
            .ok_or_else(|| {
                (StatusCode::SERVICE_UNAVAILABLE, "the console is starting").into_response()
            })
    }
}

/// The console's routes, under [`BASE`].
pub fn router(slot: ConsoleSlot) -> Router {
    let at = |path: &str| format!("{BASE}{path}");
    Router::new()
        .route(BASE, get(|| async { Redirect::permanent("/console/") }))
        .route(&at("/"), get(overview::page))
        .route(&at("/overview/throughput.svg"), get(overview::chart))
        .route(&at("/login"), get(session::login_page).post(session::login))
        .route(&at("/logout"), post(session::logout))
        .route(&at("/jobs"), get(jobs::list))
        .route(&at("/jobs/{id}"), get(jobs::show))
        .route(&at("/jobs/{id}/events"), get(jobs::events))
        .route(&at("/jobs/{id}/attempts"), get(attempts::page))
        .route(&at("/jobs/{id}/cancel"), post(jobs::cancel))
        .route(&at("/jobs/{id}/retry"), post(jobs::retry))
        .route(&at("/queues"), get(queues::page))
        .route(&at("/queues/{action}"), post(queues::act))
        .route(&at("/dead-letters"), get(dead_letters::page))
        .route(&at("/dead-letters/{action}"), post(dead_letters::act))
        .route(
            &at("/schedules"),
            get(schedules::list).post(schedules::create),
        )
        .route(&at("/schedules/{id}"), get(schedules::show))
        .route(&at("/schedules/{id}/{action}"), post(schedules::act))
        .route(&at("/workers"), get(workers::page))
        .route(&at("/modules"), get(modules::page))
        .route(&at("/modules/{name}/{action}"), post(modules::act))
        .route(&at("/users"), get(people::page).post(people::create))
        .route(&at("/users/{id}/deactivate"), post(people::deactivate))
        .route(&at("/users/{id}/roles"), post(people::assign))
        .route(&at("/keys"), get(keys::page).post(keys::create))
        .route(&at("/keys/{id}/revoke"), post(keys::revoke))
        .route(&at("/audit"), get(audit::page))
        .route(&at("/assets/console.css"), get(assets::css))
        .route(&at("/assets/console.js"), get(assets::js))
        // Unknown console paths answer here, so that they carry the
        // console's headers too.
        .route(&at("/{*rest}"), any(not_found))
        .with_state(slot)
        .layer(axum::middleware::from_fn(same_origin_writes))
        .layer(axum::middleware::map_response(security_headers))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such console page").into_response()
}

/// Refuses a write (any method but GET and HEAD) that a browser says came
/// from another site: `Sec-Fetch-Site` other than `same-origin` (or `none`,
/// typed by the person), else an `Origin` whose host is not this one. The
/// CSRF tokens already refuse forged forms; this also covers the login
/// form, whose token a sibling subdomain could plant as a cookie.
async fn same_origin_writes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = match text("sec-fetch-site") {
        Some(site) => site != "same-origin" && site != "none",
        None => match (text("origin"), text("host")) {
            (Some(origin), Some(host)) => {
                origin.split_once("://").map(|(_, rest)| rest) != Some(host)
            }
            _ => false,
        },
    };
    if cross_site {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    next.run(request).await
}

/// The Content-Security-Policy of every console response: only the
/// console's own origin, no inline script or style, no framing, forms post
/// only to it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
