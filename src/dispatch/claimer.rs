//! The claim loop: leasing runnable jobs to the Work streams with room,
//! on a connection of its own, in rounds of one claim per group of streams,
//! and what it does after a failed claim (hand back what it may have
//! leased) and around keys and buckets (when to examine them at all).

use std::{collections::HashMap, sync::Arc, time::Duration};

use diesel_async::AsyncPgConnection;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Shared, keepalive, registry::CLAIM_BATCH};
use crate::{
    db,
    domain::jobs::leases::{Leases, LimitsPhase},
    error::AppError,
    store::jobs::{
        CLAIM_SESSION_SETTINGS, ClaimFilter, ClaimPlan, CountingScope, JobRow,
        count_keys_by_statement,
    },
};

/// Leases jobs to free slots whenever something may have changed: a
/// notification, a freed slot, a new stream, the next scheduled job falling
/// due, or the poll interval passing.
pub(super) async fn claim_loop(shared: Arc<Shared>, database_url: String) {
    let mut claimer = Claimer {
        url: database_url,
        conn: None,
        lost: Vec::new(),
        limits: LimitsWatch::new(),
        cursors: HashMap::new(),
    };
    let mut next_due: Option<Instant> = None;
    let mut failures = 0u32;
    // Waiting jobs may have fallen due: promote them before claiming.
    let mut promote = true;
    // Set when a claim failed: it may have committed all the same.
    let mut unsure = false;
    loop {
        let poll = shared.settings.poll_interval;
        let wait = next_due
            .map(|due| due.saturating_duration_since(Instant::now()))
            .map_or(poll, |until_due| until_due.min(poll));
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {
                shared.schedule_changed.store(true, std::sync::atomic::Ordering::Release);
                promote = true;
            }
        }
        if next_due.is_some_and(|due| due <= Instant::now()) {
            promote = true;
        }
        if promote {
            match shared.leases.promote_due().await {
                Ok(_) => promote = false,
                Err(error) => shared.note_db_failure(&error),
            }
        }
        // A claim failed (its answer lost, its commit maybe made), or the
        // database was away (idle streams may have made no claim to notice
        // it): hand back what it leased before claiming again.
        unsure |= shared.registry().take_reconnected();
        if unsure || !claimer.lost.is_empty() {
            match keepalive::give_back_unknown_leases(&shared, &claimer.lost).await {
                Ok(_) => {
                    claimer.lost.clear();
                    unsure = false;
                }
                Err(error) => shared.note_db_failure(&error),
            }
        }
        match claim_rounds(&shared, &mut claimer).await {
            Ok(()) => failures = 0,
            Err(error) => {
                unsure = true;
                shared.note_db_failure(&error);
                failures += 1;
                let pause = Duration::from_millis(50 * 2u64.pow(failures.min(6)));
                tokio::time::sleep(pause).await;
                shared.wake.notify_one();
                continue;
            }
        }
        if shared
            .schedule_changed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            match shared.leases.time_to_next_scheduled().await {
                Ok(due) => next_due = due.map(|d| Instant::now() + d),
                Err(error) => {
                    shared.note_db_failure(&error);
                    shared
                        .schedule_changed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
            }
        }
        if next_due.is_some_and(|due| due <= Instant::now()) {
            next_due = None;
            promote = true;
            shared
                .schedule_changed
                .store(true, std::sync::atomic::Ordering::Release);
            shared.wake.notify_one();
        }
    }
}

