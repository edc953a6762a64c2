//! The job queue under load, end to end: the real `control-plane` binary
//! (release build) serving a durable PostgreSQL (fsync and synchronous
//! commit on), Rust workers holding real Work streams over loopback gRPC,
//! everything on this machine.
//!
//! - throughput: 100,000 jobs enqueued in batches, then drained by M workers
//!   of concurrency K; jobs/s completed end to end (assignment pushed,
//!   completion reported, acknowledged after commit);
//! - idle latency: one idle worker; from CreateJob returning to the worker
//!   receiving the job;
//! - the same throughput with 1,000,000 finished jobs already in the table;
//! - the server's resident memory after each run;
//! - beside the empty-table drain, graphile-worker's drain of as many jobs
//!   on the same PostgreSQL (batched mode, and default mode on a tenth of
//!   them), with the ratio: the reference measured in the same run.
//!
//! Run: `cargo bench --bench jobs` (BENCH_JOBS=20000 for a shorter run).
//! Results go in BENCHMARKS.md.

#[allow(
    dead_code,
    unused_imports,
    reason = "a bench uses a part of the tests' harness"
)]
#[path = "../tests/integration/common/mod.rs"]
mod common;

#[path = "support/graphile.rs"]
mod graphile;
mod support;

use std::time::Instant;

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use support::{Bench, drain, enqueue, latency, start};

async fn throughput(bench: &Bench, token: &str, count: usize, label: &str) -> f64 {
    let enqueued = enqueue(bench, token, count).await;
    println!(
        "{label}: enqueued {count} jobs in {:.2} s ({:.0} jobs/s, batches of 1,000)",
        enqueued.as_secs_f64(),
        count as f64 / enqueued.as_secs_f64()
    );
    let (workers, concurrency) = (4, 128);
    let rate = drain(bench, token, count, workers, concurrency).await;
    let (rss, peak) = bench.memory();
    println!(
        "{label}: drained by {workers} workers x {concurrency}: {rate:.0} jobs/s end to end; \
         server RSS {rss:.0} MiB (peak {peak:.0} MiB)"
    );
    rate
}

/// graphile-worker on the same PostgreSQL, and our rate as a ratio of it.
async fn reference(bench: &Bench, count: usize, ours: f64) {
    for (mode, jobs) in [("batched", count), ("default", count / 10)] {
        match graphile::drain(bench, jobs, mode).await {
            Ok(rate) => println!(
                "graphile-worker {mode} mode, {jobs} jobs: {rate:.0} jobs/s; \
                 this server's drain is {:.2}x that",
                ours / rate
            ),
            Err(why) => println!("graphile-worker {mode} mode: skipped ({why})"),
        }
    }
}

/// Fills the table with a million finished jobs, as a long-lived queue has.
async fn add_finished_jobs(bench: &Bench, count: usize) {
    use diesel_async::RunQueryDsl as _;
    let mut conn = AsyncPgConnection::establish(&bench.database_url)
        .await
        .unwrap();
    let started = Instant::now();
    diesel::sql_query(format!(
        r#"INSERT INTO jobs (id, name, status, priority, payload, result, attempts,
               "maxAttempts", "scheduledAt", "startedAt", "completedAt", "createdAt", "updatedAt")
           SELECT gen_random_uuid(), 'bench.history', 'COMPLETED', 0, '{{"i": 1}}', 'true', 1, 3,
                  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
                  now() - interval '1 day', now() - interval '1 day'
           FROM generate_series(1, {count})"#
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("VACUUM ANALYZE jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    println!(
        "added {count} finished jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let count: usize = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let bench = start(&[]).await;
        let token = bench.token().await;
        println!("idle latency, {}", latency(&bench, &token, 1000).await);
        if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
            return;
        }
        let ours = throughput(&bench, &token, count, "empty table").await;
        reference(&bench, count, ours).await;
        add_finished_jobs(&bench, 1_000_000).await;
        throughput(&bench, &token, count, "1,000,000 finished jobs").await;
        println!("idle latency, {}", latency(&bench, &token, 1000).await);
    });
}
