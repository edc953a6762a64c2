//! The Work streams of this replica and the leases each holds: what the
//! claim loop fills, what reports and revocations empty. Guarded by one
//! mutex, never held across an await.
//!
//! It also keeps what the streams may take, and bounds it: streams per
//! caller, capacity per stream and capacity of the replica
//! ([`StreamLimits`]). What a claim is offered is counted per stream, never
//! per unit of capacity, so a stream asking for 10,000 jobs costs the claim
//! loop what one asking for one does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Weak},
    time::{Instant, SystemTime},
};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Shared, tell};
use crate::{
    domain::jobs::{
        StreamLimits,
        events::{Revocation, RevokeCause},
        leases::ReportOutcome,
    },
    store::jobs::{ClaimFilter, ClaimPlan, JobRow, LeaseRef, Slot},
};

/// Most jobs one stream may ask for in its hello (a larger hello is
/// invalid); what it gets is further bounded by
/// [`StreamLimits::capacity_per_stream`].
pub const MAX_CAPACITY: usize = 10_000;

/// Most jobs one claim leases for one group of streams: a claim round costs
/// what it leases, whatever the streams advertise.
pub const CLAIM_BATCH: usize = 512;

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
    /// When it was leased to the stream.
    pub since: Instant,
}

/// One connected Work stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// The account it works for (an API key counts as its owner).
    pub caller: Uuid,
    pub worker_id: String,
    pub filter: ClaimFilter,
    /// Jobs it may hold at once: granted by [`Registry::register`] and
    /// [`Registry::add_credit`], within the caps.
    capacity: usize,
    pub held: HashMap<Uuid, Held>,
    /// False once the worker said it drains.
    pub accepting: bool,
    pub commands: mpsc::UnboundedSender<StreamCommand>,
    /// What its session has queued for the worker: assignments still there
    /// were never sent, and their leases are kept alive however long they
    /// wait (see [`Registry::kept_by_server`]).
    pub outbox: Option<std::sync::Arc<super::outbox::Outbox>>,
}

impl StreamEntry {
    /// A stream not registered yet (its capacity is granted on
    /// registration).
    pub fn new(
        caller: Uuid,
        worker_id: String,
        filter: ClaimFilter,
        commands: mpsc::UnboundedSender<StreamCommand>,
    ) -> Self {
        Self {
            caller,
            worker_id,
            filter,
            capacity: 0,
            held: HashMap::new(),
            accepting: true,
            commands,
            outbox: None,
        }
    }

    fn free(&self) -> usize {
        if self.accepting {
            self.capacity.saturating_sub(self.held.len())
        } else {
            0
        }
    }
}

/// A stream's place among its caller's streams (and among the replica's
/// open Work transports), held by its outbox: released when both the
/// session and the transport's half are gone. The session ends first when
/// its worker stalls, but hyper keeps the transport's half (and whatever
/// it buffered) until the worker reads or resets: a worker that stalls and
/// reconnects must not pile up streams past the per-caller cap.
#[derive(Debug)]
pub struct StreamSlot {
    shared: Weak<Shared>,
    caller: Uuid,
}

impl StreamSlot {
    /// The place of a stream `register` admitted for `caller`.
    pub fn new(shared: &Arc<Shared>, caller: Uuid) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            caller,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release_slot(self.caller);
        }
    }
}

/// The streams of this replica.
#[derive(Debug)]
pub struct Registry {
    /// By id: a time-ordered UUID, so in order of arrival.
    streams: BTreeMap<Uuid, StreamEntry>,
    limits: StreamLimits,
    /// What each caller holds open.
    per_caller: HashMap<Uuid, CallerShare>,
    /// Capacity granted to all streams together.
    granted: usize,
    /// Work streams whose transport is still open, registered or not.
    transports: usize,
    /// Set once the server drains: nothing new is leased.
    draining: Option<(Instant, SystemTime)>,
    /// Rotates which stream is offered jobs first: it moves on by one per
    /// job leased, so the next claim starts where the last one's turns
    /// ended (round-robin across claims, not only within one).
    turn: usize,
}

/// The streams and capacity one caller holds on this replica.
#[derive(Debug, Default, Clone, Copy)]
struct CallerShare {
    /// Streams whose transport is still open (see [`StreamSlot`]).
    streams: usize,
    capacity: usize,
}

