//! The gRPC handlers, one file per service. Each handler decodes and validates
//! its request, calls the store (inside a transaction with its audit row when
//! it mutates) and encodes the answer. Errors are `AppError` until the single
//! conversion to `tonic::Status`.

pub mod audit;
pub mod codec;
pub mod auth;
pub mod jobs;
pub mod modules;
pub mod roles;
pub mod users;

use chrono::NaiveDateTime;
use prost_types::Timestamp;
use uuid::Uuid;

pub(crate) use crate::auth::caller::AuditEntry;
use crate::{error::AppError, proto::automation_v1 as pb, store::models::UserRow};

/// Parses a UUID field.
pub(crate) fn parse_id(field: &str, value: &str) -> Result<Uuid, AppError> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    value
        .parse()
        .map_err(|_| AppError::invalid(field, "is not a UUID"))
}

/// A stored UTC timestamp as a protobuf one.
pub(crate) fn timestamp(time: NaiveDateTime) -> Timestamp {
    let utc = time.and_utc();
    Timestamp {
        seconds: utc.timestamp(),
        nanos: utc.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a stored UTC one.
pub(crate) fn naive_time(field: &str, time: &Timestamp) -> Result<NaiveDateTime, AppError> {
    chrono::DateTime::from_timestamp(time.seconds, time.nanos.max(0) as u32)
        .map(|t| t.naive_utc())
        .ok_or_else(|| AppError::invalid(field, "is out of range"))
}

/// Builds the wire `User` from a row and its roles.
pub(crate) fn user_message(row: UserRow, roles: Vec<String>, permissions: Vec<String>) -> pb::User {
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
        roles,
        permissions,
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
