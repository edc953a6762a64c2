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
//! - concurrency keys, after the empty-table drain: the same number of jobs
//!   spread over 1,000 keys of maximum 1, drained by the same workers, as a
//!   ratio of the plain drain of the same run; then 2,000 jobs of one key of
//!   maximum 5 held 5 ms each by the workers, which count how many they hold
//!   at once;
//! - with `BENCH_PRUNE=1`, instead: retention deleting the 1,000,000 finished
//!   jobs (a pruner as another replica runs it, in batches of 1,000) while
//!   the idle latency probe and a drain run, beside the same two measured
//!   just before with the million rows in place.
//!
//! - with `BENCH_PG_STATS=1`, each drain is followed by the statements
//!   PostgreSQL spent the most time on (`pg_stat_statements`), planning and
//!   execution apart, and the buffers each table and index was read for;
//! - `BENCH_PG_SETTINGS` adds cluster settings (`;`-separated, e.g.
//!   `shared_preload_libraries=auto_explain;auto_explain.log_min_duration=20ms`);
//! - each drain's jobs are enqueued into tables vacuumed and analysed of
//!   the jobs before them (`BENCH_VACUUM=0` leaves them as they were).
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
use support::{Bench, drain, enqueue, enqueue_with, latency, start};

async fn throughput(bench: &Bench, token: &str, count: usize, label: &str) -> f64 {
    bench.vacuum_before_enqueue().await;
    let enqueued = enqueue(bench, token, count).await;
    println!(
        "{label}: enqueued {count} jobs in {:.2} s ({:.0} jobs/s, batches of 1,000)",
        enqueued.as_secs_f64(),
        count as f64 / enqueued.as_secs_f64()
    );
    let (workers, concurrency) = (4, 128);
    bench.pg_stats_reset().await;
    let rate = drain(bench, token, count, workers, concurrency).await;
    bench.pg_stats_report(label).await;
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
        if std::env::var("BENCH_PRUNE").as_deref() == Ok("1") {
            return prune_while_dispatching(&bench, &token, count).await;
        }
        println!("idle latency, {}", latency(&bench, &token, 1000).await);
        if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
            return;
        }
        let ours = throughput(&bench, &token, count, "empty table").await;
        keys(&bench, &token, count, ours).await;
        if std::env::var("BENCH_ONLY").as_deref() == Ok("keys") {
            return;
        }
        reference(&bench, count, ours).await;
        add_finished_jobs(&bench, 1_000_000).await;
        throughput(&bench, &token, count, "1,000,000 finished jobs").await;
        println!("idle latency, {}", latency(&bench, &token, 1000).await);
    });
}

/// Retention deleting a million finished jobs while jobs are dispatched:
/// the latency probe and a drain, first with the rows in place, then while
/// a pruner (as another replica runs it) deletes them.
async fn prune_while_dispatching(bench: &Bench, token: &str, count: usize) {
    use automation_control_plane::{
        auth::AuthSettings,
        domain::Identity,
        maintenance::retention::{Pruner, RetentionSettings},
    };
    add_finished_jobs(bench, 1_000_000).await;
    let before_latency = latency(bench, token, 1000).await;
    println!("before pruning: idle latency, {before_latency}");
    let before = throughput(bench, token, count, "before pruning").await;

    let options = common::TestOptions::default();
    let auth = AuthSettings::from_args(&options.auth, &options.passwords, common::JWT_SECRET)
        .expect("auth settings");
    let pool = common::pool(&bench.database_url, std::time::Duration::from_secs(10));
    let identity = Identity::new(&pool, &auth);
    let pruner = Pruner::new(
        pool,
        identity.throttle,
        RetentionSettings {
            completed_jobs: Some(std::time::Duration::from_secs(3600)),
            ..RetentionSettings::default()
        },
    );
    let started = Instant::now();
    let pruning = tokio::spawn(async move { pruner.prune_once().await });
    let during_latency = latency(bench, token, 1000).await;
    println!(
        "while pruning ({:.1} s in): idle latency, {during_latency}",
        started.elapsed().as_secs_f64()
    );
    let during = throughput(bench, token, count, "while pruning").await;
    let measured = started.elapsed();
    let report = pruning
        .await
        .expect("pruner")
        .expect("prune")
        .expect("the lock");
    let took = started.elapsed();
    println!(
        "pruned {} finished jobs in {:.1} s; the measurements ran during its first {:.1} s",
        report.completed_jobs,
        took.as_secs_f64(),
        measured.as_secs_f64()
    );
    println!(
        "while pruning: latency p99 {:.2} ms vs {:.2} ms before ({:.2}x, bound 2x); \
         drain {during:.0} jobs/s vs {before:.0} ({:.2}x, bound 0.8x)",
        during_latency.returned[1],
        before_latency.returned[1],
        during_latency.returned[1] / before_latency.returned[1],
        during / before
    );
}

/// Concurrency keys: the drain of `count` jobs over 1,000 keys of maximum
/// 1 beside the plain drain (`plain`, jobs/s) of the same run; then one key
/// of maximum 5, whose jobs the workers hold a few milliseconds each while
/// counting how many they hold at once.
async fn keys(bench: &Bench, token: &str, count: usize, plain: f64) {
    fn spread(i: usize) -> automation_control_plane::proto::automation_v1::CreateJobRequest {
        automation_control_plane::proto::automation_v1::CreateJobRequest {
            concurrency_key: format!("customer-{}", i % 1000),
            concurrency_max: 1,
            ..common::new_job("bench.keyed", serde_json::json!({ "i": i }))
        }
    }
    bench.vacuum_before_enqueue().await;
    let enqueued = enqueue_with(bench, token, count, spread).await;
    println!(
        "1,000 keys of max 1: enqueued {count} jobs in {:.2} s",
        enqueued.as_secs_f64()
    );
    let (workers, concurrency) = (4, 128);
    bench.pg_stats_reset().await;
    let rate = drain(bench, token, count, workers, concurrency).await;
    bench.pg_stats_report("1,000 keys of max 1").await;
    println!(
        "1,000 keys of max 1: drained by {workers} workers x {concurrency}: {rate:.0} jobs/s \
         end to end; {:.2}x the plain drain of this run ({plain:.0} jobs/s)",
        rate / plain
    );
    const FIVE: usize = 2000;
    fn one_key(i: usize) -> automation_control_plane::proto::automation_v1::CreateJobRequest {
        automation_control_plane::proto::automation_v1::CreateJobRequest {
            concurrency_key: "one-key".into(),
            concurrency_max: 5,
            ..common::new_job("bench.five", serde_json::json!({ "i": i }))
        }
    }
    enqueue_with(bench, token, FIVE, one_key).await;
    let (most, rate) = support::holding_drain(bench, token, FIVE, workers, concurrency).await;
    println!(
        "one key of max 5: {FIVE} jobs held 5 ms each by {workers} workers x {concurrency}: \
         at most {most} held at once (measured by the workers); {rate:.0} jobs/s"
    );
}
