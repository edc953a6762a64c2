//! The binary as a new user runs it: `serve` with no DATABASE_URL starts the
//! embedded PostgreSQL, serves, stops it on SIGTERM, and keeps the data (and
//! the development signing key) for the next start.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use automation_control_plane::proto::automation_v1::{
    GetCurrentUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data_dir: &Path, listen: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .env("DATA_DIR", data_dir)
        .env("EMBEDDED_PG_PORT", "0")
        .env("LISTEN_ADDR", listen)
        .env("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("ADMIN_PASSWORD", "lifecycle-password")
        .env("BCRYPT_COST", "4")
        .env("SHUTDOWN_GRACE_MS", "500")
        .env(
            "RUST_LOG",
            std::env::var("LIFECYCLE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start control-plane")
}

async fn wait_until_serving(listen: &str, child: &mut Child) -> Channel {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("control-plane exited early: {status}");
        }
        if let Ok(channel) = Endpoint::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect()
            .await
        {
            let health = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await;
            if health.is_ok_and(|h| h.into_inner().status() == ServingStatus::Serving) {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("control-plane never became SERVING");
}

fn stop(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

fn postgres_running_in(data_dir: &Path) -> bool {
    let needle = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|cmd| String::from_utf8_lossy(&cmd).contains(&needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn serve_runs_on_the_embedded_database_and_keeps_its_data() {
    let data = tempfile::tempdir().unwrap();
    // The cluster runs as an unprivileged user when we are root: it must be
    // able to reach its directory.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());

    let mut first = start(data.path(), &listen);
    let channel = wait_until_serving(&listen, &mut first).await;
    let login = AuthServiceClient::new(channel)
        .login(LoginRequest {
            login: "admin@automation-platform.local".into(),
            password: "lifecycle-password".into(),
        })
        .await
        .expect("seeded admin logs in")
        .into_inner();
    stop(first);
    assert!(
        !postgres_running_in(data.path()),
        "no PostgreSQL left behind"
    );

    let mut second = start(data.path(), &listen);
    let channel = wait_until_serving(&listen, &mut second).await;
    let mut request = tonic::Request::new(GetCurrentUserRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", login.access_token).parse().unwrap(),
    );
    let me = AuthServiceClient::new(channel)
        .get_current_user(request)
        .await
        .expect("the session and the signing key survived the restart")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.username, "admin");
    stop(second);
    assert!(!postgres_running_in(data.path()));
}
