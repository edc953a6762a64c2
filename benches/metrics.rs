//! The cost of a Prometheus scrape with a large queue table: the real
//! `control-plane` binary (release build) on a durable PostgreSQL whose
//! `jobs` table holds 1,000,000 rows (900,000 finished, 100,000 pending over
//! 20 names, so the sampler's per-name query has a real backlog to count),
//! scraped sequentially over one keep-alive connection.
//!
//! A scrape only renders what the recorder holds: the gauges that need a
//! query are sampled on an interval (`METRICS_SAMPLE_INTERVAL_MS`), so the
//! bench also prints how long that sample takes, from the server's own
//! `db_operation_seconds{operation="telemetry.sample"}`.
//!
//! Run: `cargo bench --bench metrics` (BENCH_SCRAPES=1000 for more
//! scrapes). Results go in BENCHMARKS.md.

#[allow(
    dead_code,
    unused_imports,
    reason = "a bench uses a part of the tests' harness"
)]
#[path = "../tests/integration/common/mod.rs"]
mod common;

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

async fn fill(database_url: &str) {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let started = Instant::now();
    for (status, count, names) in [("COMPLETED", 900_000, 1), ("PENDING", 100_000, 20)] {
        diesel::sql_query(format!(
            r#"INSERT INTO jobs (id, name, status, priority, payload, attempts, "maxAttempts",
                   "scheduledAt", "createdAt", "updatedAt")
               SELECT gen_random_uuid(), 'bench.metrics.' || (i % {names}), '{status}', 0,
                      '{{"i": 1}}', 0, 3, now() - interval '1 hour', now() - interval '1 hour',
                      now() - interval '1 hour'
               FROM generate_series(1, {count}) AS i"#
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    diesel::sql_query("VACUUM ANALYZE jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    println!(
        "filled jobs with 1,000,000 rows (100,000 pending) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The sum of a sample's values, by exact series prefix.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let scrapes: usize = std::env::var("BENCH_SCRAPES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        let http = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        );
        let bench = support::start(&[
            ("HTTP_ADDR", http.clone()),
            ("METRICS_SAMPLE_INTERVAL_MS", "1000".into()),
        ])
        .await;
        // Some RPCs, so that the grpc_* and db_* series exist.
        let token = bench.token().await;
        drop(token);
        fill(&bench.database_url).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: http::Uri = format!("http://{http}/metrics").parse().unwrap();
        let scrape = async || {
            let response = client.get(uri.clone()).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        };
        // Wait until the sampler has counted the backlog.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = scrape().await;
            if value(&text, "queue_jobs{name=\"bench.metrics.") >= 100_000.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sampler never saw the backlog"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut times = Vec::with_capacity(scrapes);
        let mut bytes = 0;
        for _ in 0..scrapes {
            let started = Instant::now();
            let text = scrape().await;
            times.push(started.elapsed());
            bytes = text.len();
        }
        times.sort();
        println!(
            "scrape of /metrics with 1,000,000 rows in jobs, {scrapes} sequential scrapes: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({bytes} bytes, {} series lines)",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
            scrape()
                .await
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count(),
        );
        let text = scrape().await;
        let series = "db_operation_seconds_sum{operation=\"telemetry.sample\"}";
        let count = value(
            &text,
            "db_operation_seconds_count{operation=\"telemetry.sample\"}",
        );
        println!(
            "sampler (off the scrape path, every 1 s here, 15 s by default): \
             {count:.0} samples, mean {:.1} ms",
            value(&text, series) / count.max(1.0) * 1000.0
        );
    });
}
