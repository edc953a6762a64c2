//! The job queue while one caller abuses its streams, against the same
//! queue alone, in one run on one server (the release binary, durable
//! PostgreSQL, everything on this machine's 2 cores):
//!
//! - hostile Work streams: `BENCH_HOSTILE_STREAMS` (200) streams of one
//!   account asking for 10,000 jobs each, for a job name nobody enqueues,
//!   reading what they get (idle capacity, the cost point 3 of issue 13
//!   measured);
//! - idle watchers: `BENCH_WATCHERS` (10,000) WatchJob streams of the same
//!   account on 100 jobs scheduled for tomorrow;
//! - honest work, measured before and while they are connected: the idle
//!   latency probe (CreateJob returned → worker received) and the drain of
//!   `BENCH_JOBS` (100,000) jobs by 4 workers × 128;
//! - the server's resident memory throughout (peak) and after the hostile
//!   caller left.
//!
//! It runs twice: with the default limits (the hostile caller gets what
//! they let in, the rest is refused with LIMIT_EXCEEDED), and with the
//! limits raised so that every hostile stream and watcher is admitted.
//!
//! Run: `cargo bench --bench hostile`. Results go in BENCHMARKS.md.
//! `BENCH_ONLY=idle` runs the idle fleet of [`idle`] instead.

#[allow(
    dead_code,
    unused_imports,
    reason = "a bench uses a part of the tests' harness"
)]
#[path = "../tests/integration/common/mod.rs"]
mod common;
#[path = "hostile/idle.rs"]
mod idle;
mod support;

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{
    self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
};
use common::{RoleServiceClient, UserServiceClient, authed, new_job};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use support::{Bench, drain, enqueue, latency, start};

/// Streams one HTTP/2 connection carries in this bench (the server allows
/// 256).
const STREAMS_PER_CONNECTION: usize = 200;
const HOSTILE_PASSWORD: &str = "hostile-password-1";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An account holding `jobs:execute` and `jobs:read` only; returns its token.
async fn hostile_account(bench: &Bench, admin: &str) -> String {
    RoleServiceClient::new(bench.channel().await)
        .create_role(authed(
            admin,
            pb::CreateRoleRequest {
                name: "hostile".into(),
                description: String::new(),
                permissions: vec!["jobs:execute".into(), "jobs:read".into()],
            },
        ))
        .await
        .expect("role");
    let mut user = common::new_user("hostile");
    user.password = HOSTILE_PASSWORD.into();
    user.roles = vec!["hostile".into()];
    UserServiceClient::new(bench.channel().await)
        .create_user(authed(admin, user))
        .await
        .expect("user");
    bench.login("hostile", HOSTILE_PASSWORD).await
}

/// What the hostile caller got in, and what was refused.
#[derive(Debug, Default)]
struct Admitted {
    streams: usize,
    watchers: usize,
    refused_streams: usize,
    refused_watchers: usize,
    /// Reasons of the refusals, as the ErrorInfo's `limit` says.
    limits: std::collections::BTreeSet<String>,
}

fn limit_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get("limit").cloned())
        .unwrap_or_else(|| format!("{:?}", status.code()))
}

/// Connections for `count` streams.
async fn connections(bench: &Bench, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        channels.push(bench.channel().await);
    }
    channels
}

