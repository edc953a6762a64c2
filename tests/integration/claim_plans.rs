//! The claim's plan when the queue's statistics describe another queue.
//!
//! The claimer plans each claim statement once and keeps the plan
//! (`store::jobs::CLAIM_SESSION_SETTINGS`); it is planned again whenever
//! `jobs` is analysed. A queue is analysed at any moment: when autovacuum
//! samples it while nothing is pending, its statistics say that
//! `status = 'PENDING'` matches no row, and `jobs_status_idx` (the seed
//! schema's index on the status alone) looks like the cheapest way to every
//! pending job. A claim that walked it once per key re-read every pending
//! job for each key it served: the job bench's keyed drain fell from
//! 12,700 to 1,700 jobs/s after a `VACUUM ANALYZE` of the drained table
//! (BENCHMARKS.md, issue 15, run 13). These tests analyse the table in that
//! state, fill it, and read the plans the claimer and the key tending
//! would run.

use crate::common;

use automation_control_plane::{
    proto::automation_v1 as pb,
    store::jobs::{
        ANYTHING_RUNNABLE, CLAIM_SESSION_SETTINGS, ClaimFilter, FORGET_EMPTIED, NAMES_WITH_WORK,
        PENDING_NAMES, PROBE_SETTINGS, RECOUNT_RUNNING, full_claim_sql,
    },
};
use common::{JobServiceClient, TestApp, authed, new_job};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _, SimpleAsyncConnection as _};
use serde_json::json;

