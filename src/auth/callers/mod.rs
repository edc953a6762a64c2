//! The per-replica cache of callers: a session or an API key → the caller it
//! resolved to (account, permissions, key scope), so that an authorized call
//! in the steady state costs no database round trip for its caller.
//!
//! It never answers with what the database no longer says. Three rules make
//! that hold, on every replica, for the very next call after a change:
//!
//! 1. **The database announces every change.** Triggers on `sessions`,
//!    `users`, `user_roles`, `roles` and `api_keys` (migration
//!    `2026-12-01-000008_caller_changes`) `pg_notify('caller_changes', …)`
//!    on any write that can change a caller, whoever makes it. Each replica
//!    has one LISTEN connection ([`listener`]) that evicts what each
//!    notification names. Notifications arrive in commit order.
//! 2. **The cache serves only while it is provably caught up.** The listener
//!    pings itself on the channel every [`PING_EVERY`]; an entry is served
//!    only while the echo of a ping *sent* less than [`FRESHNESS`] ago has
//!    come back (everything committed before that ping has been applied).
//!    Disconnected, reconnecting, or slow: the cache is bypassed, and it is
//!    emptied on every (re)connect.
//! 3. **Writers wait for every replica.** A call that may change callers
//!    returns only after every replica heard from within [`FRESHNESS`] has
//!    acknowledged a fence sent after its commit, or after
//!    [`FENCE_TIMEOUT`] (≥ [`FRESHNESS`]): by then a replica that did not
//!    answer has stopped serving from its cache by rule 2.
//!
//! A lookup that misses reads the database and may fill the entry, but only
//! if no change was applied between the read's start and the fill (the
//! [`Ticket`]'s epoch): a read that raced a change never caches its stale
//! answer. Expiry is checked on every hit, against the expiry the entry was
//! read with.
//!
//! This module is the state only (no I/O), so its rules are unit-tested
//! here; [`listener`] feeds it.

pub mod listener;
mod signing;

pub use signing::ChannelKey;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use chrono::NaiveDateTime;
use uuid::Uuid;

use super::caller::Caller;

/// How often the listener pings itself.
pub const PING_EVERY: Duration = Duration::from_millis(250);

/// How recently the last echoed ping must have been sent for the cache to
/// serve: the longest a change made behind the service's back (plain SQL)
/// can go unseen by a replica whose LISTEN connection silently died.
pub const FRESHNESS: Duration = Duration::from_secs(1);

/// Longest a writer waits for the other replicas' acknowledgements. Never
/// below [`FRESHNESS`]: a replica that does not answer in time has stopped
/// serving from its cache by then.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(FENCE_TIMEOUT.as_millis() >= FRESHNESS.as_millis());

/// What a cached caller was resolved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The session of an access token.
    Session(Uuid),
    /// An API key.
    ApiKey(Uuid),
}

/// One resolved caller and what its next use must still check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedCaller {
    /// The caller, as the database said.
    pub caller: Caller,
    /// When the session or key expires.
    pub expires_at: Option<NaiveDateTime>,
    /// For an API key: the SHA-256 of its secret, which each call's
    /// presented secret must match.
    pub secret_hash: Option<Vec<u8>>,
}

/// A change announced on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A session changed.
    Session(Uuid),
    /// An API key changed.
    ApiKey(Uuid),
    /// An account, or its roles, changed: every session and key of it.
    User(Uuid),
    /// Anything (a role's permissions): everything.
    All,
}

/// The answer of a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// A live entry.
    Hit(CachedCaller),
    /// Read the database; fill with the ticket (`None`: the cache is not
    /// serving, do not fill).
    Miss(Option<Ticket>),
}

/// Permission to fill an entry with what a read started now returns.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
}

/// The cache; clones share it. See the module documentation.
#[derive(Clone, Debug)]
pub struct CallerCache {
    inner: Arc<Mutex<State>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Credential, CachedCaller>,
    /// Bumped by every applied change and every (dis)connection.
    epoch: u64,
    /// Whether the listener is connected (since the last flush).
    connected: bool,
    /// When the last ping whose echo came back was sent.
    echoed_ping_sent: Option<Instant>,
}