/// The claim loop's own connection, outside the pool: claims are the
/// dispatcher's hot path, and on a dedicated connection each is a single
/// round trip under session settings that pin its plan
/// ([`CLAIM_SESSION_SETTINGS`]). Reconnected on the next claim after a
/// failure.
struct Claimer {
    url: String,
    conn: Option<AsyncPgConnection>,
    /// The tags of claims that failed without an answer: each may have
    /// committed, leasing jobs no stream was told of. Kept until
    /// [`keepalive::give_back_unknown_leases`] handed those back.
    lost: Vec<Uuid>,
    /// Whether the next claim examines keys and buckets (see
    /// [`LimitsPhase`]): it does while the last look found some with room,
    /// right after a claim of plain jobs came back short (a key or bucket
    /// may hold what it did not find), and when plain claims came back full
    /// for [`LIMITS_RECHECK`] since the last look (so a busy drain of plain
    /// jobs holds up a keyed job at most that long). Otherwise a claim takes
    /// plain jobs in one short statement and one round trip.
    limits: LimitsWatch,
    /// For each group of streams (its filter), the last concurrency key
    /// served to it: its next claim examines keys from just after it, in
    /// key order (a round robin kept here rather than written to every
    /// served key's row; see `store::jobs::claim`). One per filter, so that
    /// one group's claims cannot move another's past keys only it would
    /// take. Each replica keeps its own; see [`CURSORS_MAX`].
    cursors: HashMap<ClaimFilter, String>,
}

/// Most round-robin cursors kept (one per group of streams that was served
/// a keyed job). Past it they are all forgotten, and each group starts
/// again from the first key: a moment's unfairness, never a starved key.
const CURSORS_MAX: usize = 10_000;

/// What [`Claimer`] remembers of keys and buckets.
#[derive(Debug, Clone, Copy)]
struct LimitsWatch {
    /// When keys and buckets were last examined.
    looked: Instant,
    /// Whether that look found any with room.
    found: bool,
    /// Whether a plain claim came back short since.
    short: bool,
    /// Whether a plain claim came back full since.
    full: bool,
}

impl LimitsWatch {
    fn new() -> Self {
        Self {
            looked: Instant::now(),
            found: false,
            short: false,
            full: false,
        }
    }

    fn phase(&self) -> LimitsPhase {
        if self.found || self.short || (self.full && self.looked.elapsed() >= LIMITS_RECHECK) {
            LimitsPhase::Run
        } else {
            LimitsPhase::Skip
        }
    }

    fn note(&mut self, phase: LimitsPhase, found: bool, short: bool) {
        match phase {
            LimitsPhase::Run => {
                *self = Self {
                    looked: Instant::now(),
                    found,
                    short: false,
                    full: false,
                }
            }
            LimitsPhase::Skip if short => self.short = true,
            LimitsPhase::Skip => self.full = true,
        }
    }
}

/// How long claims of plain jobs that come back full may go without
/// examining concurrency keys and buckets.
const LIMITS_RECHECK: Duration = Duration::from_millis(20);

