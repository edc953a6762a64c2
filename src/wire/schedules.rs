//! `Schedule` messages and the requests of `ScheduleService`: schedules to
//! the wire, create and update requests to the domain.

use super::{
    json::{json_to_struct, struct_to_json},
    mask::mask_paths,
    time::timestamp,
};
use crate::{
    domain::schedules::{
        JobTemplate, MissedFirePolicy, OverlapPolicy, ScheduleSpec, ScheduleUpdate, missed_policy,
    },
    error::AppError,
    proto::automation_v1 as pb,
    store::schedules::ScheduleRow,
};

/// The fields UpdateSchedule may change.
const UPDATABLE: [&str; 7] = [
    "name",
    "description",
    "cron_expression",
    "time_zone",
    "job_template",
    "overlap_policy",
    "missed_fire_policy",
];

/// The wire `Schedule` of a row.
pub fn schedule_message(row: ScheduleRow) -> pb::Schedule {
    let overlap = match OverlapPolicy::from_label(&row.overlap_policy) {
        OverlapPolicy::Allow => pb::OverlapPolicy::Allow,
        OverlapPolicy::Skip => pb::OverlapPolicy::Skip,
        OverlapPolicy::CancelPrevious => pb::OverlapPolicy::CancelPrevious,
    };
    let missed = match missed_policy(&row.missed_fire_policy) {
        MissedFirePolicy::Skip => pb::MissedFirePolicy::Skip,
        MissedFirePolicy::RunOnce => pb::MissedFirePolicy::RunOnce,
    };
    pb::Schedule {
        id: row.id.to_string(),
        name: row.name,
        description: row.description,
        cron_expression: row.cron,
        time_zone: row.time_zone,
        job_template: Some(pb::JobTemplate {
            name: row.job_name,
            module_name: row.module_name.unwrap_or_default(),
            payload: Some(json_to_struct(row.payload)),
            priority: row.priority,
            max_attempts: row.max_attempts.unwrap_or_default(),
        }),
        overlap_policy: overlap.into(),
        missed_fire_policy: missed.into(),
        paused: row.paused,
        next_fire_time: row.next_fire_at.map(timestamp),
        last_fire_time: row.last_fire_at.map(timestamp),
        last_job_id: row.last_job_id.map(|id| id.to_string()).unwrap_or_default(),
        last_error: row.last_error.unwrap_or_default(),
        creator: row.created_by.map(|id| id.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

/// A template from the wire; 0 and empty mean "not given".
fn template(message: pb::JobTemplate) -> JobTemplate {
    JobTemplate {
        name: message.name,
        module_name: (!message.module_name.is_empty()).then_some(message.module_name),
        payload: message
            .payload
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::json!({})),
        priority: message.priority,
        max_attempts: match message.max_attempts {
            0 => None,
            n => Some(n),
        },
    }
}

/// An overlap policy; UNSPECIFIED is `None` (the default).
fn overlap_policy(field: &str, value: i32) -> Result<Option<OverlapPolicy>, AppError> {
    Ok(match pb::OverlapPolicy::try_from(value) {
        Ok(pb::OverlapPolicy::Unspecified) => None,
        Ok(pb::OverlapPolicy::Allow) => Some(OverlapPolicy::Allow),
        Ok(pb::OverlapPolicy::Skip) => Some(OverlapPolicy::Skip),
        Ok(pb::OverlapPolicy::CancelPrevious) => Some(OverlapPolicy::CancelPrevious),
        Err(_) => return Err(AppError::invalid(field, "is not an OverlapPolicy")),
    })
}

/// A missed-fire policy; UNSPECIFIED is `None` (the default).
fn missed_fire_policy(field: &str, value: i32) -> Result<Option<MissedFirePolicy>, AppError> {
    Ok(match pb::MissedFirePolicy::try_from(value) {
        Ok(pb::MissedFirePolicy::Unspecified) => None,
        Ok(pb::MissedFirePolicy::Skip) => Some(MissedFirePolicy::Skip),
        Ok(pb::MissedFirePolicy::RunOnce) => Some(MissedFirePolicy::RunOnce),
        Err(_) => return Err(AppError::invalid(field, "is not a MissedFirePolicy")),
    })
}

/// A `CreateScheduleRequest` as a spec (its shapes are checked by the
/// domain).
pub fn schedule_spec(request: pb::CreateScheduleRequest) -> Result<ScheduleSpec, AppError> {
    Ok(ScheduleSpec {
        overlap_policy: overlap_policy("overlap_policy", request.overlap_policy)?,
        missed_fire_policy: missed_fire_policy("missed_fire_policy", request.missed_fire_policy)?,
        name: request.name,
        description: request.description,
        cron_expression: request.cron_expression,
        time_zone: request.time_zone,
        job_template: request.job_template.map(template),
        paused: request.paused,
    })
}

/// The schedule an `UpdateScheduleRequest` names and the fields it changes.
pub fn schedule_update(
    request: pb::UpdateScheduleRequest,
) -> Result<(String, ScheduleUpdate), AppError> {
    let paths: Vec<String> = mask_paths(request.update_mask.as_ref(), &UPDATABLE)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let schedule = request
        .schedule
        .ok_or_else(|| AppError::invalid("schedule", "is required"))?;
    let wants = |field: &str| paths.iter().any(|p| p == field);
    let mut update = ScheduleUpdate {
        name: wants("name").then(|| schedule.name.clone()),
        description: wants("description").then(|| schedule.description.clone()),
        cron_expression: wants("cron_expression").then(|| schedule.cron_expression.clone()),
        time_zone: wants("time_zone").then(|| schedule.time_zone.clone()),
        ..ScheduleUpdate::default()
    };
    if wants("job_template") {
        let message = schedule.job_template.clone().ok_or_else(|| {
            AppError::invalid(
                "schedule.job_template",
                "is required when the mask names it",
            )
        })?;
        update.job_template = Some(template(message));
    }
    if wants("overlap_policy") {
        update.overlap_policy = Some(
            overlap_policy("schedule.overlap_policy", schedule.overlap_policy)?.unwrap_or_default(),
        );
    }
    if wants("missed_fire_policy") {
        update.missed_fire_policy = Some(
            missed_fire_policy("schedule.missed_fire_policy", schedule.missed_fire_policy)?
                .unwrap_or(MissedFirePolicy::Skip),
        );
    }
    Ok((schedule.id, update))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_changes_only_what_its_mask_names() {
        let request = pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                id: "nightly".into(),
                cron_expression: "0 3 * * *".into(),
                description: "ignored".into(),
                overlap_policy: pb::OverlapPolicy::Skip.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["cron_expression".into(), "overlap_policy".into()],
            }),
        };
        let (key, update) = schedule_update(request).unwrap();
        assert_eq!(key, "nightly");
        assert_eq!(update.cron_expression.as_deref(), Some("0 3 * * *"));
        assert_eq!(update.description, None);
        assert_eq!(update.overlap_policy, Some(OverlapPolicy::Skip));
        assert_eq!(update.fields(), ["cron_expression", "overlap_policy"]);
    }

    #[test]
    fn unknown_policies_and_mask_paths_are_refused_by_name() {
        let request = pb::CreateScheduleRequest {
            overlap_policy: 42,
            ..Default::default()
        };
        assert_eq!(
            schedule_spec(request).unwrap_err().to_string(),
            "overlap_policy: is not an OverlapPolicy"
        );
        let request = pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["paused".into()],
            }),
        };
        assert!(
            schedule_update(request)
                .unwrap_err()
                .to_string()
                .starts_with("update_mask: 'paused' cannot be updated")
        );
    }
}
