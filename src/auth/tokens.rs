//! Access tokens: HS256 JWTs (RFC 8725). The algorithm is pinned, every
//! registered claim is required and checked, and `typ` separates access
//! tokens from any other JWT signed with the same key.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::AppError;

/// Value of the `typ` claim of access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "access";

/// Shortest accepted HMAC secret, in bytes (the size of the SHA-256 output).
pub const MIN_SECRET_BYTES: usize = 32;

/// Fewest different byte values an accepted secret holds. Random secrets of
/// 32 bytes or more hold far more; `aaaa…` or `0101…` hold fewer. Not 16:
/// a 64-digit hex secret (`openssl rand -hex 32`) uses only 16 symbols and
/// misses one of them about one time in four.
pub const MIN_DISTINCT_SECRET_BYTES: usize = 10;

/// How to make a good secret, for error messages.
const SECRET_HINT: &str = "generate one with `openssl rand -base64 48`";

/// Secrets that were published as defaults (the compose file used to ship
/// this one), compared case-insensitively. Anyone can sign tokens with them.
const KNOWN_DEFAULT_SECRETS: &[&str] = &["compose-local-secret-change-me-0123456789abcdef"];

/// Fragments that mark a value as a placeholder meant to be replaced,
/// compared case-insensitively. A random secret practically never holds one.
const PLACEHOLDER_FRAGMENTS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "change-this",
    "changethis",
    "replace-me",
    "replaceme",
    "secret-secret",
    "secretsecret",
    "your-secret",
    "your_secret",
    "yoursecret",
    "placeholder",
    "example",
    "do-not-use",
    "insecure",
];

/// Length of the runs that [`secret_weakness`] looks for: a repeated or
/// sequential run this long has odds far below one in a million in a random
/// secret, and is typical of typed ones (`test-secret-test-secret`,
/// `0123456789`).
const PATTERN_RUN: usize = 8;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// Unique id of this token.
    pub jti: String,
    /// The session (refresh-token chain) the token belongs to.
    pub sid: String,
    pub typ: String,
}

/// The verified identity a token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// Signing and verification keys with the claims to expect.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    /// Lifetime of issued access tokens.
    pub access_ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from an HMAC secret of at least [`MIN_SECRET_BYTES`] that is
    /// not a published default or an obvious placeholder: whoever knows the
    /// secret can sign tokens for any account, so a guessable one is refused
    /// here, where every way of starting the server passes.
    pub fn new(
        secret: &[u8],
        issuer: &str,
        audience: &str,
        access_ttl: Duration,
    ) -> Result<Self, AppError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AppError::Config(format!(
                "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; {SECRET_HINT}"
            )));
        }
        if let Some(weakness) = secret_weakness(secret) {
            return Err(AppError::Config(format!(
                "JWT_SECRET is not secret: {weakness}; {SECRET_HINT}"
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            access_ttl,
        })
    }

    /// Issues an access token for a session.
    pub fn issue(&self, subject: TokenSubject) -> Result<String, AppError> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.user_id.to_string(),
            exp: now + self.access_ttl.as_secs() as i64,
            nbf: now,
            iat: now,
            jti: Uuid::new_v4().to_string(),
            sid: subject.session_id.to_string(),
            typ: ACCESS_TOKEN_TYPE.to_owned(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests forge tokens with it).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, AppError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AppError::internal(format!("signing a token: {e}")))
    }

    /// Verifies signature, algorithm and every claim.
    pub fn verify(&self, token: &str) -> Result<TokenSubject, AppError> {
        let invalid = || AppError::Unauthenticated("invalid or expired access token".into());
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| invalid())?;
        let claims = data.claims;
        if claims.typ != ACCESS_TOKEN_TYPE || claims.jti.is_empty() {
            return Err(invalid());
        }
        Ok(TokenSubject {
            user_id: claims.sub.parse().map_err(|_| invalid())?,
            session_id: claims.sid.parse().map_err(|_| invalid())?,
        })
    }
}

