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
//!    change of a `users` row as `account:<id>` (migration
//!    `2026-12-04-000002_account_changes`: it evicts that account's view,
//!    not its callers, so that logins, which touch `lastLogin`, leave the
//!    callers cached). Each replica has one LISTEN connection ([`listener`])
//!    that evicts what each notification names. Notifications arrive in
//!    commit order.
//! 2. **The cache serves only while it is provably caught up.** The listener
//!    pings itself on the channel every [`PING_EVERY`]; an entry is served
//!    only while the echo of a ping *sent* less than [`FRESHNESS`] ago has
//!    come back (everything committed before that ping has been applied).
//!    Disconnected, reconnecting, or slow: the cache is bypassed, and it is
//!    emptied on every (re)connect.
//! 3. **Writers wait for every replica.** A call that may change callers
//!    or an account's view (logins included) returns only after every replica heard from within [`FRESHNESS`] has
//!    acknowledged a fence sent after its commit, or after
//!    [`FENCE_TIMEOUT`] (≥ [`FRESHNESS`]): by then a replica that did not
//!    answer has stopped serving from its cache by rule 2.
//!
//! A lookup that misses reads the database and may fill the entry, but only
//! if no change was applied between the read's start and the fill (the
//! [`Ticket`]'s epoch): a read that raced a change never caches its stale
//! answer. Expiry is checked on every hit, against the expiry the entry was
//! read with. Callers and accounts share that state (one epoch, one
//! freshness, one lock), so one change and one fence cover both.
//!
//! This module is the state only (no I/O), so its rules are unit-tested
//! here; [`listener`] feeds it.

pub mod listener;
mod signing;

pub use signing::ChannelKey;

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use chrono::NaiveDateTime;
use uuid::Uuid;

use super::caller::Caller;
use crate::store::users::Account;

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
    epoch: u64,
}

/// The cache; clones share it. See the module documentation.
#[derive(Clone, Debug)]
pub struct CallerCache {
    inner: Arc<Mutex<State>>,
    capacity: usize,
    account_capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Credential, CachedCaller>,
    /// Accounts' views by id, shared with the reads that return them.
    accounts: HashMap<Uuid, Arc<Account>>,
    /// Bumped by every applied change and every (dis)connection.
    epoch: u64,
    /// Whether the listener is connected (since the last flush).
    connected: bool,
    /// When the last ping whose echo came back was sent.
    echoed_ping_sent: Option<Instant>,
}

impl CallerCache {
    /// A cache of at most `capacity` callers (0: no cache) and no
    /// accounts. It serves nothing until a listener reports it caught up.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
            account_capacity: 0,
        }
    }

    /// The same cache keeping up to `capacity` accounts' views too (0:
    /// none). Set before the cache is shared.
    pub fn with_accounts(mut self, capacity: usize) -> Self {
        self.account_capacity = capacity;
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
        self.capacity > 0 && self.state().is_fresh(Instant::now())
    }

    /// The caller of `credential` if cached, live at `now`, and the cache
    /// is serving; otherwise a ticket to fill it after reading.
    pub fn lookup(&self, credential: Credential, now: NaiveDateTime) -> Lookup {
        self.lookup_in(
            self.capacity,
            |s| &mut s.entries,
            credential,
            |entry| entry.expires_at.is_none_or(|at| at > now),
        )
    }

    /// Caches what a read begun under `ticket` returned, unless a change was
    /// applied since (it may predate the read's snapshot) or the cache
    /// stopped serving. When full, an arbitrary entry makes room.
    pub fn fill(&self, ticket: Ticket, credential: Credential, entry: CachedCaller) {
        self.fill_in(self.capacity, |s| &mut s.entries, ticket, credential, entry);
    }

    /// The view of account `id` if cached and the cache is serving;
    /// otherwise a ticket to fill it after reading (as [`Self::lookup`]).
    pub fn lookup_account(&self, id: Uuid) -> Lookup<Arc<Account>> {
        self.lookup_in(self.account_capacity, |s| &mut s.accounts, id, |_| true)
    }

    /// Caches the view of an account read under `ticket` (as
    /// [`Self::fill`]).
    pub fn fill_account(&self, ticket: Ticket, account: Arc<Account>) {
        let id = account.user.id;
        self.fill_in(
            self.account_capacity,
            |s| &mut s.accounts,
            ticket,
            id,
            account,
        );
    }

    fn lookup_in<K: Eq + Hash, V: Clone>(
        &self,
        capacity: usize,
        map: impl FnOnce(&mut State) -> &mut HashMap<K, V>,
        key: K,
        live: impl FnOnce(&V) -> bool,
    ) -> Lookup<V> {
        if capacity == 0 {
            return Lookup::Miss(None);
        }
        let mut state = self.state();
        if !state.is_fresh(Instant::now()) {
            return Lookup::Miss(None);
        }
        let ticket = Some(Ticket { epoch: state.epoch });
        let entries = map(&mut state);
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
        capacity: usize,
        map: impl FnOnce(&mut State) -> &mut HashMap<K, V>,
        ticket: Ticket,
        key: K,
        value: V,
    ) {
        let mut state = self.state();
        if capacity == 0 || state.epoch != ticket.epoch || !state.is_fresh(Instant::now()) {
            return;
        }
        let entries = map(&mut state);
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
        state.epoch += 1;
        match change {
            Change::Session(id) => {
                state.entries.remove(&Credential::Session(id));
            }
            Change::ApiKey(id) => {
                state.entries.remove(&Credential::ApiKey(id));
            }
            Change::User(id) => {
                state.entries.retain(|_, e| e.caller.user_id != id);
                state.accounts.remove(&id);
            }
            Change::Account(id) => {
                state.accounts.remove(&id);
            }
            Change::All => state.clear(),
        }
    }

    /// The listener (re)connected: whatever happened while nobody listened
    /// is unknown, so everything goes; nothing is served before the first
    /// echo.
    pub fn connected(&self) {
        let mut state = self.state();
        state.clear();
        state.epoch += 1;
        state.connected = true;
        state.echoed_ping_sent = None;
    }

    /// The listener lost its connection: the cache stops serving at once.
    pub fn disconnected(&self) {
        let mut state = self.state();
        state.clear();
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

    /// How many accounts' views are cached.
    pub fn accounts_len(&self) -> usize {
        self.state().accounts.len()
    }
}

