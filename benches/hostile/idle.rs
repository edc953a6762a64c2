//! `BENCH_ONLY=idle`: a fleet of connected idle workers (issue 17's row
//! "10,000 connected idle workers"), each an HTTP/2 client that says hello
//! for a job name of its own (nobody enqueues any of them) and keeps
//! reading, spread over enough accounts that the per-caller stream cap
//! (256) lets them all in. Measured in one run on one server (default
//! limits): the server's RSS before, while they are connected and after
//! they left, and an honest worker's `CreateJob` returned → received beside
//! them and after.
//!
//! Settings: `BENCH_IDLE_WORKERS` (10,000), `BENCH_IDLE_NAMES` (as many as
//! workers: each its own; 10 to share ten names), `BENCH_IDLE_CALLERS` (50),
//! `BENCH_IDLE_PER_CONNECTION` (1: each worker its own HTTP/2 connection),
//! `BENCH_ROUNDS` (1,000 honest jobs per latency measure).

use std::time::{Duration, Instant};

use automation_control_plane::proto::automation_v1::{
    self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
    work_response::Kind as In,
};
use futures_util::StreamExt as _;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{
    common::{self, RoleServiceClient, UserServiceClient, authed, new_job},
    setting,
    support::{Bench, start},
};

const PASSWORD: &str = "idle-password-1";

/// Longest an honest job may take to arrive before the run says it was not
/// delivered.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// `callers` accounts holding `jobs:execute` only; their tokens.
async fn accounts(bench: &Bench, admin: &str, callers: usize) -> Vec<String> {
    RoleServiceClient::new(bench.channel().await)
        .create_role(authed(
            admin,
            pb::CreateRoleRequest {
                name: "idle-worker".into(),
                description: String::new(),
                permissions: vec!["jobs:execute".into()],
            },
        ))
        .await
        .expect("role");
    let mut tokens = Vec::new();
    for i in 0..callers {
        let name = format!("idle-{i}");
        let mut user = common::new_user(&name);
        user.password = PASSWORD.into();
        user.roles = vec!["idle-worker".into()];
        UserServiceClient::new(bench.channel().await)
            .create_user(authed(admin, user))
            .await
            .expect("user");
        tokens.push(bench.login(&name, PASSWORD).await);
    }
    tokens
}

/// Opens one idle worker on `channel`: hello for `name`, capacity 1, the
/// welcome read; then a task keeps reading until the set is dropped.
async fn open_one(
    channel: Channel,
    token: String,
    worker: usize,
    name: String,
) -> Result<
    (
        mpsc::Sender<pb::WorkRequest>,
        tonic::Streaming<pb::WorkResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::WorkRequest {
        kind: Some(Out::Hello(pb::WorkerHello {
            worker_id: format!("idle-{worker}"),
            job_names: vec![name],
            module_names: vec![],
            max_concurrency: 1,
        })),
    })
    .await
    .unwrap();
    let mut inbound = JobServiceClient::new(channel)
        .work(authed(&token, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(_) => Ok((tx, inbound)),
        None => Err(tonic::Status::unavailable("closed before the welcome")),
    }
}