/// Why `secret` is known or guessable, or `None` when nothing gives it away.
/// Says what is wrong, never the secret itself.
fn secret_weakness(secret: &[u8]) -> Option<&'static str> {
    let lowercase = secret.to_ascii_lowercase();
    let holds = |fragment: &str| {
        lowercase
            .windows(fragment.len())
            .any(|window| window == fragment.as_bytes())
    };
    if KNOWN_DEFAULT_SECRETS
        .iter()
        .any(|known| lowercase == known.as_bytes())
    {
        return Some("it is a published default");
    }
    if PLACEHOLDER_FRAGMENTS.iter().any(|fragment| holds(fragment)) {
        return Some("it reads like a placeholder");
    }
    let distinct: std::collections::HashSet<u8> = secret.iter().copied().collect();
    if distinct.len() < MIN_DISTINCT_SECRET_BYTES {
        return Some("it uses too few different characters");
    }
    let mut runs = std::collections::HashSet::new();
    if secret.windows(PATTERN_RUN).any(|run| !runs.insert(run)) {
        return Some("it repeats itself");
    }
    let sequential = |run: &[u8]| {
        run.windows(2)
            .all(|pair| pair[1] == pair[0].wrapping_add(1))
            || run
                .windows(2)
                .all(|pair| pair[1] == pair[0].wrapping_sub(1))
    };
    if secret.windows(PATTERN_RUN).any(sequential) {
        return Some("it holds a run of consecutive characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret as `openssl rand -base64 48` prints one.
    const RANDOM_SECRET: &[u8] =
        b"q3V9xK2mZr7TfLw0aYc4HsNd8Pj1GuBe6RkQoXi5Mv/EtWnJ+hlFzDpSgC7bAy2U";

    fn keys() -> TokenKeys {
        TokenKeys::new(RANDOM_SECRET, "iss", "aud", Duration::from_secs(60)).unwrap()
    }

    fn refusal(secret: &[u8]) -> String {
        TokenKeys::new(secret, "iss", "aud", Duration::from_secs(60))
            .expect_err("a weak secret is refused")
            .to_string()
    }

    #[test]
    fn issued_tokens_verify() {
        let subject = TokenSubject {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
        };
        let keys = keys();
        assert_eq!(keys.verify(&keys.issue(subject).unwrap()).unwrap(), subject);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenKeys::new(b"short", "i", "a", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn published_and_placeholder_secrets_are_refused() {
        for secret in [
            "compose-local-secret-change-me-0123456789abcdef",
            "COMPOSE-LOCAL-SECRET-CHANGE-ME-0123456789ABCDEF",
            "please-changeme-before-going-to-production-x7Qk",
            "Kq8zV2xR7pLw3NfT-secret-secret-Yb6Hd1Jm9Gc4Su0E",
            "a-placeholder-value-for-the-jwt-signing-key-9Zq",
        ] {
            let message = refusal(secret.as_bytes());
            assert!(message.contains("JWT_SECRET"), "{message}");
            assert!(message.contains("openssl rand -base64 48"), "{message}");
            assert!(!message.contains(secret), "the secret leaked: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn patterned_secrets_are_refused() {
        for secret in [
            "a".repeat(64),
            "ab".repeat(32),
            "0123456789".repeat(4),
            "test-secret-test-secret-test-secret-0123456789".to_owned(),
            "Kq8zV2xR7pLw3NfTYb6Hd1Jm9Gc4Su0E-abcdefghij-Zx".to_owned(),
        ] {
            let message = refusal(secret.as_bytes());
            assert!(message.contains("JWT_SECRET is not secret"), "{message}");
        }
    }

    #[test]
    fn random_secrets_are_accepted() {
        let hex = "9f3c1e7a5b2d8046c1f9e3a7d5b20864af1ce39b7d5f2a0486ce1b9f3d7a5c20";
        for secret in [RANDOM_SECRET, hex.as_bytes()] {
            assert!(secret_weakness(secret).is_none());
        }
        // What the embedded development mode generates.
        use rand::distr::{Alphanumeric, SampleString};
        for _ in 0..100 {
            let secret = Alphanumeric.sample_string(&mut rand::rng(), 64);
            assert_eq!(secret_weakness(secret.as_bytes()), None, "{secret}");
        }
    }

    #[test]
    fn other_keys_and_garbage_fail() {
        let subject = TokenSubject {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
        };
        let token = keys().issue(subject).unwrap();
        let other = TokenKeys::new(
            b"Zt4wN8cQ1xVb6Lm3Rk9Hp2Yd7Fs0Jg5Ea-uWqXiOnToPlKjM",
            "iss",
            "aud",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(other.verify(&token).is_err());
        assert!(keys().verify("not.a.jwt").is_err());
    }
}
