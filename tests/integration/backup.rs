//! Backup and restore as docs/operations.md tells the operator: a database
//! filled through the API is dumped with `pg_dump -Fc` while its server
//! runs, restored with `pg_restore` into an empty database, migrated, and
//! served again: logins and API keys work, pending jobs run, the jobs that
//! were RUNNING get their leases taken when they run out and run again, and
//! every job is there exactly once.

use crate::common;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use automation_control_plane::{db::migrations, proto::automation_v1 as pb, seed::ADMIN_EMAIL};
use common::{
    ADMIN_PASSWORD, JobServiceClient, ModuleServiceClient, TestApp, TestOptions, TestServer,
    UserServiceClient, account, authed, new_job, new_user,
    worker::{TestWorker, hello, job_id, json_struct},
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;

/// The newest `pg_dump`/`pg_restore` of the machine's PostgreSQL, or `None`
/// after printing SKIPPED (outside CI).
fn tool(name: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("bin").join(name))
        .filter(|path| path.is_file())
        .collect();
    found.sort_by_key(|path| {
        path.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
    });
    if let Some(path) = found.pop() {
        return Some(path);
    }
    let hint =
        format!("{name} not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)");
    if std::env::var_os("CI").is_some() {
        panic!("{hint}");
    }
    eprintln!("SKIPPED backup test: {hint}");
    None
}

fn run(program: &PathBuf, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn module(app: &TestApp, token: &str, name: &str, steps: &[&str]) {
    let mut modules = ModuleServiceClient::new(app.channel().await);
    let id = modules
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: name.into(),
                version: "1.0.0".into(),
                display_name: name.into(),
                description: String::new(),
                manifest: Some(json_struct(json!({}))),
            },
        ))
        .await
        .expect("register")
        .into_inner()
        .module
        .expect("module")
        .id;
    for step in steps {
        match *step {
            "enable" => drop(
                modules
                    .enable_module(authed(token, pb::EnableModuleRequest { id: id.clone() }))
                    .await
                    .expect("enable"),
            ),
            _ => drop(
                modules
                    .disable_module(authed(token, pb::DisableModuleRequest { id: id.clone() }))
                    .await
                    .expect("disable"),
            ),
        }
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct JobRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
}

