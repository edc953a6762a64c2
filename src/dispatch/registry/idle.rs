//! Groups of streams running the same jobs (one [`ClaimFilter`]), and
//! which of them are worth a claim.
//!
//! A claim costs a statement whatever it finds, so a group that keeps
//! finding nothing must not be claimed for on every wake-up: ten thousand
//! idle workers, each with a job name of its own, would cost ten thousand
//! claims per job created anywhere, and an honest worker's job would wait
//! behind them. So a group is *cold* once a claim of every lane found it
//! nothing and it was leased nothing for [`WARM`]; a new group starts cold.
//! A cold group is claimed for only after the dispatcher's probe
//! (`dispatch::idle`) found that one of its names may have work (one read
//! for all cold groups, run after every notice of runnable work, a new
//! group, and on the poll interval). A group that was leased a job is warm
//! again, and claimed for on every wake-up as before.
//!
//! Nothing is lost between a claim and a probe: a probe's finding is kept
//! until a claim that began after it finds nothing ([`Registry::claimed`]),
//! and a group that turns cold asks for a probe (the job whose notice came
//! while it was still warm is seen then).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use uuid::Uuid;

use super::Registry;
use crate::store::jobs::ClaimFilter;

/// How long a group that was leased a job stays claimed for on every
/// wake-up, found work or not.
pub const WARM: Duration = Duration::from_secs(2);

/// One group of streams.
#[derive(Debug)]
pub(super) struct Group {
    pub filter: ClaimFilter,
    /// Its streams, in order of arrival.
    pub members: BTreeSet<Uuid>,
    last_leased: Option<Instant>,
    cold: bool,
    /// The probe that last found it work (0: none since it was cleared).
    found: u64,
}

impl Group {
    /// Whether a claim is worth making for it now.
    pub fn eligible(&self) -> bool {
        !self.cold || self.found > 0
    }
}

/// The groups, by filter.
#[derive(Debug)]
pub(super) struct Groups {
    /// Whether a new group starts cold (always, but in the unit tests of
    /// the rest of the registry, which are about other things).
    pub start_cold: bool,
    ids: HashMap<ClaimFilter, u64>,
    pub groups: HashMap<u64, Group>,
    /// The groups of each job name a group asks for: what a probe's answer
    /// is matched with, at the cost of the names it names (not of every
    /// group: ten thousand idle groups were hashed on every probe).
    by_name: HashMap<String, Vec<u64>>,
    next: u64,
    /// Probes applied so far.
    probes: u64,
    /// Rung when a probe is wanted.
    probe: Arc<Notify>,
    /// The LISTEN connection came back (or up): notices may have been
    /// lost, and the database may have been away.
    reconnected: bool,
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            start_cold: !cfg!(test),
            ids: HashMap::new(),
            groups: HashMap::new(),
            by_name: HashMap::new(),
            next: 0,
            probes: 0,
            probe: Arc::new(Notify::new()),
            reconnected: false,
        }
    }
}

impl Groups {
    /// Puts stream `id` in the group of `filter`; returns the group.
    pub fn join(&mut self, filter: &ClaimFilter, id: Uuid) -> u64 {
        let group = match self.ids.get(filter) {
            Some(&group) => group,
            None => {
                self.next += 1;
                let group = self.next;
                self.ids.insert(filter.clone(), group);
                for name in &filter.names {
                    self.by_name.entry(name.clone()).or_default().push(group);
                }
                self.groups.insert(
                    group,
                    Group {
                        filter: filter.clone(),
                        members: BTreeSet::new(),
                        last_leased: None,
                        cold: self.start_cold,
                        found: 0,
                    },
                );
                // A backlog may wait for it.
                self.probe.notify_one();
                group
            }
        };
        if let Some(entry) = self.groups.get_mut(&group) {
            entry.members.insert(id);
        }
        group
    }

    /// Takes stream `id` out of `group`, which goes once empty.
    pub fn leave(&mut self, group: u64, id: Uuid) {
        if let Some(entry) = self.groups.get_mut(&group) {
            entry.members.remove(&id);
            if entry.members.is_empty() {
                self.ids.remove(&entry.filter);
                for name in &entry.filter.names {
                    if let Some(groups) = self.by_name.get_mut(name) {
                        groups.retain(|&other| other != group);
                        if groups.is_empty() {
                            self.by_name.remove(name);
                        }
                    }
                }
                self.groups.remove(&group);
            }
        }
    }
}

/// How many cold groups there are (no names copied).
#[derive(Debug, Default, Clone, Copy)]
pub struct ColdCount {
    /// Cold groups asking for some names.
    pub named: usize,
    /// A cold group takes any name.
    pub any: bool,
}

/// What a probe is to look for.
#[derive(Debug, Default)]
pub struct ColdNames {
    /// The names of cold groups, each once.
    pub names: Vec<String>,
    /// A cold group takes any name: ask whether anything is runnable.
    pub any: bool,
}

