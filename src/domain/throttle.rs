//! Login throttling: who may try a password now.
//!
//! Three counters per attempt, kept in PostgreSQL so that every replica
//! agrees:
//! - the client on the account (`acct-ip:`): the small limit. Only this
//!   client's own failures lock it out of the account, so nobody can lock a
//!   person out of their account from elsewhere, and `retry-after` only ever
//!   tells an attacker about their own lock;
//! - the account (`acct:`): a much higher limit on failures from all clients
//!   together. Past it the account is under attack: a client that has already
//!   failed on it is refused, one that has not may try once;
//! - the client (`ip:`): failures on any account, against credential
//!   stuffing; an IPv6 client is also counted with its whole /48 (`net:`),
//!   under a looser limit, so that a site cannot rotate through its /64s.
//!
//! An attempt is admitted *before* its password is checked, and while the
//! check runs it counts against the limits (`in_flight`), so a burst of
//! concurrent guesses cannot slip past them while a burst of correct logins
//! only waits its turn. The admission is a guard: whatever path the login
//! takes, an attempt whose outcome was not recorded is given back when the
//! guard drops.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::{
    auth::client::ClientInfo,
    db::{self, DbPool},
    error::AppError,
    store::{
        self,
        throttle::{self as rows, ThrottleRow},
    },
};

/// Limits of one kind of counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures allowed in a window before the key is locked.
    pub max_failures: i32,
    /// First lock; each further failure doubles it.
    pub base_lockout: Duration,
    /// Longest lock.
    pub max_lockout: Duration,
    /// Failures older than this are forgotten (when not locked).
    pub window: Duration,
}

/// The three policies of login throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// One client on one account.
    pub per_client_and_account: ThrottlePolicy,
    /// One account, all clients together.
    pub per_account: ThrottlePolicy,
    /// One client, all accounts together.
    pub per_client: ThrottlePolicy,
    /// One IPv6 /48, all its clients and accounts together.
    pub per_network: ThrottlePolicy,
}

/// An admitted attempt whose outcome was never recorded (a server died
/// mid-check) stops counting after this long.
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// How long an attempt waits for other checks of the same keys to finish
/// before it is refused as throttled.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

impl ThrottlePolicy {
    fn lockout(&self, failures: i32) -> chrono::Duration {
        let doublings = (failures - self.max_failures).clamp(0, 20) as u32;
        let lock = self
            .base_lockout
            .saturating_mul(1 << doublings)
            .min(self.max_lockout);
        chrono::Duration::from_std(lock).unwrap_or(chrono::Duration::MAX)
    }

    fn window(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX)
    }

    /// Attempts that may be checked at once: what is left of the allowance,
    /// or exactly one after a lock has ended.
    fn allowance(&self, counter: &ThrottleRow) -> i32 {
        if counter.failures >= self.max_failures {
            1
        } else {
            self.max_failures - counter.failures
        }
    }

    /// Forgets what has expired.
    fn refresh(&self, counter: &mut ThrottleRow, now: NaiveDateTime) {
        let locked = counter.locked_until.is_some_and(|until| until > now);
        if !locked && counter.window_started_at + self.window() < now {
            counter.failures = 0;
            counter.window_started_at = now;
            counter.locked_until = None;
        }
        if counter
            .in_flight_since
            .is_some_and(|since| since + ABANDONED_AFTER < now)
        {
            counter.in_flight = 0;
            counter.in_flight_since = None;
        }
    }

    /// Counts a failure, locking the key once the limit is reached.
    fn fail(&self, counter: &mut ThrottleRow, now: NaiveDateTime) {
        counter.failures += 1;
        if counter.failures >= self.max_failures {
            counter.locked_until = Some(now + self.lockout(counter.failures));
        }
    }
}

fn locked_until(counter: &ThrottleRow, now: NaiveDateTime) -> Option<NaiveDateTime> {
    counter.locked_until.filter(|until| *until > now)
}

fn start(counter: &mut ThrottleRow, now: NaiveDateTime) {
    counter.in_flight += 1;
    counter.in_flight_since = Some(now);
}

fn finish(counter: &mut ThrottleRow) {
    counter.in_flight = (counter.in_flight - 1).max(0);
    if counter.in_flight == 0 {
        counter.in_flight_since = None;
    }
}

/// Who an attempt is against: a known account, or a login name that matches
/// none (counted like an account, so that probing names costs the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptSubject {
    /// An existing account.
    Account(Uuid),
    /// A login name that names no account; only its hash is kept.
    UnknownLogin(String),
}

impl AttemptSubject {
    fn key_part(&self) -> String {
        match self {
            Self::Account(id) => id.to_string(),
            Self::UnknownLogin(login) => format!("login-{}", login_fingerprint(login)),
        }
    }
}

