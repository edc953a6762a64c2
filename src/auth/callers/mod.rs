//! The per-replica cache of callers: a session or an API key → the caller it
//! resolved to (account, permissions, key scope), so that an authorized call
//! in the steady state costs no database round trip for its caller; and,
//! under the same rules, of accounts as the reads that show one return them
//! (GetUser, GetCurrentUser: the row joined with its roles), so that those
//! reads cost none either.
//!
//! It never answers with what the database no longer says. Three rules make
//! that hold, on every replica, for the very next call after a change:
//!
//! 1. **The database announces every change.** Triggers on `sessions`,
//!    `users`, `user_roles`, `roles` and `api_keys` (migration
//!    `2026-12-01-000008_caller_changes`) `pg_notify('caller_changes', …)`
//!    on any write that can change a caller, whoever makes it, and any
//!    change of a `users` row as `account:<id>` on `account_changes`
//!    (migration `2026-12-04-000002_account_changes`: it evicts that
//!    account's view, not its callers, so that logins, which touch
//!    `lastLogin`, leave the callers cached; no account is kept while that
//!    trigger is missing or disabled). Each replica has one LISTEN
//!    connection ([`listener`]) on both channels that evicts what each
//!    notification names. Notifications arrive in commit order.
//! 2. **The cache serves only while it is provably caught up.** The listener
//!    pings itself on the channel every [`PING_EVERY`]; an entry is served
//!    only while the echo of a ping *sent* less than [`FRESHNESS`] ago has
//!    come back (everything committed before that ping has been applied).
//!    Disconnected, reconnecting, or slow: the cache is bypassed, and it is
//!    emptied on every (re)connect.
//! 3. **Writers wait for every replica.** A call that may change callers
//!    or an account's view (successful logins included) returns only after
//!    every replica heard from within [`FRESHNESS`] has
//!    acknowledged a fence sent after its commit, or after
//!    [`FENCE_TIMEOUT`] (≥ [`FRESHNESS`]): by then a replica that did not
//!    answer has stopped serving from its cache by rule 2.
//!
//! A lookup that misses reads the database and may fill the entry, but only
//! if no change of that entry's keys (its credential, its account) nor of
//! everything (`all`, a (re)connection) was applied between the read's start
//! and the fill (the [`Ticket`]): a read that raced a change never caches
//! its stale answer, and changes of other keys (every login announces its
//! account, every refresh its session) do not keep the caches cold. Changes
//! are recorded per bucket of keys ([`BUCKETS`], by hash): a collision only
//! refuses a fill. Expiry is checked on every hit, against the expiry the
//! entry was read with. Callers and accounts share that state (one
//! freshness, one lock), so one change and one fence cover both.
//!
//! This module is the state only (no I/O), so its rules are unit-tested
//! here; [`listener`] feeds it.

pub mod listener;
mod signing;

pub use signing::ChannelKey;

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use chrono::NaiveDateTime;
use uuid::Uuid;

use super::caller::Caller;
use crate::{store::users::Account, telemetry::names};

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

/// Buckets of keys whose last change is recorded (a fill checks its keys'
/// buckets): fixed, so that the record never grows.
pub const BUCKETS: usize = 4096;

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
    /// An account, or its roles, changed: every session and key of it,
    /// and its view.
    User(Uuid),
    /// Only what an account's view shows changed (a name, `lastLogin`).
    Account(Uuid),
    /// Anything (a role's permissions): everything.
    All,
}

/// The answer of a lookup.
#[derive(Debug)]
pub enum Lookup<T = CachedCaller> {
    /// A live entry.
    Hit(T),
    /// Read the database; fill with the ticket (`None`: the cache is not
    /// serving, do not fill).
    Miss(Option<Ticket>),
}

/// Permission to fill an entry with what a read started now returns.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// The number of the last change applied when the read started.
    seq: u64,
}

/// What a change is recorded against, and a fill checked against.
#[derive(Hash)]
enum Key {
    Credential(Credential),
    /// Every caller of an account.
    User(Uuid),
    /// An account's view.
    Account(Uuid),
}

