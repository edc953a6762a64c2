//! The one error type of the service and its one mapping to `tonic::Status`.
//!
//! Policy:
//! - The caller's mistakes carry a message meant for them, naming the field
//!   (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION).
//! - Infrastructure trouble the caller can retry is UNAVAILABLE; its detail is
//!   logged here, once, and the caller gets a generic message.
//! - Anything else is INTERNAL with a generic message; SQL text, stack traces
//!   and secrets never reach the caller.
//! - Authentication failures all say the same thing, so they reveal nothing.
//! - Every status carries a `google.rpc.ErrorInfo` with a stable
//!   UPPER_SNAKE_CASE `reason` (see [`AppError::reason`]) in the
//!   [`ERROR_DOMAIN`], so clients branch on reasons, never on message text.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A request field is malformed or missing.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The proto field path, e.g. `user.email`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No, an invalid or an expired credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid caller lacking the permission.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique field clashes with an existing row.
    #[error("a {resource} with this {field} already exists")]
    AlreadyExists {
        /// e.g. `user`.
        resource: &'static str,
        /// e.g. `email`.
        field: &'static str,
    },
    /// A request field clashes with what exists (e.g. an idempotency key
    /// held by a different job).
    #[error("{field}: {message}")]
    Conflict {
        /// The request field, e.g. `requests[3].idempotency_key`.
        field: String,
        /// What it clashes with.
        message: String,
    },
    /// The resource is in the wrong state for the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Throttled; retry after the hint.
    #[error("{message}")]
    ResourceExhausted {
        /// What was throttled.
        message: String,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// A configured bound on what a caller (or everyone on this replica)
    /// may hold open or send was reached. `limit` is the setting's
    /// environment variable (`WATCHES_PER_CALLER`), so an operator knows what
    /// to raise and a client what it ran into.
    #[error("{message}")]
    LimitExceeded {
        /// The setting that bounds it.
        limit: &'static str,
        /// What was refused, and the bound's value.
        message: String,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The call collided with a concurrent one (a deadlock, a serialization
    /// failure); retrying it is safe.
    #[error("{0}")]
    Aborted(String),
    /// The database cannot be reached or did not answer in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The method does not exist here.
    #[error("{0}")]
    Unimplemented(String),
    /// This server is shutting down; the same call to another server (or to
    /// this one once restarted) will be served.
    #[error("{0}")]
    Draining(String),
    /// The request is not a valid protobuf message of its type.
    #[error("the message is not valid protobuf: {0}")]
    Malformed(String),
    /// A message longer than its RPC's cap (which follows from the largest
    /// legal request), refused from its length prefix before it is buffered
    /// or decoded. INVALID_ARGUMENT: the same message can never succeed, and
    /// RESOURCE_EXHAUSTED here means "retry later".
    #[error(
        "the message is {size} bytes; this method accepts at most {max_bytes}{}",
        .limit.map(|l| format!(" (set by {l})")).unwrap_or_default()
    )]
    MessageTooLarge {
        /// The message's length prefix.
        size: usize,
        /// The method's cap.
        max_bytes: usize,
        /// The setting the cap follows from, when one does.
        limit: Option<&'static str>,
    },
    /// Start-up configuration is wrong; never sent to a caller.
    #[error("{0}")]
    Config(String),
    /// A bug or an unexpected failure; the detail is only logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// Shorthand for [`AppError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`AppError::Internal`].
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::Internal(detail.into())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted { .. } | Self::LimitExceeded { .. } => Code::ResourceExhausted,
            Self::Aborted(_) => Code::Aborted,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Unavailable(_) | Self::Draining(_) => Code::Unavailable,
            Self::Malformed(_) | Self::MessageTooLarge { .. } => Code::InvalidArgument,
            Self::Config(_) | Self::Internal(_) => Code::Internal,
        }
    }

    /// The `google.rpc.ErrorInfo` reason: stable, one per kind of failure,
    /// listed in docs/api.md. Clients branch on it, not on the message.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_FIELD",
            Self::Malformed(_) => "MALFORMED_MESSAGE",
            Self::MessageTooLarge { .. } => "MESSAGE_TOO_LARGE",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::Conflict { .. } => "CONFLICTING_REUSE",
            Self::FailedPrecondition(_) => "WRONG_STATE",
            Self::ResourceExhausted { .. } => "THROTTLED",
            Self::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            Self::Aborted(_) => "CONCURRENT_CHANGE",
            Self::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Self::Draining(_) => "SERVER_DRAINING",
            Self::Unimplemented(_) => "UNKNOWN_METHOD",
            Self::Config(_) | Self::Internal(_) => "INTERNAL",
        }
    }

    /// The ErrorInfo metadata: the field or resource involved, when there is
    /// one a client can act on.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut metadata = std::collections::HashMap::new();
        match self {
            Self::InvalidArgument { field, .. } | Self::Conflict { field, .. } => {
                metadata.insert("field".to_owned(), field.clone());
            }
            Self::AlreadyExists { resource, field } => {
                metadata.insert("resource".to_owned(), (*resource).to_owned());
                metadata.insert("field".to_owned(), (*field).to_owned());
            }
            Self::ResourceExhausted { retry_after, .. } => {
                metadata.insert(
                    "retry_after_ms".to_owned(),
                    retry_after.as_millis().to_string(),
                );
            }
            Self::LimitExceeded {
                limit, retry_after, ..
            } => {
                metadata.insert("limit".to_owned(), (*limit).to_owned());
                metadata.insert(
                    "retry_after_ms".to_owned(),
                    retry_after.as_millis().to_string(),
                );
            }
            Self::MessageTooLarge {
                size,
                max_bytes,
                limit,
            } => {
                metadata.insert("message_bytes".to_owned(), size.to_string());
                metadata.insert("max_bytes".to_owned(), max_bytes.to_string());
                if let Some(limit) = limit {
                    metadata.insert("limit".to_owned(), (*limit).to_owned());
                }
            }
            _ => {}
        }
        metadata
    }
}

