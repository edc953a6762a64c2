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
//!
//! The limits and what they do to one counter are in `policy`, the keys
//! of an attempt in `keys`, the counters of one attempt and the decision
//! over them in `counters`; this file admits attempts and records their
//! outcomes.

mod counters;
mod keys;
mod policy;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use diesel_async::AsyncPgConnection;
use rand::Rng as _;
use uuid::Uuid;

use self::{
    counters::{Admission, Counters, decide, refused_by_existing},
    policy::{ABANDONED_AFTER, finish},
};
pub use self::{
    keys::{AttemptKeys, AttemptSubject, login_fingerprint},
    policy::{LoginLimits, ThrottlePolicy},
};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{self, throttle as rows},
};

/// How long an attempt waits for other checks of the same keys to finish
/// before it is refused as throttled.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

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