/// The cache; clones share it (its capacities included). See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct CallerCache {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Most callers kept (0: none).
    capacity: usize,
    /// Most accounts' views kept (0: none).
    account_capacity: usize,
    /// Account lookups answered from the cache, and not.
    account_hits: u64,
    account_misses: u64,
    entries: HashMap<Credential, CachedCaller>,
    /// Accounts' views by id, shared with the reads that return them.
    accounts: HashMap<Uuid, Arc<Account>>,
    /// Numbers every applied change and every (dis)connection.
    seq: u64,
    /// The number of the last change of each bucket of keys.
    changed: Box<[u64]>,
    /// The number of the last change of everything (`all`, a
    /// (dis)connection).
    all_changed: u64,
    /// Spreads keys over the buckets.
    hasher: RandomState,
    /// Whether the listener is connected (since the last flush).
    connected: bool,
    /// Whether, when the listener (re)connected, the trigger announcing
    /// account changes was there and enabled: without it a name, an email
    /// or `lastLogin` could change unannounced, so no account is served.
    accounts_announced: bool,
    /// When the last ping whose echo came back was sent.
    echoed_ping_sent: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            capacity: 0,
            account_capacity: 0,
            account_hits: 0,
            account_misses: 0,
            entries: HashMap::new(),
            accounts: HashMap::new(),
            seq: 0,
            changed: vec![0; BUCKETS].into_boxed_slice(),
            all_changed: 0,
            hasher: RandomState::new(),
            connected: false,
            accounts_announced: false,
            echoed_ping_sent: None,
        }
    }
}

impl CallerCache {
    /// A cache of at most `capacity` callers (0: no cache) and no
    /// accounts. It serves nothing until a listener reports it caught up.
    pub fn new(capacity: usize) -> Self {
        let cache = Self {
            inner: Arc::default(),
        };
        cache.state().capacity = capacity;
        cache
    }

    /// The same cache (and its clones) keeping up to `capacity` accounts'
    /// views too (0: none). None without a cache of callers: accounts ride
    /// on it.
    pub fn with_accounts(self, capacity: usize) -> Self {
        {
            let mut state = self.state();
            state.account_capacity = if state.capacity == 0 { 0 } else { capacity };
        }
        self
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
        let state = self.state();
        state.capacity > 0 && state.is_fresh(Instant::now())
    }

    /// The caller of `credential` if cached, live at `now`, and the cache
    /// is serving; otherwise a ticket to fill it after reading.
    pub fn lookup(&self, credential: Credential, now: NaiveDateTime) -> Lookup {
        self.lookup_in(
            |s| Some((s.capacity, &mut s.entries)),
            credential,
            |entry| entry.expires_at.is_none_or(|at| at > now),
        )
    }

    /// Caches what a read begun under `ticket` returned, unless a change of
    /// the credential, of its account's callers or of everything was
    /// applied since (it may predate the read's snapshot) or the cache
    /// stopped serving. When full, an arbitrary entry makes room.
    pub fn fill(&self, ticket: Ticket, credential: Credential, entry: CachedCaller) {
        let keys = [Key::Credential(credential), Key::User(entry.caller.user_id)];
        self.fill_in(
            |s| Some((s.capacity, &mut s.entries)),
            ticket,
            &keys,
            credential,
            entry,
        );
    }

    /// The view of account `id` if cached and the cache is serving;
    /// otherwise a ticket to fill it after reading (as [`Self::lookup`]).
    pub fn lookup_account(&self, id: Uuid) -> Lookup<Arc<Account>> {
        let lookup = self.lookup_in(
            |s| {
                s.accounts_announced
                    .then_some((s.account_capacity, &mut s.accounts))
            },
            id,
            |_| true,
        );
        let hit = matches!(lookup, Lookup::Hit(_));
        {
            let mut state = self.state();
            if hit {
                state.account_hits += 1;
            } else {
                state.account_misses += 1;
            }
        }
        if hit {
            metrics::counter!(names::ACCOUNT_CACHE_HITS).increment(1);
        } else {
            metrics::counter!(names::ACCOUNT_CACHE_MISSES).increment(1);
        }
        lookup
    }

    /// How many account lookups this cache answered, and how many it did
    /// not (also counted as metrics, summed over the process).
    pub fn account_lookups(&self) -> (u64, u64) {
        let state = self.state();
        (state.account_hits, state.account_misses)
    }

    /// Caches the view of an account read under `ticket` (as
    /// [`Self::fill`]).
    pub fn fill_account(&self, ticket: Ticket, account: Arc<Account>) {
        let id = account.user.id;
        self.fill_in(
            |s| {
                s.accounts_announced
                    .then_some((s.account_capacity, &mut s.accounts))
            },
            ticket,
            &[Key::Account(id)],
            id,
            account,
        );
    }

