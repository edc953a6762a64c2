//! What the claim loop is asked to lease: for each group of streams running
//! the same jobs, a plan of at most a batch, dealt to the group's streams
//! in turns while they have room.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Registry, StreamEntry};
use crate::store::jobs::{ClaimFilter, ClaimPlan, Slot};

impl Registry {
    /// What to claim for the streams with room: one plan per group of
    /// streams running the same jobs, each of at most `batch` jobs dealt to
    /// the group's streams in turns (one each per round while they have
    /// room), so that a short supply is shared; the first stream follows on
    /// from the last claim's. Costs O(streams + batch), whatever they
    /// advertise, and only for the streams of groups worth a claim (an idle
    /// group costs nothing).
    pub fn demand(&mut self, batch: usize) -> Vec<(ClaimFilter, ClaimPlan)> {
        if self.draining.is_some() || batch == 0 {
            return Vec::new();
        }
        // Only groups worth a claim (see [`super::idle`]): idle ones cost
        // nothing here either.
        let mut offered: Vec<(Uuid, &StreamEntry, usize)> = Vec::new();
        for group in self.groups.groups.values().filter(|group| group.eligible()) {
            for id in &group.members {
                if let Some(entry) = self.streams.get(id) {
                    let free = entry.free();
                    if free > 0 {
                        offered.push((*id, entry, free));
                    }
                }
            }
        }
        // In order of arrival, as the streams are kept.
        offered.sort_unstable_by_key(|(id, _, _)| *id);
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
    use super::{
        super::{
            CLAIM_BATCH,
            tests::{entry, limits},
        },
        *,
    };

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
}
