//! BatchRetryJobs and BatchCancelJobs: the single calls' rules applied to a
//! page of jobs (named by id, or matching a ListJobs filter), all or nothing
//! per page, in one transaction, audited once per call with the filter.
//!
//! All or nothing, precisely: with ids, a job missing or breaking a rule
//! (a hook, a permission, its module) refuses the whole call and names
//! it; nothing changes. A named job in a state the action does not apply
//! to (a running job that completed, a failed one another call retried
//! since it was listed) is skipped and reported in `skipped`: under load
//! jobs move between a listing and the call, and refusing the rest for it
//! would make the call rarely succeed. With a filter, the page is the jobs that match it
//! *and* are in a state the action applies to (a filter can only select
//! such states, and leaves hooks out), so a state never refuses a page;
//! a job that a concurrent call changed between the selection and the lock
//! no longer matches and is left out (it is that call's); any other broken
//! rule refuses the page.

use serde_json::json;
use uuid::Uuid;

use super::{Jobs, Page, QueueChanges, Revocation, RevokeCause, owners::Owners, rows, rules};
use crate::{
    db,
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent, AuditTrail},
        modules::owners,
    },
    error::AppError,
    store::{
        jobs::{JobFilter, JobRow, JobStatus},
        pagination::{Cursor, PageRequest},
    },
};

/// Most jobs one batch call acts on.
pub const MAX_BATCH_PAGE: i64 = 1000;

/// The jobs a batch call acts on.
#[derive(Debug, Clone)]
pub enum BatchSelection {
    /// These jobs (1 to [`MAX_BATCH_PAGE`]); `ids[i]` names one in errors.
    Ids(Vec<Uuid>),
    /// One page of the jobs matching a filter (its `before` is ignored: the
    /// page says where to start).
    Filter {
        filter: Box<JobFilter>,
        page: PageRequest,
    },
}

/// The batch action, and what differs between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Cancel,
}

impl Action {
    fn states(self) -> &'static [JobStatus] {
        match self {
            Self::Retry => &[JobStatus::Failed, JobStatus::Cancelled],
            Self::Cancel => &[JobStatus::Pending, JobStatus::Running],
        }
    }

    fn audit(self) -> AuditAction {
        match self {
            Self::Retry => AuditAction::BatchRetryJobs,
            Self::Cancel => AuditAction::BatchCancelJobs,
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Self::Retry => "jobs.batch_retry",
            Self::Cancel => "jobs.batch_cancel",
        }
    }
}

/// A named job a call left alone, and its state when the call locked it.
pub type Skipped = (Uuid, JobStatus);

/// The page a call takes: the ids, in order, and the next page's token.
struct Chosen {
    ids: Vec<Uuid>,
    by_filter: bool,
    next_page_token: String,
}

impl Jobs {
    /// Puts back in the queue the FAILED or CANCELLED jobs `selection`
    /// names, all or none.
    pub async fn retry_batch(
        &self,
        actor: &Actor,
        selection: BatchSelection,
    ) -> Result<(Page<JobRow>, Vec<Skipped>), AppError> {
        let (page, skipped) = self.batch(actor, Action::Retry, selection).await?;
        if !page.items.is_empty() {
            self.wake.notify_one();
        }
        Ok((page, skipped))
    }

    /// Cancels the PENDING or RUNNING jobs `selection` names, all or none;
    /// the workers running some are told, wherever they are connected.
    pub async fn cancel_batch(
        &self,
        actor: &Actor,
        selection: BatchSelection,
    ) -> Result<(Page<JobRow>, Vec<Skipped>), AppError> {
        let (page, skipped) = self.batch(actor, Action::Cancel, selection).await?;
        crate::telemetry::names::jobs_cancelled("api", page.items.len());
        Ok((page, skipped))
    }

    async fn batch(
        &self,
        actor: &Actor,
        action: Action,
        selection: BatchSelection,
    ) -> Result<(Page<JobRow>, Vec<Skipped>), AppError> {
        let audited = audited_selection(&selection);
        db::transaction(&self.pool, action.operation(), async |conn| {
            if action == Action::Retry {
                owners::lock_for_create(conn).await?;
            }
            let chosen = choose(conn, action, &selection).await?;
            let locked = rows::lock_jobs(conn, &chosen.ids).await?;
            let mut jobs = Vec::with_capacity(locked.len());
            let mut skipped: Vec<Skipped> = Vec::new();
            for (index, id) in chosen.ids.iter().enumerate() {
                let job = locked.iter().find(|job| job.id == *id);
                let Some(job) = job else {
                    if chosen.by_filter {
                        continue;
                    }
                    return Err(AppError::NotFound(format!("job {id} (ids[{index}])")));
                };
                if !action.states().contains(&job.status) {
                    // A concurrent call (or a worker) changed it since it
                    // was chosen (or listed, by the caller).
                    if !chosen.by_filter {
                        skipped.push((job.id, job.status));
                    }
                    continue;
                }
                match action {
                    Action::Retry => rules::may_retry_state(job),
                    Action::Cancel => rules::may_cancel_in_batch(actor, job),
                }
                .map_err(|error| name_in_batch(error, chosen.by_filter, index))?;
                jobs.push(job.clone());
            }
            let changed = match action {
                Action::Retry => {
                    let names: Vec<&str> = jobs.iter().map(|job| job.name.as_str()).collect();
                    let modules: Vec<&str> = jobs
                        .iter()
                        .filter_map(|job| job.module_name.as_deref())
                        .collect();
                    let owners = if jobs.is_empty() {
                        Owners::default()
                    } else {
                        Owners::read(conn, &self.manifests, &names, &modules).await?
                    };
                    for job in &jobs {
                        rules::may_retry_owned(actor, &owners, job)?;
                    }
                    rules::may_retry_buckets(conn, &jobs.iter().collect::<Vec<_>>()).await?;
                    let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
                    rows::requeue_all(conn, &ids).await?
                }
                Action::Cancel => {
                    let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
                    rows::cancel_all(conn, &ids).await?
                }
            };
            let mut changes = QueueChanges::default();
            for job in &changed {
                changes.note(job.id, job.status, true);
            }
            if action == Action::Cancel {
                for job in &jobs {
                    if let (JobStatus::Running, Some(stream)) = (job.status, job.leased_by) {
                        changes.revoked.push(Revocation {
                            stream,
                            job: job.id,
                            attempt: job.attempts,
                            cause: RevokeCause::Cancelled,
                        });
                    }
                }
            }
            changes.announce(conn).await?;
            if !changed.is_empty() {
                let mut details = audited.clone();
                details["count"] = json!(changed.len());
                details["skipped"] = json!(skipped.len());
                details["ids"] = json!(changed.iter().map(|job| job.id).collect::<Vec<_>>());
                let event = AuditEvent::success(
                    action.audit(),
                    Some(actor.caller.user_id),
                    format!("jobs:batch/{}", changed.len()),
                )
                .with_details(details);
                AuditTrail::record(conn, &actor.client, &event).await?;
            }
            // In the order chosen (newest first for a filter).
            let mut ordered = Vec::with_capacity(changed.len());
            for id in &chosen.ids {
                if let Some(job) = changed.iter().find(|job| job.id == *id) {
                    ordered.push(job.clone());
                }
            }
            Ok((
                Page {
                    items: ordered,
                    next_page_token: chosen.next_page_token,
                },
                skipped,
            ))
        })
        .await
    }
}

