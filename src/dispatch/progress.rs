//! Progress reports of this replica's Work streams, coalesced: each job's
//! latest report waits in memory (a newer one replaces it) and one writer
//! stores everything waiting in one statement, at most once per
//! [`WRITE_INTERVAL`]. So however fast workers report, each job is written
//! at most once a second, the replica runs at most one progress statement a
//! second, and what waits is one entry per running job, never a queue.
//!
//! Reports come only for leases a stream holds (checked by the session), and
//! the write is fenced again in the database; the last report of a lease
//! that is then completed, failed or released is taken by its report
//! ([`ProgressBuffer::take`]) and stored with it, in its transaction. That
//! includes a report the writer has taken but not yet stored (it stays
//! "in flight" until the write is done): otherwise a completion settled
//! meanwhile would make the writer's fenced write a no-op, and the finished
//! job would keep an older progress.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use uuid::Uuid;

use super::Shared;
use crate::{
    domain::jobs::leases::is_transient,
    store::jobs::{LeaseRef, ProgressWrite},
};

/// Least time between two progress writes of this replica (so between two
/// writes of any one job).
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Most jobs one statement writes (each its own transaction), so that no
/// write holds many rows locked for long.
const WRITE_BATCH: usize = 1000;

/// The latest progress of each job, waiting to be written.
#[derive(Debug, Default)]
pub struct ProgressBuffer {
    pending: Mutex<HashMap<Uuid, ProgressWrite>>,
    /// What the writer took and is storing (locked after `pending`).
    in_flight: Mutex<HashMap<Uuid, ProgressWrite>>,
    /// Rung when something waits where nothing did.
    waiting: Notify,
}

impl ProgressBuffer {
    /// Keeps `write` as its job's latest progress.
    pub fn put(&self, write: ProgressWrite) {
        let was_empty = {
            let mut pending = crate::sync::lock(&self.pending);
            let was_empty = pending.is_empty();
            pending.insert(write.lease.job, write);
            was_empty
        };
        if was_empty {
            self.waiting.notify_one();
        }
    }

    /// Takes the progress waiting for `lease`, if any, or a copy of the one
    /// the writer is storing: its report stores it (the writer's fenced
    /// write may come after the report settled, and then changes nothing).
    pub fn take(&self, lease: &LeaseRef) -> Option<ProgressWrite> {
        let mut pending = crate::sync::lock(&self.pending);
        match pending.get(&lease.job) {
            Some(write) if write.lease == *lease => pending.remove(&lease.job),
            Some(_) => None,
            None => crate::sync::lock(&self.in_flight)
                .get(&lease.job)
                .filter(|write| write.lease == *lease)
                .cloned(),
        }
    }

    /// Everything waiting; it stays in flight until [`Self::written`].
    fn take_all(&self) -> Vec<ProgressWrite> {
        let mut pending = crate::sync::lock(&self.pending);
        let mut in_flight = crate::sync::lock(&self.in_flight);
        in_flight.clear();
        in_flight.extend(pending.iter().map(|(job, write)| (*job, write.clone())));
        std::mem::take(&mut *pending).into_values().collect()
    }

    /// The writer is done with what it took.
    fn written(&self) {
        crate::sync::lock(&self.in_flight).clear();
    }

    /// Puts back writes that could not be stored, unless a newer report of
    /// the same job came meanwhile or `keep` says the lease is gone.
    fn restore(&self, writes: Vec<ProgressWrite>, keep: impl Fn(&LeaseRef) -> bool) {
        let mut pending = crate::sync::lock(&self.pending);
        let was_empty = pending.is_empty();
        for write in writes {
            if keep(&write.lease) {
                pending.entry(write.lease.job).or_insert(write);
            }
        }
        if was_empty && !pending.is_empty() {
            self.waiting.notify_one();
        }
    }

    /// Jobs waiting (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        crate::sync::lock(&self.pending).len()
    }
}

/// The writer: waits for progress, then stores all that waits, at most once
/// per [`WRITE_INTERVAL`], until shutdown (what waits then is dropped:
/// progress is best effort).
pub async fn run_writer(shared: Arc<Shared>) {
    let buffer = &shared.progress;
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = buffer.waiting.notified() => {}
        }
        if let Some(at) = last_write {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(at + WRITE_INTERVAL) => {}
            }
        }
        let mut writes = buffer.take_all();
        if writes.is_empty() {
            continue;
        }
        last_write = Some(tokio::time::Instant::now());
        // In id order, like every statement locking several jobs.
        writes.sort_by_key(|write| write.lease.job);
        let mut chunks = writes.chunks(WRITE_BATCH);
        while let Some(chunk) = chunks.next() {
            match shared.leases.write_progress(chunk).await {
                Ok(written) => crate::telemetry::names::progress_written(written),
                Err(error) if is_transient(&error) => {
                    shared.note_db_failure(&error);
                    // Tried again at the next write, for the leases still
                    // held.
                    let unwritten = chunk.iter().chain(chunks.flatten()).cloned().collect();
                    buffer.restore(unwritten, |lease| {
                        shared.registry().check_progress(lease).is_ok()
                    });
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, jobs = chunk.len(), "progress could not be stored; dropped");
                }
            }
        }
        buffer.written();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn write(job: Uuid, attempt: i32, n: i64) -> ProgressWrite {
        ProgressWrite {
            lease: LeaseRef {
                job,
                attempt,
                stream: Uuid::nil(),
            },
            progress: json!({ "percent": n }),
        }
    }

    #[test]
    fn the_latest_report_of_each_job_waits_and_nothing_more() {
        let buffer = ProgressBuffer::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for n in 0..1000 {
            buffer.put(write(a, 1, n));
        }
        buffer.put(write(b, 1, 7));
        assert_eq!(buffer.len(), 2, "one entry per job, however many reports");
        // A report takes its own lease's progress, not another attempt's.
        assert_eq!(buffer.take(&write(a, 2, 0).lease), None);
        assert_eq!(
            buffer.take(&write(a, 1, 0).lease).map(|w| w.progress),
            Some(json!({ "percent": 999 }))
        );
        let rest = buffer.take_all();
        assert_eq!(rest, vec![write(b, 1, 7)]);
        // Put back after a failed write: a newer report wins, a lease gone
        // is dropped.
        buffer.put(write(b, 1, 8));
        buffer.restore(vec![write(b, 1, 7), write(a, 1, 5)], |lease| lease.job == b);
        assert_eq!(buffer.take_all(), vec![write(b, 1, 8)]);
    }

    #[test]
    fn a_report_takes_the_progress_the_writer_is_storing() {
        let buffer = ProgressBuffer::default();
        let job = Uuid::now_v7();
        buffer.put(write(job, 1, 40));
        assert_eq!(buffer.take_all(), vec![write(job, 1, 40)]);
        // The completion comes while the writer stores it: it takes a copy
        // (another attempt's lease takes nothing).
        assert_eq!(buffer.take(&write(job, 2, 0).lease), None);
        assert_eq!(
            buffer.take(&write(job, 1, 0).lease).map(|w| w.progress),
            Some(json!({ "percent": 40 }))
        );
        // A newer report waiting wins over the one in flight.
        buffer.put(write(job, 1, 41));
        assert_eq!(
            buffer.take(&write(job, 1, 0).lease).map(|w| w.progress),
            Some(json!({ "percent": 41 }))
        );
        buffer.written();
        assert_eq!(buffer.take(&write(job, 1, 0).lease), None);
    }
}
