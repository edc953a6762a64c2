//! The counters of one attempt, locked in the database for the length of a
//! transaction, and the decision they give: admitted, busy (other checks
//! of the same keys are running) or locked.

use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;

use super::{
    keys::AttemptKeys,
    policy::{LoginLimits, locked_until, start},
};
use crate::{
    error::AppError,
    store::throttle::{self as rows, ThrottleRow},
};

/// The counters of one attempt, locked.
pub(super) struct Counters {
    pub(super) client: ThrottleRow,
    pub(super) account: ThrottleRow,
    pub(super) client_on_account: ThrottleRow,
    pub(super) network: Option<ThrottleRow>,
}

impl Counters {
    pub(super) async fn lock(
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

    pub(super) async fn save(&self, conn: &mut AsyncPgConnection) -> Result<(), AppError> {
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
pub(super) fn refused_by_existing(
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
pub(super) enum Admission {
    Allowed,
    /// Other checks of these keys are running and may use up the allowance:
    /// ask again shortly.
    Busy,
    /// Refuse without checking, until this time.
    Locked(NaiveDateTime),
}

pub(super) fn decide(
    limits: &LoginLimits,
    counters: &mut Counters,
    now: NaiveDateTime,
) -> Admission {
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

#[cfg(test)]
mod tests {
    use super::{
        super::policy::tests::{limits, row},
        *,
    };
    use crate::store;

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
    fn existing_locks_of_the_client_refuse_before_any_row_is_made() {
        let now = store::now();
        let keys = AttemptKeys::new(
            &super::super::AttemptSubject::UnknownLogin("nobody".into()),
            &crate::auth::client::ClientInfo {
                ip: Some("198.51.100.1".parse().unwrap()),
                ..Default::default()
            },
        );
        let until = now + chrono::Duration::seconds(60);
        // The account locked: not a refusal on its own (a clean client may
        // still try once, decided with every counter locked).
        let mut account = row(&keys.account, now);
        account.locked_until = Some(until);
        assert_eq!(
            refused_by_existing(&mut [account.clone()], &keys, &limits(), now),
            None
        );
        let mut client = row(&keys.client, now);
        client.locked_until = Some(until);
        assert_eq!(
            refused_by_existing(&mut [account, client], &keys, &limits(), now),
            Some(until)
        );
    }
}
