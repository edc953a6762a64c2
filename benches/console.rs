//! How fast the web console answers with a large queue table: the real
//! `control-plane` binary (release build) on a durable PostgreSQL whose
//! `jobs` table holds 1,000,000 rows (850,000 finished a day ago, 45,000
//! finished in the last hour, 5,000 failed in the last hour with 7 kinds
//! of error, 100,000 pending over 20 names; 100 schedules, one of which
//! created 10,000 of the jobs), each page fetched sequentially by a signed-in
//! client (a fresh connection per request, as a browser with scripts off).
//!
//! Run: `cargo bench --bench console` (BENCH_PAGES=200 for more requests per
//! page). Results go in BENCHMARKS.md; the target is under 100 ms a page.

#[allow(
    dead_code,
    unused_imports,
    reason = "a bench uses a part of the tests' harness"
)]
#[path = "../tests/integration/common/mod.rs"]
mod common;

mod support;

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

async fn fill(database_url: &str) {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let started = Instant::now();
    // (status, rows, names, finished this long ago at most, in seconds)
    for (status, count, names, ago) in [
        ("COMPLETED", 850_000, 20, 86_400),
        ("COMPLETED", 45_000, 20, 3_600),
        ("FAILED", 5_000, 20, 3_600),
        ("PENDING", 100_000, 20, 600),
    ] {
        diesel::sql_query(format!(
            r#"INSERT INTO jobs (id, name, status, priority, payload, attempts, "maxAttempts",
                   "scheduledAt", "createdAt", "updatedAt", error, "failedAt")
               SELECT gen_random_uuid(), 'bench.console.' || (i % {names}), '{status}', 0,
                      '{{"i": 1}}', 1, 3,
                      LOCALTIMESTAMP - make_interval(secs => {ago}),
                      LOCALTIMESTAMP - make_interval(secs => {ago}) - interval '1 minute',
                      LOCALTIMESTAMP - make_interval(secs => (i % {ago})),
                      CASE WHEN '{status}' = 'FAILED'
                           THEN jsonb_build_object('message', 'boom ' || (i % 7) || ' at step ' || i) END,
                      CASE WHEN '{status}' = 'FAILED'
                           THEN LOCALTIMESTAMP - make_interval(secs => (i % {ago})) END
               FROM generate_series(1, {count}) AS i"#
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // 100 schedules (paused: they do not fire during the run), the first
    // one having created 10,000 of the jobs.
    diesel::sql_query(
        r#"INSERT INTO schedules (id, name, cron, "jobName", paused)
           SELECT gen_random_uuid(), 'bench-schedule-' || lpad(i::text, 3, '0'), '0 3 * * *',
                  'bench.console.' || (i % 20), true
           FROM generate_series(1, 100) AS i"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        r#"UPDATE jobs SET "scheduleId" = (SELECT id FROM schedules WHERE name = 'bench-schedule-001')
           WHERE id IN (SELECT id FROM jobs WHERE status = 'COMPLETED' LIMIT 10000)"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("VACUUM ANALYZE jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    println!(
        "filled jobs with 1,000,000 rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn bench_schedule(database_url: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let rows: Vec<Id> =
        diesel::sql_query("SELECT id::text AS id FROM schedules WHERE name = 'bench-schedule-001'")
            .load(&mut conn)
            .await
            .unwrap();
    rows[0].id.clone()
}

async fn any_job(database_url: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let rows: Vec<Id> =
        diesel::sql_query("SELECT id::text AS id FROM jobs WHERE status = 'FAILED' LIMIT 1")
            .load(&mut conn)
            .await
            .unwrap();
    rows[0].id.clone()
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
        let rounds: usize = std::env::var("BENCH_PAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let bench = support::start(&[("HTTP_ADDR", http.to_string())]).await;
        // The server is up once it answers a login.
        drop(bench.token().await);
        fill(&bench.database_url).await;
        let job = any_job(&bench.database_url).await;
        let schedule = bench_schedule(&bench.database_url).await;
        let cookie = common::browser::login(
            http,
            automation_control_plane::seed::ADMIN_EMAIL,
            support::ADMIN_PASSWORD,
        )
        .await;
        let pages = [
            "/console/".to_owned(),
            "/console/jobs".to_owned(),
            "/console/jobs?status=FAILED&name=bench.console.7".to_owned(),
            "/console/jobs?status=PENDING".to_owned(),
            format!("/console/jobs/{job}"),
            format!("/console/jobs?schedule={schedule}"),
            "/console/queues".to_owned(),
            "/console/dead-letters".to_owned(),
            "/console/dead-letters?window=1h&chars=200&name=bench.console.7".to_owned(),
            "/console/schedules".to_owned(),
            format!("/console/schedules/{schedule}"),
            "/console/workers".to_owned(),
            "/console/audit".to_owned(),
        ];
        println!("{rounds} sequential requests per page, 1,000,000 rows in jobs:");
        for page in pages {
            // One request to warm the caches, then the measured ones.
            let first = common::browser::request(http, "GET", &page, Some(&cookie), None).await;
            assert_eq!(first.status, 200, "{page}: {first:?}");
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let started = Instant::now();
                let answer =
                    common::browser::request(http, "GET", &page, Some(&cookie), None).await;
                times.push(started.elapsed());
                assert_eq!(answer.status, 200);
            }
            times.sort();
            println!(
                "  {page:<52} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} bytes)",
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                percentile(&times, 1.0),
                first.body.len()
            );
        }
    });
}