/// Connects the idle fleet; each worker is read by a task of `tasks`.
/// Returns how many were admitted and the refusals.
async fn open_fleet(
    bench: &Bench,
    tokens: &[String],
    workers: usize,
    names: usize,
    per_connection: usize,
    tasks: &mut JoinSet<()>,
) -> (usize, Vec<String>) {
    let mut channels = Vec::new();
    for _ in 0..workers.div_ceil(per_connection) {
        channels.push(bench.channel().await);
    }
    let opened = futures_util::stream::iter(0..workers)
        .map(|i| {
            let channel = channels[i / per_connection].clone();
            let token = tokens[i % tokens.len()].clone();
            open_one(channel, token, i, format!("idle.name-{}", i % names))
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut admitted = 0;
    let mut refused = Vec::new();
    for result in opened {
        match result {
            Ok((tx, mut inbound)) => {
                admitted += 1;
                tasks.spawn(async move {
                    let _keep = tx;
                    while let Ok(Some(_)) = inbound.message().await {}
                });
            }
            Err(status) => refused.push(format!("{:?}: {}", status.code(), status.message())),
        }
    }
    drop(channels);
    (admitted, refused)
}

/// An honest worker's latency (one job at a time, capacity 1); `None` when
/// a job was not delivered within [`DELIVERY_TIMEOUT`].
async fn honest(bench: &Bench, token: &str, rounds: usize) -> Result<[f64; 3], String> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::WorkRequest {
        kind: Some(Out::Hello(pb::WorkerHello {
            worker_id: "honest".into(),
            job_names: vec!["bench.honest".into()],
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
    let (received_tx, mut received_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(In::Assignment(assignment)) = message.kind {
                let _ = received_tx.send((Instant::now(), assignment));
            }
        }
    });
    let mut client = JobServiceClient::new(bench.channel().await);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        client
            .create_job(authed(
                token,
                new_job("bench.honest", serde_json::json!({})),
            ))
            .await
            .unwrap();
        let returned = Instant::now();
        let Ok(Some((received, assignment))) =
            tokio::time::timeout(DELIVERY_TIMEOUT, received_rx.recv()).await
        else {
            reader.abort();
            return Err(format!(
                "job {round} of {rounds} not delivered within {DELIVERY_TIMEOUT:?}"
            ));
        };
        samples.push(received.saturating_duration_since(returned));
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
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    Ok([at(0.5), at(0.99), at(1.0)])
}

fn show(result: &Result<[f64; 3], String>) -> String {
    match result {
        Ok([p50, p99, max]) => format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
        Err(error) => format!("NOT DELIVERED: {error}"),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// The share of one core the server and this process (the fleet's client
/// side) use over `window`, while nothing is asked of them.
async fn idle_cpu(bench: &Bench, window: Duration) -> (f64, f64) {
    let server = bench.server.id().to_string();
    let (server_before, client_before) = (cpu_seconds(&server), cpu_seconds("self"));
    tokio::time::sleep(window).await;
    let share = |before: f64, pid: &str| (cpu_seconds(pid) - before) / window.as_secs_f64() * 100.0;
    (share(server_before, &server), share(client_before, "self"))
}

/// The run.
pub async fn run() {
    let workers = setting("BENCH_IDLE_WORKERS", 10_000);
    let names = setting("BENCH_IDLE_NAMES", workers).max(1);
    let callers = setting("BENCH_IDLE_CALLERS", 50).max(1);
    let per_connection = setting("BENCH_IDLE_PER_CONNECTION", 1).max(1);
    let rounds = setting("BENCH_ROUNDS", 1_000);
    let bench = start(&[]).await;
    let admin = bench.token().await;
    let tokens = accounts(&bench, &admin, callers).await;
    println!(
        "== {workers} idle workers, {names} job names, {callers} callers, \
         {per_connection} per HTTP/2 connection"
    );
    let alone = honest(&bench, &admin, rounds).await;
    let (rss_alone, _) = bench.memory();
    println!(
        "alone: honest CreateJob returned → received ({rounds} jobs): {}; server RSS \
         {rss_alone:.0} MiB; load {}",
        show(&alone),
        load_average()
    );

    let (server_cpu, _) = idle_cpu(&bench, Duration::from_secs(5)).await;
    println!("no fleet, nothing asked for 5 s: server CPU {server_cpu:.0}% of a core");

    let mut tasks = JoinSet::new();
    let opened_at = Instant::now();
    let (admitted, refused) =
        open_fleet(&bench, &tokens, workers, names, per_connection, &mut tasks).await;
    let open_time = opened_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (server_cpu, client_cpu) = idle_cpu(&bench, Duration::from_secs(5)).await;
    println!(
        "idle fleet, nothing asked for 5 s: server CPU {server_cpu:.0}% of a core, the fleet's \
         clients (this process) {client_cpu:.0}%"
    );
    let (rss_open, _) = bench.memory();
    println!(
        "idle fleet: {admitted} of {workers} admitted in {:.1} s ({} refused{}); server RSS \
         {rss_open:.0} MiB; load {}",
        open_time.as_secs_f64(),
        refused.len(),
        refused
            .first()
            .map(|first| format!(", first: {first}"))
            .unwrap_or_default(),
        load_average()
    );
    let beside = honest(&bench, &admin, rounds).await;
    let (rss_beside, peak) = bench.memory();
    println!(
        "beside them: honest CreateJob returned → received ({rounds} jobs): {}; server RSS \
         {rss_beside:.0} MiB; load {}",
        show(&beside),
        load_average()
    );
    tasks.shutdown().await;
    for wait in [5, 15] {
        tokio::time::sleep(Duration::from_secs(if wait == 5 { 5 } else { 10 })).await;
        let (rss_after, _) = bench.memory();
        println!("{wait} s after they left: server RSS {rss_after:.0} MiB");
    }
    let after = honest(&bench, &admin, rounds).await;
    let (rss_end, peak_end) = bench.memory();
    println!(
        "after: honest {}; server RSS {rss_end:.0} MiB; peak over the run {:.0} MiB; load {}",
        show(&after),
        peak.max(peak_end),
        load_average()
    );
}
