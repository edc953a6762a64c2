//! `serve` on the embedded cluster, restarted at once after `kill -9`: the
//! previous run's postmaster, told by its parent-death signal to shut down,
//! may still be checkpointing when the new process starts. The new start
//! must wait for it (logged once), not die with "another postmaster is
//! running".
//!
//! The slow checkpoint is played deterministically: the old postmaster is
//! stopped (SIGSTOP) before its parent is killed, so the shutdown signal
//! stays pending until the test lets it run (SIGCONT).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// What the new start logs while it waits.
const WAITING: &str = "still using the data directory";

/// Cleans up whatever the test leaves running, however it ends.
struct Scene {
    dir: PathBuf,
    servers: Vec<Child>,
    stopped_postmaster: Option<Pid>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(pid) = self.stopped_postmaster.take() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        for server in &mut self.servers {
            if matches!(server.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(30);
                while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = server.kill();
                let _ = server.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn serve(dir: &Path, addr: &str, log: &Path) -> Child {
    let log = fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("DATA_DIR", dir)
        .env("EMBEDDED_PG_PORT", "0")
        .env("LISTEN_ADDR", addr)
        .env("BCRYPT_COST", "4")
        .env("ADMIN_PASSWORD", "restart-password-1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn control-plane serve")
}

fn read(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

/// Waits (bounded, so that a broken start fails rather than hangs) until
/// the server at `addr` reports SERVING.
async fn wait_serving(server: &mut Child, addr: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = server.try_wait().expect("try_wait") {
            panic!("serve exited ({status}):\n{}", read(log));
        }
        assert!(
            Instant::now() < deadline,
            "serve never became SERVING:\n{}",
            read(log)
        );
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
        if let Ok(channel) = endpoint.connect().await
            && let Ok(response) = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            && response.into_inner().status() == ServingStatus::Serving
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The postmaster's PID, from the lock file it keeps in its data directory.
fn postmaster_pid(dir: &Path) -> Pid {
    let text = fs::read_to_string(dir.join("postgres/pgdata/postmaster.pid"))
        .expect("the embedded cluster's postmaster.pid");
    Pid::from_raw(
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("a PID on the first line"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_right_after_kill_9_waits_for_the_old_postgres() {
    let dir = std::env::temp_dir().join(format!("automation-cp-restart-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("data dir");
    let mut scene = Scene {
        dir: dir.clone(),
        servers: Vec::new(),
        stopped_postmaster: None,
    };

    let first_log = dir.join("first.log");
    let first_addr = free_addr();
    scene.servers.push(serve(&dir, &first_addr, &first_log));
    wait_serving(&mut scene.servers[0], &first_addr, &first_log).await;

    // The old postmaster will be slow to act on its shutdown signal.
    let postmaster = postmaster_pid(&dir);
    kill(postmaster, Signal::SIGSTOP).expect("SIGSTOP the postmaster");
    scene.stopped_postmaster = Some(postmaster);
    scene.servers[0].kill().expect("kill -9 serve");
    scene.servers[0].wait().expect("reap serve");
    assert!(
        kill(postmaster, None).is_ok(),
        "the old postmaster outlives its parent"
    );

    // Restarted at once, the new serve waits for it.
    let second_log = dir.join("second.log");
    let second_addr = free_addr();
    scene.servers.push(serve(&dir, &second_addr, &second_log));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read(&second_log).contains(WAITING) {
        if let Some(status) = scene.servers[1].try_wait().expect("try_wait") {
            panic!(
                "the restart did not wait for the old postmaster ({status}):\n{}",
                read(&second_log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the restart never said it waits:\n{}",
            read(&second_log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(scene.servers[1].try_wait(), Ok(None)),
        "still waiting, not failed:\n{}",
        read(&second_log)
    );

    // The old postmaster finishes its shutdown; the new start proceeds.
    kill(postmaster, Signal::SIGCONT).expect("SIGCONT the postmaster");
    scene.stopped_postmaster = None;
    wait_serving(&mut scene.servers[1], &second_addr, &second_log).await;
    let log = read(&second_log);
    assert_eq!(log.matches(WAITING).count(), 1, "logged once:\n{log}");
    assert!(
        !log.contains("another postmaster"),
        "no failed start on the way:\n{log}"
    );
    assert_ne!(
        postmaster_pid(&dir),
        postmaster,
        "a new postmaster serves the data directory"
    );
}