impl Registry {
    /// The signal the probe waits on.
    pub fn probe_signal(&self) -> Arc<Notify> {
        self.groups.probe.clone()
    }

    /// Asks for a probe (something may have become runnable).
    pub fn want_probe(&self) {
        if self.groups.groups.values().any(|group| group.cold) {
            self.groups.probe.notify_one();
        }
    }

    /// Notes that the LISTEN connection (re)connected: notices may have
    /// been lost, so a probe is due; and the database may have been away,
    /// so the claim loop looks for leases no stream knows of (a claim made
    /// then may have lost its answer; idle streams may have made none that
    /// would have failed to tell), see [`Self::take_reconnected`].
    pub fn reconnected(&mut self) {
        self.groups.reconnected = true;
        self.want_probe();
    }

    /// Whether the LISTEN connection (re)connected since last asked.
    pub fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.groups.reconnected)
    }

    /// How many groups are cold: what a probe sizes its look by.
    pub fn cold_count(&self) -> ColdCount {
        let mut count = ColdCount::default();
        for group in self.groups.groups.values().filter(|group| group.cold) {
            if group.filter.names.is_empty() {
                count.any = true;
            } else {
                count.named += 1;
            }
        }
        count
    }

    /// Of `names`, those a cold group asks for (each once): the cost is
    /// that of `names`, not of the groups.
    pub fn cold_among(&self, names: &[String]) -> Vec<String> {
        let mut seen = HashSet::new();
        names
            .iter()
            .filter(|name| {
                self.groups
                    .by_name
                    .get(name.as_str())
                    .is_some_and(|groups| {
                        groups
                            .iter()
                            .any(|id| self.groups.groups.get(id).is_some_and(|group| group.cold))
                    })
            })
            .filter(|name| seen.insert(name.as_str()))
            .cloned()
            .collect()
    }

    /// What the probe looks for: the cold groups' names.
    pub fn cold_names(&self) -> ColdNames {
        let mut seen = HashSet::new();
        let mut cold = ColdNames::default();
        for group in self.groups.groups.values().filter(|group| group.cold) {
            if group.filter.names.is_empty() {
                cold.any = true;
            }
            for name in &group.filter.names {
                if seen.insert(name.as_str()) {
                    cold.names.push(name.clone());
                }
            }
        }
        cold
    }

    /// Applies a probe's answer: the cold groups with one of `names` (or,
    /// when `any`, taking any name) are claimed for again. True when some
    /// group became worth a claim.
    pub fn found_work(&mut self, names: &[String], any: bool) -> bool {
        self.groups.probes += 1;
        let probe = self.groups.probes;
        let mut found: HashSet<u64> = names
            .iter()
            .filter_map(|name| self.groups.by_name.get(name.as_str()))
            .flatten()
            .copied()
            .collect();
        if any {
            found.extend(
                self.groups
                    .groups
                    .iter()
                    .filter(|(_, group)| group.filter.names.is_empty())
                    .map(|(&id, _)| id),
            );
        }
        let mut woke = false;
        for id in found {
            if let Some(group) = self.groups.groups.get_mut(&id)
                && group.cold
            {
                woke |= group.found == 0;
                group.found = probe;
            }
        }
        woke
    }

    /// Notes that a claim for `filter` begins; returns what
    /// [`Self::claimed`] is to be given.
    pub fn claiming(&self) -> u64 {
        self.groups.probes
    }

    /// Notes a claim's outcome for `filter` (begun at `since`, from
    /// [`Self::claiming`]): `leased` jobs; `dry` when every lane was looked
    /// at and it came back short.
    pub fn claimed(&mut self, filter: &ClaimFilter, leased: usize, dry: bool, since: u64) {
        let Some(id) = self.groups.ids.get(filter).copied() else {
            return;
        };
        let Some(group) = self.groups.groups.get_mut(&id) else {
            return;
        };
        if leased > 0 {
            group.last_leased = Some(Instant::now());
            group.cold = false;
        }
        if !dry {
            return;
        }
        if group.found <= since {
            group.found = 0;
        }
        if !group.cold && group.last_leased.is_none_or(|at| at.elapsed() >= WARM) {
            group.cold = true;
            // A notice that came while it was warm was not probed for it.
            self.groups.probe.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::tests::{entry, limits},
        *,
    };

    fn registry() -> Registry {
        let mut registry = Registry::new(limits());
        registry.groups.start_cold = true;
        registry
    }

    fn names(demand: &[(ClaimFilter, crate::store::jobs::ClaimPlan)]) -> Vec<String> {
        demand
            .iter()
            .flat_map(|(filter, _)| filter.names.clone())
            .collect()
    }

    #[test]
    fn idle_groups_are_offered_only_once_a_probe_found_them_work() {
        let mut registry = registry();
        for i in 0..1_000 {
            registry
                .register(Uuid::now_v7(), entry(Uuid::now_v7(), &format!("n{i}")), 1)
                .unwrap();
        }
        assert!(registry.demand(512).is_empty(), "new groups start cold");
        let cold = registry.cold_names();
        assert_eq!(cold.names.len(), 1_000);
        assert!(!cold.any);
        assert!(registry.found_work(&["n7".into(), "nobody".into()], false));
        assert_eq!(names(&registry.demand(512)), ["n7"]);
        // Found again before it was claimed: nothing new to wake for.
        assert!(!registry.found_work(&["n7".into()], false));
        // Claimed for, nothing found: cold again, and not offered.
        let since = registry.claiming();
        registry.claimed(&filter("n7"), 0, true, since);
        assert!(registry.demand(512).is_empty());
    }

    fn filter(name: &str) -> ClaimFilter {
        ClaimFilter {
            names: vec![name.into()],
            modules: vec![],
            plain_only: false,
        }
    }

    #[test]
    fn a_finding_that_comes_during_a_claim_is_kept() {
        let mut registry = registry();
        registry
            .register(Uuid::now_v7(), entry(Uuid::now_v7(), "x"), 1)
            .unwrap();
        registry.found_work(&["x".into()], false);
        let since = registry.claiming();
        // The probe finds it again while the claim runs (a job created
        // after the claim's snapshot).
        registry.found_work(&["x".into()], false);
        registry.claimed(&filter("x"), 0, true, since);
        assert_eq!(names(&registry.demand(512)), ["x"]);
        // A claim of the plain lane alone that came back short keeps it.
        let since = registry.claiming();
        registry.claimed(&filter("x"), 0, false, since);
        assert_eq!(names(&registry.demand(512)), ["x"]);
    }

    #[test]
    fn a_group_leased_a_job_stays_warm_then_turns_cold_and_asks_for_a_probe() {
        let mut registry = registry();
        registry
            .register(Uuid::now_v7(), entry(Uuid::now_v7(), "x"), 2)
            .unwrap();
        registry.found_work(&["x".into()], false);
        let since = registry.claiming();
        registry.claimed(&filter("x"), 1, false, since);
        // Warm: offered on every round, found nothing or not.
        let since = registry.claiming();
        registry.claimed(&filter("x"), 0, true, since);
        assert_eq!(names(&registry.demand(512)), ["x"]);
        assert!(registry.cold_names().names.is_empty());
        // Once WARM has passed since its last job, a dry claim makes it
        // cold, and a probe is asked for (it may have missed a notice).
        let id = registry.groups.ids[&filter("x")];
        registry.groups.groups.get_mut(&id).unwrap().last_leased = Some(Instant::now() - WARM);
        let signal = registry.probe_signal();
        let asked = || futures_util::FutureExt::now_or_never(signal.notified()).is_some();
        asked();
        assert!(!asked(), "no probe asked for yet");
        let since = registry.claiming();
        registry.claimed(&filter("x"), 0, true, since);
        assert!(registry.demand(512).is_empty());
        assert_eq!(registry.cold_names().names, ["x"]);
        assert!(asked(), "a probe is asked for");
    }

    #[test]
    fn names_are_matched_through_the_index_and_leave_it_with_their_group() {
        let mut registry = registry();
        let caller = Uuid::now_v7();
        let a = Uuid::now_v7();
        let mut two = entry(caller, "x");
        two.filter.names = vec!["x".into(), "y".into()];
        registry.register(a, two, 1).unwrap();
        registry
            .register(Uuid::now_v7(), entry(caller, "y"), 1)
            .unwrap();
        let pending = ["w".into(), "y".into(), "x".into(), "y".into()];
        assert_eq!(registry.cold_among(&pending), ["y", "x"]);
        assert_eq!(registry.cold_count().named, 2);
        // Work for "y": both groups that ask for it.
        assert!(registry.found_work(&["y".into()], false));
        assert_eq!(registry.demand(512).len(), 2);
        registry.unregister(a);
        assert!(!registry.groups.by_name.contains_key("x"));
        assert_eq!(registry.groups.by_name["y"].len(), 1);
        assert_eq!(registry.cold_among(&pending), ["y"]);
    }

    #[test]
    fn groups_go_with_their_last_stream_and_nameless_ones_ask_for_any_work() {
        let mut registry = registry();
        let caller = Uuid::now_v7();
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        registry.register(a, entry(caller, "x"), 1).unwrap();
        registry.register(b, entry(caller, "x"), 1).unwrap();
        let mut any = entry(caller, "y");
        any.filter.names.clear();
        registry.register(Uuid::now_v7(), any, 1).unwrap();
        let cold = registry.cold_names();
        assert_eq!(cold.names, ["x"]);
        assert!(cold.any);
        assert!(registry.found_work(&[], true));
        assert_eq!(registry.demand(512).len(), 1, "the nameless group");
        registry.unregister(a);
        assert_eq!(registry.groups.groups.len(), 2);
        registry.unregister(b);
        assert_eq!(registry.groups.groups.len(), 1);
        assert!(!registry.groups.ids.contains_key(&filter("x")));
    }
}
