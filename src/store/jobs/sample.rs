//! A made-up `jobs` row for unit tests of code that reads rows (the wire
//! conversions, the registry's lease matching), so that each test states
//! only the fields it is about.

use uuid::Uuid;

use super::{JobRow, JobStatus};

impl JobRow {
    /// A job named `a` in `status`, created, scheduled and updated at
    /// `now`, on its first attempt of three, with nothing else set.
    pub fn sample(status: JobStatus, now: chrono::NaiveDateTime) -> Self {
        Self {
            id: Uuid::nil(),
            name: "a".into(),
            module_name: None,
            status,
            priority: 0,
            payload: serde_json::json!({}),
            result: None,
            error: None,
            attempts: 1,
            max_attempts: 3,
            scheduled_at: now,
            started_at: None,
            completed_at: None,
            failed_at: None,
            created_at: now,
            updated_at: now,
            leased_by: None,
            lease_expires_at: None,
            worker_id: None,
            idempotency_key: None,
            created_by: None,
            attempt_budget: None,
            hook: None,
            traceparent: None,
            progress: None,
            progress_attempt: None,
            progress_at: None,
            schedule_id: None,
            concurrency_key: None,
            concurrency_max: None,
            rate_limit: None,
        }
    }
}