/// Why a stream is not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The server drains.
    Draining,
    /// The caller holds `limit` streams already.
    StreamsPerCaller(usize),
    /// The caller's streams hold `limit` capacity already.
    CapacityPerCaller(usize),
    /// The streams of this replica hold `limit` capacity already.
    CapacityPerReplica(usize),
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
    /// An empty registry bounded by `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            streams: BTreeMap::new(),
            limits,
            per_caller: HashMap::new(),
            transports: 0,
            granted: 0,
            draining: None,
            turn: 0,
        }
    }

    /// Adds a stream asking to hold `asked` jobs at once; returns what it
    /// is granted: `asked`, at most the per-stream cap and what its caller
    /// and the replica have left. Refused when the server drains, when its
    /// caller holds as many streams or as much capacity as it may, or when
    /// the replica has no capacity left. The per-caller capacity is what
    /// keeps one caller from taking the whole replica's.
    pub fn register(
        &mut self,
        id: Uuid,
        mut entry: StreamEntry,
        asked: usize,
    ) -> Result<usize, Admission> {
        if self.draining.is_some() {
            return Err(Admission::Draining);
        }
        let limits = self.limits;
        let share = self
            .per_caller
            .get(&entry.caller)
            .copied()
            .unwrap_or_default();
        if share.streams >= limits.work_streams_per_caller {
            return Err(Admission::StreamsPerCaller(limits.work_streams_per_caller));
        }
        let caller_left = limits.capacity_per_caller.saturating_sub(share.capacity);
        if caller_left == 0 {
            return Err(Admission::CapacityPerCaller(limits.capacity_per_caller));
        }
        let left = limits.capacity_per_replica.saturating_sub(self.granted);
        if left == 0 {
            return Err(Admission::CapacityPerReplica(limits.capacity_per_replica));
        }
        let capacity = asked
            .min(limits.capacity_per_stream)
            .min(caller_left)
            .min(left)
            .max(1);
        entry.capacity = capacity;
        let share = self.per_caller.entry(entry.caller).or_default();
        share.streams += 1;
        share.capacity += capacity;
        self.granted += capacity;
        self.transports += 1;
        self.streams.insert(id, entry);
        Ok(capacity)
    }

    /// Gives back the place a stream took among its caller's streams, once
    /// both its session and its transport are gone.
    pub fn release_slot(&mut self, caller: Uuid) {
        self.transports = self.transports.saturating_sub(1);
        if let Some(share) = self.per_caller.get_mut(&caller) {
            share.streams = share.streams.saturating_sub(1);
            if share.streams == 0 && share.capacity == 0 {
                self.per_caller.remove(&caller);
            }
        }
    }

    /// Work streams of this replica whose transport is still open.
    #[cfg(test)]
    pub fn open_transports(&self) -> usize {
        self.transports
    }

    /// Removes a stream; returns the leases (job, attempt) it held that no
    /// report is settling (those are the session's to give back). Its
    /// capacity is free again; its place among its caller's streams is not
    /// until its transport is gone too ([`Self::release_slot`]).
    pub fn unregister(&mut self, id: Uuid) -> Vec<(Uuid, i32)> {
        // The entry's outbox is not the last handle (the registration,
        // which calls this, holds one): its slot is not released, and the
        // registry not locked again, here.
        let Some(entry) = self.streams.remove(&id) else {
            return Vec::new();
        };
        self.granted = self.granted.saturating_sub(entry.capacity);
        if let Some(share) = self.per_caller.get_mut(&entry.caller) {
            share.capacity = share.capacity.saturating_sub(entry.capacity);
            if share.streams == 0 && share.capacity == 0 {
                self.per_caller.remove(&entry.caller);
            }
        }
        entry
            .held
            .into_iter()
            .filter(|(_, held)| !held.reporting)
            .map(|(job, held)| (job, held.attempt))
            .collect()
    }

    /// Adds `credits` to a stream's capacity, within the per-stream cap and
    /// what its caller and the replica have left; true when it grew.
    pub fn add_credit(&mut self, id: Uuid, credits: usize) -> bool {
        let limits = self.limits;
        let left = limits.capacity_per_replica.saturating_sub(self.granted);
        let Some(entry) = self.streams.get_mut(&id) else {
            return false;
        };
        let Some(share) = self.per_caller.get_mut(&entry.caller) else {
            return false;
        };
        let caller_left = limits.capacity_per_caller.saturating_sub(share.capacity);
        let wanted = entry
            .capacity
            .saturating_add(credits)
            .min(limits.capacity_per_stream);
        let extra = wanted
            .saturating_sub(entry.capacity)
            .min(left)
            .min(caller_left);
        entry.capacity += extra;
        share.capacity += extra;
        self.granted += extra;
        extra > 0
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

    /// What to claim for the streams with room: one plan per group of
    /// streams running the same jobs, each of at most `batch` jobs dealt to
    /// the group's streams in turns (one each per round while they have
    /// room), so that a short supply is shared; the first stream follows on
    /// from the last claim's. Costs O(streams + batch), whatever they
    /// advertise.
    pub fn demand(&mut self, batch: usize) -> Vec<(ClaimFilter, ClaimPlan)> {
        if self.draining.is_some() || batch == 0 {
            return Vec::new();
        }
        let mut offered: Vec<(Uuid, &StreamEntry, usize)> = self
            .streams
            .iter()
            .filter_map(|(id, entry)| {
                let free = entry.free();
                (free > 0).then_some((*id, entry, free))
            })
            .collect();
        if offered.is_empty() {
            return Vec::new();
        }
        let turn = self.turn % offered.len();
        offered.rotate_left(turn);
        let mut index: HashMap<&ClaimFilter, usize> = HashMap::new();
        let mut groups: Vec<(&ClaimFilter, Vec<Member<'_>>)> = Vec::new();
        for (id, entry, free) in offered {
            let member = Member {
                stream: id,
                worker_id: &entry.worker_id,
                free,
            };
            match index.get(&entry.filter) {
                Some(&at) => groups[at].1.push(member),
                None => {
                    index.insert(&entry.filter, groups.len());
                    groups.push((&entry.filter, vec![member]));
                }
            }
        }
        groups
            .into_iter()
            .map(|(filter, members)| (filter.clone(), deal(&members, batch)))
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
                since: Instant::now(),
            },
        );
        tell(&entry.commands, StreamCommand::Assign(Box::new(job)));
        self.turn = self.turn.wrapping_add(1);
        true
    }

    /// The leases the server keeps alive itself, since the worker cannot
    /// be asked to (see [`super::keepalive`]): those being reported, those
    /// whose assignment still waits in the stream's outbox, and those
    /// leased less than `window` ago (on their way to the worker, or just
    /// arrived).
    pub fn kept_by_server(&self, window: std::time::Duration) -> Vec<LeaseRef> {
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

    /// The streams connected here.
    pub fn stream_ids(&self) -> Vec<Uuid> {
        self.streams.keys().copied().collect()
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

/// A stream with room, as a claim is offered it.
struct Member<'a> {
    stream: Uuid,
    worker_id: &'a str,
    free: usize,
}

/// Deals up to `batch` jobs to `members` in turns: one each per round, in
/// order, while they have room. Only the members dealt a job appear in the
/// plan; the work is O(members + batch), never O(room).
fn deal(members: &[Member<'_>], batch: usize) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    // (member, its index in the plan once dealt a job, room left)
    let mut room: Vec<(usize, Option<i32>, usize)> = members
        .iter()
        .enumerate()
        .map(|(at, member)| (at, None, member.free))
        .collect();
    while plan.owners.len() < batch && !room.is_empty() {
        for (at, owner, left) in room.iter_mut() {
            if plan.owners.len() == batch {
                break;
            }
            let owner = *owner.get_or_insert_with(|| {
                plan.streams.push(Slot {
                    stream: members[*at].stream,
                    worker_id: members[*at].worker_id.to_owned(),
                });
                (plan.streams.len() - 1) as i32
            });
            plan.owners.push(owner);
            *left -= 1;
        }
        room.retain(|(_, _, left)| *left > 0);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StreamLimits {
        StreamLimits {
            work_streams_per_caller: 100,
            capacity_per_stream: 10_000,
            capacity_per_caller: 10_000_000,
            capacity_per_replica: 10_000_000,
            ..StreamLimits::default()
        }
    }

    fn entry(caller: Uuid, name: &str) -> StreamEntry {
        let (commands, _) = mpsc::unbounded_channel();
        let filter = ClaimFilter {
            names: vec![name.to_owned()],
            modules: vec![],
            plain_only: false,
        };
        StreamEntry::new(caller, format!("worker-{name}"), filter, commands)
    }

    /// How many jobs each stream of a plan is dealt.
    fn counts(plan: &ClaimPlan) -> Vec<usize> {
        let mut counts = vec![0; plan.streams.len()];
        for owner in &plan.owners {
            counts[*owner as usize] += 1;
        }
        counts
    }

    #[test]
    fn demand_counts_streams_not_units_of_capacity() {
        let mut registry = Registry::new(limits());
        let caller = Uuid::now_v7();
        for _ in 0..50 {
            registry
                .register(Uuid::now_v7(), entry(caller, "idle"), 10_000)
                .unwrap();
        }
        let demand = registry.demand(CLAIM_BATCH);
        assert_eq!(demand.len(), 1, "one group");
        let (_, plan) = &demand[0];
        // 500,000 units advertised; one batch offered, over 50 streams.
        assert_eq!(plan.owners.len(), CLAIM_BATCH);
        assert_eq!(plan.streams.len(), 50);
        let counts = counts(plan);
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{counts:?}");
    }

    #[test]
    fn a_short_supply_is_dealt_in_turns_and_each_stream_within_its_room() {
        let mut registry = Registry::new(limits());
        let caller = Uuid::now_v7();
        let small = Uuid::now_v7();
        let large = Uuid::now_v7();
        registry.register(small, entry(caller, "x"), 2).unwrap();
        registry.register(large, entry(caller, "x"), 5).unwrap();
        registry
            .register(Uuid::now_v7(), entry(caller, "y"), 3)
            .unwrap();
        let demand = registry.demand(100);
        assert_eq!(demand.len(), 2, "one plan per group");
        let (_, x) = demand
            .iter()
            .find(|(filter, _)| filter.names == ["x"])
            .unwrap();
        // 2 + 5 units, dealt one each per round while both have room.
        assert_eq!(x.owners.len(), 7);
        assert_eq!(x.owners[..4], [0, 1, 0, 1]);
        let by_stream: HashMap<Uuid, usize> = x
            .streams
            .iter()
            .map(|slot| slot.stream)
            .zip(counts(x))
            .collect();
        assert_eq!(by_stream[&small], 2);
        assert_eq!(by_stream[&large], 5);
        // Once a job was leased, the next claim starts with another stream.
        let first = |registry: &mut Registry| {
            let demand = registry.demand(1);
            let (_, plan) = demand.iter().find(|(f, _)| f.names == ["x"]).unwrap();
            plan.streams[0].stream
        };
        let one = first(&mut registry);
        assert_eq!(first(&mut registry), one, "nothing leased, same turn");
        registry.turn += 1;
        let two = first(&mut registry);
        assert_ne!(one, two, "the first stream rotates");
    }

    #[test]
    fn caps_bound_streams_per_caller_and_capacity() {
        let mut registry = Registry::new(StreamLimits {
            work_streams_per_caller: 2,
            capacity_per_stream: 5,
            capacity_per_caller: 100,
            capacity_per_replica: 12,
            ..StreamLimits::default()
        });
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let first = Uuid::now_v7();
        assert_eq!(registry.register(first, entry(alice, "a"), 100), Ok(5));
        // Credit is bounded by the per-stream cap.
        assert!(!registry.add_credit(first, 100));
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(alice, "a"), 5),
            Ok(5)
        );
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(alice, "a"), 1),
            Err(Admission::StreamsPerCaller(2))
        );
        assert_eq!(registry.register(Uuid::now_v7(), entry(bob, "b"), 5), Ok(2));
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(bob, "b"), 1),
            Err(Admission::CapacityPerReplica(12))
        );
        // Leaving gives the room back, once the transport is gone too.
        registry.unregister(first);
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(alice, "a"), 3),
            Err(Admission::StreamsPerCaller(2))
        );
        assert_eq!(registry.open_transports(), 3);
        registry.release_slot(alice);
        assert_eq!(registry.open_transports(), 2);
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(alice, "a"), 3),
            Ok(3)
        );
        let demand = registry.demand(CLAIM_BATCH);
        let total: usize = demand.iter().map(|(_, plan)| plan.owners.len()).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn one_caller_cannot_take_the_whole_replica() {
        let mut registry = Registry::new(StreamLimits {
            work_streams_per_caller: 10,
            capacity_per_stream: 5,
            capacity_per_caller: 8,
            capacity_per_replica: 12,
            ..StreamLimits::default()
        });
        let (hostile, honest) = (Uuid::now_v7(), Uuid::now_v7());
        let first = Uuid::now_v7();
        assert_eq!(registry.register(first, entry(hostile, "h"), 5), Ok(5));
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(hostile, "h"), 5),
            Ok(3)
        );
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(hostile, "h"), 5),
            Err(Admission::CapacityPerCaller(8))
        );
        // Credits stay within the caller's share too.
        assert!(!registry.add_credit(first, 5));
        // What the hostile caller could not take is left for others.
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(honest, "o"), 5),
            Ok(4)
        );
        // Leaving gives the caller's share back.
        registry.unregister(first);
        registry.release_slot(hostile);
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(hostile, "h"), 5),
            Ok(5)
        );
    }
}
