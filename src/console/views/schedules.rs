//! The Schedules list (with the create form) and a schedule's page.

use maud::{Markup, html};
use serde::Deserialize;

use super::{action_button, badge, csrf, json, maybe_time, overview::encode, time};
use crate::{
    console::{rpc, viewer::Viewer},
    domain::Page,
    error::AppError,
    store::{jobs::JobRow, schedules::ScheduleRow},
};

/// What the create form holds (shown again when it is refused).
#[derive(Debug, Default, Deserialize)]
pub struct NewSchedule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cron: String,
    #[serde(default)]
    pub time_zone: String,
    #[serde(default)]
    pub job_name: String,
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub overlap: String,
    #[serde(default)]
    pub missed: String,
    /// Present when the box is ticked.
    #[serde(default)]
    pub paused: Option<String>,
}

/// The state of a schedule, as a badge.
fn state(schedule: &ScheduleRow) -> Markup {
    if schedule.paused {
        badge("PAUSED")
    } else {
        badge("ACTIVE")
    }
}

/// The list, the next page's link and (for writers) the create form.
pub fn list(
    viewer: &Viewer,
    module: &str,
    page: &Page<ScheduleRow>,
    form: &NewSchedule,
    refused: Option<&AppError>,
) -> Markup {
    html! {
        form.filters method="get" action="/console/schedules" {
            label { "Module " input name="module" value=(module); }
            button type="submit" { "Filter" }
            " " a href="/console/schedules" { "Clear" }
        }
        p.muted { "Times are UTC; fire times are computed in each schedule's zone." }
        @if page.items.is_empty() {
            p.empty { "No schedule." }
        } @else {
            table.schedules {
                thead { tr {
                    th { "Schedule" } th { "Cron" } th { "Zone" } th { "Job" } th { "State" }
                    th { "Next fire" } th { "Last fire" } th { "Last job" } th { "Last error" } th { "Actions" }
                } }
                tbody {
                    @for schedule in &page.items {
                        tr id={ "schedule-" (schedule.name) } class=[schedule.last_error.is_some().then_some("failure")] {
                            td { a.schedule href={ "/console/schedules/" (schedule.id) } { (schedule.name) } }
                            td { code { (schedule.cron) } }
                            td { (schedule.time_zone) }
                            td { (schedule.job_name)
                                @if let Some(module) = &schedule.module_name { br; span.muted { (module) } } }
                            td { (state(schedule)) }
                            td { (maybe_time(schedule.next_fire_at)) }
                            td { (maybe_time(schedule.last_fire_at)) }
                            td { @if let Some(job) = schedule.last_job_id {
                                a.job href={ "/console/jobs/" (job) } { (job.to_string().get(..8).unwrap_or("")) }
                            } @else { span.muted { "—" } } }
                            td { @if let Some(error) = &schedule.last_error { span.error { (error) } } @else { span.muted { "—" } } }
                            td.actions { (actions(viewer, schedule, false)) }
                        }
                    }
                }
            }
        }
        @if !page.next_page_token.is_empty() {
            p { a.next href={ "/console/schedules?module=" (encode(module)) "&page=" (encode(&page.next_page_token)) } { "More schedules →" } }
        }
        @if viewer.may(rpc::CREATE_SCHEDULE) {
            h2 id="new" { "New schedule" }
            @if let Some(error) = refused { p.error role="alert" { (error.to_string()) } }
            form.create method="post" action="/console/schedules" {
                (csrf(viewer))
                label { "Name " input name="name" required value=(form.name) placeholder="nightly-report"; }
                label { "Cron " input name="cron" required value=(form.cron) placeholder="0 3 * * *"; }
                label { "Zone " input name="time_zone" value=(form.time_zone) placeholder="UTC"; }
                label { "Job name " input name="job_name" required value=(form.job_name) placeholder="report.build"; }
                label { "Module " input name="module" value=(form.module); }
                label { "Payload (JSON) " input name="payload" value=(form.payload) placeholder="{}"; }
                label { "Overlap "
                    select name="overlap" {
                        @for (value, text) in [("ALLOW", "allow"), ("SKIP", "skip"), ("CANCEL_PREVIOUS", "cancel previous")] {
                            option value=(value) selected[form.overlap == value] { (text) }
                        }
                    }
                }
                label { "Missed fires "
                    select name="missed" {
                        @for (value, text) in [("SKIP", "skip"), ("RUN_ONCE", "run once")] {
                            option value=(value) selected[form.missed == value] { (text) }
                        }
                    }
                }
                label { "Description " input name="description" value=(form.description); }
                label.check { input type="checkbox" name="paused" value="1" checked[form.paused.is_some()]; " created paused" }
                button type="submit" { "Create schedule" }
            }
        }
    }
}

