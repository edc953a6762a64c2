//! Authentication and authorization: password hashing, access tokens, the
//! per-RPC permission table, the client's network identity, and the cache of
//! resolved callers. (The tower layer that enforces it all is
//! `api::authorization`: it needs the sessions and the audit trail, which
//! sit above this module.)

pub mod caller;
pub mod callers;
pub mod client;
pub mod console_key;
pub mod passwords;
pub mod policy;
pub mod tokens;

use std::time::Duration;

use crate::config::{AuthArgs, PasswordArgs};

/// Everything the identity services need to know about their configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Signs and verifies access tokens.
    pub tokens: tokens::TokenKeys,
    /// Hashes and verifies passwords off the async runtime.
    pub passwords: passwords::PasswordHasher,
    /// Lifetime of refresh tokens (a session idle longer ends).
    pub refresh_ttl: Duration,
    /// Longest a session lives, however often it is refreshed.
    pub session_max_lifetime: Duration,
    /// Failed-login limits, as configured (the domain's throttle turns
    /// them into its policies).
    pub login_rules: LoginRules,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: client::TrustedProxies,
    /// Most callers each replica keeps resolved (0: no cache).
    pub caller_cache_size: usize,
    /// Most accounts' views each replica keeps (0: none).
    pub account_cache_size: usize,
    /// This replica's cache of callers and accounts, sized as above (clones
    /// of these settings share it: one server per settings).
    pub callers: callers::CallerCache,
    /// Signs what replicas tell each other on the `caller_changes` channel
    /// (pings, fences, acknowledgements): any role that can connect to the
    /// database may NOTIFY on any channel, so an unsigned acknowledgement
    /// could be forged. Derived from the JWT secret, which every replica
    /// shares and nothing else knows.
    pub channel_key: callers::ChannelKey,
    /// Signs the web console's session cookies and CSRF tokens (derived
    /// from the JWT secret, like `channel_key`).
    pub console_key: console_key::ConsoleKey,
}

/// Failed-login limits as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRules {
    /// Failures of one account from one client before a lock.
    pub max_failures: i32,
    /// Failures of one account from all clients before it is under attack.
    pub max_failures_per_account: i32,
    /// Failures from one client, whatever the account, before a lock.
    pub max_failures_per_ip: i32,
    /// The first lock; each further failure doubles it.
    pub lockout: Duration,
}

impl AuthSettings {
    /// Settings from the command line, signing with `jwt_secret`.
    pub fn from_args(
        args: &AuthArgs,
        passwords: &PasswordArgs,
        jwt_secret: &str,
    ) -> Result<Self, crate::AppError> {
        Ok(Self {
            tokens: tokens::TokenKeys::new(
                jwt_secret.as_bytes(),
                &args.jwt_issuer,
                &args.jwt_audience,
                Duration::from_secs(args.access_token_ttl_secs.max(1)),
            )?,
            passwords: passwords::PasswordHasher::from_args(passwords),
            refresh_ttl: Duration::from_secs(args.refresh_token_ttl_secs.max(1)),
            session_max_lifetime: Duration::from_secs(args.session_max_lifetime_secs.max(1)),
            login_rules: LoginRules {
                max_failures: args.login_max_failures,
                max_failures_per_account: args.login_max_failures_per_account,
                max_failures_per_ip: args.login_max_failures_per_ip,
                lockout: Duration::from_secs(args.login_lockout_secs.max(1)),
            },
            trusted_proxies: client::TrustedProxies::new(args.trusted_proxies.clone()),
            caller_cache_size: args.caller_cache_size,
            account_cache_size: args.account_cache_size,
            callers: callers::CallerCache::new(args.caller_cache_size)
                .with_accounts(args.account_cache_size),
            channel_key: callers::ChannelKey::derive(jwt_secret.as_bytes()),
            console_key: console_key::ConsoleKey::derive(jwt_secret.as_bytes()),
        })
    }
}
