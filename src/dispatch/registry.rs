//! The Work streams of this replica and the leases each holds: what the
//! claim loop fills, what reports and revocations empty. Guarded by one
//! mutex, never held across an await.

use std::{
    collections::HashMap,
    time::{Instant, SystemTime},
};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::tell;
use crate::{
    domain::jobs::{
        events::{Revocation, RevokeCause},
        leases::ReportOutcome,
    },
    store::jobs::{ClaimFilter, JobRow, LeaseRef, Slot},
};

/// Most jobs one stream may hold at once, whatever credits it was given.
pub const MAX_CAPACITY: usize = 10_000;

/// What a stream's session is told by the rest of the dispatcher.
#[derive(Debug)]
pub enum StreamCommand {
    /// A job leased to it (already recorded as held).
    Assign(Box<JobRow>),
    /// A lease taken away (already forgotten).
    Revoke(Revocation),
    /// A report was settled (the lease is still recorded until the session
    /// takes the outcome).
    Settled {
        lease: LeaseRef,
        outcome: ReportOutcome,
    },
    /// The server is draining.
    Drain {
        deadline: Instant,
        wall_deadline: SystemTime,
    },
}

/// One lease a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub attempt: i32,
    /// A report on it is being settled.
    pub reporting: bool,
}

/// One connected Work stream.
#[derive(Debug)]
pub struct StreamEntry {
    pub worker_id: String,
    pub filter: ClaimFilter,
    /// Jobs it may hold at once.
    pub capacity: usize,
    pub held: HashMap<Uuid, Held>,
    /// False once the worker said it drains.
    pub accepting: bool,
    pub commands: mpsc::UnboundedSender<StreamCommand>,
}

impl StreamEntry {
    fn free(&self) -> usize {
        if self.accepting {
            self.capacity.saturating_sub(self.held.len())
        } else {
            0
        }
    }
}

/// The streams of this replica.
#[derive(Debug, Default)]
pub struct Registry {
    streams: HashMap<Uuid, StreamEntry>,
    /// Set once the server drains: nothing new is leased.
    draining: Option<(Instant, SystemTime)>,
    /// Rotates which stream is offered jobs first.
    turn: usize,
}

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

impl Registry {
    /// Adds a stream; `None` when the server drains.
    pub fn register(&mut self, id: Uuid, entry: StreamEntry) -> Option<()> {
        if self.draining.is_some() {
            return None;
        }
        self.streams.insert(id, entry);
        Some(())
    }

    /// Removes a stream; returns the leases it held that no report is
    /// settling (those are the session's to lose).
    pub fn unregister(&mut self, id: Uuid) -> Vec<Uuid> {
        self.streams
            .remove(&id)
            .map(|entry| {
                entry
                    .held
                    .into_iter()
                    .filter(|(_, held)| !held.reporting)
                    .map(|(job, _)| job)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the server drains, and until when.
    pub fn drain_deadline(&self) -> Option<(Instant, SystemTime)> {
        self.draining
    }

    /// Starts draining: every stream is told.
    pub fn begin_drain(&mut self, deadline: Instant, wall_deadline: SystemTime) {
        self.draining = Some((deadline, wall_deadline));
        for entry in self.streams.values() {
            tell(
                &entry.commands,
                StreamCommand::Drain {
                    deadline,
                    wall_deadline,
                },
            );
        }
    }

    /// Streams connected.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The stream `id`, when connected.
    pub fn get_mut(&mut self, id: Uuid) -> Option<&mut StreamEntry> {
        self.streams.get_mut(&id)
    }

    /// The free slots of every stream, grouped by what the streams run, and
    /// interleaved so that each stream of a group gets its share of a short
    /// supply; a different stream goes first each time.
    pub fn demand(&mut self) -> Vec<(ClaimFilter, Vec<Slot>)> {
        if self.draining.is_some() {
            return Vec::new();
        }
        let mut ids: Vec<Uuid> = self
            .streams
            .iter()
            .filter(|(_, entry)| entry.free() > 0)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        ids.sort();
        self.turn = self.turn.wrapping_add(1);
        let turn = self.turn % ids.len();
        ids.rotate_left(turn);
        /// A stream offered jobs: its id, free slots and worker name.
        type Member = (Uuid, usize, String);
        let mut groups: Vec<(ClaimFilter, Vec<Member>)> = Vec::new();
        for id in ids {
            let entry = &self.streams[&id];
            let member: Member = (id, entry.free(), entry.worker_id.clone());
            match groups
                .iter_mut()
                .find(|(filter, _)| *filter == entry.filter)
            {
                Some((_, members)) => members.push(member),
                None => groups.push((entry.filter.clone(), vec![member])),
            }
        }
        groups
            .into_iter()
            .map(|(filter, mut members)| {
                let mut slots = Vec::new();
                while members.iter().any(|(_, free, _)| *free > 0) {
                    for (stream, free, worker_id) in members.iter_mut() {
                        if *free > 0 {
                            *free -= 1;
                            slots.push(Slot {
                                stream: *stream,
                                worker_id: worker_id.clone(),
                            });
                        }
                    }
                }
                (filter, slots)
            })
            .collect()
    }

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
            },
        );
        tell(&entry.commands, StreamCommand::Assign(Box::new(job)));
        true
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

    /// Forgets a lease whose report was settled; true when it was held.
    pub fn finish_report(&mut self, lease: &LeaseRef) -> bool {
        let Some(entry) = self.streams.get_mut(&lease.stream) else {
            return false;
        };
        match entry.held.get(&lease.job) {
            Some(held) if held.attempt == lease.attempt => {
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

    /// The leases a heartbeat found gone: those the stream held (not being
    /// reported) that are not among `still_held`. They are forgotten and
    /// their stream told.
    pub fn reconcile(
        &mut self,
        stream: Uuid,
        checked: &[(Uuid, i32)],
        still_held: &std::collections::HashSet<Uuid>,
    ) -> usize {
        let Some(entry) = self.streams.get_mut(&stream) else {
            return 0;
        };
        let mut lost = 0;
        for (job, attempt) in checked {
            if still_held.contains(job) {
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
