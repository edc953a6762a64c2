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
//! - the server's resident memory after each run.
//!
//! Run: `cargo bench --bench jobs` (BENCH_JOBS=20000 for a shorter run).
//! Results go in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use automation_control_plane::{
    auth::passwords::PasswordHasher,
    db::{
        embedded::{EmbeddedPostgres, EmbeddedPostgresOptions},
        migrations,
    },
    proto::automation_v1::{
        self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
        work_response::Kind as In,
    },
    seed::{self, AdminPassword},
};
use common::{authed, new_job};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const ADMIN_PASSWORD: &str = "bench-admin-password";

struct Bench {
    _cluster: EmbeddedPostgres,
    database_url: String,
    server: Child,
    address: String,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.server.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the data of earlier runs whose process is gone: a run's durable
/// cluster (over a gigabyte after the million-job fill) stays behind it, and
/// a few runs filled the disk.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("automation-cp-bench-") else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

async fn start() -> Bench {
    remove_stale_clusters();
    let root: PathBuf =
        std::env::temp_dir().join(format!("automation-cp-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cluster = EmbeddedPostgres::start(EmbeddedPostgresOptions {
        root_dir: root,
        port: 0,
        durable: true,
        max_connections: 200,
        startup_timeout: Duration::from_secs(60),
    })
    .await
    .expect("PostgreSQL");
    cluster.ensure_database("bench").await.expect("database");
    let database_url = cluster.url("bench");
    migrations::run_pending(&database_url)
        .await
        .expect("migrate");
    let pool = common::pool(&database_url, Duration::from_secs(10));
    seed::run(
        &pool,
        &PasswordHasher::new(4),
        AdminPassword::Given(ADMIN_PASSWORD.into()),
    )
    .await
    .expect("seed");
    let address = format!("127.0.0.1:{}", free_port());
    let server = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env("DATABASE_URL", &database_url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .env("LISTEN_ADDR", &address)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("server");
    Bench {
        _cluster: cluster,
        database_url,
        server,
        address,
    }
}

impl Bench {
    async fn channel(&self) -> Channel {
        for _ in 0..300 {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{}", self.address))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
            {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server does not answer");
    }

    async fn token(&self) -> String {
        common::AuthServiceClient::new(self.channel().await)
            .login(pb::LoginRequest {
                login: "admin".into(),
                password: ADMIN_PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token
    }

    /// The server's resident and peak memory, in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .unwrap_or_default()
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Enqueues `count` jobs in batches of 1,000, four batches at a time;
/// returns the time it took.
async fn enqueue(bench: &Bench, token: &str, count: usize) -> Duration {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = JobServiceClient::new(bench.channel().await);
        let token = token.to_owned();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            loop {
                let start = next.fetch_add(1000, Ordering::SeqCst);
                if start >= count {
                    return;
                }
                let requests = (start..(start + 1000).min(count))
                    .map(|i| new_job("bench.noop", serde_json::json!({ "i": i })))
                    .collect();
                client
                    .batch_create_jobs(authed(&token, pb::BatchCreateJobsRequest { requests }))
                    .await
                    .expect("batch");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// One worker: completes every job it gets at once, until `done` reaches
/// `target`.
async fn worker(
    channel: Channel,
    token: String,
    concurrency: i32,
    done: Arc<AtomicUsize>,
    target: usize,
) {
    let (tx, rx) = mpsc::channel(8192);
    tx.send(pb::WorkRequest {
        kind: Some(Out::Hello(pb::WorkerHello {
            worker_id: "bench".into(),
            job_names: vec![],
            module_names: vec![],
            max_concurrency: concurrency,
        })),
    })
    .await
    .unwrap();
    let mut inbound = JobServiceClient::new(channel)
        .work(authed(&token, ReceiverStream::new(rx)))
        .await
        .expect("work")
        .into_inner();
    while done.load(Ordering::Relaxed) < target {
        let message = tokio::select! {
            message = inbound.message() => message.expect("stream").expect("open"),
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        match message.kind {
            Some(In::Assignment(assignment)) => {
                let job = assignment.job.expect("job");
                tx.send(pb::WorkRequest {
                    kind: Some(Out::Completion(pb::JobCompletion {
                        lease: Some(pb::JobLeaseRef {
                            job_id: job.id,
                            attempt: assignment.attempt,
                        }),
                        result: None,
                    })),
                })
                .await
                .unwrap();
            }
            Some(In::Ack(ack)) => {
                assert!(ack.accepted, "{ack:?}");
                done.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Drains `count` enqueued jobs with `workers` streams of `concurrency`;
/// returns jobs per second.
async fn drain(bench: &Bench, token: &str, count: usize, workers: usize, concurrency: i32) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::new();
    for _ in 0..workers {
        channels.push(bench.channel().await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            tokio::spawn(worker(
                channel,
                token.to_owned(),
                concurrency,
                done.clone(),
                count,
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn throughput(bench: &Bench, token: &str, count: usize, label: &str) {
    let enqueued = enqueue(bench, token, count).await;
    println!(
        "{label}: enqueued {count} jobs in {:.2} s ({:.0} jobs/s, batches of 1,000)",
        enqueued.as_secs_f64(),
        count as f64 / enqueued.as_secs_f64()
    );
    for (workers, concurrency) in [(4, 128)] {
        let rate = drain(bench, token, count, workers, concurrency).await;
        let (rss, peak) = bench.memory();
        println!(
            "{label}: drained by {workers} workers x {concurrency}: {rate:.0} jobs/s end to end; \
             server RSS {rss:.0} MiB (peak {peak:.0} MiB)"
        );
        if workers == 4 {
            break;
        }
    }
}

/// CreateJob returning → the idle worker receiving the job.
async fn latency(bench: &Bench, token: &str, rounds: usize) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::WorkRequest {
        kind: Some(Out::Hello(pb::WorkerHello {
            worker_id: "latency".into(),
            job_names: vec!["bench.latency".into()],
            module_names: vec![],
            max_concurrency: 1,
        })),
    })
    .await
    .unwrap();
    let mut inbound = JobServiceClient::new(bench.channel().await)
        .work(authed(token, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap();
    let (received_tx, mut received_rx) = mpsc::unbounded_channel::<(Instant, pb::JobAssignment)>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(In::Assignment(assignment)) = message.kind {
                let _ = received_tx.send((Instant::now(), assignment));
            }
        }
    });
    let mut client = JobServiceClient::new(bench.channel().await);
    let mut after_return = Vec::with_capacity(rounds);
    let mut after_send = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        client
            .create_job(authed(
                token,
                new_job("bench.latency", serde_json::json!({})),
            ))
            .await
            .unwrap();
        let returned = Instant::now();
        let (received, assignment) = received_rx.recv().await.unwrap();
        after_return.push(received.saturating_duration_since(returned));
        after_send.push(received - sent);
        let job = assignment.job.unwrap();
        tx.send(pb::WorkRequest {
            kind: Some(Out::Completion(pb::JobCompletion {
                lease: Some(pb::JobLeaseRef {
                    job_id: job.id,
                    attempt: assignment.attempt,
                }),
                result: None,
            })),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tx);
    reader.abort();
    let percentile = |samples: &mut Vec<Duration>, p: f64| {
        samples.sort();
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "idle latency, CreateJob returned → worker received ({rounds} jobs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&mut after_return, 0.50),
        percentile(&mut after_return, 0.99),
        percentile(&mut after_return, 1.0),
    );
    println!(
        "idle latency, CreateJob sent → worker received: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut after_send, 0.50),
        percentile(&mut after_send, 0.99),
    );
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
        let bench = start().await;
        let token = bench.token().await;
        latency(&bench, &token, 1000).await;
        if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
            return;
        }
        throughput(&bench, &token, count, "empty table").await;
        add_finished_jobs(&bench, 1_000_000).await;
        throughput(&bench, &token, count, "1,000,000 finished jobs").await;
        latency(&bench, &token, 1000).await;
    });
}
