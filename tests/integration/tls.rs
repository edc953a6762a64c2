//! gRPC over TLS with certificates made by the test: TLS clients call,
//! plaintext ones are refused, mutual TLS refuses clients without a
//! certificate of the right CA, a rotated certificate reaches new
//! connections while an open Work stream keeps going, `serve` refuses
//! plaintext off loopback, and `control-plane health` speaks TLS.

use crate::common;

mod accept_limits;
mod examples;
mod http_port;

use std::{path::Path, time::Duration};

use automation_control_plane::{proto::automation_v1 as pb, tls::TlsFiles};
use common::{
    AuditServiceClient, AuthServiceClient, TestApp, TestOptions,
    certs::{self, Leaf, TestCa},
    new_job,
};
use serde_json::json;
use tonic::{
    Code, Request,
    transport::{ClientTlsConfig, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Writes the server's files into `dir` and returns a server speaking TLS
/// with them (mutual when `client_ca` is given), its clients trusting `ca`.
async fn tls_app(dir: &Path, ca: &TestCa, server: &Leaf, client_ca: Option<&TestCa>) -> TestApp {
    let mut options = TestOptions::default();
    options.server.tls = Some(TlsFiles {
        cert_file: certs::write(dir, "server.pem", &server.cert),
        key_file: certs::write(dir, "server.key", &server.key),
        client_ca_file: client_ca.map(|ca| certs::write(dir, "client-ca.pem", &ca.pem)),
        reload_interval: Duration::from_millis(100),
    });
    options.tls_client = Some(ca.trusted_by_client());
    TestApp::spawn_with(options).await
}

/// Connects with `tls` (or in plaintext with `None`) and asks the health
/// service: the error says where it failed.
async fn health_over(app: &TestApp, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://localhost:{}", app.addr.port()))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| format!("config: {e}"))?,
        None => Endpoint::from_shared(format!("http://{}", app.addr)).unwrap(),
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test]
async fn a_tls_client_calls_and_a_plaintext_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let app = tls_app(dir.path(), &ca, &ca.server(), None).await;

    let token = app.admin_token().await;
    let user = app.current_user(&token).await;
    assert_eq!(user.username, "admin");
    // The peer address is still known behind TLS (audit, login throttling).
    let logins = AuditServiceClient::new(app.channel().await)
        .list_audit_logs(common::authed(
            &token,
            pb::ListAuditLogsRequest {
                action: "auth.login".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_logs;
    assert!(!logins.is_empty());
    assert!(
        logins.iter().all(|l| l.ip_address == "127.0.0.1"),
        "{logins:?}"
    );
    health_over(&app, Some(ca.trusted_by_client()))
        .await
        .expect("TLS client");

    let refused = health_over(&app, None).await;
    assert!(refused.is_err(), "plaintext must be refused: {refused:?}");
    let other = TestCa::new("someone else's CA");
    let refused = health_over(&app, Some(other.trusted_by_client())).await;
    assert!(refused.is_err(), "an unknown server CA: {refused:?}");
    app.stop().await;
}

#[tokio::test]
async fn mutual_tls_wants_a_certificate_of_its_ca_and_still_a_token() {
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
    let good = client_ca.client("worker-1");
    app.tls_client = Some(server_ca.trusted_by_client().identity(good.identity()));

    // A certificate of the client CA: calls go through, a Work stream opens.
    let token = app.admin_token().await;
    assert_eq!(app.current_user(&token).await.username, "admin");
    let mut worker = app.worker(1).await;
    app.create_job(&token, new_job("mtls.job", json!({}))).await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!("done")).await;
    assert!(worker.ack().await.accepted);

    // The certificate does not stand in for the token.
    let status = AuthServiceClient::new(app.channel().await)
        .get_current_user(Request::new(pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // No certificate, or one of another CA (even with the same name): refused.
    let refused = health_over(&app, Some(server_ca.trusted_by_client())).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let stranger = TestCa::new("client CA").client("worker-1");
    let refused = health_over(
        &app,
        Some(server_ca.trusted_by_client().identity(stranger.identity())),
    )
    .await;
    assert!(refused.is_err(), "a certificate of another CA: {refused:?}");
    // A server certificate is not a client certificate.
    let refused = health_over(&app, None).await;
    assert!(refused.is_err(), "plaintext: {refused:?}");
    drop(worker);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_open_streams_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let mut app = tls_app(dir.path(), &old_ca, &old_ca.server(), None).await;
    let token = app.admin_token().await;
    let mut worker = app.worker(1).await;

    // A broken file on disk is logged and the certificate in force kept.
    certs::write(dir.path(), "server.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    health_over(&app, Some(old_ca.trusted_by_client()))
        .await
        .expect("the old certificate is still served");

    // Rotation as a certificate manager does it: key, then certificate.
    let rotated = new_ca.server();
    certs::write(dir.path(), "server.key", &rotated.key);
    certs::write(dir.path(), "server.pem", &rotated.cert);
    let mut served = Err(String::new());
    for _ in 0..100 {
        served = health_over(&app, Some(new_ca.trusted_by_client())).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.expect("the new certificate reaches a new connection");
    let refused = health_over(&app, Some(old_ca.trusted_by_client())).await;
    assert!(refused.is_err(), "the old certificate is gone: {refused:?}");

    // The Work stream opened before the rotation still gets and settles
    // jobs.
    app.tls_client = Some(new_ca.trusted_by_client());
    app.create_job(&token, new_job("rotation.job", json!({})))
        .await;
    let assignment = worker.assignment().await;
    worker.heartbeat().await;
    worker.complete(&assignment, json!("still here")).await;
    assert!(worker.ack().await.accepted);
    drop(worker);
    app.stop().await;
}

/// Runs `control-plane` with `args` and returns (success, stdout, stderr).
async fn run_binary(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("LISTEN_ADDR")
        .env_remove("ALLOW_PLAINTEXT")
        .env_remove("TLS_CERT_FILE")
        .env_remove("TLS_KEY_FILE")
        .env_remove("TLS_CA_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run control-plane");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_refuses_plaintext_off_loopback_and_says_why() {
    let (ok, _, stderr) = run_binary(&["serve", "--listen-addr", "0.0.0.0:0"]).await;
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refusing plaintext gRPC on non-loopback 0.0.0.0:0")
            && stderr.contains("TLS_CERT_FILE")
            && stderr.contains("--allow-plaintext"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_health_command_speaks_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let app = tls_app(
        dir.path(),
        &server_ca,
        &server_ca.server(),
        Some(&client_ca),
    )
    .await;
    let ca_file = certs::write(dir.path(), "ca.pem", &server_ca.pem);
    let client = client_ca.client("probe");
    let cert_file = certs::write(dir.path(), "probe.pem", &client.cert);
    let key_file = certs::write(dir.path(), "probe.key", &client.key);
    let addr = app.addr.to_string();
    let base = [
        "health",
        "--addr",
        &addr,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--server-name",
        "localhost",
    ];

    let (ok, stdout, stderr) = run_binary(
        &[
            &base[..],
            &[
                "--client-cert-file",
                cert_file.to_str().unwrap(),
                "--client-key-file",
                key_file.to_str().unwrap(),
            ],
        ]
        .concat(),
    )
    .await;
    assert!(ok, "{stdout} {stderr}");
    assert_eq!(stdout.trim(), "SERVING");

    let (ok, _, stderr) = run_binary(&base).await;
    assert!(!ok, "no client certificate must fail: {stderr}");
    app.stop().await;
}

#[tokio::test]
async fn the_worker_sdk_runs_jobs_over_mutual_tls() {
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
    let client = client_ca.client("sdk-worker");
    app.tls_client = Some(server_ca.trusted_by_client().identity(client.identity()));
    let token = app.admin_token().await;
    let worker = automation_worker::Worker::builder(
        format!("https://localhost:{}", app.addr.port()),
        token.clone(),
    )
    .ca_certificate_pem(server_ca.pem.clone())
    .client_identity_pem(client.cert.clone(), client.key.clone())
    .handle("tls.echo", |job| async move { Ok(job.payload) })
    .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let job = app
        .create_job(&token, new_job("tls.echo", json!({ "over": "tls" })))
        .await;
    let mut finished = None;
    for _ in 0..200 {
        let current = app.job(&token, &job.id).await;
        if current.status() == pb::JobStatus::Completed {
            finished = Some(current);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = finished.expect("the SDK worker completes the job over mutual TLS");
    assert!(finished.result.is_some());
    let _ = stop.send(());
    running.await.unwrap().expect("the worker stops cleanly");

    // An http:// endpoint with TLS settings is a configuration error, not
    // a silent plaintext connection.
    let refused = automation_worker::Worker::builder(format!("http://{}", app.addr), token)
        .ca_certificate_pem(server_ca.pem.clone())
        .handle("tls.echo", |job| async move { Ok(job.payload) })
        .build()
        .run(std::future::pending())
        .await;
    assert!(
        matches!(refused, Err(automation_worker::WorkerError::Endpoint(_))),
        "{refused:?}"
    );
    app.stop().await;
}

/// Whether the session of `conn` is encrypted, as PostgreSQL sees it.
async fn encrypted(conn: &mut diesel_async::AsyncPgConnection) -> bool {
    use diesel_async::RunQueryDsl as _;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    ))
    .get_result(conn)
    .await
    .expect("pg_stat_ssl")
}

#[tokio::test]
async fn postgres_over_tls_with_verify_full() {
    use automation_control_plane::db::{
        self,
        embedded::{EmbeddedPostgres, EmbeddedPostgresOptions, EmbeddedSsl},
        migrations,
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("database CA");
    // Named `localhost` only: reached as 127.0.0.1, the name does not match.
    let server = ca.server_named(&["localhost"]);
    let cluster = EmbeddedPostgres::start_with_ssl(
        EmbeddedPostgresOptions {
            root_dir: dir.path().join("cluster"),
            port: 0,
            durable: false,
            max_connections: 30,
            startup_timeout: Duration::from_secs(60),
            settings: Vec::new(),
        },
        EmbeddedSsl {
            cert_pem: server.cert.clone(),
            key_pem: server.key.clone(),
        },
    )
    .await
    .expect("a cluster with ssl=on");
    let ca_file = certs::write(dir.path(), "db-ca.pem", &ca.pem);
    let base = cluster.url("postgres");
    let by_name = base.replace("@127.0.0.1:", "@localhost:");
    let url = format!(
        "{by_name}?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    );

    // One connection, the migrations, the pool and a dedicated (LISTEN)
    // connection all go through TLS.
    let mut conn = db::open_connection(&url).await.expect("verify-full");
    assert!(encrypted(&mut conn).await);
    migrations::run_pending(&url)
        .await
        .expect("migrations over TLS");
    let pool = common::pool(&url, Duration::from_secs(10));
    let mut pooled = pool.get().await.expect("pooled connection over TLS");
    assert!(encrypted(&mut pooled).await);
    let mut dedicated = db::dedicated_connection(&url, "tls-test", "", Duration::from_secs(10))
        .await
        .expect("dedicated connection over TLS");
    assert!(encrypted(&mut dedicated).await);
    let mut required = db::open_connection(&format!("{base}?sslmode=require"))
        .await
        .expect("require");
    assert!(encrypted(&mut required).await);
    let mut plain = db::open_connection(&base).await.expect("no sslmode");
    assert!(!encrypted(&mut plain).await);

    // A name the certificate does not carry: verify-ca takes it, verify-full
    // does not.
    let by_address = format!("{base}?sslrootcert={}", ca_file.display());
    let mut chain_only = db::open_connection(&format!("{by_address}&sslmode=verify-ca"))
        .await
        .expect("verify-ca ignores the name");
    assert!(encrypted(&mut chain_only).await);
    let refused = db::open_connection(&format!("{by_address}&sslmode=verify-full")).await;
    assert!(refused.is_err(), "verify-full with a wrong name connected");

    // A certificate of another CA is refused by verify-ca and verify-full.
    let other_ca = certs::write(dir.path(), "other-ca.pem", &TestCa::new("other").pem);
    for mode in ["verify-ca", "verify-full"] {
        let refused = db::open_connection(&format!(
            "{base}?sslmode={mode}&sslrootcert={}",
            other_ca.display()
        ))
        .await;
        assert!(refused.is_err(), "{mode} with another CA connected");
    }
    drop((conn, pooled, dedicated, required, plain, chain_only));
    cluster.stop().await;
}

#[tokio::test]
async fn serve_takes_its_certificate_from_the_environment_and_listens_off_loopback() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = tempfile::tempdir().unwrap();
    // The embedded cluster runs as an unprivileged user when we are root.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new("process CA");
    let server = ca.server();
    let cert = certs::write(data.path(), "tls.crt", &server.cert);
    let key = certs::write(data.path(), "tls.key", &server.key);
    let ca_file = certs::write(data.path(), "ca.pem", &ca.pem);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .env_remove("ALLOW_PLAINTEXT")
        .env("DATA_DIR", data.path().join("data"))
        .env("EMBEDDED_PG_PORT", "0")
        .env("LISTEN_ADDR", format!("0.0.0.0:{port}"))
        .env("TLS_CERT_FILE", &cert)
        .env("TLS_KEY_FILE", &key)
        .env("ADMIN_PASSWORD", "process-password")
        .env("BCRYPT_COST", "4")
        .env("SHUTDOWN_GRACE_MS", "500")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start control-plane");
    let addr = format!("127.0.0.1:{port}");
    let health = [
        "health",
        "--addr",
        &addr,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--server-name",
        "localhost",
    ];
    let mut serving = false;
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("control-plane exited early: {status}");
        }
        let (ok, stdout, _) = run_binary(&health).await;
        if ok && stdout.trim() == "SERVING" {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(serving, "serve over TLS never became SERVING");
    // Plaintext health checks are refused by the same server.
    let (ok, _, _) = run_binary(&["health", "--addr", &addr]).await;
    assert!(!ok, "a plaintext health check must fail against TLS");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
