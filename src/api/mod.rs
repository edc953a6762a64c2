//! The gRPC handlers, one file per service. Each handler decodes its request
//! into domain types through [`crate::wire`], calls ONE domain function (or
//! the dispatcher, for the streams) and encodes what it returns through
//! [`crate::wire`]. No conversion, no shape check, no SQL, no rule, no
//! transaction here; errors stay `AppError` until the single conversion to
//! `tonic::Status`. Field bounds are checked before any of this, by the
//! codec (`codec.rs`).

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authorization;
pub mod codec;
pub mod jobs;
pub mod modules;
pub mod roles;
pub mod schedules;
pub mod users;

use crate::{
    auth::caller::{caller_of, client_of},
    domain::Actor,
    error::AppError,
};

/// The authenticated caller and their client, as the authorization layer
/// left them in the request.
pub(crate) fn actor_of<T>(request: &tonic::Request<T>) -> Result<Actor, AppError> {
    Ok(Actor {
        caller: caller_of(request)?,
        client: client_of(request),
    })
}
