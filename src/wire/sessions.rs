//! The messages of `AuthService`: issued tokens and sessions.

use super::time::timestamp;
use crate::{
    domain::sessions::{IssuedTokens, SessionInfo},
    proto::automation_v1 as pb,
};

/// How issued access tokens are presented (`authorization: Bearer …`).
pub const TOKEN_TYPE: &str = "Bearer";

/// An access token's lifetime in seconds, as OAuth's `expires_in` says it.
pub fn expires_in(tokens: &IssuedTokens) -> i64 {
    tokens.access_ttl.as_secs() as i64
}

/// The wire `Session` of one of the caller's sessions.
pub fn session_message(info: SessionInfo) -> pb::Session {
    pb::Session {
        current: info.current,
        id: info.session.id.to_string(),
        user_agent: info.session.user_agent,
        ip_address: info.session.ip_address,
        create_time: Some(timestamp(info.session.created_at)),
        expire_time: Some(timestamp(info.session.expires_at)),
    }
}