/// A short, stable fingerprint of a login name that matched no account: what
/// throttle keys and audit rows keep instead of the name (people paste
/// passwords into login fields).
pub fn login_fingerprint(login: &str) -> String {
    let digest = Sha256::digest(login.trim().to_lowercase().as_bytes());
    hex::encode(&digest[..8])
}

/// The counters one attempt is weighed against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptKeys {
    client: String,
    account: String,
    client_on_account: String,
    network: Option<String>,
}

impl AttemptKeys {
    /// The keys of `subject` tried from `client`.
    pub fn new(subject: &AttemptSubject, client: &ClientInfo) -> Self {
        let bucket = client.throttle_bucket();
        let account = subject.key_part();
        Self {
            client: format!("ip:{bucket}"),
            client_on_account: format!("acct-ip:{account}|{bucket}"),
            account: format!("acct:{account}"),
            network: client.network_bucket().map(|net| format!("net:{net}")),
        }
    }

    fn all(&self) -> Vec<String> {
        let mut keys = vec![
            self.client.clone(),
            self.account.clone(),
            self.client_on_account.clone(),
        ];
        keys.extend(self.network.clone());
        keys
    }
}

/// The counters of one attempt, locked.
struct Counters {
    client: ThrottleRow,
    account: ThrottleRow,
    client_on_account: ThrottleRow,
    network: Option<ThrottleRow>,
}

impl Counters {
    async fn lock(
        conn: &mut AsyncPgConnection,
        keys: &AttemptKeys,
        limits: &LoginLimits,
        now: NaiveDateTime,
    ) -> Result<Self, AppError> {
        let mut rows = rows::lock(conn, &keys.all(), now).await?;
        let mut take = |key: &str| {
            rows.iter()
                .position(|row| row.key == key)
                .map(|index| rows.swap_remove(index))
                .ok_or_else(|| AppError::internal(format!("throttle row {key} missing")))
        };
        let mut counters = Self {
            client: take(&keys.client)?,
            account: take(&keys.account)?,
            client_on_account: take(&keys.client_on_account)?,
            network: keys.network.as_deref().map(&mut take).transpose()?,
        };
        limits.per_client.refresh(&mut counters.client, now);
        limits.per_account.refresh(&mut counters.account, now);
        limits
            .per_client_and_account
            .refresh(&mut counters.client_on_account, now);
        if let Some(network) = &mut counters.network {
            limits.per_network.refresh(network, now);
        }
        Ok(counters)
    }

    async fn save(&self, conn: &mut AsyncPgConnection) -> Result<(), AppError> {
        for row in [&self.client, &self.account, &self.client_on_account] {
            rows::save(conn, row).await?;
        }
        if let Some(network) = &self.network {
            rows::save(conn, network).await?;
        }
        Ok(())
    }
}

/// When the counters that already exist refuse an attempt outright (its
/// client or network locked, or its client locked out of the account):
/// decided before any row is created, so refused attempts cost the table
/// nothing.
fn refused_by_existing(
    existing: &mut [ThrottleRow],
    keys: &AttemptKeys,
    limits: &LoginLimits,
    now: NaiveDateTime,
) -> Option<NaiveDateTime> {
    let mut until = None;
    for row in existing.iter_mut() {
        let policy = if row.key == keys.client {
            limits.per_client
        } else if row.key == keys.client_on_account {
            limits.per_client_and_account
        } else if Some(&row.key) == keys.network.as_ref() {
            limits.per_network
        } else {
            continue;
        };
        policy.refresh(row, now);
        until = until.max(locked_until(row, now));
    }
    until
}

/// Whether an attempt may go on to the password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Allowed,
    /// Other checks of these keys are running and may use up the allowance:
    /// ask again shortly.
    Busy,
    /// Refuse without checking, until this time.
    Locked(NaiveDateTime),
}

/// Decides attempts and records their outcomes.
#[derive(Clone)]
pub struct LoginThrottle {
    pool: DbPool,
    limits: LoginLimits,
}

impl LoginThrottle {
    /// Throttling with `limits`, counted in `pool`'s database.
    pub fn new(pool: DbPool, limits: LoginLimits) -> Self {
        Self { pool, limits }
    }

