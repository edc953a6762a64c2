//! Progress of running jobs, as handlers report it: [`Job::progress`] and
//! [`Job::report_progress`] never wait and never fail. Each job keeps only
//! its latest report; the stream sends what is waiting on a tick, at most
//! [`SENDS_PER_SEC`] reports a second over all jobs (oldest first), so
//! however often handlers report, the stream stays far inside the server's
//! inbound budget (progress counts toward `WORK_INBOUND_MESSAGES_PER_SEC`).
//! The server stores each job's latest at most once a second anyway.
//!
//! [`Job::progress`]: crate::Job::progress
//! [`Job::report_progress`]: crate::Job::report_progress

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Longest message the server takes, in bytes; longer ones are cut.
pub const MESSAGE_MAX_BYTES: usize = 1024;
/// Largest details the server takes, as JSON; larger ones are dropped.
pub const DETAILS_MAX_BYTES: usize = 8 * 1024;
/// Most progress reports the stream sends a second, over all its jobs.
pub const SENDS_PER_SEC: u32 = 200;
/// How often waiting progress is sent.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// How far a job has got: a percent, a short message, small details; each
/// may be left out. Each report replaces the previous one whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// 0 to 100 (clamped; NaN is left out).
    pub percent: Option<f64>,
    /// For people; cut to [`MESSAGE_MAX_BYTES`].
    pub message: String,
    /// A JSON object of at most [`DETAILS_MAX_BYTES`] (a larger one is
    /// dropped, with a warning; a value that is no object is wrapped as
    /// `{"value": …}`).
    pub details: Option<serde_json::Value>,
}

impl Progress {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a percent, 0 to 100.
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = Some(percent);
        self
    }

    /// With a message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// With details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Within what the server takes, so that a report can never end the
    /// stream: percent clamped, message cut and without NULs, details that
    /// are too large or hold NULs dropped.
    pub(crate) fn bounded(mut self) -> Self {
        self.percent = self
            .percent
            .filter(|p| !p.is_nan())
            .map(|p| p.clamp(0.0, 100.0));
        if self.message.contains('\0') {
            self.message = self.message.replace('\0', "");
        }
        if self.message.len() > MESSAGE_MAX_BYTES {
            let mut end = MESSAGE_MAX_BYTES;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
        }
        self.details = self.details.take().and_then(|details| {
            let details = match details {
                serde_json::Value::Object(map) => serde_json::Value::Object(map),
                other => serde_json::json!({ "value": other }),
            };
            let size = serde_json::to_vec(&details).map_or(usize::MAX, |v| v.len());
            if size > DETAILS_MAX_BYTES || has_nul(&details) {
                tracing::warn!(
                    size,
                    "progress details dropped: over {DETAILS_MAX_BYTES} bytes or holding NULs"
                );
                return None;
            }
            Some(details)
        });
        self
    }
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// A job's latest progress not sent yet, and since when something waits.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgressSlot(Arc<Mutex<Option<(Progress, Instant)>>>);

impl ProgressSlot {
    /// Keeps `progress` as the latest.
    pub(crate) fn set(&self, progress: Progress) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let since = slot.as_ref().map_or_else(Instant::now, |(_, since)| *since);
        *slot = Some((progress, since));
    }

    /// Since when something waits, if anything does.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|(_, since)| *since)
    }

    /// Takes what waits.
    pub(crate) fn take(&self) -> Option<Progress> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.take().map(|(progress, _)| progress)
    }
}

/// The stream's allowance of progress sends: [`SENDS_PER_SEC`] a second,
/// as much in a burst (a token bucket).
#[derive(Debug)]
pub(crate) struct SendBudget {
    tokens: f64,
    at: Instant,
}

impl SendBudget {
    pub(crate) fn new() -> Self {
        Self {
            tokens: f64::from(SENDS_PER_SEC),
            at: Instant::now(),
        }
    }

    /// Sends allowed now.
    pub(crate) fn available(&mut self) -> usize {
        let now = Instant::now();
        let rate = f64::from(SENDS_PER_SEC);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        self.tokens.floor() as usize
    }

    /// Spends `sent` sends (at most what [`Self::available`] said).
    pub(crate) fn spend(&mut self, sent: usize) {
        self.tokens = (self.tokens - sent as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_report_is_bounded_to_what_the_server_takes() {
        let bounded = Progress::new()
            .percent(140.0)
            .message(format!("a\u{0}{}", "é".repeat(600)))
            .details(json!([1, 2]))
            .bounded();
        assert_eq!(bounded.percent, Some(100.0));
        assert!(bounded.message.len() <= MESSAGE_MAX_BYTES);
        assert!(bounded.message.starts_with("aé"));
        assert_eq!(bounded.details, Some(json!({ "value": [1, 2] })));
        let dropped = Progress::new()
            .percent(f64::NAN)
            .details(json!({ "k": "x".repeat(DETAILS_MAX_BYTES) }))
            .bounded();
        assert_eq!((dropped.percent, dropped.details), (None, None));
    }

    #[test]
    fn a_slot_keeps_the_latest_and_when_it_started_waiting() {
        let slot = ProgressSlot::default();
        assert_eq!(slot.waiting_since(), None);
        slot.set(Progress::new().percent(1.0));
        let since = slot.waiting_since().unwrap();
        slot.set(Progress::new().percent(2.0));
        assert_eq!(slot.waiting_since(), Some(since));
        assert_eq!(slot.take(), Some(Progress::new().percent(2.0)));
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn the_send_budget_refills_up_to_a_second_of_sends() {
        let mut budget = SendBudget::new();
        assert_eq!(budget.available(), SENDS_PER_SEC as usize);
        budget.spend(SENDS_PER_SEC as usize);
        assert!(budget.available() < 5);
    }
}
