//! Cron expressions read in an IANA time zone, and which fire times a
//! schedule acts on when it is claimed. Pure functions of their inputs (no
//! clock): the firing loop passes the database's `now`.
//!
//! Evaluation is croner's, on the wall clock of the zone (chrono-tz), so
//! that `0 2 * * *` in `America/New_York` is 2 a.m. there all year. Across
//! daylight-saving changes croner follows what Vixie cron does for a
//! fixed-time job: a wall time that does not exist that day (the spring
//! gap) fires at the first instant after the gap, and one that exists twice
//! (the autumn overlap) fires once, at its first occurrence; an interval
//! job (`*/15 * * * *`) fires on every real instant that matches.

use std::{str::FromStr as _, time::Duration};

use chrono::{NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};

use crate::error::AppError;

/// The shortcuts accepted besides 5 and 6 fields.
const SHORTCUTS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A parsed cron expression and the zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expression` (5 fields, 6 with seconds first, or a shortcut)
    /// in `zone` (an IANA name; empty is UTC). Errors name `expression_field`
    /// or `zone_field`.
    pub fn parse(
        expression: &str,
        zone: &str,
        expression_field: &str,
        zone_field: &str,
    ) -> Result<Self, AppError> {
        let zone = parse_zone(zone, zone_field)?;
        let expression = expression.trim();
        let fields = expression.split_whitespace().count();
        let shortcut = expression.starts_with('@');
        if shortcut && !SHORTCUTS.contains(&expression.to_ascii_lowercase().as_str()) {
            return Err(AppError::invalid(
                expression_field,
                format!("unknown shortcut; use one of {}", SHORTCUTS.join(", ")),
            ));
        }
        if !shortcut && !(5..=6).contains(&fields) {
            return Err(AppError::invalid(
                expression_field,
                format!(
                    "has {fields} fields: use 5 (minute hour day-of-month month day-of-week), \
                     6 (seconds first) or a shortcut such as @daily"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|error| AppError::invalid(expression_field, error.to_string()))?;
        Ok(Self { cron, zone })
    }

    /// The zone's IANA name.
    pub fn zone_name(&self) -> &'static str {
        self.zone.name()
    }

    /// The first fire time strictly after `after` (UTC); `None` when there
    /// is none within croner's search window (about a year of seconds).
    pub fn next_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        self.search(after, false)
    }

    /// The first fire time at or after `at` (UTC).
    pub fn next_at_or_after(&self, at: NaiveDateTime) -> Option<NaiveDateTime> {
        self.search(at, true)
    }

    fn search(&self, from: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        let local = Utc.from_utc_datetime(&from).with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, inclusive)
            .ok()
            .map(|next| next.naive_utc())
    }
}

/// An IANA zone name; empty is UTC.
pub fn parse_zone(zone: &str, field: &str) -> Result<Tz, AppError> {
    if zone.is_empty() {
        return Ok(Tz::UTC);
    }
    Tz::from_str(zone).map_err(|_| {
        AppError::invalid(
            field,
            format!("'{zone}' is not an IANA time zone (e.g. UTC, Europe/Paris, America/New_York)"),
        )
    })
}

/// What a fire time that passed unseen for too long becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedFirePolicy {
    /// Nothing.
    Skip,
    /// One job for all of them.
    RunOnce,
}

/// The fire times a claimed schedule acts on now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// One job each, in order (the first may stand for every missed one).
    pub fires: Vec<NaiveDateTime>,
    /// Fire times missed and not run (SKIP), counted up to 1,000.
    pub skipped: usize,
    /// The next fire time not acted on; `None` when the expression never
    /// fires again.
    pub next: Option<NaiveDateTime>,
}

/// Most fire times one claim acts on; the rest wait for the next claim.
pub const MAX_FIRES_PER_CLAIM: usize = 100;

/// Most missed fire times one claim counts as skipped.
const MAX_SKIPPED_COUNTED: usize = 1_000;

/// The fire times to act on for a schedule whose next fire time is `due`,
/// at `now`. A fire time older than `grace` is missed (no server acted on
/// it in time): by `missed`, missed ones make one job (keyed by the first
/// of them) or none. Fire times within `grace` each make a job.
pub fn plan(
    cron: &CronSchedule,
    due: NaiveDateTime,
    now: NaiveDateTime,
    grace: Duration,
    missed: MissedFirePolicy,
) -> FirePlan {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let cutoff = now.checked_sub_signed(grace).unwrap_or(NaiveDateTime::MIN);
    let mut fires = Vec::new();
    let mut skipped = 0;
    let mut cursor = Some(due);
    if due < cutoff {
        match missed {
            MissedFirePolicy::RunOnce => fires.push(due),
            MissedFirePolicy::Skip => {
                // Counted (for the metrics) up to a bound: a schedule held
                // for a month of seconds is not walked second by second.
                let mut at = Some(due);
                while let Some(t) = at.filter(|t| *t < cutoff) {
                    skipped += 1;
                    if skipped >= MAX_SKIPPED_COUNTED {
                        break;
                    }
                    at = cron.next_after(t);
                }
            }
        }
        cursor = cron.next_at_or_after(cutoff);
    }
    while let Some(at) = cursor {
        if at > now || fires.len() >= MAX_FIRES_PER_CLAIM {
            break;
        }
        fires.push(at);
        cursor = cron.next_after(at);
    }
    FirePlan {
        fires,
        skipped,
        next: cursor,
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, s)
            .unwrap()
    }

    fn cron(expression: &str, zone: &str) -> CronSchedule {
        CronSchedule::parse(expression, zone, "cron_expression", "time_zone").unwrap()
    }

    fn fires_from(cron: &CronSchedule, from: NaiveDateTime, n: usize) -> Vec<NaiveDateTime> {
        let mut out = Vec::new();
        let mut at = from;
        for _ in 0..n {
            at = cron.next_after(at).unwrap();
            out.push(at);
        }
        out
    }

    #[test]
    fn two_a_m_in_new_york_across_the_spring_change() {
        // 2026-03-08: clocks go from 02:00 EST to 03:00 EDT; 02:00 does not
        // exist that day and the run happens at the first instant after the
        // gap (03:00 EDT = 07:00 UTC).
        let ny = cron("0 2 * * *", "America/New_York");
        assert_eq!(
            fires_from(&ny, utc(2026, 3, 6, 12, 0, 0), 4),
            [
                utc(2026, 3, 7, 7, 0, 0), // 02:00 EST
                utc(2026, 3, 8, 7, 0, 0), // 03:00 EDT, after the gap
                utc(2026, 3, 9, 6, 0, 0), // 02:00 EDT
                utc(2026, 3, 10, 6, 0, 0),
            ]
        );
    }

    #[test]
    fn two_a_m_in_new_york_across_the_autumn_change() {
        // 2026-11-01: clocks go from 02:00 EDT back to 01:00 EST; 02:00 EST
        // happens once.
        let ny = cron("0 2 * * *", "America/New_York");
        assert_eq!(
            fires_from(&ny, utc(2026, 10, 30, 12, 0, 0), 3),
            [
                utc(2026, 10, 31, 6, 0, 0), // 02:00 EDT
                utc(2026, 11, 1, 7, 0, 0),  // 02:00 EST
                utc(2026, 11, 2, 7, 0, 0),
            ]
        );
        // 01:30 happens twice that morning: a fixed-time job runs once, at
        // the first (EDT) one.
        let half_past_one = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            fires_from(&half_past_one, utc(2026, 10, 31, 12, 0, 0), 2),
            [utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)]
        );
    }

    #[test]
    fn shortcuts_seconds_and_the_default_zone() {
        let daily = cron("@daily", "");
        assert_eq!(daily.zone_name(), "UTC");
        assert_eq!(
            daily.next_after(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 2, 0, 0, 0))
        );
        let hourly = cron("@HOURLY", "UTC");
        assert_eq!(
            hourly.next_after(utc(2026, 1, 1, 0, 30, 0)),
            Some(utc(2026, 1, 1, 1, 0, 0))
        );
        let every_second = cron("* * * * * *", "UTC");
        let at = utc(2026, 1, 1, 0, 0, 0) + chrono::Duration::milliseconds(400);
        assert_eq!(every_second.next_after(at), Some(utc(2026, 1, 1, 0, 0, 1)));
        assert_eq!(
            every_second.next_at_or_after(utc(2026, 1, 1, 0, 0, 1)),
            Some(utc(2026, 1, 1, 0, 0, 1))
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "@reboot",
            "61 * * * *",
            "* * * * FOO",
        ] {
            let error =
                CronSchedule::parse(bad, "UTC", "cron_expression", "time_zone").expect_err(bad);
            assert!(
                error.to_string().starts_with("cron_expression: "),
                "{bad}: {error}"
            );
        }
        let error =
            CronSchedule::parse("* * * * *", "Mars/Olympus", "cron", "time_zone").unwrap_err();
        assert!(error.to_string().starts_with("time_zone: "), "{error}");
    }

    #[test]
    fn an_expression_that_never_fires_has_no_next_time() {
        let february_30 = cron("0 0 30 2 *", "UTC");
        assert_eq!(february_30.next_after(utc(2026, 1, 1, 0, 0, 0)), None);
    }

    #[test]
    fn fire_times_within_the_grace_each_run() {
        let every_second = cron("* * * * * *", "UTC");
        let due = utc(2026, 1, 1, 0, 0, 10);
        let plan = plan(
            &every_second,
            due,
            utc(2026, 1, 1, 0, 0, 12),
            Duration::from_secs(60),
            MissedFirePolicy::Skip,
        );
        assert_eq!(
            plan.fires,
            [
                utc(2026, 1, 1, 0, 0, 10),
                utc(2026, 1, 1, 0, 0, 11),
                utc(2026, 1, 1, 0, 0, 12)
            ]
        );
        assert_eq!(plan.next, Some(utc(2026, 1, 1, 0, 0, 13)));
        assert_eq!(plan.skipped, 0);
    }

    #[test]
    fn missed_fire_times_are_skipped_or_run_once() {
        let hourly = cron("0 * * * *", "UTC");
        let due = utc(2026, 1, 1, 0, 0, 0);
        let now = utc(2026, 1, 1, 5, 30, 0);
        let skip = plan(
            &hourly,
            due,
            now,
            Duration::from_secs(60),
            MissedFirePolicy::Skip,
        );
        assert_eq!(skip.fires, []);
        assert_eq!(skip.skipped, 6);
        assert_eq!(skip.next, Some(utc(2026, 1, 1, 6, 0, 0)));
        let once = plan(
            &hourly,
            due,
            now,
            Duration::from_secs(60),
            MissedFirePolicy::RunOnce,
        );
        assert_eq!(once.fires, [due]);
        assert_eq!(once.next, Some(utc(2026, 1, 1, 6, 0, 0)));
        // A fire time just within the grace is not missed.
        let late = plan(
            &hourly,
            utc(2026, 1, 1, 5, 0, 0),
            utc(2026, 1, 1, 5, 0, 30),
            Duration::from_secs(60),
            MissedFirePolicy::Skip,
        );
        assert_eq!(late.fires, [utc(2026, 1, 1, 5, 0, 0)]);
    }
}
