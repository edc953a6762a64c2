//! The Dead letters page.

use maud::{Markup, html};

use super::{csrf, overview::encode, time};
use crate::{
    console::{
        dead_letters::{DeadQuery, Outcome, PREFIXES, WINDOWS},
        rpc,
        viewer::Viewer,
    },
    domain::overview::{DEAD_LETTERS_READ, DeadLetters},
    store::console::FailureGroup,
};

/// Linked ids of an outcome, at most.
const LINKED: usize = 20;

/// One bulk-action form of a group.
fn group_button(
    viewer: &Viewer,
    action: &str,
    query: &DeadQuery,
    group: &FailureGroup,
    label: &str,
    confirm: &str,
) -> Markup {
    html! {
        form.inline method="post" action={ "/console/dead-letters/" (action) } data-confirm=(confirm) {
            (csrf(viewer))
            input type="hidden" name="name" value=(group.name);
            input type="hidden" name="prefix" value=(group.prefix);
            input type="hidden" name="window" value=(query.window);
            input type="hidden" name="chars" value=(query.chars);
            button type="submit" { (label) }
        }
    }
}

fn outcome_notice(outcome: &Outcome) -> Markup {
    html! {
        div.notice role="status" {
            p { strong { (outcome.verb) " " (outcome.done.len()) " job" @if outcome.done.len() != 1 { "s" } }
                " of " code { (outcome.name) } " whose error starts with " code { (outcome.prefix) } "." }
            @if !outcome.done.is_empty() {
                p.muted { @for id in outcome.done.iter().take(LINKED) {
                    a href={ "/console/jobs/" (id) } { (id.to_string().get(..8).unwrap_or("")) } " "
                } @if outcome.done.len() > LINKED { "…" } }
            }
            @if !outcome.skipped.is_empty() {
                p { "Skipped " (outcome.skipped.len()) " (their state changed meanwhile): "
                    @for (id, status) in &outcome.skipped {
                        a href={ "/console/jobs/" (id) } { (id.to_string().get(..8).unwrap_or("")) } " (" (status.label()) ") "
                    } }
            }
            @if outcome.more {
                p { "More jobs match: one action takes at most 1,000. Press it again for the next ones." }
            }
        }
    }
}

/// The filter form, what an action did, and the groups.
pub fn content(
    viewer: &Viewer,
    query: &DeadQuery,
    dead: &DeadLetters,
    outcome: Option<&Outcome>,
) -> Markup {
    let may_retry = viewer.may(rpc::BATCH_RETRY_JOBS);
    let may_cancel = viewer.may(rpc::BATCH_CANCEL_JOBS);
    let window = query.window().map(|(value, _)| value).unwrap_or("7d");
    let chars = query.chars().unwrap_or(40);
    html! {
        @if let Some(outcome) = outcome { (outcome_notice(outcome)) }
        form.filters method="get" action="/console/dead-letters" {
            label { "Failed in the "
                select name="window" {
                    @for (value, text, _) in WINDOWS {
                        option value=(value) selected[*value == window] { (text) }
                    }
                }
            }
            label { "Job name " input name="name" value=(query.name); }
            label { "Group by the message's first "
                select name="chars" {
                    @for n in PREFIXES {
                        option value=(n) selected[*n == chars] { (n) " characters" }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        p.muted { "Jobs that failed for good (FAILED), grouped by name and how their error message starts. \
            Retry puts a group's failed jobs back in the queue; Cancel stops the group's jobs that are still \
            queued or running after the same error. Times are UTC." }
        @if dead.partial {
            p.notice { "Only the newest " (DEAD_LETTERS_READ) " failures since " (time(dead.since))
                " are counted here; narrow the window or the job name to see older ones." }
        }
        @if dead.groups.is_empty() {
            p.empty { "No job failed for good in this window." }
        } @else {
            table.dead {
                thead { tr {
                    th { "Job name" } th { "Error starts with" } th.num { "Failed" }
                    th { "Newest failure" } th { "Actions" }
                } }
                tbody {
                    @for group in &dead.groups {
                        tr.group {
                            td { (group.name)
                                @if let Some(module) = &group.module_name { br; span.muted { (module) } } }
                            td { @if group.prefix.is_empty() { span.muted { "(no message)" } } @else { code.details { (group.prefix) } } }
                            td.num { a href={ "/console/jobs?status=FAILED&name=" (encode(&group.name)) "&error=" (encode(&group.prefix)) } { (group.count) } }
                            td { a href={ "/console/jobs/" (group.newest_id) } { (time(group.newest_at)) } }
                            td.actions {
                                @if !group.prefix.is_empty() {
                                    @if may_retry {
                                        (group_button(viewer, "retry", query, group, "Retry all",
                                            "Put this group's failed jobs back in the queue?"))
                                    }
                                    @if may_cancel {
                                        (group_button(viewer, "cancel", query, group, "Cancel retrying",
                                            "Cancel this group's jobs that are still queued or running?"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
