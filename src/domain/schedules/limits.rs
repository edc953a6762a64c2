//! What a schedule may ask for: no expression firing more often than
//! `SCHEDULE_MIN_INTERVAL_SECS`, no more than `SCHEDULES_MAX` schedules per
//! account. Each schedule is a standing rate of job creation, and one
//! replica fires a few hundred a second (BENCHMARKS.md).

use std::time::Duration;

use diesel_async::AsyncPgConnection;

use super::{CronSchedule, Schedules};
use crate::{domain::Actor, error::AppError, store::schedules as rows};

impl Schedules {
    /// Refuses (on `field`) an expression two of whose next
    /// [`INTERVAL_CHECKED_FIRES`] fire times come closer than
    /// `min_interval`: a schedule is a standing rate of job creation.
    pub(super) fn check_interval(&self, cron: &CronSchedule, field: &str) -> Result<(), AppError> {
        let min = self.settings.min_interval;
        let now = chrono::Utc::now().naive_utc();
        if let Some(gap) = shortest_gap(cron, now, INTERVAL_CHECKED_FIRES)
            && gap < min
        {
            return Err(AppError::invalid(
                field,
                format!(
                    "fires {} ms apart, more often than the {} s this server allows \
                     (SCHEDULE_MIN_INTERVAL_SECS)",
                    gap.as_millis(),
                    min.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a new schedule of an account that created `max_per_creator`
    /// already (counted under a lock, so concurrent creates cannot both
    /// pass).
    pub(super) async fn ensure_below_max(
        &self,
        conn: &mut AsyncPgConnection,
        actor: &Actor,
    ) -> Result<(), AppError> {
        let max = self.settings.max_per_creator;
        let count = rows::count_created_by(conn, actor.caller.user_id).await?;
        if u64::try_from(count).unwrap_or(0) >= max {
            return Err(AppError::LimitExceeded {
                limit: "SCHEDULES_MAX",
                message: format!(
                    "this account has created {count} schedules, the most allowed \
                     (SCHEDULES_MAX = {max}); delete one first"
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        Ok(())
    }
}

/// Consecutive fire times [`Schedules::check_interval`] looks at: enough
/// for an expression whose seconds or minutes list close values to show
/// them, whichever of its fire times comes first.
const INTERVAL_CHECKED_FIRES: usize = 16;

/// The shortest time between two consecutive of the first `fires` fire
/// times after `now`; `None` when it fires less than twice.
fn shortest_gap(cron: &CronSchedule, now: chrono::NaiveDateTime, fires: usize) -> Option<Duration> {
    let mut at = cron.next_after(now)?;
    let mut shortest: Option<Duration> = None;
    for _ in 1..fires {
        let Some(next) = cron.next_after(at) else {
            break;
        };
        let gap = (next - at).to_std().unwrap_or_default();
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        at = next;
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schedules::CronSchedule;

    fn gap(expression: &str) -> Option<Duration> {
        let cron = CronSchedule::parse(expression, "UTC", "cron", "zone").unwrap();
        let now = chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
            .unwrap()
            .and_hms_opt(12, 0, 30)
            .unwrap();
        shortest_gap(&cron, now, INTERVAL_CHECKED_FIRES)
    }

    #[test]
    fn the_shortest_gap_between_fire_times() {
        assert_eq!(gap("* * * * * *"), Some(Duration::from_secs(1)));
        assert_eq!(gap("0 * * * * *"), Some(Duration::from_secs(60)));
        // Close fire times once an hour, after a long wait: still seen.
        assert_eq!(gap("0,1 0 * * * *"), Some(Duration::from_secs(1)));
        assert_eq!(gap("*/5 59 * * * *"), Some(Duration::from_secs(5)));
    }
}