/// The `domain` of every ErrorInfo this service sends.
pub const ERROR_DOMAIN: &str = "automation.v1";

impl From<AppError> for Status {
    fn from(error: AppError) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason(), ERROR_DOMAIN, error.metadata());
        let message = match &error {
            AppError::InvalidArgument { field, message } => {
                details.add_bad_request_violation(field, message);
                error.to_string()
            }
            AppError::ResourceExhausted { retry_after, .. }
            | AppError::LimitExceeded { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                let secs = retry_after_secs(*retry_after);
                format!("{error}; retry in {secs} s")
            }
            AppError::Unavailable(detail) => {
                tracing::warn!(error.detail = %detail, "database unavailable");
                "database unavailable, retry later".to_owned()
            }
            AppError::Config(detail) | AppError::Internal(detail) => {
                tracing::error!(error.detail = %detail, "internal error");
                "internal error".to_owned()
            }
            _ => error.to_string(),
        };
        let mut status = Status::with_error_details(error.code(), message, details);
        if let AppError::ResourceExhausted { retry_after, .. }
        | AppError::LimitExceeded { retry_after, .. } = &error
            && let Ok(value) = retry_after_secs(*retry_after).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

/// Whole seconds for the `retry-after` header: rounded up, at least 1.
fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs_f64().ceil().max(1.0) as u64
}

