//! The Workers page: every replica's Work streams in one table.

use std::{collections::HashMap, time::SystemTime};

use maud::{Markup, html};
use uuid::Uuid;

use super::age;
use crate::domain::fleet::{PUBLISH_INTERVAL, ReplicaWorkers, WorkerStream};

/// When a time-ordered (v7) stream id was made: when the stream connected.
fn connected_secs_ago(stream: &Uuid) -> Option<f64> {
    let (secs, nanos) = stream.get_timestamp()?.to_unix();
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    SystemTime::now()
        .duration_since(at)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// Every replica's streams, one table.
pub fn content(
    replicas: &[ReplicaWorkers],
    others_read: bool,
    callers: &HashMap<Uuid, String>,
    keys: &HashMap<Uuid, String>,
) -> Markup {
    let total: usize = replicas.iter().map(|r| r.total).sum();
    html! {
        p.muted {
            (total) " Work stream" @if total != 1 { "s" } " on " (replicas.len()) " replica"
            @if replicas.len() != 1 { "s" } ". This replica's are live; the others' as they published them, every "
            (PUBLISH_INTERVAL.as_secs()) " s."
        }
        @if !others_read {
            p.error { "The other replicas' workers could not be read; only this replica's are shown." }
        }
        @for replica in replicas.iter().filter(|r| r.total > r.streams.len()) {
            p.muted { (replica.label) " has " (replica.total) " streams; the first " (replica.streams.len()) " are shown." }
        }
        @if total == 0 {
            p.empty { "No worker is connected." }
        } @else {
            table.workers {
                thead { tr {
                    th { "Worker" } th { "Caller" } th { "Job names" } th.num { "Capacity" }
                    th.num { "Held leases" } th { "Last heartbeat" } th { "Connected" } th { "State" } th { "Replica" }
                } }
                tbody {
                    @for (index, replica) in replicas.iter().enumerate() {
                        @for stream in &replica.streams {
                            (row(stream, replica, index == 0, callers, keys))
                        }
                    }
                }
            }
        }
    }
}

fn row(
    stream: &WorkerStream,
    replica: &ReplicaWorkers,
    this_replica: bool,
    callers: &HashMap<Uuid, String>,
    keys: &HashMap<Uuid, String>,
) -> Markup {
    html! {
        tr {
            td { (stream.worker_id) br; span.muted { (stream.stream) } }
            td {
                (callers.get(&stream.caller).cloned().unwrap_or_else(|| stream.caller.to_string()))
                @if let Some(key) = stream.api_key {
                    br; span.muted { @match keys.get(&key) { Some(name) => { "API key " (name) } None => { "an API key" } } }
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
            td {
                (replica.label)
                @if this_replica { br; span.muted { "this replica" } }
                @else { br; span.muted { "as of " (age(replica.age_secs)) " ago" } }
            }
        }
    }
}
