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
    /// Keys from an HMAC secret of at least [`MIN_SECRET_BYTES`].
    pub fn new(
        secret: &[u8],
        issuer: &str,
        audience: &str,
        access_ttl: Duration,
    ) -> Result<Self, AppError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AppError::Config(format!(
                "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7; 32], "iss", "aud", Duration::from_secs(60)).unwrap()
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
    fn other_keys_and_garbage_fail() {
        let subject = TokenSubject {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
        };
        let token = keys().issue(subject).unwrap();
        let other = TokenKeys::new(&[8; 32], "iss", "aud", Duration::from_secs(60)).unwrap();
        assert!(other.verify(&token).is_err());
        assert!(keys().verify("not.a.jwt").is_err());
    }
}
