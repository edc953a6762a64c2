//! What the job benchmarks share: a durable PostgreSQL and the release
//! `control-plane` binary serving it as a separate process, clients over
//! loopback, no-op workers and the latency probe.

#![allow(dead_code)]

mod pg_stats;

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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::common::{self, authed, new_job};

pub const ADMIN_PASSWORD: &str = "bench-admin-password";

/// A running server and its database.
pub struct Bench {
    _cluster: EmbeddedPostgres,
    pub database_url: String,
    pub server: Child,
    pub address: String,
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

/// Starts PostgreSQL and the server, with `server_env` added to the
/// server's environment (limits, lease…).
pub async fn start(server_env: &[(&str, String)]) -> Bench {
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
        settings: pg_stats::cluster_settings(),
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
    // BENCH_SERVER_WRAPPER runs the server under a tool (a heap profiler:
    // `heaptrack -o /tmp/profile`); the memory figures are then the tool's.
    let mut command = match std::env::var("BENCH_SERVER_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().unwrap_or_default());
            command.args(words).arg(env!("CARGO_BIN_EXE_control-plane"));
            command
        }
        _ => Command::new(env!("CARGO_BIN_EXE_control-plane")),
    };
    // No HTTP port unless a bench asks for one (a fixed default port
    // would collide with other servers on the machine).
    command.env("HTTP_ADDR", "off");
    command.envs(server_env.iter().map(|(k, v)| (*k, v.as_str())));
    let server = command
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
    /// Another database on the bench's PostgreSQL, for a reference system
    /// measured on the same server in the same run.
    pub async fn other_database(&self, name: &str) -> String {
        self._cluster.ensure_database(name).await.expect("database");
        self._cluster.url(name)
    }

    /// Vacuums and analyses the queue's tables before a drain's jobs are
    /// enqueued, so that every drain starts as the first one does (and as
    /// graphile's does, in a database of its own): on tables without the
    /// dead rows and dead index entries of the drains before it. Without
    /// it, a drain that follows another pays for its predecessor's debris
    /// until autovacuum comes round: each claim's keyless lane walked the
    /// plain drain's 100,000 dead dispatch-index entries, 1.2 ms of a keyed
    /// claim. And the statistics are then those of a queue with nothing
    /// pending, the state autovacuum most often samples a queue in, which
    /// the claim and the key tending must withstand (BENCHMARKS.md, issue
    /// 15, run 13). `BENCH_VACUUM=0` leaves the tables as they were.
    pub async fn vacuum_before_enqueue(&self) {
        use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
        if std::env::var("BENCH_VACUUM").as_deref() == Ok("0") {
            return;
        }
        let mut conn = diesel_async::AsyncPgConnection::establish(&self.database_url)
            .await
            .expect("connect");
        diesel::sql_query("VACUUM (ANALYZE) jobs, job_attempts, concurrency_keys")
            .execute(&mut conn)
            .await
            .expect("vacuum");
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> Channel {
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

    /// The seeded admin's access token.
    pub async fn token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// An access token of `login`.
    pub async fn login(&self, login: &str, password: &str) -> String {
        common::AuthServiceClient::new(self.channel().await)
            .login(pb::LoginRequest {
                login: login.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token
    }

    /// The server's resident and peak memory, in MiB.
    pub fn memory(&self) -> (f64, f64) {
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
pub async fn enqueue(bench: &Bench, token: &str, count: usize) -> Duration {
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

/// Enqueues `count` jobs made by `make` (from their index) in batches of
/// 1,000, four batches at a time; returns the time it took.
pub async fn enqueue_with(
    bench: &Bench,
    token: &str,
    count: usize,
    make: fn(usize) -> pb::CreateJobRequest,
) -> Duration {
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
                let requests = (start..(start + 1000).min(count)).map(make).collect();
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
pub async fn worker(
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
pub async fn drain(
    bench: &Bench,
    token: &str,
    count: usize,
    workers: usize,
    concurrency: i32,
) -> f64 {
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

/// Drains `count` jobs with `workers` streams of `concurrency` that hold
/// each job 5 ms before completing it, counting the jobs all of them hold
/// at once (from the assignment's arrival to the completion's sending);
/// returns the most held at once and jobs per second.
pub async fn holding_drain(
    bench: &Bench,
    token: &str,
    count: usize,
    workers: usize,
    concurrency: i32,
) -> (i64, f64) {
    use std::sync::atomic::AtomicI64;
    let done = Arc::new(AtomicUsize::new(0));
    let holding = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let channel = bench.channel().await;
        let (token, done, holding, most) = (
            token.to_owned(),
            done.clone(),
            holding.clone(),
            most.clone(),
        );
        tasks.push(tokio::spawn(async move {
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
            while done.load(Ordering::Relaxed) < count {
                let message = tokio::select! {
                    message = inbound.message() => message.expect("stream").expect("open"),
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                };
                match message.kind {
                    Some(In::Assignment(assignment)) => {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let (tx, holding) = (tx.clone(), holding.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            let job = assignment.job.expect("job");
                            let _ = tx
                                .send(pb::WorkRequest {
                                    kind: Some(Out::Completion(pb::JobCompletion {
                                        lease: Some(pb::JobLeaseRef {
                                            job_id: job.id,
                                            attempt: assignment.attempt,
                                        }),
                                        result: None,
                                    })),
                                })
                                .await;
                        });
                    }
                    Some(In::Ack(ack)) => {
                        assert!(ack.accepted, "{ack:?}");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (
        most.load(Ordering::SeqCst),
        count as f64 / started.elapsed().as_secs_f64(),
    )
}

/// CreateJob returning → the idle worker receiving the job.
pub async fn latency(bench: &Bench, token: &str, rounds: usize) -> Latency {
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
    Latency {
        rounds,
        returned: [
            percentile(&mut after_return, 0.50),
            percentile(&mut after_return, 0.99),
            percentile(&mut after_return, 1.0),
        ],
        sent: [
            percentile(&mut after_send, 0.50),
            percentile(&mut after_send, 0.99),
            percentile(&mut after_send, 1.0),
        ],
    }
}

/// Latency percentiles (p50, p99, max) in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub rounds: usize,
    /// CreateJob returned → the worker received the job.
    pub returned: [f64; 3],
    /// CreateJob sent → the worker received the job.
    pub sent: [f64; 3],
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CreateJob returned → worker received ({} jobs): p50 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms; sent → received: p50 {:.2} ms, p99 {:.2} ms",
            self.rounds,
            self.returned[0],
            self.returned[1],
            self.returned[2],
            self.sent[0],
            self.sent[1]
        )
    }
}
