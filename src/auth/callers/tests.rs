//! The cache's rules, unit-tested (the module is pure state).

use std::collections::HashSet;

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
    cache.connected(true);
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
    cache.connected(true);
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
fn a_read_that_raced_a_change_of_its_keys_is_not_cached() {
    let cache = serving(10);
    let user = Uuid::now_v7();
    let id = Uuid::now_v7();
    let key = Credential::Session(id);
    for change in [Change::Session(id), Change::User(user), Change::All] {
        let t = ticket(&cache, key);
        cache.apply(change);
        cache.fill(t, key, entry(user, None));
        assert!(cache.is_empty(), "{change:?} raced the read");
    }
    let t = ticket(&cache, key);
    cache.connected(true);
    cache.echoed(Instant::now());
    cache.fill(t, key, entry(user, None));
    assert!(cache.is_empty(), "a reconnection raced the read");
}

#[test]
fn changes_of_other_keys_do_not_refuse_a_fill() {
    let cache = serving(10).with_accounts(10);
    let user = Uuid::now_v7();
    let key = Credential::Session(Uuid::now_v7());
    // Ids none of whose keys share a bucket with the user's or the key's
    // (buckets come from a randomly seeded hash: random ids would collide
    // in about one run of three hundred).
    let mine = [Key::Credential(key), Key::User(user), Key::Account(user)];
    let apart = || apart_from(&cache, &mine);
    let (other, session, api_key, later) = (apart(), apart(), apart(), apart());
    let t = ticket(&cache, key);
    let Lookup::Miss(Some(account_ticket)) = cache.lookup_account(user) else {
        panic!("expected a fillable miss")
    };
    // Someone else logs in, refreshes, is changed; the account's own
    // login changes its view only.
    for change in [
        Change::Account(other),
        Change::Session(session),
        Change::ApiKey(api_key),
        Change::User(other),
        Change::Account(user),
    ] {
        cache.apply(change);
    }
    cache.fill(t, key, entry(user, None));
    assert_eq!(cache.len(), 1, "the caller was refused");
    cache.fill_account(account_ticket, account(user));
    assert_eq!(cache.accounts_len(), 0, "the view raced its own change");
    let Lookup::Miss(Some(account_ticket)) = cache.lookup_account(user) else {
        panic!("expected a fillable miss")
    };
    cache.apply(Change::Account(other));
    cache.apply(Change::Session(later));
    cache.fill_account(account_ticket, account(user));
    assert_eq!(cache.accounts_len(), 1, "the view was refused");
}

/// A fresh id whose every key (as a session, an API key, an account's
/// callers and its view) lies in a bucket none of `taken` is in.
fn apart_from(cache: &CallerCache, taken: &[Key]) -> Uuid {
    let state = cache.state();
    let used: HashSet<usize> = taken.iter().map(|key| state.bucket(key)).collect();
    loop {
        let id = Uuid::now_v7();
        let keys = [
            Key::Credential(Credential::Session(id)),
            Key::Credential(Credential::ApiKey(id)),
            Key::User(id),
            Key::Account(id),
        ];
        if keys.iter().all(|key| !used.contains(&state.bucket(key))) {
            return id;
        }
    }
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

    // A read that raced a change of it is not cached.
    let Lookup::Miss(Some(t)) = cache.lookup_account(bob) else {
        panic!("expected a fillable miss")
    };
    cache.apply(Change::User(bob));
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
fn no_account_is_kept_while_account_changes_are_not_announced() {
    let cache = CallerCache::new(10).with_accounts(10);
    cache.connected(false);
    cache.echoed(Instant::now());
    let id = Uuid::now_v7();
    assert!(matches!(cache.lookup_account(id), Lookup::Miss(None)));
    let key = Credential::Session(Uuid::now_v7());
    let t = ticket(&cache, key);
    cache.fill(t, key, entry(id, None));
    assert_eq!(cache.len(), 1, "callers are still kept");
    cache.connected(true);
    cache.echoed(Instant::now());
    fill_account(&cache, id);
    assert_eq!(cache.accounts_len(), 1);
}

#[test]
fn no_account_is_kept_without_a_capacity_or_a_cache_of_callers() {
    let cache = serving(10);
    assert!(matches!(
        cache.lookup_account(Uuid::now_v7()),
        Lookup::Miss(None)
    ));
    let cache = serving(0).with_accounts(10);
    assert!(matches!(
        cache.lookup_account(Uuid::now_v7()),
        Lookup::Miss(None)
    ));
    assert_eq!(cache.account_lookups(), (0, 1));
}

#[test]
fn clones_share_the_capacities() {
    let cache = serving(10);
    let earlier = cache.clone();
    let cache = cache.with_accounts(10);
    fill_account(&earlier, Uuid::now_v7());
    assert_eq!(cache.accounts_len(), 1);
}
