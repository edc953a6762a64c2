//! The grpcurl scripts of `examples/grpcurl/`, run as a user would run them,
//! against a live server, with the real grpcurl binary and jq. CI installs
//! grpcurl (`.ci/run`) and sets `REQUIRE_EXAMPLES=1`, so there they cannot be
//! skipped; on a machine without grpcurl or jq they are skipped, loudly.

use crate::common;

use std::path::{Path, PathBuf};

use automation_control_plane::{proto::automation_v1 as pb, seed::ADMIN_EMAIL};
use common::{ADMIN_PASSWORD, TestApp};

/// grpcurl: `$GRPCURL`, the one `.ci/run` installs, or one on the PATH.
fn grpcurl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return Some(path.into());
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/grpcurl");
    if installed.exists() {
        return Some(installed);
    }
    on_path("grpcurl")
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `examples/grpcurl/<script>` with `env`; returns its standard
/// output, failing the test with its standard error when it fails.
async fn run(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/grpcurl")
        .join(script);
    let output = tokio::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpcurl_examples_work_as_written() {
    let (Some(grpcurl), Some(_)) = (grpcurl(), on_path("jq")) else {
        assert!(
            std::env::var_os("REQUIRE_EXAMPLES").is_none(),
            "REQUIRE_EXAMPLES is set but grpcurl or jq is missing"
        );
        eprintln!("SKIPPED: the grpcurl examples need grpcurl and jq (bash .ci/run installs them)");
        return;
    };
    let app = TestApp::spawn().await;
    let addr = app.addr.to_string();
    let grpcurl = grpcurl.to_string_lossy().into_owned();
    let base = [("ADDR", addr.as_str()), ("GRPCURL", grpcurl.as_str())];

    let login = [
        &base[..],
        &[("LOGIN", ADMIN_EMAIL), ("PASSWORD", ADMIN_PASSWORD)],
    ]
    .concat();
    let token = run("login.sh", &[], &login).await.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let with_token = [&base[..], &[("TOKEN", token.as_str())]].concat();

    let user = run(
        "create-user.sh",
        &["ops", "ops@example.com", "a-long-password", "operator"],
        &with_token,
    )
    .await;
    let user: serde_json::Value = serde_json::from_str(user.trim()).expect("one JSON line");
    assert_eq!(user["username"], "ops");
    assert_eq!(user["roles"], serde_json::json!(["operator"]));
    // The new account can log in with the password the script gave it.
    let ops = [
        &base[..],
        &[("LOGIN", "ops"), ("PASSWORD", "a-long-password")],
    ]
    .concat();
    assert_eq!(
        run("login.sh", &[], &ops).await.trim().split('.').count(),
        3
    );

    // An API key works wherever a token does, within its scope.
    let key = run(
        "api-key.sh",
        &["example key", "jobs:read", "jobs:write", "audit:read"],
        &with_token,
    )
    .await
    .trim()
    .to_owned();
    assert!(key.starts_with("acp_"), "{key}");
    let with_key = [&base[..], &[("TOKEN", key.as_str())]].concat();
    assert!(
        run("audit.sh", &["api_keys.create"], &with_key)
            .await
            .contains("api_keys.create success")
    );

    let lifecycle = run("module-lifecycle.sh", &[], &with_token).await;
    for line in [
        "registered: backup-runner MODULE_STATUS_REGISTERED",
        "enabling: MODULE_STATUS_INSTALLING",
        "watch: MODULE_STATUS_ENABLED",
        "disabled: MODULE_STATUS_DISABLED",
        "deleted: true",
    ] {
        assert!(lifecycle.contains(line), "{line}:\n{lifecycle}");
    }

    let jobs = run("jobs.sh", &[], &with_token).await;
    for line in [
        "batch: 2 jobs",
        "watch: JOB_STATUS_COMPLETED",
        "pending thumbnails: 2",
    ] {
        assert!(jobs.contains(line), "{line}:\n{jobs}");
    }

    let progress = run("progress.sh", &[], &with_token).await;
    for line in [
        "before: none",
        "running: 40% encoding",
        "finished: JOB_STATUS_COMPLETED 100% encoded",
    ] {
        assert!(progress.contains(line), "{line}:\n{progress}");
    }

    let attempts = run("attempts.sh", &[], &with_token).await;
    for line in [
        "before: none",
        "running: 1 RUNNING grpcurl-attempts ",
        "1 FAILED grpcurl-attempts renderer crashed",
        "2 COMPLETED grpcurl-attempts ",
    ] {
        assert!(attempts.contains(line), "{line}:\n{attempts}");
    }

    let schedules = run("schedules.sh", &[], &with_token).await;
    for line in [
        "created: heartbeat-example ",
        "triggered: heartbeat.ping of ",
        "jobs of the schedule: at least 2",
        "updated: 0 3 * * * Europe/Paris next ",
        "paused: true",
        "last job: ",
        "schedules: heartbeat-example",
        "schedules of no-such-module: 0",
        "deleted: heartbeat-example",
    ] {
        assert!(schedules.contains(line), "{line}:\n{schedules}");
    }

    let limits = run("limits.sh", &[], &with_token).await;
    for line in [
        "bucket: example-smtp 2 per 3600s",
        "created: 7 jobs, keys customer-42 customer-7",
        "running at once: customer-42=1 customer-7=1 example-smtp=2",
        "waiting: 2 of customer-42",
        "tokens left: 0",
    ] {
        assert!(limits.contains(line), "{line}:\n{limits}");
    }

    let audit = run("audit.sh", &["modules.enable"], &with_token).await;
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("modules.enable success modules/"), "{audit}");
    // A filter that matches nothing: an empty answer (proto3 JSON leaves
    // the empty list out), no jq error.
    let nothing = run("audit.sh", &["no.such.action"], &with_token).await;
    assert_eq!(nothing, "", "{nothing}");

    let queues = run("queues.sh", &["example.paused"], &with_token).await;
    for line in [
        "paused: example.paused holding 0 jobs",
        "queue: example.paused pending=1 scheduled=0 running=0 failed1h=0 oldest=",
        "paused=true",
        "resumed: true, released 1 jobs",
        "paused=false",
    ] {
        assert!(queues.contains(line), "{line}:\n{queues}");
    }

    // Two dead letters and one other failure, then the script.
    let admin = app.admin_token().await;
    let mut worker = common::worker::TestWorker::connect(
        app.channel().await,
        &admin,
        pb::WorkerHello {
            job_names: vec!["example.flaky".into()],
            ..common::worker::hello(1)
        },
    )
    .await
    .expect("worker");
    for message in ["disk full: /var", "disk full: /tmp", "timeout"] {
        app.create_job(
            &admin,
            common::new_job("example.flaky", serde_json::json!({})),
        )
        .await;
        let assignment = worker.assignment().await;
        worker.fail(&assignment, message, true).await;
        assert!(worker.ack().await.accepted);
    }
    drop(worker);
    let dead = run("dead-letters.sh", &["disk full"], &with_token).await;
    assert_eq!(dead.matches("dead: ").count(), 2, "{dead}");
    for line in [
        "dead letters: 2",
        "retried: 2",
        "example.flaky disk full: /var",
    ] {
        assert!(dead.contains(line), "{line}:\n{dead}");
    }
    // Nothing left to redrive: an empty answer again.
    let none = run("dead-letters.sh", &["disk full"], &with_token).await;
    assert!(
        none.contains("dead letters: 0") && none.contains("retried: 0"),
        "{none}"
    );
    app.stop().await;
}

