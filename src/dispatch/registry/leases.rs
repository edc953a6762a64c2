//! The leases each stream holds: recorded when the claim loop assigns a
//! job, marked while a report settles, forgotten when it is settled,
//! revoked or found lost by a heartbeat, and sorted when the stream ends
//! into those never sent and those sent (which go back differently).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{Held, Registry, StreamCommand};
use crate::{
    dispatch::tell,
    domain::events::{Revocation, RevokeCause},
    store::jobs::{JobRow, LeaseRef},
};

/// Why a report cannot even be submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefusal {
    NotHeld,
    OtherAttempt(i32),
    AlreadyReported,
}

impl ReportRefusal {
    /// The refusal, for the worker.
    pub fn reason(&self, lease: &LeaseRef) -> String {
        match self {
            Self::NotHeld => format!(
                "job {} is not leased to this stream (finished, cancelled, expired or never \
                 assigned here); nothing changed",
                lease.job
            ),
            Self::OtherAttempt(current) => format!(
                "attempt {} of job {} is not the current lease (attempt {current}); nothing \
                 changed",
                lease.attempt, lease.job
            ),
            Self::AlreadyReported => format!(
                "attempt {} of job {} was already reported; nothing changed",
                lease.attempt, lease.job
            ),
        }
    }
}

/// What a stream held when it was unregistered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Withdrawn {
    /// Leased to it but never sent: not an attempt.
    pub undelivered: Vec<LeaseRef>,
    /// Sent (the transport took them): the worker may have them.
    pub delivered: Vec<LeaseRef>,
}

impl Withdrawn {
    /// Sorts the leases `stream` held (what [`Registry::unregister`]
    /// returned) by whether their assignment was still queued, never sent
    /// (`unsent`: job → attempt).
    pub fn sort(stream: Uuid, held: Vec<(Uuid, i32)>, unsent: &HashMap<Uuid, i32>) -> Self {
        let mut withdrawn = Self::default();
        for (job, attempt) in held {
            let lease = LeaseRef {
                job,
                attempt,
                stream,
            };
            if unsent.get(&job) == Some(&attempt) {
                withdrawn.undelivered.push(lease);
            } else {
                withdrawn.delivered.push(lease);
            }
        }
        withdrawn
    }

    /// Leases withdrawn, sent or not.
    pub fn len(&self) -> usize {
        self.undelivered.len() + self.delivered.len()
    }
}

impl Registry {
    /// Records a leased job as held by its stream and pushes it; false when
    /// the stream went away (or drains) meanwhile.
    pub fn assign(&mut self, job: JobRow) -> bool {
        let Some(stream) = job.leased_by else {
            return false;
        };
        if self.draining.is_some() {
            return false;
        }
        let Some(entry) = self.streams.get_mut(&stream) else {
            return false;
        };
        entry.held.insert(
            job.id,
            Held {
                attempt: job.attempts,
                reporting: false,
                since: Instant::now(),
            },
        );
        tell(&entry.commands, StreamCommand::Assign(Box::new(job)));
        self.turn = self.turn.wrapping_add(1);
        true
    }

    /// The leases the server keeps alive itself, since the worker cannot
    /// be asked to (see [`crate::dispatch::keepalive`]): those being
    /// reported, those whose assignment still waits in the stream's outbox,
    /// and those leased less than `window` ago (on their way to the worker,
    /// or just arrived).
    pub fn kept_by_server(&self, window: Duration) -> Vec<LeaseRef> {
        let mut kept = Vec::new();
        for (stream, entry) in &self.streams {
            let queued = entry
                .outbox
                .as_ref()
                .map(|outbox| outbox.queued_assignments())
                .unwrap_or_default();
            kept.extend(
                entry
                    .held
                    .iter()
                    .filter(|(job, held)| {
                        held.reporting
                            || held.since.elapsed() < window
                            || queued.get(*job) == Some(&held.attempt)
                    })
                    .map(|(job, held)| LeaseRef {
                        job: *job,
                        attempt: held.attempt,
                        stream: *stream,
                    }),
            );
        }
        kept
    }

