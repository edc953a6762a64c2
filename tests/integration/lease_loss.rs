//! A job must never lose an attempt to a lease its worker never received,
//! or could not extend because the server or its database was slow or away.
//!
//! The load of issue 13 point 11: short leases, two replicas on one
//! database, one honest worker per replica (capacity 32, a heartbeat every
//! interval naming the jobs it is running, each job finished within a few
//! milliseconds of its arrival), thousands of jobs enqueued first. Without a
//! fault nothing may be lost; with the database cut mid-drain for longer
//! than a lease, nothing may fail.
//!
//! The other side of that bargain: a worker that hands back everything it
//! gets cannot keep a job alive, or the queue spinning, for free.

use crate::common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use automation_control_plane::proto::automation_v1::{
    self as pb, work_request::Kind as Out, work_response::Kind as In,
};
use common::{
    JobServiceClient, TestApp, TestOptions, authed, new_job,
    worker::{hello, json_value, open_raw},
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What the workers saw.
#[derive(Default, Debug)]
struct Tally {
    /// Assignments received, per job.
    assigned: HashMap<String, usize>,
    accepted: usize,
    /// Reasons of refused reports.
    refused: Vec<String>,
    /// Cancellations received (all lease losses, in these runs).
    cancelled: usize,
    /// Streams the workers had to open again.
    reconnects: usize,
}

/// One honest worker on `app`: reconnects whenever its stream ends, runs
/// each job as `style` says, and every heartbeat interval in which it runs
/// something sends a heartbeat (as the SDKs do: one running nothing says
/// nothing), until `stop`.
async fn honest_worker(
    app: Arc<TestApp>,
    style: Style,
    token: String,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) {
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            tally.lock().unwrap().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        first = false;
        let opened = open_raw(
            app.channel().await,
            &token,
            pb::WorkRequest {
                kind: Some(Out::Hello(hello(32))),
            },
        )
        .await;
        let Ok((tx, mut rx)) = opened else { continue };
        let mut every = Duration::from_secs(1);
        let mut received = 0usize;
        let running: Arc<Mutex<HashSet<(String, i32)>>> = Arc::default();
        let mut heartbeat = tokio::time::interval(every);
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                _ = heartbeat.tick() => {
                    // Like the SDKs: a worker running nothing says nothing.
                    if running.lock().unwrap().is_empty() {
                        continue;
                    }
                    let jobs = if !style.names { Vec::new() } else { running
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(job_id, attempt)| pb::JobLeaseRef {
                            job_id: job_id.clone(),
                            attempt: *attempt,
                        })
                        .collect() };
                    let beat = pb::WorkRequest {
                        kind: Some(Out::Heartbeat(pb::WorkerHeartbeat { jobs })),
                    };
                    if tx.send(beat).await.is_err() {
                        break;
                    }
                    continue;
                }
                message = rx.message() => message,
            };
            let kind = match message {
                Ok(Some(message)) => message.kind,
                Ok(None) | Err(_) => break,
            };
            match kind {
                Some(In::Welcome(welcome)) => {
                    if let Some(interval) = welcome.heartbeat_interval {
                        every = Duration::new(interval.seconds as u64, interval.nanos as u32);
                        heartbeat = tokio::time::interval(every);
                    }
                }
                Some(In::Assignment(assignment)) => {
                    let job_id = assignment.job.as_ref().expect("job").id.clone();
                    *tally
                        .lock()
                        .unwrap()
                        .assigned
                        .entry(job_id.clone())
                        .or_default() += 1;
                    let lease = (job_id, assignment.attempt);
                    running.lock().unwrap().insert(lease.clone());
                    let (tx, running) = (tx.clone(), running.clone());
                    received += 1;
                    let work = if style.long_every > 0 && received % style.long_every == 0 {
                        Duration::from_millis(style.long_ms)
                    } else {
                        Duration::from_millis(rand::random_range(0..=style.work_ms))
                    };
                    tokio::spawn(async move {
                        if !work.is_zero() {
                            tokio::time::sleep(work).await;
                        }
                        running.lock().unwrap().remove(&lease);
                        let completion = pb::WorkRequest {
                            kind: Some(Out::Completion(pb::JobCompletion {
                                lease: Some(pb::JobLeaseRef {
                                    job_id: lease.0,
                                    attempt: lease.1,
                                }),
                                result: Some(json_value(json!("done"))),
                            })),
                        };
                        let _ = tx.send(completion).await;
                    });
                }
                Some(In::Ack(ack)) => {
                    let mut tally = tally.lock().unwrap();
                    if ack.accepted {
                        tally.accepted += 1;
                    } else {
                        tally.refused.push(ack.reason);
                    }
                }
                Some(In::Cancellation(_)) => tally.lock().unwrap().cancelled += 1,
                Some(_) | None => {}
            }
        }
    }
}

