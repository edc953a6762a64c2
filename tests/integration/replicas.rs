//! The queue across replicas and failures: several servers on one
//! database, a replica killed with SIGKILL, a replica draining, the
//! database cut and back, a worker host vanishing without closing TCP.

use crate::common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use automation_control_plane::proto::automation_v1::{self as pb, work_response::Kind as In};
use common::{
    JobServiceClient, TestApp, TestOptions, authed, new_job,
    proxy::FreezableProxy,
    worker::{TestWorker, hello, job_id},
};
use serde_json::json;
use tonic::{Code, transport::Endpoint};

fn options_with_lease(lease: Duration) -> TestOptions {
    let mut options = TestOptions::default();
    options.jobs.lease = lease;
    options
}

/// What the workers of a test saw: assignments per job, completions
/// accepted.
#[derive(Default)]
struct Tally {
    assigned: HashMap<String, usize>,
    completed: usize,
}

/// Runs a worker until `total` completions have been accepted over all
/// workers (so no worker leaves holding a job, which would send it to
/// another one).
async fn run_worker(mut worker: TestWorker, tally: Arc<Mutex<Tally>>, total: usize) {
    loop {
        if tally.lock().unwrap().completed >= total {
            return;
        }
        match worker.next_within(Duration::from_millis(200)).await {
            None => continue,
            Some(Ok(Some(In::Assignment(assignment)))) => {
                *tally
                    .lock()
                    .unwrap()
                    .assigned
                    .entry(job_id(&assignment))
                    .or_default() += 1;
                worker.complete(&assignment, json!("ok")).await;
            }
            Some(Ok(Some(In::Ack(ack)))) => {
                assert!(ack.accepted, "{ack:?}");
                tally.lock().unwrap().completed += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_queue_without_double_dispatch() {
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let total = 400;
    let seen = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for app in [&a, &b, &a, &b] {
        let worker = TestWorker::connect(app.channel().await, &token, hello(8))
            .await
            .unwrap();
        workers.push(tokio::spawn(run_worker(worker, seen.clone(), total)));
    }
    let mut client = JobServiceClient::new(a.channel().await);
    for chunk in 0..4 {
        let requests = (0..total / 4)
            .map(|i| new_job("shared", json!({"chunk": chunk, "i": i})))
            .collect();
        client
            .batch_create_jobs(authed(&token, pb::BatchCreateJobsRequest { requests }))
            .await
            .expect("batch");
    }
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("all done in time")
            .expect("worker");
    }
    let assigned = std::mem::take(&mut seen.lock().unwrap().assigned);
    assert_eq!(assigned.len(), total, "every job was delivered");
    assert!(
        assigned.values().all(|n| *n == 1),
        "no job went to two workers"
    );
    let completed = client
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                status: pb::JobStatus::Completed.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .len();
    assert_eq!(completed, total);
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn cancel_and_watch_reach_across_replicas() {
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let job = a.create_job(&token, new_job("far", json!({}))).await;
    let mut watch = JobServiceClient::new(a.channel().await)
        .watch_job(authed(&token, pb::WatchJobRequest { id: job.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().job.unwrap();
    assert_eq!(first.status(), pb::JobStatus::Pending);
    // The worker is on B; the watcher and the cancel on A.
    let mut worker = TestWorker::connect(b.channel().await, &token, hello(1))
        .await
        .unwrap();
    let assignment = worker.assignment().await;
    let running = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .job
        .unwrap();
    assert_eq!(running.status(), pb::JobStatus::Running);
    JobServiceClient::new(a.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: job.id.clone() }))
        .await
        .unwrap();
    let cancellation = worker.cancellation().await;
    assert_eq!(cancellation.cause(), pb::CancellationCause::Cancelled);
    worker.complete(&assignment, json!("late")).await;
    assert!(!worker.ack().await.accepted);
    let last = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .job
        .unwrap();
    assert_eq!(last.status(), pb::JobStatus::Cancelled);
    b.stop().await;
    a.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, serving the test database.
fn spawn_replica_process(database_url: &str, listen: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .env("LISTEN_ADDR", listen)
        .env("JOB_LEASE_SECS", "2")
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a replica")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_loses_no_job() {
    let a = TestApp::spawn_with(options_with_lease(Duration::from_secs(2))).await;
    let token = a.admin_token().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = spawn_replica_process(&a.db.url(), &listen);
    let channel = {
        let mut connected = None;
        for _ in 0..300 {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{listen}"))
                .unwrap()
                .connect()
                .await
            {
                connected = Some(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        connected.expect("the replica serves")
    };
    let mut doomed = TestWorker::connect(channel, &token, hello(3))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(
            a.create_job(&token, new_job("survivor", json!({"i": i})))
                .await
                .id,
        );
    }
    for _ in 0..3 {
        doomed.assignment().await;
    }
    // The replica dies mid-work, without a word.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // Its leases expire and the jobs come to a worker of the other replica.
    let mut rescuer = TestWorker::connect(a.channel().await, &token, hello(1))
        .await
        .unwrap();
    let mut rescued = Vec::new();
    for _ in 0..3 {
        let assignment = rescuer.assignment().await;
        assert_eq!(assignment.attempt, 2);
        rescued.push(job_id(&assignment));
        rescuer.complete(&assignment, json!("rescued")).await;
        assert!(rescuer.ack().await.accepted);
    }
    rescued.sort();
    jobs.sort();
    assert_eq!(rescued, jobs);
    for id in &jobs {
        assert_eq!(a.job(&token, id).await.status(), pb::JobStatus::Completed);
    }
    a.stop().await;
}

#[tokio::test]
async fn a_draining_replica_hands_back_what_its_workers_keep() {
    let a = TestApp::spawn().await;
    let mut b = a
        .replica(TestOptions {
            server: automation_control_plane::server::ServerOptions {
                shutdown_grace: Duration::from_millis(2_000),
                ..TestOptions::default().server
            },
            ..TestOptions::default()
        })
        .await;
    let token = a.admin_token().await;
    let mut worker = TestWorker::connect(b.channel().await, &token, hello(2))
        .await
        .unwrap();
    let first = a.create_job(&token, new_job("drain.one", json!({}))).await;
    let second = a.create_job(&token, new_job("drain.two", json!({}))).await;
    let one = worker.assignment().await;
    let two = worker.assignment().await;
    let (finish, keep) = if job_id(&one) == first.id {
        (one, two)
    } else {
        (two, one)
    };
    let stopping = tokio::spawn(async move {
        b.shutdown().await;
        b
    });
    match worker.next().await {
        Ok(Some(In::Drain(drain))) => assert!(drain.deadline.is_some()),
        other => panic!("expected a drain, got {other:?}"),
    }
    // The worker finishes one job and keeps the other past the deadline.
    worker
        .complete(&finish, json!("finished while draining"))
        .await;
    assert!(worker.ack().await.accepted);
    let status = worker.end().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let b = stopping.await.unwrap();
    drop(b);
    assert_eq!(
        a.job(&token, &first.id).await.status(),
        pb::JobStatus::Completed
    );
    let kept = a.job(&token, &second.id).await;
    assert_eq!(
        kept.status(),
        pb::JobStatus::Pending,
        "handed back, not failed"
    );
    let mut next = TestWorker::connect(a.channel().await, &token, hello(1))
        .await
        .unwrap();
    let again = next.assignment().await;
    assert_eq!(job_id(&again), job_id(&keep));
    a.stop().await;
}

#[tokio::test]
async fn a_database_cut_loses_and_sticks_nothing() {
    let app = TestApp::spawn_with(TestOptions {
        through_proxy: true,
        acquire_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;
    let token = app.admin_token().await;
    let mut worker = app.worker(3).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(
            app.create_job(&token, new_job("through.outage", json!({"i": i})))
                .await
                .id,
        );
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(worker.assignment().await);
    }
    let proxy = app.proxy.as_ref().unwrap();
    proxy.cut();
    // The worker finishes during the outage; its reports wait.
    for assignment in &held {
        worker.complete(assignment, json!("done in the dark")).await;
    }
    worker.heartbeat().await;
    worker.silent_for(Duration::from_millis(1_500)).await;
    proxy.restore();
    for _ in 0..3 {
        assert!(worker.ack().await.accepted);
    }
    for id in &jobs {
        assert_eq!(app.job(&token, id).await.status(), pb::JobStatus::Completed);
    }
    // Dispatch picked up again (the LISTEN connection came back too).
    let after = app
        .create_job(&token, new_job("after.outage", json!({})))
        .await;
    assert_eq!(job_id(&worker.assignment().await), after.id);
    app.stop().await;
}

#[tokio::test]
async fn a_vanished_worker_host_is_noticed_within_seconds() {
    let mut options = TestOptions::default();
    options.server.keepalive_interval = Duration::from_millis(500);
    options.server.keepalive_timeout = Duration::from_millis(500);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let proxy = FreezableProxy::start(app.addr).await;
    let channel = Endpoint::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut worker = TestWorker::connect(channel, &token, hello(1))
        .await
        .unwrap();
    let job = app
        .create_job(&token, new_job("host.gone", json!({})))
        .await;
    worker.assignment().await;
    // The host vanishes: no FIN, no RST, nothing.
    proxy.freeze();
    // The lease is 30 s; keepalive notices in about a second.
    let mut back = false;
    for _ in 0..50 {
        if app.job(&token, &job.id).await.status() == pb::JobStatus::Pending {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the job went back to the queue long before its lease ended"
    );
    drop(worker);
    app.stop().await;
}
