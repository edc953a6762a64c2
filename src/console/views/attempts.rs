//! A job's attempts: who ran each, when, and how it ended.

use maud::{Markup, html};
use uuid::Uuid;

use super::{badge, maybe_time, overview::encode};
use crate::{domain::Page, error::AppError, store::jobs::AttemptRow};

fn table(page: &Page<AttemptRow>) -> Markup {
    html! {
        @if page.items.is_empty() {
            p.empty { "No attempt yet." }
        } @else {
            table.attempts {
                thead { tr {
                    th.num { "#" } th { "Outcome" } th { "Worker" } th { "Leased" }
                    th { "Ended" } th { "Error" }
                } }
                tbody {
                    @for attempt in &page.items {
                        tr data-outcome=(attempt.outcome) {
                            td.num { (attempt.attempt) }
                            td { (badge(&attempt.outcome)) }
                            td { @if let Some(worker) = &attempt.worker_id { (worker) }
                                 @else { span.muted { "—" } }
                                 @if let Some(stream) = attempt.stream_id {
                                     br; span.muted { "stream " (stream) } } }
                            td { (maybe_time(attempt.leased_at)) }
                            td { @if attempt.ended_at.is_some() { (maybe_time(attempt.ended_at)) }
                                 @else if let Some(until) = attempt.lease_expires_at {
                                     span.muted { "lease until " } (maybe_time(Some(until))) }
                                 @else { span.muted { "—" } } }
                            td { @if let Some(error) = &attempt.error { code { (error) } } }
                        }
                    }
                }
            }
        }
    }
}

/// The section of a job's page: its first attempts, and a link to the rest.
pub fn section(job: Uuid, page: &Page<AttemptRow>) -> Markup {
    html! {
        section.attempts id="attempts" {
            h2 { "Attempts" }
            (table(page))
            @if !page.next_page_token.is_empty() {
                p { a.next href={ "/console/jobs/" (job) "/attempts?page=" (encode(&page.next_page_token)) } { "More attempts →" } }
            }
        }
    }
}

/// The section when the attempts could not be read.
pub fn unavailable(error: &AppError) -> Markup {
    html! {
        section.attempts id="attempts" {
            h2 { "Attempts" }
            p.empty { "Attempts unavailable: " (error.to_string()) }
        }
    }
}

/// The full list of a job's attempts, a page at a time.
pub fn full(job: Uuid, page: &Page<AttemptRow>) -> Markup {
    html! {
        p { "Job " a href={ "/console/jobs/" (job) } { code { (job) } } "; oldest first, times UTC." }
        (table(page))
        @if !page.next_page_token.is_empty() {
            p { a.next href={ "/console/jobs/" (job) "/attempts?page=" (encode(&page.next_page_token)) } { "More attempts →" } }
        }
    }
}
