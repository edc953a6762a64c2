//! Authentication and authorization: password hashing, access tokens, the
//! per-RPC permission table and the layer that enforces it.

pub mod caller;
pub mod layer;
pub mod passwords;
pub mod policy;
pub mod tokens;

use std::{net::IpAddr, time::Duration};

use crate::store::throttle::ThrottlePolicy;

/// Everything the identity services need to know about their configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Signs and verifies access tokens.
    pub tokens: tokens::TokenKeys,
    /// Hashes and verifies passwords off the async runtime.
    pub passwords: passwords::PasswordHasher,
    /// Lifetime of refresh tokens.
    pub refresh_ttl: Duration,
    /// Shortest password accepted, in characters.
    pub password_min_length: usize,
    /// Failed-login limits per account.
    pub account_throttle: ThrottlePolicy,
    /// Failed-login limits per client IP.
    pub ip_throttle: ThrottlePolicy,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl AuthSettings {
    /// Settings from the command line, signing with `jwt_secret`.
    pub fn from_args(
        args: &crate::config::AuthArgs,
        jwt_secret: &str,
        bcrypt_cost: u32,
    ) -> Result<Self, crate::AppError> {
        let lockout = Duration::from_secs(args.login_lockout_secs.max(1));
        let window = Duration::from_secs(15 * 60);
        Ok(Self {
            tokens: tokens::TokenKeys::new(
                jwt_secret.as_bytes(),
                &args.jwt_issuer,
                &args.jwt_audience,
                Duration::from_secs(args.access_token_ttl_secs.max(1)),
            )?,
            passwords: passwords::PasswordHasher::new(bcrypt_cost),
            refresh_ttl: Duration::from_secs(args.refresh_token_ttl_secs.max(1)),
            password_min_length: args.password_min_length,
            account_throttle: ThrottlePolicy {
                max_failures: args.login_max_failures.max(1),
                base_lockout: lockout,
                max_lockout: window,
                window,
            },
            ip_throttle: ThrottlePolicy {
                max_failures: args.login_max_failures_per_ip.max(1),
                base_lockout: lockout,
                max_lockout: window,
                window,
            },
            trusted_proxies: args.trusted_proxies.clone(),
        })
    }
}
