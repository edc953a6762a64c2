//! The queue at a glance, for the web console's Overview: per job name what
//! waits, what runs, what failed in the last hour and how long the oldest
//! due job has waited, plus the last hour's throughput per minute. No
//! statement reads finished jobs older than the hour
//! (see `store::console`).

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, Timelike as _};

use crate::{
    db::{self, DbPool},
    error::AppError,
    store::{self, console, stats},
};

/// One job name's line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameLine {
    pub pending: i64,
    pub running: i64,
    pub failed_last_hour: i64,
    /// Seconds the oldest due pending job has waited.
    pub oldest_pending_secs: Option<f64>,
}

/// What the Overview shows of the queue.
#[derive(Debug, Clone, Default)]
pub struct QueueOverview {
    /// By job name.
    pub names: BTreeMap<String, NameLine>,
    /// Completed and failed per minute, the last 60 minutes, oldest first
    /// (minutes without any are zeros).
    pub minutes: Vec<(NaiveDateTime, i64, i64)>,
}

/// Reads the overview.
pub async fn queue(pool: &DbPool) -> Result<QueueOverview, AppError> {
    let now = store::now();
    let this_minute = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    let since = this_minute - chrono::Duration::minutes(59);
    // Three statements on three connections at once: the page waits for
    // the slowest, not for the sum.
    let hour_ago = now - chrono::Duration::hours(1);
    let (unfinished, failed, per_minute) = tokio::try_join!(
        unfinished(pool),
        failed_since(pool, hour_ago),
        per_minute(pool, since)
    )?;
    let mut names: BTreeMap<String, NameLine> = BTreeMap::new();
    for count in unfinished {
        let line = names.entry(count.name).or_default();
        match count.status.as_str() {
            "PENDING" => {
                line.pending += count.count;
                line.oldest_pending_secs = count.oldest_due_secs;
            }
            _ => line.running += count.count,
        }
    }
    for count in failed {
        names.entry(count.name).or_default().failed_last_hour += count.count;
    }
    let by_minute: BTreeMap<NaiveDateTime, (i64, i64)> = per_minute
        .into_iter()
        .map(|m| (m.minute, (m.completed, m.failed)))
        .collect();
    let minutes = (0..60)
        .map(|i| {
            let minute = since + chrono::Duration::minutes(i);
            let (completed, failed) = by_minute.get(&minute).copied().unwrap_or_default();
            (minute, completed, failed)
        })
        .collect();
    Ok(QueueOverview { names, minutes })
}

async fn unfinished(pool: &DbPool) -> Result<Vec<stats::JobCount>, AppError> {
    db::with_connection(pool, "console.overview.unfinished", async |conn| {
        Ok(stats::unfinished_jobs(conn).await?)
    })
    .await
}

async fn failed_since(
    pool: &DbPool,
    since: NaiveDateTime,
) -> Result<Vec<console::FailedCount>, AppError> {
    db::with_connection(pool, "console.overview.failed", async |conn| {
        Ok(console::failed_since(conn, since).await?)
    })
    .await
}

async fn per_minute(
    pool: &DbPool,
    since: NaiveDateTime,
) -> Result<Vec<console::MinuteCount>, AppError> {
    db::with_connection(pool, "console.overview.throughput", async |conn| {
        Ok(console::finished_per_minute(conn, since).await?)
    })
    .await
}
