//! Queue control on the wire: the queue a pause names, pauses and queue
//! figures to the wire, and what a batch call selects (ids or a filter).

use std::time::Duration;

use super::{
    jobs::status_filter,
    time::{duration_message, optional_time, timestamp},
};
use crate::{
    domain::{
        jobs::{BatchSelection, MAX_BATCH_PAGE},
        validate,
    },
    error::AppError,
    proto::automation_v1 as pb,
    store::{
        jobs::{JobFilter, JobStatus, PauseRow, QueueFigures, QueueKey},
        pagination::{Cursor, PageRequest},
    },
};

/// Jobs a filtered batch call takes when `page_size` is 0.
const DEFAULT_BATCH_PAGE: i64 = 100;

/// The queue a `QueueSelector` names: exactly one of its fields.
pub fn queue_key(selector: Option<&pb::QueueSelector>) -> Result<QueueKey, AppError> {
    let selector = selector.ok_or_else(|| AppError::invalid("queue", "is required"))?;
    match (
        selector.job_name.is_empty(),
        selector.module_name.is_empty(),
    ) {
        (false, true) => Ok(QueueKey::Job(selector.job_name.clone())),
        (true, false) => Ok(QueueKey::Module(selector.module_name.clone())),
        _ => Err(AppError::invalid(
            "queue",
            "name exactly one of job_name and module_name",
        )),
    }
}

/// The wire selector of a queue.
pub fn selector_message(key: QueueKey) -> pb::QueueSelector {
    match key {
        QueueKey::Job(name) => pb::QueueSelector {
            job_name: name,
            ..Default::default()
        },
        QueueKey::Module(name) => pb::QueueSelector {
            module_name: name,
            ..Default::default()
        },
    }
}

/// The wire form of a stored pause.
pub fn pause_message(row: PauseRow) -> pb::QueuePause {
    pb::QueuePause {
        queue: row.key().map(selector_message),
        pause_time: Some(timestamp(row.paused_at)),
        paused_by: row.paused_by.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// The wire form of a queue's figures.
pub fn queue_message(row: QueueFigures) -> pb::Queue {
    pb::Queue {
        name: row.name,
        module_name: row.module_name.unwrap_or_default(),
        pending_count: row.pending,
        scheduled_count: row.scheduled,
        running_count: row.running,
        failed_last_hour_count: row.failed_last_hour,
        oldest_pending_age: row
            .oldest_pending_micros
            .map(|micros| duration_message(Duration::from_micros(micros.max(0) as u64))),
        paused: row.paused,
        settling: row.settling,
    }
}

/// The wire form of a job a batch call skipped.
pub fn skipped_message((id, status): (uuid::Uuid, JobStatus)) -> pb::SkippedJob {
    pb::SkippedJob {
        id: id.to_string(),
        status: super::jobs::status_message(status).into(),
    }
}

/// What a batch call takes: `ids`, or one page of `filter`'s matches.
pub fn batch_selection(
    ids: &[String],
    filter: Option<&pb::JobFilter>,
    page_size: i32,
    page_token: &str,
) -> Result<BatchSelection, AppError> {
    match (ids.is_empty(), filter) {
        (false, Some(_)) => Err(AppError::invalid(
            "filter",
            "give ids or a filter, not both",
        )),
        (true, None) => Err(AppError::invalid("ids", "give ids or a filter")),
        (false, None) => {
            if !page_token.is_empty() {
                return Err(AppError::invalid(
                    "page_token",
                    "pages are for a filter; ids are one call",
                ));
            }
            let ids = ids
                .iter()
                .enumerate()
                .map(|(index, id)| validate::id(&format!("ids[{index}]"), id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(BatchSelection::Ids(ids))
        }
        (true, Some(filter)) => {
            let limit = match page_size {
                n if n < 0 => return Err(AppError::invalid("page_size", "must not be negative")),
                0 => DEFAULT_BATCH_PAGE,
                n => i64::from(n).min(MAX_BATCH_PAGE),
            };
            Ok(BatchSelection::Filter {
                filter: Box::new(job_filter(filter)?),
                page: PageRequest {
                    limit,
                    after: Cursor::decode(page_token)?,
                },
            })
        }
    }
}

/// A batch call's `JobFilter`, its fields named `filter.<field>`.
fn job_filter(filter: &pb::JobFilter) -> Result<JobFilter, AppError> {
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    let time = |name: &str, value: Option<&prost_types::Timestamp>| {
        optional_time(&format!("filter.{name}"), value)
    };
    Ok(JobFilter {
        status: status_filter(filter.status)
            .map_err(|_| AppError::invalid("filter.status", "is not a JobStatus"))?,
        module_name: non_empty(&filter.module_name),
        name: non_empty(&filter.name),
        created_from: time("create_time_start", filter.create_time_start.as_ref())?,
        created_until: time("create_time_end", filter.create_time_end.as_ref())?,
        error_prefix: non_empty(&filter.error_message_prefix),
        failed_from: time("fail_time_start", filter.fail_time_start.as_ref())?,
        failed_until: time("fail_time_end", filter.fail_time_end.as_ref())?,
        finished_from: time("finish_time_start", filter.finish_time_start.as_ref())?,
        finished_until: time("finish_time_end", filter.finish_time_end.as_ref())?,
        schedule_id: match filter.schedule_id.as_str() {
            "" => None,
            id => Some(super::id("filter.schedule_id", id)?),
        },
        ..JobFilter::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_names_exactly_one_queue() {
        let both = pb::QueueSelector {
            job_name: "a".into(),
            module_name: "m".into(),
        };
        assert!(queue_key(Some(&both)).is_err());
        assert!(queue_key(Some(&pb::QueueSelector::default())).is_err());
        assert!(queue_key(None).is_err());
        let job = pb::QueueSelector {
            job_name: "a".into(),
            ..Default::default()
        };
        assert_eq!(queue_key(Some(&job)).unwrap(), QueueKey::Job("a".into()));
    }

    #[test]
    fn a_batch_takes_ids_or_a_filter() {
        let filter = pb::JobFilter::default();
        assert!(batch_selection(&["x".into()], Some(&filter), 0, "").is_err());
        assert!(batch_selection(&[], None, 0, "").is_err());
        let error = batch_selection(&["nope".into()], None, 0, "").unwrap_err();
        assert!(error.to_string().starts_with("ids[0]"), "{error}");
        match batch_selection(&[], Some(&filter), 5000, "").unwrap() {
            BatchSelection::Filter { page, .. } => assert_eq!(page.limit, MAX_BATCH_PAGE),
            other => panic!("{other:?}"),
        }
    }
}
