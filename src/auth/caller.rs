//! Who is calling, as the authorization layer established it. Handlers read
//! these from the request extensions.

use uuid::Uuid;

use super::{client::ClientInfo, policy};
use crate::error::AppError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account.
    pub user_id: Uuid,
    /// The session (refresh-token chain) of the presented access token.
    pub session_id: Uuid,
    /// Permissions of the caller's roles at the time of the call.
    pub permissions: Vec<String>,
    /// For a call made with an API key: the key's scope, which the caller's
    /// permissions are intersected with.
    pub scope: Option<Vec<String>>,
    /// For a call made with an API key: the key.
    pub api_key: Option<Uuid>,
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn holds(&self, permission: &str) -> bool {
        policy::grants(&self.permissions, permission)
            && self
                .scope
                .as_ref()
                .is_none_or(|scope| policy::grants(scope, permission))
    }

    /// The first of `wanted` the caller does not hold, if any.
    pub fn first_missing<'a>(&self, wanted: &'a [String]) -> Option<&'a str> {
        wanted.iter().find(|p| !self.holds(p)).map(String::as_str)
    }
}

/// The caller of a request, as the layer stored it.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller, AppError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| AppError::Unauthenticated("missing access token".into()))
}

/// The client of a request; empty when the layer did not run (never in the
/// server).
pub fn client_of<T>(request: &tonic::Request<T>) -> ClientInfo {
    request
        .extensions()
        .get::<ClientInfo>()
        .cloned()
        .unwrap_or_default()
}
