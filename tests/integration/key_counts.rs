//! The RUNNING count a concurrency key's row keeps (`concurrency_keys.
//! running`, written by claims and settles themselves and by triggers on
//! `jobs` for every other writer) against the jobs themselves,
//! over real gRPC with real PostgreSQL: with workers on two replicas
//! completing, failing, handing back and dropping their streams while
//! jobs are cancelled under them, every snapshot of the database agrees
//! with a count of the RUNNING rows, and nothing is left counted at the
//! end. (The kill -9 case is `claim_limits::a_replica_killed_with_sigkill_
//! gives_its_slots_back`, which checks the same agreement.)

use crate::common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use automation_control_plane::db::DbPool;
use automation_control_plane::proto::automation_v1::{
    self as pb, work_request::Kind as Out, work_response::Kind as In,
};
use common::{
    JobServiceClient, TestApp, TestOptions, authed, new_job,
    worker::{TestWorker, hello, job_id, lease_of},
};
use serde_json::json;
use tonic::transport::Channel;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many keys disagree with the jobs, in one snapshot: a row whose
/// `running` is not the number of its RUNNING jobs or exceeds its maximum,
/// or a RUNNING keyed job whose key has no row.
pub async fn keys_in_disagreement(pool: &DbPool) -> i64 {
    use diesel_async::RunQueryDsl as _;
    let mut conn = pool.get().await.expect("connection");
    diesel::sql_query(
        r#"SELECT (SELECT count(*) FROM concurrency_keys k
                   WHERE k.running > k.max
                      OR k.running <> (SELECT count(*) FROM jobs j
                                       WHERE j."concurrencyKey" = k.key
                                         AND j.status = 'RUNNING'))
                + (SELECT count(*) FROM jobs j
                   WHERE j.status = 'RUNNING' AND j."concurrencyKey" IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM concurrency_keys k
                                     WHERE k.key = j."concurrencyKey")) AS n"#,
    )
    .get_result::<Count>(&mut conn)
    .await
    .expect("count")
    .n
}