async fn jobs(app: &TestApp) -> Vec<JobRow> {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        "SELECT name, status::text AS status, attempts FROM jobs WHERE name LIKE 'b.%' \
         ORDER BY name, id",
    )
    .load(&mut conn)
    .await
    .expect("jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_an_empty_database_serves_again() {
    let (Some(pg_dump), Some(pg_restore)) = (tool("pg_dump"), tool("pg_restore")) else {
        return;
    };
    // Short leases, so that the restored RUNNING jobs' leases run out soon.
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(3);
    let source = TestApp::spawn_with(options.clone()).await;
    let admin = source.admin_token().await;

    // Accounts, a role, an API key.
    let (operator_id, _) = account(&source, "operator", &["jobs:read", "jobs:write"]).await;
    UserServiceClient::new(source.channel().await)
        .create_user(authed(&admin, new_user("plain")))
        .await
        .expect("user");
    let key = pb::api_key_service_client::ApiKeyServiceClient::new(source.channel().await)
        .create_api_key(authed(
            &admin,
            pb::CreateApiKeyRequest {
                user_id: operator_id,
                name: "restored key".into(),
                permissions: vec!["jobs:read".into()],
                expire_time: None,
            },
        ))
        .await
        .expect("api key")
        .into_inner()
        .secret;
    // Modules in every state.
    module(&source, &admin, "registered", &[]).await;
    module(&source, &admin, "enabled", &["enable"]).await;
    module(&source, &admin, "disabled", &["enable", "disable"]).await;

    // Jobs in every status: completed, failed, cancelled, running, pending.
    let mut worker = source.worker(1).await;
    source
        .create_job(&admin, new_job("b.completed", json!({})))
        .await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!({"ok": true})).await;
    assert!(worker.ack().await.accepted);
    source
        .create_job(&admin, new_job("b.failed", json!({})))
        .await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "no", true).await;
    assert!(worker.ack().await.accepted);
    drop(worker);
    let cancelled = source
        .create_job(&admin, new_job("b.cancelled", json!({})))
        .await;
    JobServiceClient::new(source.channel().await)
        .cancel_job(authed(&admin, pb::CancelJobRequest { id: cancelled.id }))
        .await
        .expect("cancel");
    let mut holder = source.worker(2).await;
    let mut running = Vec::new();
    for _ in 0..2 {
        source
            .create_job(&admin, new_job("b.running", json!({})))
            .await;
        running.push(job_id(&holder.assignment().await));
    }
    for i in 0..3 {
        source
            .create_job(&admin, new_job("b.pending", json!({"i": i})))
            .await;
    }
    let before = jobs(&source).await;
    let statuses = |rows: &[JobRow]| {
        let mut by: HashMap<(String, String), usize> = HashMap::new();
        for row in rows {
            *by.entry((row.name.clone(), row.status.clone()))
                .or_default() += 1;
        }
        by
    };
    let expected: HashMap<(String, String), usize> = [
        ("b.completed", "COMPLETED", 1),
        ("b.failed", "FAILED", 1),
        ("b.cancelled", "CANCELLED", 1),
        ("b.running", "RUNNING", 2),
        ("b.pending", "PENDING", 3),
    ]
    .into_iter()
    .map(|(n, s, c)| ((n.to_owned(), s.to_owned()), c))
    .collect();
    assert_eq!(statuses(&before), expected);

    // Dump while the server runs and the worker holds its two jobs.
    let dir = tempfile::tempdir().expect("temporary directory");
    let dump = dir.path().join("automation.dump");
    let dump_arg = dump.to_str().expect("path");
    run(
        &pg_dump,
        &[
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--file",
            dump_arg,
            &source.db.url(),
        ],
    );
    drop(holder);
    let audit_before = common::audit_count(&source, "users.create", "success").await;
    source.stop().await;

    // Restore into an empty database, migrate, serve.
    let restored = Arc::new(TestServer::get().await.create_database(false).await);
    run(
        &pg_restore,
        &[
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
            &restored.url(),
            dump_arg,
        ],
    );
    let report = migrations::migrate(&restored.url()).await.expect("migrate");
    assert!(
        report.applied.is_empty() && report.adopted.is_none(),
        "{report:?}"
    );
    let app = TestApp::on_database(restored, options).await;
    assert_eq!(statuses(&jobs(&app).await), expected, "restored as dumped");

    // Logins, passwords and the API key work.
    let admin = app
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("admin login")
        .access_token;
    app.login("plain", "long-enough-1")
        .await
        .expect("user login");
    JobServiceClient::new(app.channel().await)
        .list_jobs(authed(&key, pb::ListJobsRequest::default()))
        .await
        .expect("the API key works");
    assert_eq!(
        common::audit_count(&app, "users.create", "success").await,
        audit_before,
        "the audit trail was restored"
    );
    let modules = ModuleServiceClient::new(app.channel().await)
        .list_modules(authed(&admin, pb::ListModulesRequest::default()))
        .await
        .expect("modules")
        .into_inner()
        .modules;
    let mut states: Vec<(String, pb::ModuleStatus)> = modules
        .iter()
        .map(|m| (m.name.clone(), m.status()))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("disabled".to_owned(), pb::ModuleStatus::Disabled),
            ("enabled".to_owned(), pb::ModuleStatus::Enabled),
            ("registered".to_owned(), pb::ModuleStatus::Registered),
        ]
    );

    // A worker on the restored service gets the three pending jobs at once
    // and the two that were running once their leases run out: five
    // assignments, each job once, nothing finished run again.
    let mut worker = TestWorker::connect(app.channel().await, &admin, hello(8))
        .await
        .expect("worker");
    let mut assigned: Vec<(String, String)> = Vec::new();
    let started = Instant::now();
    while assigned.len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {assigned:?} were dispatched"
        );
        let Some(Ok(Some(pb::work_response::Kind::Assignment(assignment)))) =
            worker.next_within(Duration::from_secs(1)).await
        else {
            continue;
        };
        let job = assignment.job.clone().expect("job");
        assigned.push((job.name.clone(), job.id.clone()));
        worker
            .complete(&assignment, json!({"restored": true}))
            .await;
    }
    // Nothing more comes (acknowledgements aside).
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(500) {
        if let Some(Ok(Some(pb::work_response::Kind::Assignment(extra)))) =
            worker.next_within(Duration::from_millis(100)).await
        {
            panic!("a job was dispatched again: {extra:?}");
        }
    }
    let mut names: Vec<&str> = assigned.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "b.pending",
            "b.pending",
            "b.pending",
            "b.running",
            "b.running"
        ]
    );
    let mut ids: Vec<&str> = assigned.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each job was dispatched once");
    for id in &running {
        assert!(ids.contains(&id.as_str()), "the running job {id} ran again");
    }
    let settled = Instant::now();
    let after = loop {
        let after = jobs(&app).await;
        if after
            .iter()
            .all(|r| r.status != "PENDING" && r.status != "RUNNING")
            || settled.elapsed() > Duration::from_secs(10)
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.len(), 8, "nothing duplicated: {after:?}");
    let finished: Vec<(String, String, i32)> = after
        .into_iter()
        .map(|r| (r.name, r.status, r.attempts))
        .collect();
    assert_eq!(
        finished,
        [
            ("b.cancelled", "CANCELLED", 0),
            ("b.completed", "COMPLETED", 1),
            ("b.failed", "FAILED", 1),
            ("b.pending", "COMPLETED", 1),
            ("b.pending", "COMPLETED", 1),
            ("b.pending", "COMPLETED", 1),
            ("b.running", "COMPLETED", 2),
            ("b.running", "COMPLETED", 2),
        ]
        .map(|(n, s, a)| (n.to_owned(), s.to_owned(), a))
    );
    drop(worker);
    app.stop().await;
}
