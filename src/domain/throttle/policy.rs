//! The limits of login throttling and what they do to one counter: count
//! a failure, lock (doubling, capped), forget what expired, and how many
//! checks may run at once. Pure arithmetic on [`ThrottleRow`]s, no database.

use std::time::Duration;

use chrono::NaiveDateTime;

use crate::store::throttle::ThrottleRow;

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
pub(super) const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(60);

impl ThrottlePolicy {
    pub(super) fn lockout(&self, failures: i32) -> chrono::Duration {
        let doublings = (failures - self.max_failures).clamp(0, 20) as u32;
        let lock = self
            .base_lockout
            .saturating_mul(1 << doublings)
            .min(self.max_lockout);
        chrono::Duration::from_std(lock).unwrap_or(chrono::Duration::MAX)
    }

    pub(super) fn window(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX)
    }

    /// Attempts that may be checked at once: what is left of the allowance,
    /// or exactly one after a lock has ended.
    pub(super) fn allowance(&self, counter: &ThrottleRow) -> i32 {
        if counter.failures >= self.max_failures {
            1
        } else {
            self.max_failures - counter.failures
        }
    }

    /// Forgets what has expired.
    pub(super) fn refresh(&self, counter: &mut ThrottleRow, now: NaiveDateTime) {
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
    pub(super) fn fail(&self, counter: &mut ThrottleRow, now: NaiveDateTime) {
        counter.failures += 1;
        if counter.failures >= self.max_failures {
            counter.locked_until = Some(now + self.lockout(counter.failures));
        }
    }
}

pub(super) fn locked_until(counter: &ThrottleRow, now: NaiveDateTime) -> Option<NaiveDateTime> {
    counter.locked_until.filter(|until| *until > now)
}

pub(super) fn start(counter: &mut ThrottleRow, now: NaiveDateTime) {
    counter.in_flight += 1;
    counter.in_flight_since = Some(now);
}

pub(super) fn finish(counter: &mut ThrottleRow) {
    counter.in_flight = (counter.in_flight - 1).max(0);
    if counter.in_flight == 0 {
        counter.in_flight_since = None;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store;

    pub fn policy(max_failures: i32) -> ThrottlePolicy {
        ThrottlePolicy {
            max_failures,
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(900),
            window: Duration::from_secs(900),
        }
    }

    pub fn limits() -> LoginLimits {
        LoginLimits {
            per_client_and_account: policy(5),
            per_account: policy(100),
            per_client: policy(50),
            per_network: policy(800),
        }
    }

    pub fn row(key: &str, now: NaiveDateTime) -> ThrottleRow {
        ThrottleRow {
            key: key.into(),
            failures: 0,
            window_started_at: now,
            locked_until: None,
            in_flight: 0,
            in_flight_since: None,
        }
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
    fn an_ended_lock_allows_one_check_and_abandoned_checks_stop_counting() {
        let now = store::now();
        let p = policy(3);
        let mut counter = row("k", now);
        assert_eq!(p.allowance(&counter), 3);
        for _ in 0..3 {
            p.fail(&mut counter, now);
        }
        assert_eq!(locked_until(&counter, now), counter.locked_until);
        let after_lock = now + chrono::Duration::seconds(31);
        assert_eq!(locked_until(&counter, after_lock), None);
        // Still within the window: the failures are remembered, one check
        // at a time.
        p.refresh(&mut counter, after_lock);
        assert_eq!(p.allowance(&counter), 1);

        start(&mut counter, now);
        start(&mut counter, now);
        finish(&mut counter);
        assert_eq!(counter.in_flight, 1);
        p.refresh(
            &mut counter,
            now + ABANDONED_AFTER + chrono::Duration::seconds(1),
        );
        assert_eq!((counter.in_flight, counter.in_flight_since), (0, None));
        finish(&mut counter);
        assert_eq!(counter.in_flight, 0, "never below zero");
    }
}