    /// Whether the streams here account for `lease`: its stream knows it
    /// holds it, or its stream is gone (whose guard gives its leases back).
    pub fn accounts_for(&self, lease: &LeaseRef) -> bool {
        self.streams.get(&lease.stream).is_none_or(|entry| {
            entry
                .held
                .get(&lease.job)
                .is_some_and(|h| h.attempt == lease.attempt)
        })
    }

    /// Whether stream `id` holds no lease (or is gone).
    pub fn holds_nothing(&self, id: Uuid) -> bool {
        self.streams
            .get(&id)
            .is_none_or(|entry| entry.held.is_empty())
    }

    /// Keeps, of `leases` (job, attempt) a heartbeat named, those `stream`
    /// holds now; none when it is gone.
    pub fn retain_held(&self, stream: Uuid, leases: &mut HashSet<(Uuid, i32)>) {
        match self.streams.get(&stream) {
            Some(entry) => leases.retain(|(job, attempt)| {
                entry.held.get(job).is_some_and(|h| h.attempt == *attempt)
            }),
            None => leases.clear(),
        }
    }

    /// The leases (job, attempt) of `stream` a heartbeat extends: those it
    /// holds among `named`, or all it holds when `named` is empty. `None`
    /// when the stream is gone.
    pub fn to_extend(
        &self,
        stream: Uuid,
        named: &HashSet<(Uuid, i32)>,
    ) -> Option<Vec<(Uuid, i32)>> {
        let entry = self.streams.get(&stream)?;
        Some(
            entry
                .held
                .iter()
                .filter(|(job, held)| named.is_empty() || named.contains(&(**job, held.attempt)))
                .map(|(job, held)| (*job, held.attempt))
                .collect(),
        )
    }

    /// Marks a lease as being reported; refuses a report the stream cannot
    /// make.
    pub fn start_report(&mut self, lease: &LeaseRef) -> Result<(), ReportRefusal> {
        let held = self
            .streams
            .get_mut(&lease.stream)
            .and_then(|entry| entry.held.get_mut(&lease.job))
            .ok_or(ReportRefusal::NotHeld)?;
        if held.attempt != lease.attempt {
            return Err(ReportRefusal::OtherAttempt(held.attempt));
        }
        if held.reporting {
            return Err(ReportRefusal::AlreadyReported);
        }
        held.reporting = true;
        Ok(())
    }

    /// Whether `lease` may report progress: its stream holds it at that
    /// attempt and has not reported it yet.
    pub fn check_progress(&self, lease: &LeaseRef) -> Result<(), ReportRefusal> {
        let held = self
            .streams
            .get(&lease.stream)
            .and_then(|entry| entry.held.get(&lease.job))
            .ok_or(ReportRefusal::NotHeld)?;
        if held.attempt != lease.attempt {
            return Err(ReportRefusal::OtherAttempt(held.attempt));
        }
        if held.reporting {
            return Err(ReportRefusal::AlreadyReported);
        }
        Ok(())
    }

    /// Forgets a lease whose report was settled; true when it was held.
    pub fn finish_report(&mut self, lease: &LeaseRef) -> bool {
        let Some(entry) = self.streams.get_mut(&lease.stream) else {
            return false;
        };
        match entry.held.get(&lease.job) {
            Some(held) if held.attempt == lease.attempt => {
                crate::telemetry::names::lease_settled(held.since.elapsed());
                entry.held.remove(&lease.job);
                true
            }
            _ => false,
        }
    }

    /// Forgets a revoked lease and tells its stream; true when the stream
    /// held it.
    pub fn revoke(&mut self, revocation: &Revocation) -> bool {
        let Some(entry) = self.streams.get_mut(&revocation.stream) else {
            return false;
        };
        match entry.held.get(&revocation.job) {
            Some(held) if held.attempt == revocation.attempt => {
                entry.held.remove(&revocation.job);
                tell(&entry.commands, StreamCommand::Revoke(*revocation));
                true
            }
            _ => false,
        }
    }