/// An API key holding `jobs:execute`, for a worker example.
async fn worker_key(app: &TestApp, name: &str) -> String {
    pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(common::authed(
            &app.admin_token().await,
            pb::CreateApiKeyRequest {
                name: name.into(),
                permissions: vec!["jobs:execute".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("an API key")
        .into_inner()
        .secret
}

/// A process's standard output and error, for a failure message.
fn shown(output: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A Python interpreter with grpcio, grpcio-tools and grpcio-status:
/// `$PYTHON`, or the one `.ci/run` installs them into.
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_tools, grpc_status"])
            .output()
            .is_ok_and(|output| output.status.success())
    })
}

/// The Python client and worker of `examples/python/`, from stubs generated
/// here: the worker completes the job the client enqueued and watches, and
/// the client reads the reason and field violations of an INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_and_worker_work_as_written() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("REQUIRE_EXAMPLES").is_none(),
            "REQUIRE_EXAMPLES is set but no Python with grpcio, grpcio-tools and grpcio-status"
        );
        eprintln!("SKIPPED: the Python examples need grpcio, grpcio-tools and grpcio-status");
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python");
    let generated = tempfile::tempdir().expect("a temporary directory");
    let status = tokio::process::Command::new("bash")
        .arg(examples.join("generate.sh"))
        .env("OUT", generated.path())
        .env("PYTHON", &python)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("bash runs");
    assert!(status.success(), "generating the stubs failed");

    let app = TestApp::spawn().await;
    let key = worker_key(&app, "python worker").await;
    let addr = app.addr.to_string();
    let python_env = |command: &mut tokio::process::Command| {
        command
            .env("PYTHONPATH", generated.path())
            .env("ADDR", &addr)
            .kill_on_drop(true);
    };
    let mut worker = tokio::process::Command::new(&python);
    worker
        .arg(examples.join("worker.py"))
        .env("API_KEY", &key)
        .env("JOB_NAMES", "py.echo")
        .env("CREDITS", "2")
        .env("MAX_JOBS", "1");
    python_env(&mut worker);
    let worker = worker.output();
    let mut client = tokio::process::Command::new(&python);
    client
        .arg(examples.join("client.py"))
        .env("LOGIN", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD);
    python_env(&mut client);
    let (worker, client) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures::future::join(worker, client.output()),
    )
    .await
    .expect("both finish");
    let (worker, client) = (worker.expect("worker runs"), client.expect("client runs"));
    assert!(client.status.success(), "client: {}", shown(&client));
    assert!(worker.status.success(), "worker: {}", shown(&worker));
    let client = String::from_utf8_lossy(&client.stdout).into_owned();
    for line in [
        "users: admin",
        "watch: JOB_STATUS_COMPLETED {\"echo\": {\"greeting\": \"hello from python\"}, \"worker\": \"python\"}",
        "progress: 100% echoed",
        "error: INVALID_ARGUMENT INVALID_FIELD",
        "bad request: email:",
    ] {
        assert!(client.contains(line), "{line}:\n{client}");
    }
    let worker = String::from_utf8_lossy(&worker.stdout).into_owned();
    assert!(worker.contains("running py.echo"), "{worker}");
    assert!(
        worker.contains(" trace 00-"),
        "the job's trace context: {worker}"
    );
    app.stop().await;
}

