//! The Python, Node and grpcurl examples over mutual TLS, configured only
//! through their environment (`CA_FILE`, `CLIENT_CERT_FILE`,
//! `CLIENT_KEY_FILE`), as their documentation says. Each is skipped, loudly,
//! where its tools are missing, except in CI (`REQUIRE_EXAMPLES`,
//! `REQUIRE_NODE_EXAMPLES`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use automation_control_plane::{proto::automation_v1 as pb, seed::ADMIN_EMAIL};

use super::{certs, tls_app};
use crate::common::{self, ADMIN_PASSWORD, TestApp, certs::TestCa};

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn python() -> Option<PathBuf> {
    [
        std::env::var_os("PYTHON").map(PathBuf::from),
        Some(repo(".ci/tools/venv/bin/python")),
    ]
    .into_iter()
    .flatten()
    .find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_tools, grpc_status"])
            .output()
            .is_ok_and(|output| output.status.success())
    })
}

fn grpcurl() -> Option<PathBuf> {
    std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .or_else(|| Some(repo(".ci/tools/grpcurl")).filter(|p| p.exists()))
        .or_else(|| on_path("grpcurl"))
}

fn skipped(variable: &str, what: &str) {
    assert!(
        std::env::var_os(variable).is_none(),
        "{variable} is set but {what} is missing"
    );
    eprintln!("SKIPPED: {what} is missing");
}

/// A mutual-TLS server and the environment its example clients need.
struct Setup {
    app: TestApp,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let mut app = tls_app(
        dir.path(),
        &server_ca,
        &server_ca.server(),
        Some(&client_ca),
    )
    .await;
    let client = client_ca.client("example");
    app.tls_client = Some(server_ca.trusted_by_client().identity(client.identity()));
    let path = |name: &str, contents: &str| {
        certs::write(dir.path(), name, contents)
            .to_string_lossy()
            .into_owned()
    };
    let env = vec![
        ("ADDR".into(), format!("localhost:{}", app.addr.port())),
        ("CA_FILE".into(), path("ca.pem", &server_ca.pem)),
        ("CLIENT_CERT_FILE".into(), path("client.pem", &client.cert)),
        ("CLIENT_KEY_FILE".into(), path("client.key", &client.key)),
    ];
    Setup {
        app,
        env,
        _dir: dir,
    }
}

async fn worker_key(app: &TestApp) -> String {
    pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(common::authed(
            &app.admin_token().await,
            pb::CreateApiKeyRequest {
                name: "TLS example worker".into(),
                permissions: vec!["jobs:execute".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("an API key")
        .into_inner()
        .secret
}

/// Runs a worker and a client example side by side; returns the client's
/// output once both succeeded.
async fn run_pair(
    mut worker: tokio::process::Command,
    mut client: tokio::process::Command,
) -> String {
    worker.kill_on_drop(true);
    client.kill_on_drop(true);
    let (worker, client) = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(worker.output(), client.output()),
    )
    .await
    .expect("both finish");
    let (worker, client) = (worker.expect("worker runs"), client.expect("client runs"));
    let shown = |o: &std::process::Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(client.status.success(), "client: {}", shown(&client));
    assert!(worker.status.success(), "worker: {}", shown(&worker));
    String::from_utf8_lossy(&client.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_examples_speak_mutual_tls() {
    let Some(python) = python() else {
        return skipped("REQUIRE_EXAMPLES", "Python with grpcio");
    };
    let generated = tempfile::tempdir().unwrap();
    let status = tokio::process::Command::new("bash")
        .arg(repo("examples/python/generate.sh"))
        .env("OUT", generated.path())
        .env("PYTHON", &python)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("bash runs");
    assert!(status.success(), "generating the stubs failed");
    let Setup { app, env, _dir } = setup().await;
    let key = worker_key(&app).await;
    let mut worker = tokio::process::Command::new(&python);
    worker
        .arg(repo("examples/python/worker.py"))
        .envs(env.clone())
        .env("PYTHONPATH", generated.path())
        .env("API_KEY", &key)
        .env("JOB_NAMES", "py.echo")
        .env("MAX_JOBS", "1");
    let mut client = tokio::process::Command::new(&python);
    client
        .arg(repo("examples/python/client.py"))
        .envs(env)
        .env("PYTHONPATH", generated.path())
        .env("LOGIN", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD);
    let output = run_pair(worker, client).await;
    assert!(output.contains("watch: JOB_STATUS_COMPLETED"), "{output}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_examples_speak_mutual_tls() {
    let installed = repo("examples/node/node_modules/@grpc/grpc-js").exists();
    let (Some(node), true) = (on_path("node"), installed) else {
        return skipped(
            "REQUIRE_NODE_EXAMPLES",
            "node with examples/node/node_modules",
        );
    };
    let Setup { app, env, _dir } = setup().await;
    let key = worker_key(&app).await;
    let mut worker = tokio::process::Command::new(&node);
    worker
        .arg(repo("examples/node/worker.js"))
        .envs(env.clone())
        .env("API_KEY", &key)
        .env("JOB_NAMES", "node.echo")
        .env("MAX_JOBS", "1");
    let mut client = tokio::process::Command::new(&node);
    client
        .arg(repo("examples/node/client.js"))
        .envs(env)
        .env("LOGIN", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD);
    let output = run_pair(worker, client).await;
    assert!(output.contains("watch: JOB_STATUS_COMPLETED"), "{output}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpcurl_scripts_speak_mutual_tls() {
    let (Some(grpcurl), Some(_)) = (grpcurl(), on_path("jq")) else {
        return skipped("REQUIRE_EXAMPLES", "grpcurl or jq");
    };
    let Setup { app, env, _dir } = setup().await;
    let output = tokio::process::Command::new("bash")
        .arg(repo("examples/grpcurl/login.sh"))
        .envs(env)
        .env("GRPCURL", &grpcurl)
        .env("LOGIN", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .expect("bash runs");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && token.len() > 20,
        "login.sh over TLS: {token}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(app.current_user(&token).await.username, "admin");
    app.stop().await;
}
