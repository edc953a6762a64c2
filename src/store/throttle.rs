//! Failed-login counters. Each attempt is counted *before* the password is
//! checked, under a row lock, so that concurrent attempts cannot all slip in
//! while the first ones are still hashing.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::login_throttles;

/// Limits of one kind of key (an account, a client IP).
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

impl ThrottlePolicy {
    fn lockout(&self, failures: i32) -> chrono::Duration {
        let doublings = (failures - self.max_failures - 1).clamp(0, 20) as u32;
        let lock = self
            .base_lockout
            .saturating_mul(1 << doublings)
            .min(self.max_lockout);
        chrono::Duration::from_std(lock).unwrap_or(chrono::Duration::MAX)
    }
}

/// Whether an attempt may proceed to the password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the password.
    Allowed,
    /// Refuse without checking, until this time.
    Locked(NaiveDateTime),
}

/// Counts an attempt for `key` and decides whether it may proceed. Must run
/// inside a transaction (the row stays locked until it commits).
pub async fn admit(
    conn: &mut AsyncPgConnection,
    key: &str,
    policy: &ThrottlePolicy,
    now: NaiveDateTime,
) -> QueryResult<Admission> {
    diesel::insert_into(login_throttles::table)
        .values((
            login_throttles::key.eq(key),
            login_throttles::failures.eq(0),
            login_throttles::window_started_at.eq(now),
        ))
        .on_conflict(login_throttles::key)
        .do_nothing()
        .execute(conn)
        .await?;
    let (mut failures, mut window_start, mut locked_until): (
        i32,
        NaiveDateTime,
        Option<NaiveDateTime>,
    ) = login_throttles::table
        .find(key)
        .select((
            login_throttles::failures,
            login_throttles::window_started_at,
            login_throttles::locked_until,
        ))
        .for_update()
        .first(conn)
        .await?;
    if let Some(until) = locked_until
        && until > now
    {
        return Ok(Admission::Locked(until));
    }
    let window = chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX);
    if window_start + window < now {
        failures = 0;
        window_start = now;
        locked_until = None;
    }
    failures += 1;
    let admission = if failures <= policy.max_failures {
        Admission::Allowed
    } else {
        let was_locked = locked_until.is_some();
        let until = now + policy.lockout(failures);
        locked_until = Some(until);
        // After each lock ends, one attempt may try; the next lock is already
        // set so that attempts racing it stay out.
        if was_locked {
            Admission::Allowed
        } else {
            Admission::Locked(until)
        }
    };
    diesel::update(login_throttles::table.find(key))
        .set((
            login_throttles::failures.eq(failures),
            login_throttles::window_started_at.eq(window_start),
            login_throttles::locked_until.eq(locked_until),
        ))
        .execute(conn)
        .await?;
    Ok(admission)
}

/// Forgets the failures of `key` (after a successful login of the account).
pub async fn clear(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<()> {
    diesel::delete(login_throttles::table.find(key))
        .execute(conn)
        .await
        .map(drop)
}

/// Takes back the attempt counted for `key` (a client IP whose login
/// succeeded), without lifting a lock.
pub async fn forgive_one(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<()> {
    diesel::update(
        login_throttles::table
            .find(key)
            .filter(login_throttles::failures.gt(0)),
    )
    .set(login_throttles::failures.eq(login_throttles::failures - 1))
    .execute(conn)
    .await
    .map(drop)
}
