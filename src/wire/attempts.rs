//! `JobAttempt` messages: a job's attempt history to the wire.

use super::time::timestamp;
use crate::{
    proto::automation_v1 as pb,
    store::jobs::{AttemptOutcome, AttemptRow},
};

/// The wire outcome of a stored label (an unknown one: unspecified).
pub fn outcome_message(label: &str) -> pb::JobAttemptOutcome {
    match AttemptOutcome::from_label(label) {
        Some(AttemptOutcome::Running) => pb::JobAttemptOutcome::Running,
        Some(AttemptOutcome::Completed) => pb::JobAttemptOutcome::Completed,
        Some(AttemptOutcome::Failed) => pb::JobAttemptOutcome::Failed,
        Some(AttemptOutcome::HandedBack) => pb::JobAttemptOutcome::HandedBack,
        Some(AttemptOutcome::LeaseLost) => pb::JobAttemptOutcome::LeaseLost,
        Some(AttemptOutcome::LeaseExpired) => pb::JobAttemptOutcome::LeaseExpired,
        Some(AttemptOutcome::Cancelled) => pb::JobAttemptOutcome::Cancelled,
        None => pb::JobAttemptOutcome::Unspecified,
    }
}

/// The wire `JobAttempt` of a row.
pub fn attempt_message(row: AttemptRow) -> pb::JobAttempt {
    pb::JobAttempt {
        job_id: row.job_id.to_string(),
        attempt: row.attempt,
        worker_id: row.worker_id.unwrap_or_default(),
        stream_id: row.stream_id.map(|id| id.to_string()).unwrap_or_default(),
        lease_time: row.leased_at.map(timestamp),
        end_time: row.ended_at.map(timestamp),
        outcome: outcome_message(&row.outcome).into(),
        error_message: row.error.unwrap_or_default(),
        lease_expire_time: row.lease_expires_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_attempt_has_no_end_and_a_lease_end() {
        let now = chrono::Utc::now().naive_utc();
        let message = attempt_message(AttemptRow {
            job_id: uuid::Uuid::nil(),
            attempt: 2,
            worker_id: Some("w-1".into()),
            stream_id: None,
            leased_at: Some(now),
            ended_at: None,
            outcome: "RUNNING".into(),
            error: None,
            lease_expires_at: Some(now),
        });
        assert_eq!(message.outcome(), pb::JobAttemptOutcome::Running);
        assert!(message.end_time.is_none() && message.lease_expire_time.is_some());
        assert_eq!(message.stream_id, "");
        assert_eq!(
            outcome_message("LEASE_EXPIRED"),
            pb::JobAttemptOutcome::LeaseExpired
        );
    }
}
