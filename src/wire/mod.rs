//! The only place where protobuf meets the domain: each file converts one
//! area's messages to the domain's types and back, for the gRPC handlers
//! ([`crate::api`]) and the dispatcher ([`crate::dispatch`]) alike.
//!
//! Architecture invariant: the wire layer converts, it does not decide. It
//! turns a request into the domain's input (ids parsed, enums mapped,
//! timestamps and `Struct`s turned into chrono and JSON, an update mask into
//! the fields it names) and a domain result into a message; the shape of
//! each value (lengths, formats, required content) is checked by the domain
//! ([`crate::domain::validate`] and the types that call it), so its rules
//! hold whoever calls it. Errors name the request's fields as the client
//! sent them. Nothing below this module knows a protobuf type; nothing here
//! opens a transaction or reads the database.

pub mod api_keys;
pub mod attempts;
pub mod audit;
pub mod jobs;
pub mod json;
pub mod mask;
pub mod modules;
pub mod queues;
pub mod rate_limits;
pub mod roles;
pub mod schedules;
pub mod sessions;
pub mod time;
pub mod users;
pub mod work;

use uuid::Uuid;

use crate::{domain::validate, error::AppError};

/// A request's id field, parsed (required; `field` names it in a refusal).
pub fn id(field: &str, value: &str) -> Result<Uuid, AppError> {
    validate::id(field, value)
}
