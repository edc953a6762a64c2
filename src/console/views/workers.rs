//! The Workers page.

use std::{collections::HashMap, time::SystemTime};

use maud::{Markup, html};
use uuid::Uuid;

use super::age;
use crate::dispatch::StreamSnapshot;

/// When a time-ordered (v7) stream id was made: when the stream connected.
fn connected_secs_ago(stream: &Uuid) -> Option<f64> {
    let (secs, nanos) = stream.get_timestamp()?.to_unix();
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    SystemTime::now()
        .duration_since(at)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// The streams table.
pub fn content(
    streams: &[StreamSnapshot],
    callers: &HashMap<Uuid, String>,
    keys: &HashMap<Uuid, String>,
    replica: &str,
) -> Markup {
    html! {
        p.muted { "Work streams connected to this replica (" (replica) "). Each replica shows its own." }
        @if streams.is_empty() {
            p.empty { "No worker is connected." }
        } @else {
            table.workers {
                thead { tr {
                    th { "Worker" } th { "Caller" } th { "Job names" } th.num { "Capacity" }
                    th.num { "Held leases" } th { "Last heartbeat" } th { "Connected" } th { "State" }
                } }
                tbody {
                    @for stream in streams {
                        tr {
                            td { (stream.worker_id) br; span.muted { (stream.stream) } }
                            td {
                                (callers.get(&stream.caller).cloned().unwrap_or_else(|| stream.caller.to_string()))
                                @if let Some(key) = stream.api_key.and_then(|k| keys.get(&k)) {
                                    br; span.muted { "API key " (key) }
                                }
                            }
                            td {
                                @if stream.names.is_empty() { span.muted { "any" } } @else { (stream.names.join(", ")) }
                                @if !stream.modules.is_empty() { br; span.muted { "modules: " (stream.modules.join(", ")) } }
                            }
                            td.num { (stream.capacity) }
                            td.num { (stream.held) }
                            td { @match stream.last_heartbeat.and_then(|at| SystemTime::now().duration_since(at).ok()) {
                                Some(ago) => { (age(ago.as_secs_f64())) " ago" }
                                None => { span.muted { "none yet" } }
                            } }
                            td { @match connected_secs_ago(&stream.stream) {
                                Some(ago) => { (age(ago)) " ago" }
                                None => { "—" }
                            } }
                            td { @if stream.accepting { "taking jobs" } @else { "draining" } }
                        }
                    }
                }
            }
        }
    }
}
