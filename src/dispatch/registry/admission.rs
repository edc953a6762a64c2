//! Admission: a stream registered within the caps (streams per caller,
//! capacity per stream, per caller and per replica), the credits that grow
//! it, its place among its caller's streams until its transport is gone,
//! and the drains (the server's, and a worker's own).

use std::{
    sync::{Arc, Weak},
    time::{Instant, SystemTime},
};

use uuid::Uuid;

use super::{Registry, StreamCommand, StreamEntry};
use crate::dispatch::{Shared, tell};

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
            shared.registry().release_slot(self.caller);
        }
    }
}

impl Registry {
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
        entry.group = self.groups.join(&entry.filter, id);
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
    /// report is settling (those are the session's to give back, see
    /// [`super::Withdrawn`]). Its capacity is free again; its place among
    /// its caller's streams is not until its transport is gone too
    /// ([`Self::release_slot`]).
    pub fn unregister(&mut self, id: Uuid) -> Vec<(Uuid, i32)> {
        // The entry's outbox is not the last handle (the registration,
        // which calls this, holds one): its slot is not released, and the
        // registry not locked again, here.
        let Some(entry) = self.streams.remove(&id) else {
            return Vec::new();
        };
        self.groups.leave(entry.group, id);
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

    /// The worker of stream `id` said it drains: it is given nothing more
    /// (what it holds it keeps, until it reports or leaves).
    pub fn stop_accepting(&mut self, id: Uuid) {
        if let Some(entry) = self.streams.get_mut(&id) {
            entry.accepting = false;
        }
    }

    /// Whether the server drains, and until when.
    pub fn drain_deadline(&self) -> Option<(Instant, SystemTime)> {
        self.draining
    }

    /// Starts draining: no stream is admitted nor given anything more, and
    /// every stream is told.
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::{
        super::{
            CLAIM_BATCH,
            tests::{entry, entry_telling, limits},
        },
        *,
    };
    use crate::domain::jobs::StreamLimits;

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

    #[test]
    fn credits_grow_a_stream_up_to_the_caps_and_are_freed_on_leaving() {
        let mut registry = Registry::new(StreamLimits {
            capacity_per_stream: 10,
            capacity_per_caller: 14,
            ..limits()
        });
        let (caller, other) = (Uuid::now_v7(), Uuid::now_v7());
        let stream = Uuid::now_v7();
        assert_eq!(registry.register(stream, entry(caller, "a"), 2), Ok(2));
        assert!(registry.add_credit(stream, 3));
        assert_eq!(registry.demand(CLAIM_BATCH)[0].1.owners.len(), 5);
        // Past the per-stream cap: grown only to it.
        assert!(registry.add_credit(stream, 100));
        assert!(!registry.add_credit(stream, 1));
        assert_eq!(registry.demand(CLAIM_BATCH)[0].1.owners.len(), 10);
        // What is left of the caller's share bounds its next stream.
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(caller, "b"), 10),
            Ok(4)
        );
        // No credit for a stream that is gone, nor for one never seen.
        registry.unregister(stream);
        assert!(!registry.add_credit(stream, 1));
        assert!(!registry.add_credit(Uuid::now_v7(), 1));
        // Its capacity is free again: another caller can take it whole.
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(other, "c"), 10),
            Ok(10)
        );
    }

    #[test]
    fn a_drain_tells_every_stream_and_admits_and_offers_nothing_more() {
        let mut registry = Registry::new(limits());
        let caller = Uuid::now_v7();
        let (commands, mut told) = mpsc::unbounded_channel();
        let stream = Uuid::now_v7();
        registry
            .register(stream, entry_telling(caller, "a", commands), 3)
            .unwrap();
        assert_eq!(registry.drain_deadline(), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let wall = SystemTime::now();
        registry.begin_drain(deadline, wall);
        assert_eq!(registry.drain_deadline(), Some((deadline, wall)));
        assert!(matches!(
            told.try_recv(),
            Ok(StreamCommand::Drain { deadline: d, .. }) if d == deadline
        ));
        assert_eq!(
            registry.register(Uuid::now_v7(), entry(caller, "a"), 1),
            Err(Admission::Draining)
        );
        assert!(registry.demand(CLAIM_BATCH).is_empty());
        assert_eq!(registry.stream_count(), 1, "streams end on their own");
    }

    #[test]
    fn a_worker_that_drains_is_offered_nothing_more() {
        let mut registry = Registry::new(limits());
        let caller = Uuid::now_v7();
        let (draining, other) = (Uuid::now_v7(), Uuid::now_v7());
        registry.register(draining, entry(caller, "a"), 3).unwrap();
        registry.register(other, entry(caller, "a"), 2).unwrap();
        registry.stop_accepting(draining);
        let demand = registry.demand(CLAIM_BATCH);
        let (_, plan) = &demand[0];
        assert_eq!(plan.owners.len(), 2);
        assert!(plan.streams.iter().all(|slot| slot.stream == other));
        // A stream that is gone is ignored.
        registry.stop_accepting(Uuid::now_v7());
    }
}
