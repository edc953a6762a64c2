//! Authentication and authorization: password hashing, access tokens, the
//! per-RPC permission table, the client's network identity and the layer
//! that enforces it all.

pub mod caller;
pub mod client;
pub mod layer;
pub mod passwords;
pub mod policy;
pub mod tokens;

use std::time::Duration;

use crate::{
    config::{AuthArgs, PasswordArgs},
    domain::throttle::{LoginLimits, ThrottlePolicy},
};

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
    /// Failed-login limits.
    pub login_limits: LoginLimits,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: client::TrustedProxies,
}

impl AuthSettings {
    /// Settings from the command line, signing with `jwt_secret`.
    pub fn from_args(
        args: &AuthArgs,
        passwords: &PasswordArgs,
        jwt_secret: &str,
    ) -> Result<Self, crate::AppError> {
        let lockout = Duration::from_secs(args.login_lockout_secs.max(1));
        let window = Duration::from_secs(15 * 60);
        let policy = |max_failures: i32| ThrottlePolicy {
            max_failures: max_failures.max(1),
            base_lockout: lockout,
            max_lockout: window,
            window,
        };
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
            login_limits: LoginLimits {
                per_client_and_account: policy(args.login_max_failures),
                per_account: policy(args.login_max_failures_per_account),
                per_client: policy(args.login_max_failures_per_ip),
                per_network: policy(args.login_max_failures_per_ip.saturating_mul(16)),
            },
            trusted_proxies: client::TrustedProxies::new(args.trusted_proxies.clone()),
        })
    }
}
