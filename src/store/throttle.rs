//! Failed-login counters per key (an account, a client IP).
//!
//! An attempt is admitted *before* its password is checked, and while the
//! check runs it counts against the limit (`in_flight`). So at most
//! `max_failures` wrong passwords are ever checked per window, however many
//! arrive at once, while a burst of correct logins only waits its turn.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::login_throttles;

/// Limits of one kind of key.
#[derive(Debug, Clone, Copy)]
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

/// An admitted attempt whose outcome was never recorded (the server died
/// mid-check) stops counting after this long.
const STALE_IN_FLIGHT: chrono::Duration = chrono::Duration::seconds(60);

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
}

/// Whether an attempt may go on to the password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the password, then call [`record_outcome`].
    Allowed,
    /// Other checks of this key are running and may use up the allowance:
    /// ask again shortly.
    Busy,
    /// Refuse without checking, until this time.
    Locked(NaiveDateTime),
}

#[derive(Debug, Queryable)]
struct Counter {
    failures: i32,
    window_started_at: NaiveDateTime,
    locked_until: Option<NaiveDateTime>,
    in_flight: i32,
    in_flight_since: Option<NaiveDateTime>,
}

async fn lock_counter(
    conn: &mut AsyncPgConnection,
    key: &str,
    now: NaiveDateTime,
) -> QueryResult<Counter> {
    diesel::insert_into(login_throttles::table)
        .values((
            login_throttles::key.eq(key),
            login_throttles::window_started_at.eq(now),
        ))
        .on_conflict(login_throttles::key)
        .do_nothing()
        .execute(conn)
        .await?;
    login_throttles::table
        .find(key)
        .select((
            login_throttles::failures,
            login_throttles::window_started_at,
            login_throttles::locked_until,
            login_throttles::in_flight,
            login_throttles::in_flight_since,
        ))
        .for_update()
        .first(conn)
        .await
}

async fn store_counter(
    conn: &mut AsyncPgConnection,
    key: &str,
    counter: &Counter,
) -> QueryResult<()> {
    diesel::update(login_throttles::table.find(key))
        .set((
            login_throttles::failures.eq(counter.failures),
            login_throttles::window_started_at.eq(counter.window_started_at),
            login_throttles::locked_until.eq(counter.locked_until),
            login_throttles::in_flight.eq(counter.in_flight),
            login_throttles::in_flight_since.eq(counter.in_flight_since),
        ))
        .execute(conn)
        .await
        .map(drop)
}

impl Counter {
    /// Forgets what has expired.
    fn refresh(&mut self, policy: &ThrottlePolicy, now: NaiveDateTime) {
        let locked = self.locked_until.is_some_and(|until| until > now);
        if !locked && self.window_started_at + policy.window() < now {
            self.failures = 0;
            self.window_started_at = now;
            self.locked_until = None;
        }
        if self
            .in_flight_since
            .is_some_and(|since| since + STALE_IN_FLIGHT < now)
        {
            self.in_flight = 0;
            self.in_flight_since = None;
        }
    }
}

/// Decides whether an attempt for `key` may proceed and, if so, counts it as
/// in flight. Run inside a transaction: the row stays locked until commit.
pub async fn admit(
    conn: &mut AsyncPgConnection,
    key: &str,
    policy: &ThrottlePolicy,
    now: NaiveDateTime,
) -> QueryResult<Admission> {
    let mut counter = lock_counter(conn, key, now).await?;
    counter.refresh(policy, now);
    if let Some(until) = counter.locked_until
        && until > now
    {
        return Ok(Admission::Locked(until));
    }
    // Past the limit, each ended lock lets exactly one attempt through.
    let allowance = if counter.failures >= policy.max_failures {
        1
    } else {
        policy.max_failures - counter.failures
    };
    if counter.in_flight >= allowance {
        return Ok(Admission::Busy);
    }
    counter.in_flight += 1;
    counter.in_flight_since = Some(now);
    store_counter(conn, key, &counter).await?;
    Ok(Admission::Allowed)
}

/// Gives back an admission without an outcome (another key refused).
pub async fn release(
    conn: &mut AsyncPgConnection,
    key: &str,
    policy: &ThrottlePolicy,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let mut counter = lock_counter(conn, key, now).await?;
    counter.refresh(policy, now);
    counter.in_flight = (counter.in_flight - 1).max(0);
    store_counter(conn, key, &counter).await
}

/// Records the outcome of an admitted attempt. A success clears the key's
/// failures when `success_clears` (an account); a failure that reaches the
/// limit locks the key, for longer with each failure beyond it.
pub async fn record_outcome(
    conn: &mut AsyncPgConnection,
    key: &str,
    policy: &ThrottlePolicy,
    succeeded: bool,
    success_clears: bool,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let mut counter = lock_counter(conn, key, now).await?;
    counter.refresh(policy, now);
    counter.in_flight = (counter.in_flight - 1).max(0);
    if counter.in_flight == 0 {
        counter.in_flight_since = None;
    }
    if succeeded {
        if success_clears {
            counter.failures = 0;
            counter.locked_until = None;
        }
    } else {
        counter.failures += 1;
        if counter.failures >= policy.max_failures {
            counter.locked_until = Some(now + policy.lockout(counter.failures));
        }
    }
    store_counter(conn, key, &counter).await
}

/// Forgets everything about `key` (after an administrative password reset).
pub async fn clear(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<()> {
    diesel::delete(login_throttles::table.find(key))
        .execute(conn)
        .await
        .map(drop)
}