/// The actions a person may take on a schedule (the server checks again,
/// with what the schedule's jobs need).
fn actions(viewer: &Viewer, schedule: &ScheduleRow, with_delete: bool) -> Markup {
    let base = format!("/console/schedules/{}", schedule.id);
    html! {
        @if schedule.paused {
            @if viewer.may(rpc::RESUME_SCHEDULE) {
                (action_button(viewer, &format!("{base}/resume"), "Resume", None))
            }
        } @else if viewer.may(rpc::PAUSE_SCHEDULE) {
            (action_button(viewer, &format!("{base}/pause"), "Pause", None))
        }
        @if viewer.may(rpc::TRIGGER_SCHEDULE) {
            (action_button(viewer, &format!("{base}/trigger"), "Trigger now", Some("Create a job from this schedule now?")))
        }
        @if with_delete && viewer.may(rpc::DELETE_SCHEDULE) {
            (action_button(viewer, &format!("{base}/delete"), "Delete", Some("Delete this schedule? Its jobs stay.")))
        }
    }
}

/// A schedule's page: its facts, its template, its recent jobs (`None`:
/// the person may not list jobs).
pub fn show(viewer: &Viewer, schedule: &ScheduleRow, jobs: Option<&[JobRow]>) -> Markup {
    html! {
        p { (state(schedule)) " " code { (schedule.id) } }
        div.actions { (actions(viewer, schedule, true)) }
        dl.facts {
            dt { "Name" } dd { (schedule.name) }
            @if !schedule.description.is_empty() { dt { "Description" } dd { (schedule.description) } }
            dt { "Cron" } dd { code { (schedule.cron) } }
            dt { "Zone" } dd { (schedule.time_zone) }
            dt { "Next fire" } dd { (maybe_time(schedule.next_fire_at)) }
            dt { "Last fire" } dd { (maybe_time(schedule.last_fire_at)) }
            dt { "Last job" } dd { @if let Some(job) = schedule.last_job_id {
                a.job href={ "/console/jobs/" (job) } { (job) }
            } @else { span.muted { "—" } } }
            dt { "Last error" } dd { @if let Some(error) = &schedule.last_error { span.error { (error) } } @else { span.muted { "none" } } }
            dt { "Overlap" } dd { (schedule.overlap_policy) }
            dt { "Missed fires" } dd { (schedule.missed_fire_policy) }
            dt { "Job" } dd { (schedule.job_name)
                @if let Some(module) = &schedule.module_name { span.muted { " of module " (module) } } }
            dt { "Priority" } dd { (schedule.priority) }
            dt { "Max attempts" } dd { @if let Some(max) = schedule.max_attempts { (max) } @else { span.muted { "default" } } }
            dt { "Created" } dd { (time(schedule.created_at))
                @if let Some(creator) = schedule.created_by { span.muted { " by " (creator) } } }
            dt { "Updated" } dd { (time(schedule.updated_at)) }
        }
        h2 { "Payload of its jobs" }
        (json(&schedule.payload))
        @if let Some(jobs) = jobs {
            h2 { "Recent jobs" }
            @if jobs.is_empty() {
                p.empty { "It has created no job yet." }
            } @else {
                table.jobs {
                    thead { tr { th { "Job" } th { "Status" } th.num { "Attempts" } th { "Created" } th { "Updated" } } }
                    tbody {
                        @for job in jobs {
                            tr {
                                td { a.id href={ "/console/jobs/" (job.id) } { (job.id.to_string().get(..8).unwrap_or("")) } }
                                td { (badge(job.status.label())) }
                                td.num { (job.attempts) "/" (job.max_attempts) }
                                td { (time(job.created_at)) }
                                td { (time(job.updated_at)) }
                            }
                        }
                    }
                }
                p { a href={ "/console/jobs?schedule=" (schedule.id) } { "All its jobs →" } }
            }
        }
        p { a href="/console/schedules" { "← All schedules" } " · "
            a href={ "/console/audit?resource=schedules/" (schedule.id) } { "Audit trail of this schedule" } }
    }
}