    /// Admits an attempt, waiting (without holding a connection) while other
    /// checks of the same keys are running; refuses with RESOURCE_EXHAUSTED
    /// when a key is locked or the wait runs out.
    pub async fn admit(&self, keys: AttemptKeys) -> Result<AdmittedAttempt, AppError> {
        let deadline = Instant::now() + ADMISSION_WAIT;
        loop {
            let limits = self.limits;
            let decision = db::transaction(&self.pool, "throttle.admit", async |conn| {
                let now = store::now();
                let mut existing = rows::lock_existing(conn, &keys.all()).await?;
                if let Some(until) = refused_by_existing(&mut existing, &keys, &limits, now) {
                    return Ok(Admission::Locked(until));
                }
                let mut counters = Counters::lock(conn, &keys, &limits, now).await?;
                let decision = decide(&limits, &mut counters, now);
                if decision == Admission::Allowed {
                    counters.save(conn).await?;
                }
                Ok(decision)
            })
            .await;
            // Another admission holds these counters right now: wait our
            // turn without holding a connection.
            let decision = match decision {
                Err(AppError::Aborted(_)) => Admission::Busy,
                other => other?,
            };
            match decision {
                Admission::Allowed => {
                    return Ok(AdmittedAttempt {
                        throttle: Some(self.clone()),
                        armed: AtomicBool::new(true),
                        keys,
                    });
                }
                Admission::Locked(until) => {
                    return Err(AppError::ResourceExhausted {
                        message: "too many failed attempts".into(),
                        retry_after: (until - store::now()).to_std().unwrap_or_default(),
                    });
                }
                Admission::Busy if Instant::now() >= deadline => {
                    return Err(AppError::ResourceExhausted {
                        message: "too many attempts in progress".into(),
                        retry_after: Duration::from_secs(1),
                    });
                }
                Admission::Busy => {
                    let pause = rand::rng().random_range(20..80);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    /// Forgets every failure counted against an account (an administrator
    /// reset its password).
    pub async fn forget_account(
        conn: &mut AsyncPgConnection,
        account: Uuid,
    ) -> Result<(), AppError> {
        rows::delete(
            conn,
            &format!("acct:{account}"),
            &format!("acct-ip:{account}|"),
        )
        .await?;
        Ok(())
    }

    /// Deletes counters that no longer remember anything, so that probing
    /// endless login names does not grow the table forever.
    pub async fn sweep(&self) -> Result<usize, AppError> {
        let window = [
            self.limits.per_client.window,
            self.limits.per_account.window,
            self.limits.per_client_and_account.window,
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        db::with_connection(&self.pool, "throttle.sweep", async |conn| {
            let now = store::now();
            Ok(rows::sweep(conn, now, now - window, now - ABANDONED_AFTER).await?)
        })
        .await
    }

    async fn release(&self, keys: &AttemptKeys) -> Result<(), AppError> {
        let limits = self.limits;
        db::transaction(&self.pool, "throttle.release", async |conn| {
            let now = store::now();
            let mut counters = Counters::lock(conn, keys, &limits, now).await?;
            finish(&mut counters.client);
            finish(&mut counters.client_on_account);
            if let Some(network) = &mut counters.network {
                finish(network);
            }
            counters.save(conn).await
        })
        .await
    }
}

fn decide(limits: &LoginLimits, counters: &mut Counters, now: NaiveDateTime) -> Admission {
    if let Some(until) = locked_until(&counters.client, now)
        .or_else(|| locked_until(&counters.client_on_account, now))
        .or_else(|| counters.network.as_ref().and_then(|n| locked_until(n, now)))
    {
        return Admission::Locked(until);
    }
    let pair_allowance = match locked_until(&counters.account, now) {
        // Under attack: a client that has failed here waits for the lock to
        // end; one that has not may try once.
        Some(until) if counters.client_on_account.failures > 0 => {
            return Admission::Locked(until);
        }
        Some(_) => 1,
        None => limits
            .per_client_and_account
            .allowance(&counters.client_on_account),
    };
    let client_allowance = limits.per_client.allowance(&counters.client);
    let network_busy = counters
        .network
        .as_ref()
        .is_some_and(|n| n.in_flight >= limits.per_network.allowance(n));
    if counters.client_on_account.in_flight >= pair_allowance
        || counters.client.in_flight >= client_allowance
        || network_busy
    {
        return Admission::Busy;
    }
    start(&mut counters.client, now);
    start(&mut counters.client_on_account, now);
    if let Some(network) = &mut counters.network {
        start(network, now);
    }
    Admission::Allowed
}

/// An attempt admitted by [`LoginThrottle::admit`]. Record its outcome with
/// [`AdmittedAttempt::record`] inside the transaction that acts on it.
/// Dropped before that (an error, a cancelled call), it gives its admission
/// back. Once recorded it is disarmed even if the transaction then fails:
/// the attempt then stays counted until it is abandoned (a minute), which
/// errs on the side of counting too much, never too little.
pub struct AdmittedAttempt {
    throttle: Option<LoginThrottle>,
    armed: AtomicBool,
    keys: AttemptKeys,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The password was right.
    Succeeded,
    /// The password was wrong (or the login names no account).
    Failed,
}

impl AdmittedAttempt {
    /// Records the outcome in `conn`'s transaction.
    pub async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        outcome: AttemptOutcome,
    ) -> Result<(), AppError> {
        let Some(throttle) = &self.throttle else {
            return Ok(());
        };
        let limits = throttle.limits;
        let now = store::now();
        let mut counters = Counters::lock(conn, &self.keys, &limits, now).await?;
        finish(&mut counters.client);
        finish(&mut counters.client_on_account);
        if let Some(network) = &mut counters.network {
            finish(network);
        }
        match outcome {
            AttemptOutcome::Succeeded => {
                // The account's own counter is not cleared: one right
                // password must not reset an attack on it from elsewhere.
                counters.client_on_account.failures = 0;
                counters.client_on_account.locked_until = None;
            }
            AttemptOutcome::Failed => {
                limits.per_client.fail(&mut counters.client, now);
                limits.per_account.fail(&mut counters.account, now);
                if let Some(network) = &mut counters.network {
                    limits.per_network.fail(network, now);
                }
                limits
                    .per_client_and_account
                    .fail(&mut counters.client_on_account, now);
            }
        }
        counters.save(conn).await?;
        self.armed.store(false, Ordering::Release);
        Ok(())
    }
}

impl Drop for AdmittedAttempt {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let Some(throttle) = self.throttle.take() else {
            return;
        };
        let keys = self.keys.clone();
        // Drop cannot wait; the release runs on its own. Without a runtime
        // (process exit) the admission expires after ABANDONED_AFTER.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = throttle.release(&keys).await {
                    tracing::warn!(%error, "could not give back a login admission");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_failures: i32) -> ThrottlePolicy {
        ThrottlePolicy {
            max_failures,
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(900),
            window: Duration::from_secs(900),
        }
    }

    fn limits() -> LoginLimits {
        LoginLimits {
            per_client_and_account: policy(5),
            per_account: policy(100),
            per_client: policy(50),
            per_network: policy(800),
        }
    }

    fn row(key: &str, now: NaiveDateTime) -> ThrottleRow {
        ThrottleRow {
            key: key.into(),
            failures: 0,
            window_started_at: now,
            locked_until: None,
            in_flight: 0,
            in_flight_since: None,
        }
    }

    fn counters(now: NaiveDateTime) -> Counters {
        Counters {
            client: row("ip:a", now),
            account: row("acct:x", now),
            client_on_account: row("acct-ip:x|a", now),
            network: None,
        }
    }

    #[test]
    fn concurrent_checks_count_against_the_allowance() {
        let now = store::now();
        let mut c = counters(now);
        for _ in 0..5 {
            assert_eq!(decide(&limits(), &mut c, now), Admission::Allowed);
        }
        assert_eq!(decide(&limits(), &mut c, now), Admission::Busy);
    }

    #[test]
    fn an_account_under_attack_still_admits_clean_clients_once() {
        let now = store::now();
        let mut c = counters(now);
        c.account.failures = 100;
        c.account.locked_until = Some(now + chrono::Duration::seconds(60));
        assert_eq!(decide(&limits(), &mut c, now), Admission::Allowed);
        assert_eq!(decide(&limits(), &mut c, now), Admission::Busy);
        let mut dirty = counters(now);
        dirty.account = c.account.clone();
        dirty.client_on_account.failures = 1;
        assert!(matches!(
            decide(&limits(), &mut dirty, now),
            Admission::Locked(_)
        ));
    }

    #[test]
    fn locks_double_and_expire() {
        let now = store::now();
        let p = policy(5);
        let mut counter = row("k", now);
        for _ in 0..5 {
            p.fail(&mut counter, now);
        }
        assert_eq!(
            counter.locked_until,
            Some(now + chrono::Duration::seconds(30))
        );
        p.fail(&mut counter, now);
        assert_eq!(
            counter.locked_until,
            Some(now + chrono::Duration::seconds(60))
        );
        let later = now + chrono::Duration::seconds(3600);
        p.refresh(&mut counter, later);
        assert_eq!(counter.failures, 0);
        assert_eq!(counter.locked_until, None);
    }

    #[test]
    fn unknown_logins_are_kept_as_fingerprints() {
        let subject = AttemptSubject::UnknownLogin("Hunter2-Pasted".into());
        let keys = AttemptKeys::new(
            &subject,
            &ClientInfo {
                ip: Some("198.51.100.1".parse().unwrap()),
                user_agent: String::new(),
                ..ClientInfo::default()
            },
        );
        assert!(!keys.account.to_lowercase().contains("hunter2"));
        assert_eq!(
            login_fingerprint("hunter2-pasted"),
            login_fingerprint(" HUNTER2-PASTED ")
        );
        assert_eq!(keys.client, "ip:198.51.100.1");
    }
}
