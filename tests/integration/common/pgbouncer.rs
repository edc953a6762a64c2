//! Debian's PgBouncer in transaction pooling mode in front of the test
//! cluster, for as long as the value lives.
//!
//! It runs as the `postgres` user when the tests run as root (PgBouncer
//! refuses root), from a directory of its own holding its configuration,
//! user list, log and pid file. Server sessions are handed out round-robin
//! (`server_round_robin = 1`) from a small pool, so that consecutive
//! transactions of one client land on different server sessions: anything
//! left on a session shows up at once instead of by chance.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::TestServer;

/// Where Debian installs it (`apt-get install pgbouncer`).
pub const BINARY: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer.
pub struct PgBouncer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many server sessions it keeps per database and user.
    pub pool_size: usize,
    dir: tempfile::TempDir,
    child: Child,
}

/// The binary, or `None` after printing SKIPPED (outside CI); in CI its
/// absence fails the test with what to install.
pub fn binary(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(BINARY);
    if path.is_file() {
        return Some(path);
    }
    let hint =
        format!("{BINARY} not found: install Debian's pgbouncer (apt-get install pgbouncer)");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {hint}");
    }
    eprintln!("SKIPPED {test}: {hint}");
    None
}

impl PgBouncer {
    /// Starts PgBouncer in front of the test cluster (every database of
    /// it, as its superuser) and waits until it accepts connections.
    pub async fn start(binary: &Path) -> Self {
        let server = TestServer::get().await;
        let target = url::Url::parse(&server.url("postgres")).expect("cluster URL");
        let user = target.username().to_owned();
        let password = target
            .password()
            .expect("the cluster's password")
            .to_owned();
        let dir = tempfile::Builder::new()
            .prefix("pgbouncer-test-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let pool_size = 4;
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n\
             server_round_robin = 1\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            host = target.host_str().expect("host"),
            server_port = target.port().unwrap_or(5432),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .expect("userlist.txt");
        let mut command = Command::new(binary);
        command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if nix::unistd::Uid::effective().is_root() {
            let runner = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user to run PgBouncer as (it refuses root)");
            for path in ["", "pgbouncer.ini", "userlist.txt"] {
                nix::unistd::chown(&dir.path().join(path), Some(runner.uid), Some(runner.gid))
                    .expect("chown");
            }
            command.uid(runner.uid.as_raw()).gid(runner.gid.as_raw());
        }
        let child = command.spawn().expect("starting pgbouncer");
        let bouncer = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pool_size,
            dir,
            child,
        };
        bouncer.wait_ready().await;
        bouncer
    }

    /// `url` (a database of the test cluster) through PgBouncer.
    pub fn url(&self, url: &str) -> String {
        let mut through = url::Url::parse(url).expect("database URL");
        through.set_host(Some("127.0.0.1")).expect("host");
        through.set_port(Some(self.addr.port())).expect("port");
        through.to_string()
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "pgbouncer did not start listening on {}; its log:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
