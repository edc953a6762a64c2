//! The Queues page.

use std::collections::BTreeSet;

use maud::{Markup, html};

use super::{age, badge, csrf, overview::encode, time};
use crate::{
    console::{rpc, viewer::Viewer},
    domain::jobs::QueuePage,
};

/// A one-button form pausing or resuming a queue.
fn queue_button(viewer: &Viewer, action: &str, kind: &str, name: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/queues/" (action) } {
            (csrf(viewer))
            input type="hidden" name="kind" value=(kind);
            input type="hidden" name="name" value=(name);
            button type="submit" { (label) }
        }
    }
}

/// The queues by name, the pauses, and a form to pause any queue.
pub fn content(viewer: &Viewer, module: &str, page: &QueuePage) -> Markup {
    let may_pause = viewer.may(rpc::PAUSE_QUEUE);
    let may_resume = viewer.may(rpc::RESUME_QUEUE);
    let paused_modules: BTreeSet<&str> = page
        .pauses
        .iter()
        .filter(|p| p.kind == "module")
        .map(|p| p.name.as_str())
        .collect();
    let paused_names: BTreeSet<&str> = page
        .pauses
        .iter()
        .filter(|p| p.kind == "job")
        .map(|p| p.name.as_str())
        .collect();
    html! {
        form.filters method="get" action="/console/queues" {
            label { "Module " input name="module" value=(module); }
            button type="submit" { "Filter" }
            " " a href="/console/queues" { "Clear" }
        }
        p.muted { "A paused queue's jobs stay pending and are given to no worker until it is resumed. \
            “Later” counts jobs scheduled for a later time or backing off before a retry." }
        @if page.queues.items.is_empty() {
            p.empty { "No queue has jobs." }
        } @else {
            table.queues {
                thead { tr {
                    th { "Job name" } th { "Module" } th.num { "Pending" } th.num { "Later" }
                    th.num { "Running" } th.num { "Failed (1 h)" } th { "Oldest pending" } th { "State" } th { "Actions" }
                } }
                tbody {
                    @for queue in &page.queues.items {
                        tr id={ "queue-" (queue.name) } {
                            td { a href={ "/console/jobs?name=" (encode(&queue.name)) } { (queue.name) } }
                            td { @if let Some(module) = &queue.module_name {
                                a href={ "/console/queues?module=" (encode(module)) } { (module) }
                                @if paused_modules.contains(module.as_str()) { " " span.muted { "(paused)" } }
                            } }
                            td.num { a href={ "/console/jobs?status=PENDING&name=" (encode(&queue.name)) } { (queue.pending) } }
                            td.num { (queue.scheduled) }
                            td.num { a href={ "/console/jobs?status=RUNNING&name=" (encode(&queue.name)) } { (queue.running) } }
                            td.num { @if queue.failed_last_hour > 0 {
                                a.bad href={ "/console/dead-letters?name=" (encode(&queue.name)) "&window=1h" } { (queue.failed_last_hour) }
                            } @else { "0" } }
                            td { @match queue.oldest_pending_micros {
                                Some(micros) => { (age(micros as f64 / 1e6)) }
                                None => { span.muted { "—" } }
                            } }
                            td { @if queue.paused { (badge("PAUSED")) } @else { (badge("ACTIVE")) }
                                @if queue.settling { " " span.muted title="its pending jobs are still being walked" { "settling" } } }
                            td.actions {
                                @if paused_names.contains(queue.name.as_str()) {
                                    @if may_resume { (queue_button(viewer, "resume", "job", &queue.name, "Resume")) }
                                } @else if may_pause {
                                    (queue_button(viewer, "pause", "job", &queue.name, "Pause"))
                                }
                                @if let Some(module) = &queue.module_name {
                                    @if paused_modules.contains(module.as_str()) {
                                        @if may_resume { (queue_button(viewer, "resume", "module", module, "Resume module")) }
                                    } @else if may_pause {
                                        (queue_button(viewer, "pause", "module", module, "Pause module"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !page.queues.next_page_token.is_empty() {
            p { a.next href={ "/console/queues?module=" (encode(module)) "&page=" (encode(&page.queues.next_page_token)) } { "More queues →" } }
        }
        h2 { "Paused queues" }
        @if page.pauses.is_empty() {
            p.empty { "No queue is paused." }
        } @else {
            table.pauses {
                thead { tr { th { "Queue" } th { "Paused" } th { "By" } th {} } }
                tbody {
                    @for pause in &page.pauses {
                        tr id={ "pause-" (pause.kind) "-" (pause.name) } {
                            td { @if pause.kind == "module" { "module " } @else { "job name " } strong { (pause.name) } }
                            td { (time(pause.paused_at)) }
                            td { @if let Some(by) = pause.paused_by { span.muted { (by) } } }
                            td { @if may_resume { (queue_button(viewer, "resume", &pause.kind, &pause.name, "Resume")) } }
                        }
                    }
                }
            }
        }
        @if may_pause {
            h2 { "Pause a queue" }
            form.create method="post" action="/console/queues/pause" {
                (csrf(viewer))
                label { "Kind "
                    select name="kind" { option value="job" { "job name" } option value="module" { "module" } }
                }
                label { "Name " input name="name" required placeholder="send-email"; }
                button type="submit" { "Pause" }
            }
        }
    }
}
