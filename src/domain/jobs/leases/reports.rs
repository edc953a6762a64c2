//! What workers report on their leases, and what the settle answers.

use serde_json::json;

use crate::store::jobs::LeaseRef;

/// What a worker says about one lease.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    /// The attempt finished with this result.
    Completed(serde_json::Value),
    /// The attempt failed; `error` holds message, details and attempt.
    Failed {
        error: serde_json::Value,
        permanent: bool,
    },
    /// The worker gives the job back unfinished.
    Released,
}

/// One report on one lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub lease: LeaseRef,
    pub kind: ReportKind,
}

/// Whether a report was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    pub accepted: bool,
    /// Why not, when not.
    pub reason: String,
}

/// The error a failure report leaves on its job.
pub fn failure_error(
    message: &str,
    details: serde_json::Value,
    attempt: i32,
    permanent: bool,
) -> serde_json::Value {
    json!({
        "message": message,
        "details": details,
        "attempt": attempt,
        "permanent": permanent,
    })
}