/// The Node client and worker of `examples/node/` (the contract loaded
/// from proto/ by @grpc/proto-loader): the worker completes the job the
/// client enqueued and watched.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_client_and_worker_work_as_written() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node");
    let installed = examples.join("node_modules/@grpc/grpc-js").exists();
    let (Some(node), true) = (on_path("node"), installed) else {
        assert!(
            std::env::var_os("REQUIRE_NODE_EXAMPLES").is_none(),
            "REQUIRE_NODE_EXAMPLES is set but node or examples/node/node_modules is missing"
        );
        eprintln!("SKIPPED: the Node examples need node and `npm ci --prefix examples/node`");
        return;
    };
    let app = TestApp::spawn().await;
    let key = worker_key(&app, "node worker").await;
    let addr = app.addr.to_string();
    let mut worker = tokio::process::Command::new(&node);
    worker
        .arg(examples.join("worker.js"))
        .env("ADDR", &addr)
        .env("API_KEY", &key)
        .env("JOB_NAMES", "node.echo")
        .env("CREDITS", "2")
        .env("MAX_JOBS", "1")
        .kill_on_drop(true);
    let mut client = tokio::process::Command::new(&node);
    client
        .arg(examples.join("client.js"))
        .env("ADDR", &addr)
        .env("LOGIN", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD)
        .kill_on_drop(true);
    let (worker, client) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures::future::join(worker.output(), client.output()),
    )
    .await
    .expect("both finish");
    let (worker, client) = (worker.expect("worker runs"), client.expect("client runs"));
    assert!(client.status.success(), "client: {}", shown(&client));
    assert!(worker.status.success(), "worker: {}", shown(&worker));
    let client = String::from_utf8_lossy(&client.stdout).into_owned();
    for line in [
        "users: admin",
        "watch: JOB_STATUS_COMPLETED {\"echo\":{\"greeting\":\"hello from node\"},\"worker\":\"node\"}",
        "progress: 100% echoed",
        "error: INVALID_ARGUMENT email:",
    ] {
        assert!(client.contains(line), "{line}:\n{client}");
    }
    let worker = String::from_utf8_lossy(&worker.stdout).into_owned();
    assert!(worker.contains("running node.echo"), "{worker}");
    assert!(
        worker.contains(" trace 00-"),
        "the job's trace context: {worker}"
    );
    app.stop().await;
}