/// How a worker heartbeats and works.
#[derive(Clone, Copy, Debug)]
struct Style {
    /// Heartbeats name the jobs running (else they name none: all).
    names: bool,
    /// Longest a job runs, in milliseconds (0: reported as it arrives).
    work_ms: u64,
    /// Every n-th job (0: none) runs for `long_ms` instead.
    long_every: usize,
    long_ms: u64,
}

impl Style {
    /// Reports each job as it arrives; heartbeats name nothing.
    const AT_ONCE: Self = Self {
        names: false,
        work_ms: 0,
        long_every: 0,
        long_ms: 0,
    };
    /// Runs each job a few milliseconds, one in 25 for two seconds;
    /// heartbeats name the jobs running.
    const MIXED: Self = Self {
        names: true,
        work_ms: 15,
        long_every: 25,
        long_ms: 2_000,
    };
}

/// Enqueues `total` jobs, 1,000 per call.
async fn enqueue(app: &TestApp, token: &str, total: usize) {
    let mut client = JobServiceClient::new(app.channel().await);
    let mut made = 0;
    while made < total {
        let n = (total - made).min(1000);
        let requests = (made..made + n)
            .map(|i| new_job("lease.loss", json!({ "i": i })))
            .collect();
        client
            .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
            .await
            .expect("batch");
        made += n;
    }
}

#[derive(diesel::QueryableByName, Debug, Default, Clone, Copy)]
struct Counts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    open: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    completed: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed: i64,
    /// Jobs whose lease was taken from them at least once.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    lease_lost: i64,
    /// Attempts beyond the first, over all jobs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    extra_attempts: i64,
}

async fn counts(app: &TestApp) -> Counts {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        r#"SELECT count(*) FILTER (WHERE status IN ('PENDING', 'RUNNING')) AS open,
                  count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                  count(*) FILTER (WHERE status = 'FAILED') AS failed,
                  count(*) FILTER (WHERE error->>'cause' = 'lease_lost') AS lease_lost,
                  COALESCE(sum(GREATEST(attempts - 1, 0)), 0)::bigint AS extra_attempts
           FROM jobs WHERE name = 'lease.loss'"#,
    )
    .get_result(&mut conn)
    .await
    .expect("counts")
}