/// Names the field behind a unique index, for ALREADY_EXISTS messages.
fn unique_violation(constraint: Option<&str>) -> AppError {
    let (resource, field) = match constraint.unwrap_or_default() {
        "users_email_key" | "users_email_lower_key" => ("user", "email"),
        "users_username_key" => ("user", "username"),
        "roles_name_key" => ("role", "name"),
        "modules_name_key" => ("module", "name"),
        "schedules_name_key" => ("schedule", "name"),
        "user_roles_userId_roleId_key" => ("role assignment", "user and role"),
        _ => ("record", "key"),
    };
    AppError::AlreadyExists { resource, field }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match error {
            Error::NotFound => AppError::NotFound("record".into()),
            Error::DatabaseError(Kind::UniqueViolation, info) => {
                unique_violation(info.constraint_name())
            }
            Error::DatabaseError(Kind::ClosedConnection | Kind::UnableToSendCommand, info) => {
                AppError::Unavailable(info.message().to_owned())
            }
            Error::DatabaseError(_, info) if info.message().contains("statement timeout") => {
                AppError::Unavailable(info.message().to_owned())
            }
            Error::DatabaseError(Kind::SerializationFailure, _) => {
                AppError::Aborted("the call collided with a concurrent change; retry it".into())
            }
            Error::DatabaseError(_, info)
                if info.message().starts_with("deadlock detected")
                    || info.message().starts_with("could not obtain lock") =>
            {
                AppError::Aborted("the call collided with a concurrent change; retry it".into())
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<diesel::ConnectionError> for AppError {
    fn from(error: diesel::ConnectionError) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for AppError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        use deadpool::managed::PoolError;
        match error {
            PoolError::Timeout(kind) => {
                AppError::Unavailable(format!("timed out waiting for a connection ({kind:?})"))
            }
            PoolError::Backend(e) => AppError::Unavailable(e.to_string()),
            PoolError::Closed => AppError::Unavailable("pool closed".into()),
            other => AppError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(AppError::invalid("user.email", "is not an email address"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "user.email: is not an email address");
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations[0].field, "user.email");
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_FIELD");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["field"], "user.email");
    }

    #[test]
    fn every_error_carries_a_stable_reason() {
        let errors = [
            AppError::Unauthenticated("x".into()),
            AppError::PermissionDenied("x".into()),
            AppError::NotFound("x".into()),
            AppError::FailedPrecondition("x".into()),
            AppError::Aborted("x".into()),
            AppError::Unavailable("x".into()),
            AppError::Draining("x".into()),
            AppError::Malformed("x".into()),
            AppError::LimitExceeded {
                limit: "WATCHES_PER_CALLER",
                message: "x".into(),
                retry_after: Duration::from_secs(1),
            },
            AppError::internal("x"),
        ];
        for error in errors {
            let reason = error.reason();
            assert!(
                reason.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{reason}"
            );
            let status = Status::from(error);
            let info = status.get_error_details().error_info().cloned();
            assert_eq!(info.map(|i| i.reason), Some(reason.to_owned()));
        }
    }

    #[test]
    fn internal_detail_never_reaches_the_caller() {
        let status = Status::from(AppError::internal("SELECT secret FROM users"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }

    #[test]
    fn unavailable_hides_the_detail() {
        let status = Status::from(AppError::Unavailable("connection refused 10.0.0.1".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.1"));
    }

    #[test]
    fn throttling_carries_a_retry_hint() {
        let status = Status::from(AppError::ResourceExhausted {
            message: "too many failed logins".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn unique_index_maps_to_its_field() {
        let error = unique_violation(Some("users_username_key"));
        assert_eq!(
            error.to_string(),
            "a user with this username already exists"
        );
        assert_eq!(error.code(), Code::AlreadyExists);
    }

    #[test]
    fn deadlocks_are_aborted_not_internal() {
        struct Info;
        impl diesel::result::DatabaseErrorInformation for Info {
            fn message(&self) -> &str {
                "deadlock detected"
            }
            fn details(&self) -> Option<&str> {
                None
            }
            fn hint(&self) -> Option<&str> {
                None
            }
            fn table_name(&self) -> Option<&str> {
                None
            }
            fn column_name(&self) -> Option<&str> {
                None
            }
            fn constraint_name(&self) -> Option<&str> {
                None
            }
            fn statement_position(&self) -> Option<i32> {
                None
            }
        }
        let error = AppError::from(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new(Info),
        ));
        assert_eq!(error.code(), Code::Aborted);
    }

    #[test]
    fn pool_timeout_is_unavailable() {
        let error = AppError::from(deadpool::managed::PoolError::Timeout(
            deadpool::managed::TimeoutType::Wait,
        ));
        assert_eq!(error.code(), Code::Unavailable);
    }
}
