//! The gRPC handlers, one file per service. Each handler decodes its request
//! into domain types (checking the shape of every field), calls ONE domain
//! function and encodes what it returns. No SQL, no rule, no transaction
//! here; errors stay `AppError` until the single conversion to
//! `tonic::Status`. Field bounds are checked before any of this, by the
//! codec (`codec.rs`).

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authorization;
pub mod codec;
pub mod jobs;
pub(crate) mod json;
pub mod modules;
pub mod roles;
pub mod users;

use chrono::NaiveDateTime;
use prost_types::Timestamp;

use crate::{
    auth::caller::{caller_of, client_of},
    domain::{Actor, accounts::Account},
    error::AppError,
    proto::automation_v1 as pb,
    store::models::RoleRow,
};

/// The authenticated caller and their client, as the authorization layer
/// left them in the request.
pub(crate) fn actor_of<T>(request: &tonic::Request<T>) -> Result<Actor, AppError> {
    Ok(Actor {
        caller: caller_of(request)?,
        client: client_of(request),
    })
}

/// A stored UTC timestamp as a protobuf one.
pub(crate) fn timestamp(time: NaiveDateTime) -> Timestamp {
    let utc = time.and_utc();
    Timestamp {
        seconds: utc.timestamp(),
        nanos: utc.timestamp_subsec_nanos() as i32,
    }
}

/// The range `google.protobuf.Timestamp` allows: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z (PostgreSQL holds all of it).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A protobuf timestamp as a stored UTC one.
pub(crate) fn naive_time(field: &str, time: &Timestamp) -> Result<NaiveDateTime, AppError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(AppError::invalid(field, "nanos must be within 0..1e9"));
    }
    if !TIMESTAMP_SECONDS.contains(&time.seconds) {
        return Err(AppError::invalid(
            field,
            "must be within 0001-01-01 and 9999-12-31",
        ));
    }
    chrono::DateTime::from_timestamp(time.seconds, time.nanos as u32)
        .map(|t| t.naive_utc())
        .ok_or_else(|| AppError::invalid(field, "is out of range"))
}

/// The wire `User` of an account.
pub(crate) fn user_message(account: Account) -> pb::User {
    let row = account.user;
    pb::User {
        id: row.id.to_string(),
        email: row.email,
        username: row.username,
        first_name: row.first_name.unwrap_or_default(),
        last_name: row.last_name.unwrap_or_default(),
        is_active: row.is_active,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        last_login_time: row.last_login.map(timestamp),
        roles: account.roles,
        permissions: account.permissions,
    }
}

/// The wire `Role` of a row.
pub(crate) fn role_message(row: RoleRow) -> pb::Role {
    pb::Role {
        permissions: row.permission_list(),
        id: row.id.to_string(),
        name: row.name,
        description: row.description,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

/// The field names of an update mask, each checked against `allowed`.
pub(crate) fn mask_paths<'a>(
    mask: Option<&'a prost_types::FieldMask>,
    allowed: &[&str],
) -> Result<Vec<&'a str>, AppError> {
    let paths: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(AppError::invalid(
            "update_mask",
            format!(
                "is required; name the fields to change: {}",
                allowed.join(", ")
            ),
        ));
    }
    if let Some(unknown) = paths.iter().find(|p| !allowed.contains(p)) {
        return Err(AppError::invalid(
            "update_mask",
            format!(
                "'{unknown}' cannot be updated; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(paths)
}
