//! Gauges sampled on an interval, never per scrape: a scrape only renders
//! what is already recorded, so it costs the same whatever the size of the
//! tables. The pool and the registry are read every tick (in memory); the
//! database's statistics every [`SamplerSettings::stats_interval`].

use std::{collections::HashSet, time::Duration};

use tokio_util::sync::CancellationToken;

use super::names;
use crate::{
    db::{self, DbPool},
    dispatch::Dispatcher,
    error::AppError,
    store::stats,
};

/// Most (name, status) groups of unfinished jobs published.
const MAX_JOB_SERIES: usize = 500;

/// How often the sampler runs.
#[derive(Debug, Clone, Copy)]
pub struct SamplerSettings {
    /// Pool and Work-stream gauges.
    pub interval: Duration,
    /// Queries to PostgreSQL (jobs, tables, indexes, locks, sessions).
    pub stats_interval: Duration,
}

/// Samples until `stop` is cancelled.
pub async fn run(
    pool: DbPool,
    dispatcher: Dispatcher,
    settings: SamplerSettings,
    stop: CancellationToken,
) {
    let mut last_stats: Option<tokio::time::Instant> = None;
    // Job gauges of names that vanished are set to 0, not left stale.
    let mut seen: HashSet<(String, String)> = HashSet::new();
    loop {
        sample_memory(&pool, &dispatcher);
        if last_stats.is_none_or(|at| at.elapsed() >= settings.stats_interval) {
            last_stats = Some(tokio::time::Instant::now());
            let query = sample_database(&pool, &mut seen);
            let timeout = settings.stats_interval.max(Duration::from_secs(1));
            match tokio::time::timeout(timeout, query).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    metrics::counter!(names::SAMPLE_ERRORS).increment(1);
                    tracing::debug!(%error, "sampling database statistics failed");
                }
                Err(_) => metrics::counter!(names::SAMPLE_ERRORS).increment(1),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

fn sample_memory(pool: &DbPool, dispatcher: &Dispatcher) {
    let status = pool.status();
    metrics::gauge!(names::POOL_MAX).set(status.max_size as f64);
    metrics::gauge!(names::POOL_IN_USE).set(status.size.saturating_sub(status.available) as f64);
    metrics::gauge!(names::POOL_IDLE).set(status.available as f64);
    let queue = dispatcher.stats();
    metrics::gauge!(names::WORKERS_CONNECTED).set(queue.streams as f64);
    metrics::gauge!(names::SLOTS_FREE).set(queue.free_slots as f64);
    metrics::gauge!(names::SLOTS_HELD).set(queue.held_slots as f64);
}

async fn sample_database(
    pool: &DbPool,
    seen: &mut HashSet<(String, String)>,
) -> Result<(), AppError> {
    let (jobs, tables, hit_ratio, lock_waits, sessions) =
        db::with_connection(pool, "telemetry.sample", async |conn| {
            Ok((
                stats::unfinished_jobs(conn).await?,
                stats::tables(conn).await?,
                stats::index_hit_ratio(conn).await?,
                stats::lock_waits(conn).await?,
                stats::active_sessions(conn).await?,
            ))
        })
        .await?;
    // Job names are the callers' choice: only the largest groups get a
    // series, so that a flood of one-off names cannot flood Prometheus.
    let mut jobs = jobs;
    jobs.sort_by_key(|job| std::cmp::Reverse(job.count));
    jobs.truncate(MAX_JOB_SERIES);
    let mut now_seen = HashSet::new();
    for job in &jobs {
        metrics::gauge!(names::JOBS, "name" => job.name.clone(), "status" => job.status.clone())
            .set(job.count as f64);
        if job.status == "PENDING" {
            metrics::gauge!(names::OLDEST_PENDING_SECONDS, "name" => job.name.clone())
                .set(job.oldest_due_secs.unwrap_or(0.0).max(0.0));
        }
        now_seen.insert((job.name.clone(), job.status.clone()));
    }
    for (name, status) in seen.difference(&now_seen) {
        metrics::gauge!(names::JOBS, "name" => name.clone(), "status" => status.clone()).set(0.0);
        if status == "PENDING" {
            metrics::gauge!(names::OLDEST_PENDING_SECONDS, "name" => name.clone()).set(0.0);
        }
    }
    *seen = now_seen;
    for table in tables {
        metrics::gauge!(names::TABLE_LIVE_ROWS, "table" => table.name.clone())
            .set(table.live_rows as f64);
        metrics::gauge!(names::TABLE_DEAD_ROWS, "table" => table.name.clone())
            .set(table.dead_rows as f64);
        metrics::gauge!(names::TABLE_BYTES, "table" => table.name).set(table.bytes as f64);
    }
    if let Some(ratio) = hit_ratio {
        metrics::gauge!(names::INDEX_HIT_RATIO).set(ratio);
    }
    metrics::gauge!(names::LOCK_WAITS).set(lock_waits as f64);
    metrics::gauge!(names::ACTIVE_SESSIONS).set(sessions as f64);
    Ok(())
}
