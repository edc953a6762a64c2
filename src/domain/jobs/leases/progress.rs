//! Progress of running jobs, as their workers report it: a percent, a short
//! message and small details. Best effort: the dispatcher keeps the latest
//! report of each lease in memory and stores it at most once a second per
//! job ([`Leases::write_progress`]); the last one reported before the
//! attempt's completion, failure or release is stored with that report
//! ([`Leases::settle_with_progress`]).
//!
//! Progress belongs to an attempt (`progressAttempt`): a job shows it only
//! while that attempt is its latest, so a new attempt starts with none
//! (without the claim having to clear anything) and a finished job keeps
//! its last attempt's. It is fenced like reports: only the stream holding
//! the attempt's lease, while the job runs, may write it.

use serde_json::{Map, Value, json};

use super::Leases;
use crate::{
    db,
    domain::{events::QueueChanges, validate},
    error::AppError,
    store::jobs::{self as rows, ProgressWrite},
};

/// Longest progress `message`, in bytes (the proto declares the same limit,
/// which the codec checks first).
pub const MESSAGE_MAX_BYTES: usize = 1024;
/// Largest progress `details`, as JSON.
pub const DETAILS_MAX_BYTES: usize = 8 * 1024;

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0 to 100.
    pub percent: Option<f64>,
    pub message: String,
    /// A JSON object.
    pub details: Option<Value>,
}

impl Progress {
    /// Checks its shapes, naming the field (`progress.percent`, …).
    pub fn validate(&self) -> Result<(), AppError> {
        if let Some(percent) = self.percent
            && !(percent.is_finite() && (0.0..=100.0).contains(&percent))
        {
            return Err(AppError::invalid(
                "progress.percent",
                "must be a number within 0..100",
            ));
        }
        if self.message.len() > MESSAGE_MAX_BYTES {
            return Err(AppError::invalid(
                "progress.message",
                format!("is longer than {MESSAGE_MAX_BYTES} bytes"),
            ));
        }
        if self.message.contains('\0') {
            return Err(AppError::invalid(
                "progress.message",
                "must not contain NUL characters",
            ));
        }
        if let Some(details) = &self.details {
            validate::json_document("progress.details", details, DETAILS_MAX_BYTES)?;
        }
        Ok(())
    }

    /// As stored: `{"percent", "message", "details"}`, unset ones left out.
    pub fn to_json(&self) -> Value {
        let mut stored = Map::new();
        if let Some(percent) = self.percent {
            stored.insert("percent".into(), json!(percent));
        }
        if !self.message.is_empty() {
            stored.insert("message".into(), json!(self.message));
        }
        if let Some(details) = &self.details {
            stored.insert("details".into(), details.clone());
        }
        Value::Object(stored)
    }

    /// Read back from what [`Self::to_json`] stored.
    pub fn from_json(stored: &Value) -> Self {
        Self {
            percent: stored.get("percent").and_then(Value::as_f64),
            message: stored
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            details: stored.get("details").filter(|d| d.is_object()).cloned(),
        }
    }
}

impl Leases {
    /// Stores the latest progress of these leases, each only while its
    /// attempt still runs on the stream that reported it, and announces the
    /// jobs written as changed (WatchJob on every replica re-reads them).
    /// Returns how many were written.
    pub async fn write_progress(&self, writes: &[ProgressWrite]) -> Result<usize, AppError> {
        if writes.is_empty() {
            return Ok(0);
        }
        db::transaction(&self.pool, "jobs.progress", async |conn| {
            let written = rows::write_progress(conn, writes).await?;
            let changes = QueueChanges {
                changed: written.clone(),
                ..QueueChanges::default()
            };
            changes.announce(conn).await?;
            Ok(written.len())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(percent: Option<f64>, message: &str, details: Option<Value>) -> Progress {
        Progress {
            percent,
            message: message.into(),
            details,
        }
    }

    #[test]
    fn percent_message_and_details_are_bounded() {
        progress(Some(0.0), "", None).validate().unwrap();
        progress(Some(100.0), &"m".repeat(1024), Some(json!({"k": 1})))
            .validate()
            .unwrap();
        for bad in [-0.5, 100.5, f64::NAN, f64::INFINITY] {
            let error = progress(Some(bad), "", None).validate().unwrap_err();
            assert!(
                error.to_string().starts_with("progress.percent:"),
                "{error}"
            );
        }
        let error = progress(None, &"m".repeat(1025), None)
            .validate()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("progress.message:"),
            "{error}"
        );
        let large = json!({ "k": "x".repeat(DETAILS_MAX_BYTES) });
        let error = progress(None, "", Some(large)).validate().unwrap_err();
        assert!(
            error.to_string().starts_with("progress.details:"),
            "{error}"
        );
        let error = progress(None, "", Some(json!({"k": "a\u{0}"})))
            .validate()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("progress.details:"),
            "{error}"
        );
    }

    #[test]
    fn stored_progress_reads_back_with_unset_parts_left_out() {
        let full = progress(Some(42.5), "copying", Some(json!({"files": 3})));
        assert_eq!(
            full.to_json(),
            json!({"percent": 42.5, "message": "copying", "details": {"files": 3}})
        );
        assert_eq!(Progress::from_json(&full.to_json()), full);
        let empty = progress(None, "", None);
        assert_eq!(empty.to_json(), json!({}));
        assert_eq!(Progress::from_json(&empty.to_json()), empty);
    }
}