    /// Matches a heartbeat's outcome: of the leases (job, attempt) it
    /// `checked`, those the database did not extend (not among `extended`)
    /// are gone, unless a report is settling them. They are forgotten and
    /// their stream told; returns how many.
    pub fn reconcile(
        &mut self,
        stream: Uuid,
        checked: &[(Uuid, i32)],
        extended: &HashSet<(Uuid, i32)>,
    ) -> usize {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return 0;
        };
        let mut lost = 0;
        for (job, attempt) in checked {
            if extended.contains(&(*job, *attempt)) {
                continue;
            }
            if let Some(held) = entry.held.get(job)
                && held.attempt == *attempt
                && !held.reporting
            {
                entry.held.remove(job);
                tell(
                    &entry.commands,
                    StreamCommand::Revoke(Revocation {
                        stream,
                        job: *job,
                        attempt: *attempt,
                        cause: RevokeCause::LeaseLost,
                    }),
                );
                lost += 1;
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::{
        super::tests::{entry_telling, limits},
        *,
    };
    use crate::store::{self, jobs::JobStatus};

    /// Attempt `attempt` of a job, leased to `stream`.
    fn leased(stream: Uuid, attempt: i32) -> JobRow {
        let now = store::now();
        JobRow {
            id: Uuid::now_v7(),
            attempts: attempt,
            started_at: Some(now),
            leased_by: Some(stream),
            lease_expires_at: Some(now),
            ..JobRow::sample(JobStatus::Running, now)
        }
    }

    /// A registry with one stream of capacity 10, and what it is told.
    fn one_stream() -> (Registry, Uuid, mpsc::UnboundedReceiver<StreamCommand>) {
        let mut registry = Registry::new(limits());
        let (commands, told) = mpsc::unbounded_channel();
        let stream = Uuid::now_v7();
        registry
            .register(stream, entry_telling(Uuid::now_v7(), "a", commands), 10)
            .unwrap();
        (registry, stream, told)
    }

    /// Assigns a new job at `attempt` to `stream`; returns its lease.
    fn hold(registry: &mut Registry, stream: Uuid, attempt: i32) -> LeaseRef {
        let job = leased(stream, attempt);
        let lease = LeaseRef {
            job: job.id,
            attempt,
            stream,
        };
        assert!(registry.assign(job));
        lease
    }

    #[test]
    fn an_assigned_lease_is_held_and_pushed_and_a_stray_one_is_not() {
        let (mut registry, stream, mut told) = one_stream();
        assert!(registry.holds_nothing(stream));
        let lease = hold(&mut registry, stream, 1);
        assert!(matches!(told.try_recv(), Ok(StreamCommand::Assign(job)) if job.id == lease.job));
        assert!(!registry.holds_nothing(stream));
        assert!(registry.accounts_for(&lease));
        assert!(!registry.accounts_for(&LeaseRef {
            attempt: 2,
            ..lease
        }));
        // Leased to a stream that left: not taken, the caller hands it back.
        assert!(!registry.assign(leased(Uuid::now_v7(), 1)));
        // A stream that is gone accounts for its leases (its guard gives
        // them back).
        assert!(registry.accounts_for(&LeaseRef {
            stream: Uuid::now_v7(),
            ..lease
        }));
        // The room it takes is not offered again.
        assert_eq!(registry.demand(100)[0].1.owners.len(), 9);
    }

    #[test]
    fn a_report_is_made_once_on_the_current_attempt_and_settling_forgets_it() {
        let (mut registry, stream, _told) = one_stream();
        let lease = hold(&mut registry, stream, 2);
        let stale = LeaseRef {
            attempt: 1,
            ..lease
        };
        assert_eq!(
            registry.start_report(&stale),
            Err(ReportRefusal::OtherAttempt(2))
        );
        assert_eq!(registry.check_progress(&lease), Ok(()));
        assert_eq!(
            registry.check_progress(&stale),
            Err(ReportRefusal::OtherAttempt(2))
        );
        assert_eq!(registry.start_report(&lease), Ok(()));
        assert_eq!(
            registry.start_report(&lease),
            Err(ReportRefusal::AlreadyReported)
        );
        assert_eq!(
            registry.check_progress(&lease),
            Err(ReportRefusal::AlreadyReported)
        );
        // While it settles, the server keeps the lease alive and a stream
        // that ends does not give it back (the report settles it).
        assert_eq!(registry.kept_by_server(Duration::ZERO), [lease]);
        assert!(!registry.finish_report(&stale));
        assert!(registry.finish_report(&lease));
        assert!(registry.holds_nothing(stream));
        assert_eq!(registry.start_report(&lease), Err(ReportRefusal::NotHeld));
        assert_eq!(registry.check_progress(&lease), Err(ReportRefusal::NotHeld));
        assert!(!registry.finish_report(&lease));
        assert!(ReportRefusal::NotHeld.reason(&lease).contains("not leased"));
    }

    #[test]
    fn a_revocation_forgets_the_current_attempt_only_and_tells_the_stream() {
        let (mut registry, stream, mut told) = one_stream();
        let lease = hold(&mut registry, stream, 2);
        let _ = told.try_recv();
        let revocation = |attempt| Revocation {
            stream,
            job: lease.job,
            attempt,
            cause: RevokeCause::LeaseLost,
        };
        assert!(!registry.revoke(&revocation(1)));
        assert!(told.try_recv().is_err());
        assert!(registry.revoke(&revocation(2)));
        assert!(matches!(told.try_recv(), Ok(StreamCommand::Revoke(r)) if r.job == lease.job));
        assert!(registry.holds_nothing(stream));
        assert!(!registry.revoke(&revocation(2)));
    }

    #[test]
    fn heartbeats_match_only_what_the_stream_holds_and_lost_leases_are_revoked() {
        let (mut registry, stream, mut told) = one_stream();
        let kept = hold(&mut registry, stream, 1);
        let lost = hold(&mut registry, stream, 1);
        let reporting = hold(&mut registry, stream, 1);
        registry.start_report(&reporting).unwrap();
        while told.try_recv().is_ok() {}

        let stranger = (Uuid::now_v7(), 1);
        let mut named: HashSet<(Uuid, i32)> = [(kept.job, 1), (lost.job, 2), stranger]
            .into_iter()
            .collect();
        registry.retain_held(stream, &mut named);
        assert_eq!(named, [(kept.job, 1)].into_iter().collect());
        registry.retain_held(Uuid::now_v7(), &mut named);
        assert!(named.is_empty(), "a stream that is gone holds nothing");

        let mut all = registry.to_extend(stream, &HashSet::new()).unwrap();
        all.sort();
        let mut expected = vec![(kept.job, 1), (lost.job, 1), (reporting.job, 1)];
        expected.sort();
        assert_eq!(all, expected);
        let only: HashSet<_> = [(kept.job, 1), (lost.job, 2)].into_iter().collect();
        assert_eq!(registry.to_extend(stream, &only), Some(vec![(kept.job, 1)]));
        assert_eq!(registry.to_extend(Uuid::now_v7(), &only), None);

        // The database extended only `kept` (and, for another stream's
        // lease, the same job at another attempt: not this one): `lost` is
        // gone; `reporting` is the report's to settle.
        let extended: HashSet<(Uuid, i32)> = [(kept.job, 1), (lost.job, 2)].into_iter().collect();
        assert_eq!(registry.reconcile(stream, &all, &extended), 1);
        assert!(matches!(
            told.try_recv(),
            Ok(StreamCommand::Revoke(r)) if r.job == lost.job && r.cause == RevokeCause::LeaseLost
        ));
        assert!(registry.accounts_for(&kept));
        assert!(!registry.accounts_for(&lost));
        assert!(registry.accounts_for(&reporting));
    }

    #[test]
    fn a_stream_that_ends_gives_back_what_no_report_settles_sorted_by_sent() {
        let (mut registry, stream, _told) = one_stream();
        let sent = hold(&mut registry, stream, 1);
        let queued = hold(&mut registry, stream, 3);
        let reporting = hold(&mut registry, stream, 1);
        registry.start_report(&reporting).unwrap();
        let held = registry.unregister(stream);
        assert_eq!(held.len(), 2, "the report settles its own lease");
        assert_eq!(registry.stream_count(), 0);
        // Queued at attempt 3 and sent at attempt 1 (an earlier assignment
        // of the same job queued twice is not this lease).
        let unsent: HashMap<Uuid, i32> = [(queued.job, 3), (sent.job, 0)].into_iter().collect();
        let withdrawn = Withdrawn::sort(stream, held, &unsent);
        assert_eq!(withdrawn.undelivered, [queued]);
        assert_eq!(withdrawn.delivered, [sent]);
        assert_eq!(withdrawn.len(), 2);
        assert!(registry.unregister(stream).is_empty());
    }
}
