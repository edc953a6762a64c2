//! The rules of the control plane and the transactions that apply them,
//! between the transport (`api`) and the SQL (`store`). Nothing here knows
//! about gRPC: handlers decode a request into these types, call one function
//! and encode what it returns, and tests can call the same functions
//! directly.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod authority;
pub mod events;
pub mod fleet;
pub mod jobs;
pub mod modules;
pub mod overview;
pub mod roles;
pub mod schedules;
pub mod sessions;
pub mod throttle;
pub mod validate;

use std::time::Duration;

use crate::{
    auth::{AuthSettings, caller::Caller, client::ClientInfo},
    db::DbPool,
    store::pagination::Cursor,
};

/// How long repeated cheap events (denials, throttled logins) are counted
/// before their summary row is written.
pub const AUDIT_SAMPLE_WINDOW: Duration = Duration::from_secs(60);

/// The identity services, built once and shared by the handlers and the
/// authorization layer.
#[derive(Clone)]
pub struct Identity {
    /// Accounts administered by others.
    pub accounts: accounts::Accounts,
    /// Roles and assignments.
    pub roles: roles::Roles,
    /// Self-service: login, refresh, own sessions and password.
    pub sessions: sessions::Sessions,
    /// The audit trail.
    pub audit: audit::AuditTrail,
    /// Login throttling.
    pub throttle: throttle::LoginThrottle,
}

impl Identity {
    /// The services over `pool`, configured by `settings`.
    pub fn new(pool: &DbPool, settings: &AuthSettings) -> Self {
        let audit = audit::AuditTrail::new(pool.clone(), AUDIT_SAMPLE_WINDOW);
        let throttle = throttle::LoginThrottle::new(
            pool.clone(),
            sessions::login_limits(settings.login_rules),
        );
        Self {
            accounts: accounts::Accounts::new(pool.clone(), settings.passwords.clone()),
            roles: roles::Roles::new(pool.clone()),
            sessions: sessions::Sessions::new(
                pool.clone(),
                settings.tokens.clone(),
                settings.passwords.clone(),
                throttle.clone(),
                audit.clone(),
                sessions::SessionPolicy {
                    refresh_ttl: settings.refresh_ttl,
                    max_lifetime: settings.session_max_lifetime,
                },
            ),
            audit,
            throttle,
        }
    }
}

/// Who performs an action and from where: the subject of every rule and of
/// every audit row.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The authenticated caller.
    pub caller: Caller,
    /// Their client.
    pub client: ClientInfo,
}

/// One page of a list and the token of the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Token for the next page; empty on the last page.
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows: the extra row, when present, only
    /// says that there is a next page, which starts after the last row kept.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|last| cursor_of(last).encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }

    /// The same page with its items transformed.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
        }
    }
}