async fn create_all(app: &TestApp, token: &str, requests: Vec<pb::CreateJobRequest>) {
    JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
        .await
        .expect("batch create");
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The plan of `statement` prepared with `types` on a connection of its
/// own after `setup` (its session settings), for `values`: planned, not
/// run.
async fn plan_of(
    app: &TestApp,
    setup: &str,
    (statement, types): (&str, &str),
    values: &str,
) -> String {
    let mut conn = diesel_async::AsyncPgConnection::establish(&app.db.url())
        .await
        .expect("connect");
    conn.batch_execute(&format!("{setup}; PREPARE planned{types} AS {statement}"))
        .await
        .expect("prepare");
    let plan: Vec<Line> = diesel::sql_query(format!("EXPLAIN (COSTS OFF) EXECUTE planned{values}"))
        .load(&mut conn)
        .await
        .expect("explain");
    plan.into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The plan the claimer keeps for a claim of `filter`: the statement
/// prepared on a connection with the claimer's settings, its generic plan.
async fn kept_plan(app: &TestApp, filter: &ClaimFilter) -> String {
    plan_of(
        app,
        CLAIM_SESSION_SETTINGS,
        (
            &full_claim_sql(filter),
            "(text[], text[], bigint, uuid[], text[], interval, text, int[], bool, bigint, uuid, \
             text)",
        ),
        "(ARRAY['plan.keyed', 'plan.limited'], '{}', 128, ARRAY[gen_random_uuid()], \
         ARRAY['worker'], '30 seconds', 'job_changes', array_fill(0, ARRAY[128]), false, 100, \
         gen_random_uuid(), '')",
    )
    .await
}

/// A server whose `jobs` was analysed while it held 50,000 finished jobs
/// and nothing pending, then filled with jobs its statistics know nothing
/// of: 10,000 over 100 keys of one slot each, and 500 behind a bucket.
async fn analysed_before_the_flood() -> TestApp {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // A queue that has run 50,000 jobs and holds nothing pending, analysed
    // in that state; and not analysed again by autovacuum during the test.
    {
        let mut conn = app.pool.get().await.expect("connection");
        conn.batch_execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
            .await
            .expect("autovacuum off");
        conn.batch_execute(
            r#"INSERT INTO jobs (id, name, status, priority, payload, result, attempts,
                   "maxAttempts", "scheduledAt", "startedAt", "completedAt", "createdAt",
                   "updatedAt", "concurrencyKey")
               SELECT gen_random_uuid(), 'plan.done', 'COMPLETED', 0, '{}', 'true', 1, 3,
                      now(), now(), now(), now(), now(),
                      CASE WHEN i % 2 = 0 THEN 'customer-' || (i % 100) END
               FROM generate_series(1, 50000) AS i"#,
        )
        .await
        .expect("finished jobs");
        conn.batch_execute("VACUUM ANALYZE jobs")
            .await
            .expect("analyse");
    }
    // Then the flood.
    JobServiceClient::new(app.channel().await)
        .put_rate_limit(authed(
            &token,
            pb::PutRateLimitRequest {
                rate_limit: Some(pb::RateLimit {
                    name: "plan-bucket".into(),
                    units: 10,
                    interval: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    burst: 10,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("bucket");
    for batch in 0..10 {
        let requests = (0..1000)
            .map(|i| pb::CreateJobRequest {
                concurrency_key: format!("customer-{}", i % 100),
                concurrency_max: 1,
                ..new_job("plan.keyed", json!({ "batch": batch, "i": i }))
            })
            .collect();
        create_all(&app, &token, requests).await;
    }
    let requests = (0..500)
        .map(|i| pb::CreateJobRequest {
            rate_limit: "plan-bucket".into(),
            ..new_job("plan.limited", json!({ "i": i }))
        })
        .collect();
    create_all(&app, &token, requests).await;
    app
}

#[tokio::test]
async fn claims_keep_to_their_indexes_when_the_statistics_saw_nothing_pending() {
    let app = analysed_before_the_flood().await;
    for filter in [
        ClaimFilter::default(),
        ClaimFilter {
            names: vec!["plan.keyed".into(), "plan.limited".into()],
            ..ClaimFilter::default()
        },
        ClaimFilter {
            modules: vec!["plan-module".into()],
            ..ClaimFilter::default()
        },
        ClaimFilter {
            plain_only: true,
            ..ClaimFilter::default()
        },
    ] {
        let plan = kept_plan(&app, &filter).await;
        eprintln!("{plan}");
        // Every pending job is reached through the index of its lane (or
        // its primary key), never by walking all that are pending.
        assert!(
            !plan.contains("jobs_status_idx"),
            "a lane walks every pending job ({filter:?}):\n{plan}"
        );
        for index in ["jobs_dispatch_key_idx", "jobs_dispatch_rate_idx"] {
            assert!(plan.contains(index), "no {index} ({filter:?}):\n{plan}");
        }
        // The jobs picked from the keys' and the buckets' indexes, and the
        // lease itself: each reached by its primary key.
        assert_eq!(
            plan.matches("Index Scan using jobs_pkey on jobs").count(),
            3,
            "({filter:?}):\n{plan}"
        );
    }
}

/// The plan of `statement` (one `text[]` parameter) for `keys`, as a
/// pooled connection plans it.
async fn plan_for_keys(app: &TestApp, statement: &str, keys: &[String]) -> String {
    // EXPLAIN takes no parameters: the keys (the test's own) are written in.
    let keys: Vec<String> = keys.iter().map(|key| format!("'{key}'")).collect();
    plan_of(
        app,
        "",
        (statement, "(text[])"),
        &format!("(ARRAY[{}])", keys.join(", ")),
    )
    .await
}

#[tokio::test]
async fn key_tending_stays_bounded_when_the_statistics_saw_nothing_pending() {
    let app = analysed_before_the_flood().await;
    let keys: Vec<String> = (0..100).map(|i| format!("customer-{i}")).collect();
    // The count of each key's running jobs: one grouped pass over the
    // running jobs of all the keys, not a walk per key.
    let recount = plan_for_keys(&app, RECOUNT_RUNNING, &keys).await;
    eprintln!("{recount}");
    assert!(recount.contains("Aggregate"), "{recount}");
    assert!(!recount.contains("SubPlan"), "a count per key:\n{recount}");
    // Whether a key still has an open job: a probe of the key's own index,
    // never a walk of every pending job.
    let forget = plan_for_keys(&app, FORGET_EMPTIED, &keys).await;
    eprintln!("{forget}");
    assert!(forget.contains("jobs_key_open_idx"), "{forget}");
    assert!(
        !forget.contains("jobs_status_idx"),
        "every open job walked:\n{forget}"
    );
}

/// The plan of a probe, in a transaction with the probes' settings as
/// the dispatcher runs them.
async fn probe_plan(app: &TestApp, statement: &str, types: &str, values: &str) -> String {
    plan_of(
        app,
        &format!("BEGIN; {PROBE_SETTINGS}"),
        (statement, types),
        values,
    )
    .await
}

#[tokio::test]
async fn idle_probes_stay_on_their_indexes_when_the_statistics_saw_nothing_pending() {
    let app = analysed_before_the_flood().await;
    for (label, plan) in [
        (
            "pending names",
            probe_plan(&app, PENDING_NAMES, "(bigint)", "(100)").await,
        ),
        (
            "names with work",
            probe_plan(
                &app,
                NAMES_WITH_WORK,
                "(text[], bigint)",
                "(ARRAY['plan.keyed', 'plan.limited', 'plan.none'], 16)",
            )
            .await,
        ),
        (
            "anything runnable",
            probe_plan(&app, ANYTHING_RUNNABLE, "", "").await,
        ),
    ] {
        eprintln!("{label}:\n{plan}");
        assert!(
            !plan.contains("jobs_status_idx"),
            "{label}: every pending job walked:\n{plan}"
        );
        assert!(
            !plan.contains("Sort") && !plan.contains("Seq Scan"),
            "{label}: not in its index's order:\n{plan}"
        );
    }
}
