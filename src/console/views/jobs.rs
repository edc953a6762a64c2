//! The Jobs list and a job's page.

use maud::{Markup, html};
use serde::Deserialize;

use super::{action_button, badge, json, maybe_time, overview::encode, time};
use crate::{
    console::{rpc, viewer::Viewer},
    domain::{Page, jobs::leases::progress::Progress},
    store::jobs::{JobRow, JobStatus},
};

/// The list's filters, as the query string carries them (empty: any).
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub module: String,
    /// Created at or after (`YYYY-MM-DDTHH:MM`, UTC).
    #[serde(default)]
    pub from: String,
    /// Created before.
    #[serde(default)]
    pub until: String,
    /// Created by this schedule (its id).
    #[serde(default)]
    pub schedule: String,
    /// The last error's message starts with this.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub page: String,
}

/// The filter form, the rows and the link to the next page.
pub fn list(query: &JobsQuery, page: &Page<JobRow>) -> Markup {
    let next = format!(
        "/console/jobs?status={}&name={}&module={}&from={}&until={}&schedule={}&error={}&page={}",
        encode(&query.status),
        encode(&query.name),
        encode(&query.module),
        encode(&query.from),
        encode(&query.until),
        encode(&query.schedule),
        encode(&query.error),
        encode(&page.next_page_token)
    );
    html! {
        form.filters method="get" action="/console/jobs" {
            label { "Status "
                select name="status" {
                    option value="" selected[query.status.is_empty()] { "any" }
                    @for status in JobStatus::ALL {
                        option value=(status.label()) selected[query.status == status.label()] { (status.label()) }
                    }
                }
            }
            label { "Name " input name="name" value=(query.name) placeholder="send-email"; }
            label { "Module " input name="module" value=(query.module); }
            label { "Created from " input name="from" type="datetime-local" value=(query.from); }
            label { "until " input name="until" type="datetime-local" value=(query.until); }
            label { "Schedule " input name="schedule" value=(query.schedule) placeholder="schedule id"; }
            label { "Error starts with " input name="error" value=(query.error); }
            button type="submit" { "Filter" }
            " " a href="/console/jobs" { "Clear" }
        }
        p.muted { "Times are UTC; newest first." }
        @if page.items.is_empty() {
            p.empty { "No job matches." }
        } @else {
            table.jobs {
                thead { tr {
                    th { "Job" } th { "Name" } th { "Module" } th { "Status" }
                    th.num { "Attempts" } th { "Created" } th { "Updated" }
                } }
                tbody {
                    @for job in &page.items {
                        tr {
                            td { a.id href={ "/console/jobs/" (job.id) } { (short(&job.id.to_string())) } }
                            td { (job.name) }
                            td { (job.module_name.as_deref().unwrap_or("")) }
                            td { (badge(job.status.label())) }
                            td.num { (job.attempts) "/" (job.max_attempts) }
                            td { (time(job.created_at)) }
                            td { (time(job.updated_at)) }
                        }
                    }
                }
            }
        }
        @if !page.next_page_token.is_empty() {
            p { a.next href=(next) { "Older jobs →" } }
        }
    }
}

/// The progress a job's page shows: the last report of its latest attempt
/// (as GetJob shows it), none while it waits.
pub fn shown_progress(job: &JobRow) -> Option<Progress> {
    if job.status == JobStatus::Pending || job.progress_attempt != Some(job.attempts) {
        return None;
    }
    job.progress.as_ref().map(Progress::from_json)
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A job's page.
pub fn show(viewer: &Viewer, job: &JobRow, state: &str) -> Markup {
    let base = format!("/console/jobs/{}", job.id);
    html! {
        div.job data-state=(state) {
            p { (badge(job.status.label())) " " code { (job.id) } }
            div.actions {
                @if matches!(job.status, JobStatus::Pending | JobStatus::Running) && viewer.may(rpc::CANCEL_JOB) {
                    (action_button(viewer, &format!("{base}/cancel"), "Cancel", Some("Cancel this job?")))
                }
                @if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) && viewer.may(rpc::RETRY_JOB) {
                    (action_button(viewer, &format!("{base}/retry"), "Retry", None))
                }
            }
            dl.facts {
                dt { "Name" } dd { (job.name) }
                dt { "Module" } dd { @if let Some(module) = &job.module_name {
                    a href="/console/modules" { (module) }
                    @if let Some(hook) = &job.hook { " (" (hook) " hook)" }
                } @else { span.muted { "none" } } }
                dt { "Schedule" } dd { @if let Some(schedule) = job.schedule_id {
                    @if viewer.may(rpc::GET_SCHEDULE) {
                        a.schedule href={ "/console/schedules/" (schedule) } { (schedule) }
                    } @else { code { (schedule) } }
                    " " a href={ "/console/jobs?schedule=" (schedule) } { "its jobs" }
                } @else { span.muted { "none" } } }
                dt { "Priority" } dd { (job.priority) }
                dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts)
                    @if let Some(budget) = job.attempt_budget { span.muted { " (budget " (budget) ")" } } }
                dt { "Worker" } dd { @if let Some(worker) = &job.worker_id { (worker) } @else { span.muted { "—" } }
                    @if let Some(stream) = job.leased_by { span.muted { " · stream " (stream) } } }
                dt { "Lease expires" } dd { (maybe_time(job.lease_expires_at)) }
                dt { "Scheduled" } dd { (time(job.scheduled_at)) }
                dt { "Created" } dd { (time(job.created_at))
                    @if let Some(creator) = job.created_by { span.muted { " by " (creator) } } }
                dt { "Started (this attempt)" } dd { (maybe_time(job.started_at)) }
                dt { "Completed" } dd { (maybe_time(job.completed_at)) }
                dt { "Failed" } dd { (maybe_time(job.failed_at)) }
                dt { "Updated" } dd { (time(job.updated_at)) }
                @if let Some(key) = &job.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
                @if let Some(trace) = &job.traceparent { dt { "traceparent" } dd { code { (trace) } } }
            }
            @if let Some(progress) = shown_progress(job) {
                h2 { "Progress" }
                div.progress {
                    @if let Some(percent) = progress.percent {
                        progress value=(percent) max="100" { (format!("{percent:.0}%")) }
                        " " strong.percent { (format!("{percent:.1}%")) }
                    }
                    @if !progress.message.is_empty() { " " span.message { (progress.message) } }
                    @if let Some(at) = job.progress_at { " " span.muted { "reported " (time(at)) } }
                }
                @if let Some(details) = &progress.details { (json(details)) }
            }
            h2 { "Payload" }
            (json(&job.payload))
            @if let Some(result) = &job.result {
                h2 { "Result" }
                (json(result))
            }
            @if let Some(error) = &job.error {
                h2 { "Error" }
                (json(error))
            }
            p { a href="/console/jobs" { "← All jobs" } " · "
                a href={ "/console/audit?resource=jobs/" (job.id) } { "Audit trail of this job" } }
        }
    }
}