/// Jobs not finished yet.
async fn open_jobs(app: &TestApp) -> i64 {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(r#"SELECT count(*) AS n FROM jobs WHERE status IN ('PENDING', 'RUNNING')"#)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count")
        .n
}

/// A worker that holds what it gets for a turn, then ends each job one of
/// four ways in rotation (complete, fail for good, hand back, or drop the
/// whole stream with what it holds), until `stop`.
async fn churn(channel: Channel, token: String, turns: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let connect = || async {
        TestWorker::connect(channel.clone(), &token, hello(4))
            .await
            .expect("worker connects")
    };
    let mut worker = connect().await;
    let mut held: Vec<pb::JobAssignment> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match worker.next_within(Duration::from_millis(10)).await {
            Some(Ok(Some(In::Assignment(assignment)))) => held.push(assignment),
            Some(Ok(Some(_))) => {}
            Some(Err(_)) | Some(Ok(None)) => {
                held.clear();
                worker = connect().await;
            }
            None => {
                if held.is_empty() {
                    continue;
                }
                let assignment = held.remove(0);
                match turns.fetch_add(1, Ordering::SeqCst) % 9 {
                    0 => worker.fail(&assignment, "broken", true).await,
                    1 => {
                        worker
                            .send(Out::Release(pb::JobRelease {
                                lease: Some(lease_of(&assignment)),
                                reason: "giving it back".into(),
                            }))
                            .await
                    }
                    2 => {
                        // The stream ends with its leases: they are lost.
                        held.clear();
                        worker = connect().await;
                    }
                    3 => {
                        let _ = JobServiceClient::new(channel.clone())
                            .cancel_job(authed(
                                &token,
                                pb::CancelJobRequest {
                                    id: job_id(&assignment),
                                },
                            ))
                            .await;
                    }
                    _ => worker.complete(&assignment, json!(null)).await,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_count_of_a_key_agrees_with_its_jobs_under_racing_replicas() {
    const KEYS: usize = 8;
    const JOBS: usize = 240;
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let requests: Vec<pb::CreateJobRequest> = (0..JOBS)
        .map(|i| pb::CreateJobRequest {
            concurrency_key: format!("racing-{}", i % KEYS),
            concurrency_max: (i % KEYS % 3) as i32 + 1,
            max_attempts: 5,
            ..new_job("racing.job", json!({ "i": i }))
        })
        .collect();
    for chunk in requests.chunks(100) {
        JobServiceClient::new(a.channel().await)
            .batch_create_jobs(authed(
                &token,
                pb::BatchCreateJobsRequest {
                    requests: chunk.to_vec(),
                },
            ))
            .await
            .expect("batch create");
    }
    // A watcher reading the database while the workers race: every
    // snapshot must agree.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, stop) = (a.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut looks, mut worst) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                worst = worst.max(keys_in_disagreement(&pool).await);
                looks += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (looks, worst)
        })
    };
    let turns = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for app in [&a, &b, &a, &b] {
        workers.push(tokio::spawn(churn(
            app.channel().await,
            token.clone(),
            turns.clone(),
            stop.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while open_jobs(&a).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} jobs still open",
            open_jobs(&a).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }
    let (looks, worst) = watcher.await.expect("watcher");
    assert!(looks > 10, "the watcher looked {looks} times");
    assert_eq!(worst, 0, "a snapshot where a key's count disagreed");
    assert_eq!(keys_in_disagreement(&a.pool).await, 0);
    assert!(
        turns.load(Ordering::SeqCst) >= JOBS / 2,
        "the workers ended {} jobs",
        turns.load(Ordering::SeqCst)
    );
    b.stop().await;
    a.stop().await;
}

/// The `running` count and whether the row of `key` exists.
async fn key_row(pool: &DbPool, key: &str) -> Option<i64> {
    use diesel_async::RunQueryDsl as _;
    let mut conn = pool.get().await.expect("connection");
    diesel::sql_query("SELECT running::bigint AS n FROM concurrency_keys WHERE key = $1")
        .bind::<diesel::sql_types::Text, _>(key)
        .get_results::<Count>(&mut conn)
        .await
        .expect("key row")
        .into_iter()
        .next()
        .map(|row| row.n)
}

#[tokio::test]
async fn an_emptied_key_row_is_deleted_and_a_wrong_count_heals() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn_with(TestOptions::default()).await;
    let token = app.admin_token().await;
    let keyed = || pb::CreateJobRequest {
        concurrency_key: "tended".into(),
        concurrency_max: 1,
        ..new_job("tended.job", json!({}))
    };

    // A key whose jobs all finished: its row goes (claims never delete it).
    let mut worker = app.worker(1).await;
    app.create_job(&token, keyed()).await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!("done")).await;
    assert!(worker.ack().await.accepted);
    drop(worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while key_row(&app.pool, "tended").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the emptied key's row is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A count made wrong behind the triggers' back (here by hand) would
    // keep a key of maximum 1 from ever running again: it is recounted.
    app.create_job(&token, keyed()).await;
    assert_eq!(key_row(&app.pool, "tended").await, Some(0));
    {
        let mut conn = app.pool.get().await.expect("connection");
        diesel::sql_query("UPDATE concurrency_keys SET running = 1 WHERE key = 'tended'")
            .execute(&mut conn)
            .await
            .expect("corrupt the count");
    }
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!("healed")).await;
    assert!(worker.ack().await.accepted);
    assert_eq!(keys_in_disagreement(&app.pool).await, 0);
    drop(worker);
    app.stop().await;
}

/// The trigger as the `claim_speed` migration made it, before it learned
/// to stand down for statements that count their keys themselves.
const TRIGGER_BEFORE_STATEMENT_COUNTS: &str = r#"
    CREATE OR REPLACE TRIGGER "jobs_key_running_update"
        AFTER UPDATE OF "status", "concurrencyKey" ON "jobs"
        FOR EACH ROW
        WHEN ((OLD."status" = 'RUNNING' OR NEW."status" = 'RUNNING')
              AND (OLD."concurrencyKey" IS NOT NULL OR NEW."concurrencyKey" IS NOT NULL)
              AND (OLD."status" IS DISTINCT FROM NEW."status"
                   OR OLD."concurrencyKey" IS DISTINCT FROM NEW."concurrencyKey"))
        EXECUTE FUNCTION "concurrency_keys_count_running"()"#;

/// A server on a database whose trigger does not stand down (a schema
/// from before the `statement_counts_keys` migration, as a server started
/// with SKIP_MIGRATIONS finds it, or one migrated down) leaves all the
/// counting to the trigger: claims and settles that counted too would
/// count each job twice, and a key of maximum 2 would stop at one job.
#[tokio::test]
async fn with_an_older_trigger_claims_and_settles_leave_the_counting_to_it() {
    use diesel_async::RunQueryDsl as _;
    let a = TestApp::spawn().await;
    {
        let mut conn = a.pool.get().await.expect("connection");
        diesel::sql_query(TRIGGER_BEFORE_STATEMENT_COUNTS)
            .execute(&mut conn)
            .await
            .expect("the older trigger");
    }
    // A replica started now: its claimer connects after the change.
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    for i in 0..12 {
        a.create_job(
            &token,
            pb::CreateJobRequest {
                concurrency_key: format!("older-{}", i % 3),
                concurrency_max: 2,
                ..new_job("older.job", json!({ "i": i }))
            },
        )
        .await;
    }
    let mut worker = b.worker(16).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(worker.assignment().await);
    }
    // Two running per key, each counted once.
    for key in ["older-0", "older-1", "older-2"] {
        assert_eq!(key_row(&a.pool, key).await, Some(2), "{key}");
    }
    assert_eq!(keys_in_disagreement(&a.pool).await, 0);
    // Each completion frees a slot, which brings the key's next job,
    // possibly before the completion's ack.
    let mut done = 0;
    while done < 12 {
        let assignment = if held.is_empty() {
            worker.assignment().await
        } else {
            held.remove(0)
        };
        worker.complete(&assignment, json!("done")).await;
        loop {
            match worker.next().await {
                Ok(Some(In::Ack(ack))) => {
                    assert!(ack.accepted, "{ack:?}");
                    break;
                }
                Ok(Some(In::Assignment(next))) => held.push(next),
                other => panic!("expected an ack or an assignment, got {other:?}"),
            }
        }
        done += 1;
        assert_eq!(keys_in_disagreement(&a.pool).await, 0, "after {done} jobs");
    }
    assert_eq!(open_jobs(&a).await, 0);
    drop(worker);
    b.stop().await;
    a.stop().await;
}