/// Waits until no job is pending or running (or `within` passes).
async fn drained(app: &TestApp, within: Duration) -> Counts {
    let started = Instant::now();
    loop {
        let counts = counts(app).await;
        if counts.open == 0 || started.elapsed() > within {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn short_leases(lease: Duration) -> TestOptions {
    let mut options = TestOptions::default();
    options.jobs.lease = lease;
    // A database on another host, a millisecond away.
    options.db_latency = Duration::from_millis(1);
    options
}

/// Drains `total` jobs on two replicas of one database, each with one
/// worker working as `styles` say; returns what the queue and the workers
/// saw.
async fn drain_on_two_replicas(
    total: usize,
    options: TestOptions,
    styles: [Style; 2],
    within: Duration,
) -> (Counts, Tally) {
    let a = Arc::new(TestApp::spawn_with(options.clone()).await);
    let b = Arc::new(a.replica(options).await);
    let token = a.admin_token().await;
    enqueue(&a, &token, total).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let workers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .zip(styles)
        .map(|(app, style)| {
            tokio::spawn(honest_worker(
                app,
                style,
                token.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let counts = drained(&a, within).await;
    stop.cancel();
    for worker in workers {
        worker.await.expect("worker");
    }
    for app in [b, a] {
        Arc::into_inner(app).expect("the only handle").stop().await;
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    (counts, tally)
}

/// Prints what a run saw and asserts that every job ran once, completed.
fn assert_nothing_lost(run: &str, total: usize, counts: Counts, tally: &Tally) {
    let redelivered = tally.assigned.values().filter(|n| **n > 1).count();
    eprintln!(
        "{run}: {counts:?}; delivered {} jobs, {redelivered} more than once; {} accepted, {} \
         refused, {} cancellations, {} reconnects; first refusals: {:?}",
        tally.assigned.len(),
        tally.accepted,
        tally.refused.len(),
        tally.cancelled,
        tally.reconnects,
        tally.refused.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(counts.open, 0, "the queue drained: {counts:?}");
    assert_eq!(counts.failed, 0, "no job failed: {counts:?}");
    assert_eq!(counts.completed, total as i64);
    assert_eq!(counts.lease_lost, 0, "no lease was lost: {counts:?}");
    assert_eq!(counts.extra_attempts, 0, "every job ran once: {counts:?}");
    assert!(tally.refused.is_empty(), "no report refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_leases_under_real_load_lose_no_attempt() {
    let total = 4_000;
    // One worker names what it runs in its heartbeats, some jobs long; the
    // other reports each job as it comes and says nothing.
    let (counts, tally) = drain_on_two_replicas(
        total,
        short_leases(Duration::from_secs(3)),
        [Style::MIXED, Style::AT_ONCE],
        Duration::from_secs(50),
    )
    .await;
    assert_nothing_lost("short leases, two replicas", total, counts, &tally);
}

#[tokio::test]
async fn an_assignment_read_late_keeps_its_lease() {
    // A worker busy elsewhere reads its stream late: its assignments wait
    // in its connection's buffers, and it runs nothing, so (like the SDKs)
    // it sends no heartbeat. Its leases are not its own to keep yet.
    let app = TestApp::spawn_with(short_leases(Duration::from_secs(3))).await;
    let token = app.admin_token().await;
    let mut worker = app.worker(2).await;
    let mut jobs = Vec::new();
    for i in 0..2 {
        jobs.push(
            app.create_job(&token, new_job("read.late", json!({ "i": i })))
                .await
                .id,
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut assignments = Vec::new();
    for _ in 0..2 {
        let assignment = worker.assignment().await;
        assert_eq!(assignment.attempt, 1);
        assignments.push(assignment);
    }
    for assignment in &assignments {
        worker.complete(assignment, json!("late but done")).await;
    }
    for _ in 0..2 {
        let ack = worker.ack().await;
        assert!(ack.accepted, "the lease outlived the wait: {ack:?}");
    }
    for id in &jobs {
        let job = app.job(&token, id).await;
        assert_eq!(job.status(), pb::JobStatus::Completed);
        assert_eq!(job.attempts, 1);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_drain_fails_no_job() {
    let total = 2_000;
    let lease = Duration::from_secs(3);
    let app = Arc::new(
        TestApp::spawn_with(TestOptions {
            through_proxy: true,
            acquire_timeout: Duration::from_millis(500),
            ..short_leases(lease)
        })
        .await,
    );
    let token = app.admin_token().await;
    enqueue(&app, &token, total).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let worker = tokio::spawn(honest_worker(
        app.clone(),
        // Long jobs outlast the outage, so the heartbeats name them all along.
        Style {
            long_ms: 8_000,
            ..Style::MIXED
        },
        token.clone(),
        tally.clone(),
        stop.clone(),
    ));
    // Mid-drain, the database goes away for longer than a lease.
    loop {
        let counts = counts(&app).await;
        if counts.completed >= (total / 4) as i64 || counts.open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = app.proxy.as_ref().expect("proxy");
    proxy.cut();
    let outage: u64 = std::env::var("LEASE_LOSS_OUTAGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_300);
    tokio::time::sleep(Duration::from_millis(outage)).await;
    proxy.restore();
    let counts = drained(&app, Duration::from_secs(45)).await;
    stop.cancel();
    worker.await.expect("worker");
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let redelivered = tally.assigned.values().filter(|n| **n > 1).count();
    eprintln!(
        "database outage: {counts:?}; delivered {} jobs, {redelivered} more than once; {} \
         accepted, {} refused, {} cancellations, {} reconnects; first refusals: {:?}",
        tally.assigned.len(),
        tally.accepted,
        tally.refused.len(),
        tally.cancelled,
        tally.reconnects,
        tally.refused.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(counts.open, 0, "the queue drained: {counts:?}");
    assert_eq!(counts.failed, 0, "no job failed: {counts:?}");
    assert_eq!(counts.completed, total as i64);
    // What the worker finished while the database was away was not lost
    // meanwhile, nor what it still ran.
    assert_eq!(counts.lease_lost, 0, "no lease was lost: {counts:?}");
    assert_eq!(counts.extra_attempts, 0, "every job ran once: {counts:?}");
    assert!(tally.refused.is_empty(), "no report refused");
    Arc::into_inner(app).expect("the only handle").stop().await;
}

/// Behind the server's back, holds the row of every running job for
/// `hold`, every `every`, until `stop`: a database stalled by a long
/// transaction (a deadlock waiting out its timeout, a migration, a
/// vacuum), so that each heartbeat and report waits on it.
async fn stall_running_rows(
    app: Arc<TestApp>,
    hold: Duration,
    every: Duration,
    stop: CancellationToken,
) -> usize {
    use diesel_async::SimpleAsyncConnection as _;
    let mut stalls = 0;
    let mut conn = app.pool.get().await.expect("connection");
    loop {
        if stop.is_cancelled() {
            return stalls;
        }
        conn.batch_execute(
            "BEGIN; SELECT id FROM jobs WHERE status = 'RUNNING' ORDER BY id FOR UPDATE",
        )
        .await
        .expect("lock");
        tokio::time::sleep(hold).await;
        conn.batch_execute("COMMIT").await.expect("commit");
        stalls += 1;
        tokio::select! {
            () = stop.cancelled() => return stalls,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_database_costs_no_attempt() {
    let total = 3_000;
    let lease = Duration::from_secs(3);
    let a = Arc::new(TestApp::spawn_with(short_leases(lease)).await);
    let b = Arc::new(a.replica(short_leases(lease)).await);
    let token = a.admin_token().await;
    enqueue(&a, &token, total).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let workers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .zip([Style::MIXED, Style::AT_ONCE])
        .map(|(app, style)| {
            tokio::spawn(honest_worker(
                app,
                style,
                token.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let stalls = tokio::spawn(stall_running_rows(
        a.clone(),
        Duration::from_millis(
            std::env::var("LEASE_LOSS_HOLD_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2_000),
        ),
        Duration::from_millis(500),
        stop.clone(),
    ));
    let counts = drained(&a, Duration::from_secs(50)).await;
    stop.cancel();
    let stalls = stalls.await.expect("stalls");
    for worker in workers {
        worker.await.expect("worker");
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let redelivered = tally.assigned.values().filter(|n| **n > 1).count();
    eprintln!(
        "stalling database ({stalls} stalls): {counts:?}; delivered {} jobs, {redelivered} more \
         than once; {} accepted, {} refused, {} cancellations, {} reconnects; first refusals: {:?}",
        tally.assigned.len(),
        tally.accepted,
        tally.refused.len(),
        tally.cancelled,
        tally.reconnects,
        tally.refused.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(counts.open, 0, "the queue drained: {counts:?}");
    assert_eq!(counts.failed, 0, "no job failed: {counts:?}");
    assert_eq!(counts.lease_lost, 0, "no lease was lost: {counts:?}");
    assert_eq!(counts.extra_attempts, 0, "every job ran once: {counts:?}");
    for app in [b, a] {
        Arc::into_inner(app).expect("the only handle").stop().await;
    }
}

#[tokio::test]
async fn leases_of_a_worker_gone_while_the_database_was_away_come_back_with_it() {
    // Long leases: only the stream's own hand-back can bring the jobs back
    // within the test.
    let app = TestApp::spawn_with(TestOptions {
        through_proxy: true,
        acquire_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;
    let token = app.admin_token().await;
    let mut worker = app.worker(2).await;
    let mut jobs = Vec::new();
    for i in 0..2 {
        jobs.push(
            app.create_job(&token, new_job("gone.in.the.dark", json!({ "i": i })))
                .await
                .id,
        );
    }
    for _ in 0..2 {
        worker.assignment().await;
    }
    let proxy = app.proxy.as_ref().expect("proxy");
    proxy.cut();
    // The worker leaves while its server cannot write that it did.
    drop(worker.close());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.restore();
    let mut back = 0;
    for _ in 0..100 {
        back = 0;
        for id in &jobs {
            if app.job(&token, id).await.status() == pb::JobStatus::Pending {
                back += 1;
            }
        }
        if back == jobs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        back,
        jobs.len(),
        "the jobs came back once the database did, not when their 30 s leases end"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_costs_no_attempt() {
    let app = TestApp::spawn_with(TestOptions {
        through_proxy: true,
        acquire_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;
    let token = app.admin_token().await;
    // Not runnable for an hour: no claim takes it meanwhile.
    let mut request = new_job("lost.claim", json!({}));
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    request.schedule_time = Some(prost_types::Timestamp {
        seconds: in_an_hour as i64,
        nanos: 0,
    });
    let job = app.create_job(&token, request).await;
    let mut worker = app.worker(2).await;
    let stream: uuid::Uuid = worker.welcome.session_id.parse().expect("stream id");
    // What a claim leaves whose answer never came back (its connection
    // died after the commit): the job leased to a stream that knows
    // nothing of it, for an hour.
    {
        let mut conn = app.pool.get().await.expect("connection");
        let changed = diesel::sql_query(
            r#"UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1,
                   "leasedBy" = $1, "workerId" = 'test-worker', "startedAt" = LOCALTIMESTAMP,
                   "leaseExpiresAt" = LOCALTIMESTAMP + interval '1 hour',
                   "scheduledAt" = LOCALTIMESTAMP
               WHERE id = $2"#,
        )
        .bind::<diesel::sql_types::Uuid, _>(stream)
        .bind::<diesel::sql_types::Uuid, _>(job.id.parse::<uuid::Uuid>().expect("job id"))
        .execute(&mut conn)
        .await
        .expect("lease behind the server's back");
        assert_eq!(changed, 1);
    }
    // The server's next claim fails: the database is away while the
    // stream has room.
    let proxy = app.proxy.as_ref().expect("proxy");
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    proxy.restore();
    // The job goes back as never leased and reaches the worker as its
    // first attempt, not an hour later as its second.
    let assignment = worker.assignment().await;
    assert_eq!(
        assignment.job.as_ref().expect("job").id,
        job.id,
        "the job no stream knew of"
    );
    assert_eq!(assignment.attempt, 1, "the lost claim cost no attempt");
    app.stop().await;
}

/// A job's row as a hand-back left it.
#[derive(diesel::QueryableByName, Debug)]
struct Returned {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    free_returns: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    error: Option<serde_json::Value>,
}

/// A broken (or hostile) worker releasing the same job every time it gets
/// it: the first `FREE_RETURNS` releases are free, each put off by a
/// growing delay (never runnable again at once: no claim/release hot
/// loop); after them every release spends an attempt, and the job ends
/// FAILED, saying why, once its budget is spent.
#[tokio::test]
async fn a_job_released_over_and_over_ends_failed() {
    use automation_control_plane::domain::jobs::FREE_RETURNS;
    const MAX_ATTEMPTS: i32 = 2;
    let mut options = TestOptions::default();
    options.jobs.release_delay_base = Duration::from_millis(1);
    options.jobs.release_delay_cap = Duration::from_millis(40);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: MAX_ATTEMPTS,
                ..new_job("release.loop", json!({}))
            },
        )
        .await;
    let id: uuid::Uuid = job.id.parse().expect("job id");
    let mut worker = app.worker(1).await;
    // Microseconds of a database timestamp.
    let micros = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().expect("timestamp");
        t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
    };
    let mut releases = 0;
    let mut previous_start = None;
    let last = loop {
        let assignment = worker.assignment().await;
        let leased = assignment.job.as_ref().expect("job");
        assert_eq!(leased.id, job.id);
        assert_eq!(assignment.attempt, releases + 1, "attempt numbers go up");
        // Spaced: the release after the previous attempt started put the
        // job off by base · 2^(earlier releases), capped; and no claim takes
        // it before then. (Both read on the database's clock.)
        let (scheduled, started) = (micros(&leased.schedule_time), micros(&leased.start_time));
        assert!(started >= scheduled, "claimed before its schedule");
        if let Some(previous) = previous_start {
            let delay_ms = (1i64 << (releases - 1).min(40)).min(40);
            assert!(
                scheduled - previous >= delay_ms * 1_000,
                "release {releases} put the job off by less than {delay_ms} ms"
            );
        }
        previous_start = Some(started);
        worker
            .send(Out::Release(pb::JobRelease {
                lease: Some(common::worker::lease_of(&assignment)),
                reason: "not today".into(),
            }))
            .await;
        assert!(worker.ack().await.accepted, "release {releases}");
        let mut conn = app.pool.get().await.expect("connection");
        let row: Returned = diesel::sql_query(
            r#"SELECT status::text AS status, "freeReturns" AS free_returns, error
               FROM jobs WHERE id = $1"#,
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_result(&mut conn)
        .await
        .expect("job row");
        releases += 1;
        assert_eq!(row.free_returns, releases);
        if row.status == "FAILED" {
            break row;
        }
        // Back in the queue (or already claimed again).
        assert!(
            matches!(row.status.as_str(), "PENDING" | "RUNNING"),
            "release {releases}: {row:?}"
        );
        // Free ones leave no error; charged ones say why.
        assert_eq!(row.error.is_some(), releases > FREE_RETURNS, "{row:?}");
    };
    assert_eq!(
        releases,
        FREE_RETURNS + MAX_ATTEMPTS,
        "the free returns, then one per attempt of the budget"
    );
    let error = last.error.expect("the failure's error");
    assert_eq!(error["cause"], "handed_back_too_often", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("handed back"),
        "{error}"
    );
    let seen = app.job(&token, &job.id).await;
    assert_eq!(seen.status(), pb::JobStatus::Failed);
    worker.silent_for(Duration::from_millis(300)).await;
    app.stop().await;
}