impl CallerCache {
    /// A cache of at most `capacity` callers (0: no cache). It serves
    /// nothing until a listener reports it caught up.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
        }
    }

    /// A cache that never serves (a server without a listener).
    pub fn disabled() -> Self {
        Self::new(0)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether entries are served now (rule 2).
    pub fn is_serving(&self) -> bool {
        self.capacity > 0 && self.state().is_fresh(Instant::now())
    }

    /// The caller of `credential` if cached, live at `now`, and the cache
    /// is serving; otherwise a ticket to fill it after reading.
    pub fn lookup(&self, credential: Credential, now: NaiveDateTime) -> Lookup {
        if self.capacity == 0 {
            return Lookup::Miss(None);
        }
        let mut state = self.state();
        if !state.is_fresh(Instant::now()) {
            return Lookup::Miss(None);
        }
        let ticket = Some(Ticket { epoch: state.epoch });
        match state.entries.get(&credential) {
            Some(entry) if entry.expires_at.is_none_or(|at| at > now) => Lookup::Hit(entry.clone()),
            Some(_) => {
                state.entries.remove(&credential);
                Lookup::Miss(ticket)
            }
            None => Lookup::Miss(ticket),
        }
    }

    /// Caches what a read begun under `ticket` returned, unless a change was
    /// applied since (it may predate the read's snapshot) or the cache
    /// stopped serving. When full, an arbitrary entry makes room.
    pub fn fill(&self, ticket: Ticket, credential: Credential, entry: CachedCaller) {
        let mut state = self.state();
        if state.epoch != ticket.epoch || !state.is_fresh(Instant::now()) {
            return;
        }
        if state.entries.len() >= self.capacity
            && !state.entries.contains_key(&credential)
            && let Some(victim) = state.entries.keys().next().copied()
        {
            state.entries.remove(&victim);
        }
        state.entries.insert(credential, entry);
    }

    /// Applies an announced change (rule 1).
    pub fn apply(&self, change: Change) {
        let mut state = self.state();
        state.epoch += 1;
        match change {
            Change::Session(id) => {
                state.entries.remove(&Credential::Session(id));
            }
            Change::ApiKey(id) => {
                state.entries.remove(&Credential::ApiKey(id));
            }
            Change::User(id) => state.entries.retain(|_, e| e.caller.user_id != id),
            Change::All => state.entries.clear(),
        }
    }

    /// The listener (re)connected: whatever happened while nobody listened
    /// is unknown, so everything goes; nothing is served before the first
    /// echo.
    pub fn connected(&self) {
        let mut state = self.state();
        state.entries.clear();
        state.epoch += 1;
        state.connected = true;
        state.echoed_ping_sent = None;
    }

    /// The listener lost its connection: the cache stops serving at once.
    pub fn disconnected(&self) {
        let mut state = self.state();
        state.entries.clear();
        state.epoch += 1;
        state.connected = false;
        state.echoed_ping_sent = None;
    }

    /// The echo of a ping sent at `sent` came back: every change committed
    /// before it has been applied.
    pub fn echoed(&self, sent: Instant) {
        let mut state = self.state();
        if state.connected && state.echoed_ping_sent.is_none_or(|at| at < sent) {
            state.echoed_ping_sent = Some(sent);
        }
    }

    /// How many callers are cached.
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    fn is_fresh(&self, now: Instant) -> bool {
        self.connected
            && self
                .echoed_ping_sent
                .is_some_and(|sent| now.saturating_duration_since(sent) < FRESHNESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: Uuid, expires_at: Option<NaiveDateTime>) -> CachedCaller {
        CachedCaller {
            caller: Caller {
                user_id: user,
                session_id: Uuid::now_v7(),
                permissions: vec!["users:read".into()],
                scope: None,
                api_key: None,
            },
            expires_at,
            secret_hash: None,
        }
    }

    fn now() -> NaiveDateTime {
        chrono::Utc::now().naive_utc()
    }

    fn serving(capacity: usize) -> CallerCache {
        let cache = CallerCache::new(capacity);
        cache.connected();
        cache.echoed(Instant::now());
        cache
    }

    fn ticket(cache: &CallerCache, credential: Credential) -> Ticket {
        match cache.lookup(credential, now()) {
            Lookup::Miss(Some(ticket)) => ticket,
            other => panic!("expected a fillable miss, got {other:?}"),
        }
    }

    #[test]
    fn serves_only_after_an_echo_and_while_it_is_recent() {
        let cache = CallerCache::new(10);
        let key = Credential::Session(Uuid::now_v7());
        assert!(matches!(cache.lookup(key, now()), Lookup::Miss(None)));
        cache.connected();
        assert!(matches!(cache.lookup(key, now()), Lookup::Miss(None)));
        cache.echoed(Instant::now() - FRESHNESS);
        assert!(!cache.is_serving(), "an old echo proves nothing now");
        cache.echoed(Instant::now());
        let t = ticket(&cache, key);
        cache.fill(t, key, entry(Uuid::now_v7(), None));
        assert!(matches!(cache.lookup(key, now()), Lookup::Hit(_)));
        cache.disconnected();
        assert!(matches!(cache.lookup(key, now()), Lookup::Miss(None)));
        assert!(cache.is_empty(), "a lost connection empties the cache");
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let cache = serving(10);
        let key = Credential::Session(Uuid::now_v7());
        let t = ticket(&cache, key);
        cache.apply(Change::User(Uuid::now_v7()));
        cache.fill(t, key, entry(Uuid::now_v7(), None));
        assert!(cache.is_empty());
    }

    #[test]
    fn changes_evict_what_they_name() {
        let cache = serving(10);
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let keys = [
            (Credential::Session(Uuid::now_v7()), alice),
            (Credential::ApiKey(Uuid::now_v7()), alice),
            (Credential::Session(Uuid::now_v7()), bob),
        ];
        for (key, user) in keys {
            let t = ticket(&cache, key);
            cache.fill(t, key, entry(user, None));
        }
        cache.apply(Change::User(alice));
        assert_eq!(cache.len(), 1);
        let Credential::Session(bob_session) = keys[2].0 else {
            unreachable!()
        };
        cache.apply(Change::Session(bob_session));
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_entries_are_not_served_and_the_size_is_bounded() {
        let cache = serving(3);
        let key = Credential::ApiKey(Uuid::now_v7());
        let t = ticket(&cache, key);
        cache.fill(
            t,
            key,
            entry(Uuid::now_v7(), Some(now() - chrono::Duration::seconds(1))),
        );
        assert!(matches!(cache.lookup(key, now()), Lookup::Miss(Some(_))));
        for _ in 0..10 {
            let key = Credential::Session(Uuid::now_v7());
            let t = ticket(&cache, key);
            cache.fill(t, key, entry(Uuid::now_v7(), None));
        }
        assert_eq!(cache.len(), 3);
    }
}