/// Opens the hostile streams and watchers; they stay open (each read by a
/// task of `tasks`) until the set is dropped.
async fn open_hostile(
    bench: &Bench,
    token: &str,
    admin: &str,
    streams: usize,
    watchers: usize,
    tasks: &mut JoinSet<()>,
) -> Admitted {
    let mut admitted = Admitted::default();
    let channels = connections(bench, streams).await;
    for i in 0..streams {
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::WorkRequest {
            kind: Some(Out::Hello(pb::WorkerHello {
                worker_id: format!("hostile-{i}"),
                job_names: vec!["hostile.never-enqueued".into()],
                module_names: vec![],
                max_concurrency: 10_000,
            })),
        })
        .await
        .unwrap();
        let mut client = JobServiceClient::new(channels[i / STREAMS_PER_CONNECTION].clone());
        let opened = client.work(authed(token, ReceiverStream::new(rx))).await;
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                admitted.refused_streams += 1;
                admitted.limits.insert(limit_of(&status));
                continue;
            }
        };
        // The welcome, or the refusal (refusals after the call opened).
        match inbound.message().await {
            Ok(Some(_)) => admitted.streams += 1,
            Ok(None) => admitted.refused_streams += 1,
            Err(status) => {
                admitted.refused_streams += 1;
                admitted.limits.insert(limit_of(&status));
                continue;
            }
        }
        tasks.spawn(async move {
            let _keep = tx;
            while let Ok(Some(_)) = inbound.message().await {}
        });
    }

    // Jobs to watch, due tomorrow so that nothing changes them.
    let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let mut jobs = Vec::new();
    let mut client = JobServiceClient::new(bench.channel().await);
    for _ in 0..100 {
        let mut request = new_job("hostile.watched", serde_json::json!({}));
        request.schedule_time = Some(prost_types::Timestamp::from(tomorrow));
        let job = client
            .create_job(authed(admin, request))
            .await
            .expect("job")
            .into_inner()
            .job
            .expect("job");
        jobs.push(job.id);
    }
    let channels = connections(bench, watchers).await;
    for i in 0..watchers {
        let mut client = JobServiceClient::new(channels[i / STREAMS_PER_CONNECTION].clone());
        let request = pb::WatchJobRequest {
            id: jobs[i % jobs.len()].clone(),
        };
        let mut stream = match client.watch_job(authed(token, request)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                admitted.refused_watchers += 1;
                admitted.limits.insert(limit_of(&status));
                continue;
            }
        };
        match stream.message().await {
            Ok(Some(_)) => admitted.watchers += 1,
            Ok(None) => admitted.refused_watchers += 1,
            Err(status) => {
                admitted.refused_watchers += 1;
                admitted.limits.insert(limit_of(&status));
                continue;
            }
        }
        tasks.spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    }
    admitted
}

/// One configuration: the honest numbers alone, then beside the hostile
/// caller.
async fn run(label: &str, server_env: &[(&str, String)]) {
    let jobs = setting("BENCH_JOBS", 100_000);
    let streams = setting("BENCH_HOSTILE_STREAMS", 200);
    let watchers = setting("BENCH_WATCHERS", 10_000);
    let rounds = setting("BENCH_ROUNDS", 1_000);
    let bench = start(server_env).await;
    let admin = bench.token().await;
    let hostile = hostile_account(&bench, &admin).await;

    println!("== {label}");
    let alone = latency(&bench, &admin, rounds).await;
    enqueue(&bench, &admin, jobs).await;
    let alone_rate = drain(&bench, &admin, jobs, 4, 128).await;
    let (rss_alone, _) = bench.memory();
    println!("alone: {alone}");
    println!("alone: drained {jobs} jobs at {alone_rate:.0} jobs/s; server RSS {rss_alone:.0} MiB");

    let mut tasks = JoinSet::new();
    let admitted = open_hostile(&bench, &hostile, &admin, streams, watchers, &mut tasks).await;
    let (rss_open, _) = bench.memory();
    println!(
        "hostile caller: {} of {streams} Work streams × 10,000 admitted ({} refused), {} of \
         {watchers} watchers admitted ({} refused); refusals name {:?}; server RSS {rss_open:.0} MiB",
        admitted.streams,
        admitted.refused_streams,
        admitted.watchers,
        admitted.refused_watchers,
        admitted.limits,
    );
    let beside = latency(&bench, &admin, rounds).await;
    enqueue(&bench, &admin, jobs).await;
    let beside_rate = drain(&bench, &admin, jobs, 4, 128).await;
    let (rss_beside, peak) = bench.memory();
    println!("beside the hostile caller: {beside}");
    println!(
        "beside the hostile caller: drained {jobs} jobs at {beside_rate:.0} jobs/s ({:.2}× \
         alone); server RSS {rss_beside:.0} MiB",
        beside_rate / alone_rate
    );
    tasks.shutdown().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_after, peak_after) = bench.memory();
    println!(
        "after the hostile caller left: server RSS {rss_after:.0} MiB; peak over the run \
         {:.0} MiB",
        peak.max(peak_after)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if std::env::var("BENCH_ONLY").as_deref() == Ok("idle") {
            idle::run().await;
            return;
        }
        if std::env::var("BENCH_ONLY").as_deref() != Ok("raised") {
            run("default limits", &[]).await;
        }
        if std::env::var("BENCH_ONLY").as_deref() != Ok("default") {
            run(
                "limits raised to admit every hostile stream and watcher",
                &[
                    ("WORK_STREAMS_PER_CALLER", "100000".into()),
                    ("WORK_CAPACITY_PER_STREAM", "10000".into()),
                    ("WORK_CAPACITY_PER_CALLER", "10000000".into()),
                    ("WORK_CAPACITY_PER_REPLICA", "10000000".into()),
                    ("WATCHES_PER_CALLER", "1000000".into()),
                    ("WATCHES_PER_REPLICA", "1000000".into()),
                ],
            )
            .await;
        }
    });
}