/// The ids a call takes: the given ones, or a page of the filter's
/// matches in the states the action applies to.
async fn choose(
    conn: &mut diesel_async::AsyncPgConnection,
    action: Action,
    selection: &BatchSelection,
) -> Result<Chosen, AppError> {
    match selection {
        BatchSelection::Ids(ids) => {
            if ids.is_empty() || ids.len() > MAX_BATCH_PAGE as usize {
                return Err(AppError::invalid(
                    "ids",
                    format!("must hold 1 to {MAX_BATCH_PAGE} ids"),
                ));
            }
            for (index, id) in ids.iter().enumerate() {
                if ids[..index].contains(id) {
                    return Err(AppError::invalid(format!("ids[{index}]"), "is given twice"));
                }
            }
            Ok(Chosen {
                ids: ids.clone(),
                by_filter: false,
                next_page_token: String::new(),
            })
        }
        BatchSelection::Filter { filter, page } => {
            let states: Vec<JobStatus> = match filter.status {
                None => action.states().to_vec(),
                Some(status) if action.states().contains(&status) => vec![status],
                Some(status) => {
                    let allowed: Vec<&str> = action.states().iter().map(|s| s.label()).collect();
                    return Err(AppError::invalid(
                        "filter.status",
                        format!(
                            "is {}: this action applies only to {} jobs",
                            status.label(),
                            allowed.join(" or ")
                        ),
                    ));
                }
            };
            let mut filter = filter.clone();
            filter.status = None;
            filter.before = page.after_time()?;
            let limit = page.limit.clamp(1, MAX_BATCH_PAGE);
            let candidates = rows::batch_candidates(conn, &filter, &states, limit + 1).await?;
            let page = Page::from_rows(candidates, limit, |job| {
                Cursor::at_time(job.created_at, job.id)
            });
            Ok(Chosen {
                ids: page.items.iter().map(|job| job.id).collect(),
                by_filter: true,
                next_page_token: page.next_page_token,
            })
        }
    }
}

/// An error about one job of the batch, naming it as `ids[i]` when the
/// caller named it so.
fn name_in_batch(error: AppError, by_filter: bool, index: usize) -> AppError {
    match error {
        AppError::FailedPrecondition(message) if !by_filter => {
            AppError::FailedPrecondition(format!("ids[{index}]: {message}"))
        }
        other => other,
    }
}

/// What the audit row says of the selection: the filter (and page token)
/// or the number of ids asked for.
fn audited_selection(selection: &BatchSelection) -> serde_json::Value {
    match selection {
        BatchSelection::Ids(ids) => json!({ "by": "ids", "asked": ids.len() }),
        BatchSelection::Filter { filter, page } => {
            let time = |t: Option<chrono::NaiveDateTime>| {
                t.map(|t| {
                    t.and_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                })
            };
            json!({
                "by": "filter",
                "filter": {
                    "status": filter.status.map(|s| s.label()),
                    "module_name": filter.module_name,
                    "name": filter.name,
                    "create_time_start": time(filter.created_from),
                    "create_time_end": time(filter.created_until),
                    "error_message_prefix": filter.error_prefix,
                    "fail_time_start": time(filter.failed_from),
                    "fail_time_end": time(filter.failed_until),
                    "finish_time_start": time(filter.finished_from),
                    "finish_time_end": time(filter.finished_until),
                    "schedule_id": filter.schedule_id,
                },
                "page_token": page.after.as_ref().map(Cursor::encode),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchSelection, audited_selection};
    use crate::store::{jobs::JobFilter, pagination::PageRequest};

    #[test]
    fn the_audit_row_holds_every_field_of_the_filter() {
        let schedule = uuid::Uuid::now_v7();
        let audited = audited_selection(&BatchSelection::Filter {
            filter: Box::new(JobFilter {
                schedule_id: Some(schedule),
                ..JobFilter::default()
            }),
            page: PageRequest::first(10),
        });
        assert_eq!(audited["filter"]["schedule_id"], schedule.to_string());
    }
}
