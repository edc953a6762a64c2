//! The values of a schedule as callers give them: what to create, and the
//! job template and policies it carries.

use super::cron::MissedFirePolicy;
use crate::{domain::jobs::JobSpec, store::schedules::ScheduleRow};

/// Largest template payload, as JSON: a schedule holds one for good and
/// copies it into every job, so it is bounded well below a job's own
/// payload limit (and within the small-message cap of its RPCs).
pub const TEMPLATE_PAYLOAD_MAX_BYTES: usize = 64 * 1024;

/// What a fire time does while an earlier job of the schedule is unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverlapPolicy {
    /// Create the job anyway.
    #[default]
    Allow,
    /// Create none for this fire time.
    Skip,
    /// Cancel the unfinished ones, then create it.
    CancelPrevious,
}

impl OverlapPolicy {
    /// The stored name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Skip => "SKIP",
            Self::CancelPrevious => "CANCEL_PREVIOUS",
        }
    }

    /// A stored name (ALLOW for anything unknown).
    pub fn from_label(label: &str) -> Self {
        match label {
            "SKIP" => Self::Skip,
            "CANCEL_PREVIOUS" => Self::CancelPrevious,
            _ => Self::Allow,
        }
    }
}

/// The job a schedule creates at each fire time (CreateJob's fields).
#[derive(Debug, Clone, PartialEq)]
pub struct JobTemplate {
    pub name: String,
    pub module_name: Option<String>,
    pub payload: serde_json::Value,
    /// 0: the module's default for the type, else 0.
    pub priority: i32,
    /// `None`: the module's default, else 3.
    pub max_attempts: Option<i32>,
}

impl JobTemplate {
    /// The template as a CreateJob request.
    pub fn job_spec(&self) -> JobSpec {
        JobSpec {
            name: self.name.clone(),
            module_name: self.module_name.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            ..JobSpec::default()
        }
    }
}

/// The CreateJob request of a stored schedule's template.
pub fn job_spec(row: &ScheduleRow) -> JobSpec {
    JobTemplate {
        name: row.job_name.clone(),
        module_name: row.module_name.clone(),
        payload: row.payload.clone(),
        priority: row.priority,
        max_attempts: row.max_attempts,
    }
    .job_spec()
}

/// A schedule to create.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: String,
    pub description: String,
    pub cron_expression: String,
    /// Empty: UTC.
    pub time_zone: String,
    pub job_template: Option<JobTemplate>,
    /// `None`: ALLOW.
    pub overlap_policy: Option<OverlapPolicy>,
    /// `None`: SKIP.
    pub missed_fire_policy: Option<MissedFirePolicy>,
    pub paused: bool,
}

/// The fields an UpdateSchedule changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub cron_expression: Option<String>,
    pub time_zone: Option<String>,
    pub job_template: Option<JobTemplate>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub missed_fire_policy: Option<MissedFirePolicy>,
}

impl ScheduleUpdate {
    /// The names of the fields it changes, for the audit trail.
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("description", self.description.is_some()),
            ("cron_expression", self.cron_expression.is_some()),
            ("time_zone", self.time_zone.is_some()),
            ("job_template", self.job_template.is_some()),
            ("overlap_policy", self.overlap_policy.is_some()),
            ("missed_fire_policy", self.missed_fire_policy.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}