    fn lookup_in<K: Eq + Hash, V: Clone>(
        &self,
        map: impl FnOnce(&mut State) -> Option<(usize, &mut HashMap<K, V>)>,
        key: K,
        live: impl FnOnce(&V) -> bool,
    ) -> Lookup<V> {
        let mut state = self.state();
        if !state.is_fresh(Instant::now()) {
            return Lookup::Miss(None);
        }
        let ticket = Some(Ticket { seq: state.seq });
        // `None`: this kind of entry cannot be kept current now.
        let Some((capacity, entries)) = map(&mut state) else {
            return Lookup::Miss(None);
        };
        if capacity == 0 {
            return Lookup::Miss(None);
        }
        match entries.get(&key) {
            Some(entry) if live(entry) => Lookup::Hit(entry.clone()),
            Some(_) => {
                entries.remove(&key);
                Lookup::Miss(ticket)
            }
            None => Lookup::Miss(ticket),
        }
    }

    fn fill_in<K: Eq + Hash + Clone, V>(
        &self,
        map: impl FnOnce(&mut State) -> Option<(usize, &mut HashMap<K, V>)>,
        ticket: Ticket,
        changes: &[Key],
        key: K,
        value: V,
    ) {
        let mut state = self.state();
        if state.changed_since(ticket, changes) || !state.is_fresh(Instant::now()) {
            return;
        }
        let Some((capacity, entries)) = map(&mut state) else {
            return;
        };
        if capacity == 0 {
            return;
        }
        if entries.len() >= capacity
            && !entries.contains_key(&key)
            && let Some(victim) = entries.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        entries.insert(key, value);
    }

    /// Applies an announced change (rule 1).
    pub fn apply(&self, change: Change) {
        let mut state = self.state();
        match change {
            Change::Session(id) => {
                let credential = Credential::Session(id);
                state.record(&[Key::Credential(credential)]);
                state.entries.remove(&credential);
            }
            Change::ApiKey(id) => {
                let credential = Credential::ApiKey(id);
                state.record(&[Key::Credential(credential)]);
                state.entries.remove(&credential);
            }
            Change::User(id) => {
                state.record(&[Key::User(id), Key::Account(id)]);
                state.entries.retain(|_, e| e.caller.user_id != id);
                state.accounts.remove(&id);
            }
            Change::Account(id) => {
                state.record(&[Key::Account(id)]);
                state.accounts.remove(&id);
            }
            Change::All => state.clear(),
        }
    }

    /// The listener (re)connected: whatever happened while nobody listened
    /// is unknown, so everything goes; nothing is served before the first
    /// echo, and no account unless `accounts_announced` (the trigger that
    /// announces account changes fires).
    pub fn connected(&self, accounts_announced: bool) {
        let mut state = self.state();
        state.clear();
        state.connected = true;
        state.accounts_announced = accounts_announced;
        state.echoed_ping_sent = None;
    }

    /// The listener lost its connection: the cache stops serving at once.
    pub fn disconnected(&self) {
        let mut state = self.state();
        state.clear();
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

    /// How many accounts' views are cached.
    pub fn accounts_len(&self) -> usize {
        self.state().accounts.len()
    }
}

impl State {
    /// Empties the cache and refuses every fill in flight.
    fn clear(&mut self) {
        self.entries.clear();
        self.accounts.clear();
        self.seq += 1;
        self.all_changed = self.seq;
    }

    fn bucket(&self, key: &Key) -> usize {
        (self.hasher.hash_one(key) % BUCKETS as u64) as usize
    }

    /// Records a change of `keys`: fills in flight for them are refused.
    fn record(&mut self, keys: &[Key]) {
        self.seq += 1;
        for key in keys {
            let bucket = self.bucket(key);
            self.changed[bucket] = self.seq;
        }
    }

    /// Whether everything, or any of `keys`, changed since `ticket`.
    fn changed_since(&self, ticket: Ticket, keys: &[Key]) -> bool {
        self.all_changed > ticket.seq
            || keys
                .iter()
                .any(|key| self.changed[self.bucket(key)] > ticket.seq)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.connected
            && self
                .echoed_ping_sent
                .is_some_and(|sent| now.saturating_duration_since(sent) < FRESHNESS)
    }
}

#[cfg(test)]
mod tests;
