//! The queue at a glance, for the web console's Overview: per job name what
//! waits, what runs, what failed in the last hour and how long the oldest
//! due job has waited, plus the last hour's throughput per minute. No
//! statement reads finished jobs older than the hour
//! (see `store::console`). And the Dead letters page's groups of failures
//! ([`dead_letters`]).

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

/// Failures the Dead letters page reads at most (the newest ones).
pub const DEAD_LETTERS_READ: i64 = 10_000;

/// Groups the Dead letters page shows at most.
pub const DEAD_LETTER_GROUPS: i64 = 200;

/// The dead letters of a window: FAILED jobs grouped by name and the start
/// of their error message.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// Newest group first.
    pub groups: Vec<console::FailureGroup>,
    /// Failed at or after this.
    pub since: NaiveDateTime,
    /// Only the newest [`DEAD_LETTERS_READ`] failures were counted, or only
    /// the newest [`DEAD_LETTER_GROUPS`] groups are shown.
    pub partial: bool,
}

/// Reads the dead letters of the last `window` (of `name` only, when
/// given), grouping messages by their first `chars` characters. Bounded
/// whatever the number of failures (see [`console::failure_groups`]).
pub async fn dead_letters(
    pool: &DbPool,
    window: chrono::Duration,
    name: Option<String>,
    chars: i32,
) -> Result<DeadLetters, AppError> {
    let since = store::now() - window;
    let groups = db::with_connection(pool, "console.dead_letters", async |conn| {
        Ok(console::failure_groups(
            conn,
            since,
            name.as_deref(),
            chars,
            DEAD_LETTERS_READ,
            DEAD_LETTER_GROUPS,
        )
        .await?)
    })
    .await?;
    let read: i64 = groups.iter().map(|group| group.count).sum();
    let partial = read >= DEAD_LETTERS_READ || groups.len() as i64 >= DEAD_LETTER_GROUPS;
    Ok(DeadLetters {
        groups,
        since,
        partial,
    })
}