impl Claimer {
    /// Claims for one group of streams; also answers whether every lane
    /// (keys and buckets too) was looked at.
    async fn claim(
        &mut self,
        leases: &Leases,
        filter: &ClaimFilter,
        plan: &ClaimPlan,
    ) -> Result<(Vec<JobRow>, bool), AppError> {
        if self.conn.is_none() {
            let mut conn = db::dedicated_connection(
                &self.url,
                "automation-control-plane-claimer",
                CLAIM_SESSION_SETTINGS,
                Duration::from_secs(5),
            )
            .await?;
            // Claims count their keys' RUNNING jobs themselves, where this
            // database's trigger stands down for it (else the trigger does).
            count_keys_by_statement(&mut conn, true, CountingScope::Session).await?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let tag = Uuid::now_v7();
        let phase = self.limits.phase();
        let cursor = self.cursors.get(filter).map_or("", String::as_str);
        let claimed = tokio::time::timeout(
            CLAIM_TIMEOUT,
            leases.claim(conn, filter, plan, tag, phase, cursor),
        )
        .await;
        match claimed {
            Ok(Ok(claimed)) => {
                let short = claimed.jobs.len() < plan.owners.len();
                self.limits.note(phase, claimed.limits_found, short);
                let served = claimed
                    .jobs
                    .iter()
                    .filter_map(|job| job.concurrency_key.as_deref());
                if let Some(key) = last_key_served(cursor, served) {
                    if self.cursors.len() >= CURSORS_MAX && !self.cursors.contains_key(filter) {
                        self.cursors.clear();
                    }
                    self.cursors.insert(filter.clone(), key);
                }
                Ok((claimed.jobs, phase == LimitsPhase::Run))
            }
            Ok(Err(error)) => {
                self.conn = None;
                self.lost.push(tag);
                Err(error)
            }
            Err(_) => {
                // A claim that does not answer: the connection is gone
                // (the transaction, if it ran, committed or not as a whole).
                self.conn = None;
                self.lost.push(tag);
                Err(AppError::Unavailable("a claim timed out".into()))
            }
        }
    }
}

/// The last key of `served` in the round-robin order of a claim whose walk
/// of the keys started just after `after`: keys after it in key order come
/// first, then the keys up to it (the walk wrapped around), so the last is
/// the greatest of those up to it if the walk wrapped, else the greatest of
/// all. The next claim starts after it, so every key with room and work is
/// served before any is served again.
///
/// Keys are compared byte by byte, as under the `C` collation the embedded
/// database uses. Under another collation the walk's order may differ for
/// some keys, and the cursor may land short of the walk's end: those keys
/// are served again a claim early (fairness, never the limits, suffers).
fn last_key_served<'a>(
    after: &str,
    served: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    served
        .clone()
        .filter(|key| *key <= after)
        .max()
        .or_else(|| served.max())
        .map(str::to_owned)
}

/// Longest a claim may take before its connection is given up.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// Claims until every stream with room is filled or nothing runnable is
/// left for it. Each claim leases at most [`CLAIM_BATCH`] jobs for one group
/// of streams, so a round costs what it leases, not what streams advertise;
/// a group that came back short is not asked again in this call.
async fn claim_rounds(shared: &Arc<Shared>, claimer: &mut Claimer) -> Result<(), AppError> {
    let mut dry: std::collections::HashSet<ClaimFilter> = std::collections::HashSet::new();
    loop {
        let demand = shared.registry().demand(CLAIM_BATCH);
        let mut claimed_any = false;
        for (filter, plan) in demand {
            if dry.contains(&filter) {
                continue;
            }
            claimed_any = true;
            let since = shared.registry().claiming();
            let (jobs, every_lane) = claimer.claim(&shared.leases, &filter, &plan).await?;
            // Dry only once every lane was looked at: a claim of the plain
            // lane alone that came back short is followed by a full one.
            let is_dry = jobs.len() < plan.owners.len() && every_lane;
            shared
                .registry()
                .claimed(&filter, jobs.len(), is_dry, since);
            if is_dry {
                dry.insert(filter);
            }
            // Leased to a stream that left meanwhile: never sent.
            let orphans = shared.deliver(jobs);
            keepalive::hand_back_in_background(shared, orphans, true);
        }
        if !claimed_any {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::last_key_served;

    #[test]
    fn the_last_key_served_follows_the_walk_round_the_cursor() {
        let served = ["b", "d", "f"];
        // From "c" the walk went d, f, then wrapped round to b: b was last.
        assert_eq!(
            last_key_served("c", served.iter().copied()).as_deref(),
            Some("b")
        );
        // From "a": b, d, f, no wrap.
        assert_eq!(
            last_key_served("a", served.iter().copied()).as_deref(),
            Some("f")
        );
        // None after "g": the walk wrapped at once, the last up to it.
        assert_eq!(
            last_key_served("g", served.iter().copied()).as_deref(),
            Some("f")
        );
        assert_eq!(
            last_key_served("f", ["a", "b"].iter().copied()).as_deref(),
            Some("b")
        );
        assert_eq!(last_key_served("", std::iter::empty()), None);
    }
}