impl State {
    fn clear(&mut self) {
        self.entries.clear();
        self.accounts.clear();
    }

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

    fn account(id: Uuid) -> Arc<Account> {
        let now = now();
        Arc::new(Account {
            user: crate::store::models::UserRow {
                id,
                email: format!("{id}@example.com"),
                username: id.to_string(),
                password_hash: String::new(),
                first_name: None,
                last_name: None,
                is_active: true,
                created_at: now,
                updated_at: now,
                last_login: None,
            },
            roles: vec!["viewer".into()],
            permissions: vec!["users:read".into()],
        })
    }

    fn fill_account(cache: &CallerCache, id: Uuid) {
        match cache.lookup_account(id) {
            Lookup::Miss(Some(ticket)) => cache.fill_account(ticket, account(id)),
            other => panic!("expected a fillable miss, got {other:?}"),
        }
    }

    #[test]
    fn accounts_follow_the_same_rules_and_a_view_change_leaves_callers_alone() {
        let cache = serving(10).with_accounts(2);
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let session = Credential::Session(Uuid::now_v7());
        let t = ticket(&cache, session);
        cache.fill(t, session, entry(alice, None));
        fill_account(&cache, alice);
        assert!(matches!(cache.lookup_account(alice), Lookup::Hit(a) if a.user.id == alice));

        // A login's lastLogin: the view goes, the caller stays.
        cache.apply(Change::Account(alice));
        assert_eq!((cache.len(), cache.accounts_len()), (1, 0));
        // Deactivation, roles: both go.
        fill_account(&cache, alice);
        cache.apply(Change::User(alice));
        assert_eq!((cache.len(), cache.accounts_len()), (0, 0));

        // A read that raced any change is not cached.
        let Lookup::Miss(Some(t)) = cache.lookup_account(bob) else {
            panic!("expected a fillable miss")
        };
        cache.apply(Change::Session(Uuid::now_v7()));
        cache.fill_account(t, account(bob));
        assert_eq!(cache.accounts_len(), 0);

        // Bounded; emptied by `all` and by a lost connection; not served
        // when stale.
        for _ in 0..5 {
            fill_account(&cache, Uuid::now_v7());
        }
        assert_eq!(cache.accounts_len(), 2);
        cache.apply(Change::All);
        assert_eq!(cache.accounts_len(), 0);
        fill_account(&cache, bob);
        cache.disconnected();
        assert!(matches!(cache.lookup_account(bob), Lookup::Miss(None)));
        assert_eq!(cache.accounts_len(), 0);
    }

    #[test]
    fn no_account_is_kept_without_a_capacity() {
        let cache = serving(10);
        assert!(matches!(
            cache.lookup_account(Uuid::now_v7()),
            Lookup::Miss(None)
        ));
    }
}
