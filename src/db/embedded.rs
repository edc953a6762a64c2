//! A private PostgreSQL cluster started from the machine's server binaries,
//! so that a fresh clone serves (and tests) with no database set up by hand.
//!
//! The cluster listens on 127.0.0.1 only, authenticates with a generated
//! superuser password (scram-sha-256) kept beside the data directory, and runs
//! as the unprivileged `postgres` system user when this process is root
//! (PostgreSQL refuses root). The postmaster is started by a keeper thread
//! that lives exactly as long as the postmaster and asks the kernel to send it
//! SIGINT (fast, clean shutdown) should this process die without stopping it.
//!
//! That shutdown checkpoints, which under load takes a while: a supervisor
//! that restarts us at once after `kill -9` would find the old postmaster
//! still in the data directory ("another postmaster is running"). So a start
//! first waits, bounded by the start-up timeout and logged once, for the
//! postmaster named in `postmaster.pid` to exit when it is a live postgres
//! process (`previous_run.rs`).

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use diesel::{ConnectionError, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use rand::distr::{Alphanumeric, SampleString};

mod previous_run;
mod run_as;

use run_as::{RunAs, run_as};
mod ssl;

pub use ssl::EmbeddedSsl;

/// Why the embedded cluster could not start or stop. Each message names the
/// problem and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPostgresError {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and postgres on PATH and under \
         /usr/lib/postgresql/*/bin): install them (Debian: apt-get install postgresql) or set \
         DATABASE_URL to an existing server"
    )]
    BinariesNotFound,
    /// Running as root with no unprivileged user to run PostgreSQL as.
    #[error(
        "running as root, but there is no 'postgres' system user to run PostgreSQL as: create one \
         (useradd --system postgres) or set DATABASE_URL to an existing server"
    )]
    NoUnprivilegedUser,
    /// The data directory belongs to a user the cluster cannot run as.
    #[error(
        "data directory {path} is owned by uid {owner}, but PostgreSQL would run as uid {runner}: \
         chown -R it, or choose another --data-dir"
    )]
    ForeignDataDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user the cluster runs as.
        runner: u32,
    },
    /// The server user cannot reach the data directory.
    #[error(
        "PostgreSQL runs as the 'postgres' user, which cannot enter {blocked} (on the way to \
         {path}): chmod o+x {blocked}, or choose a --data-dir it can reach"
    )]
    UnreachableDataDirectory {
        /// The data directory.
        path: PathBuf,
        /// The first ancestor it cannot search.
        blocked: PathBuf,
    },
    /// A step failed; `log` holds what PostgreSQL printed last.
    #[error("embedded PostgreSQL: {step} failed: {reason}{log}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        reason: String,
        /// Tail of the server log, prefixed with a newline, or empty.
        log: String,
    },
}

type Result<T> = std::result::Result<T, EmbeddedPostgresError>;

fn failed(step: &'static str, reason: impl std::fmt::Display) -> EmbeddedPostgresError {
    EmbeddedPostgresError::Failed {
        step,
        reason: reason.to_string(),
        log: String::new(),
    }
}

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgresOptions {
    /// Directory that holds the cluster (`pgdata/`), its password and its log.
    pub root_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// False turns off fsync and synchronous commit: only for throwaway
    /// clusters (tests), never for data that should survive a crash.
    pub durable: bool,
    /// PostgreSQL's `max_connections`.
    pub max_connections: u32,
    /// How long to wait for the server to accept connections; also how
    /// long to wait, before starting it, for a previous run's postmaster
    /// that is still shutting down to exit.
    pub startup_timeout: Duration,
    /// More server settings (`name=value`, each passed as `-c`): how a
    /// benchmark loads `pg_stat_statements` to report where the database
    /// spent its time.
    pub settings: Vec<String>,
}

/// A running cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    root_dir: PathBuf,
    port: u16,
    password: String,
    postmaster_pid: Pid,
    keeper: Option<JoinHandle<()>>,
}

const SUPERUSER: &str = "postgres";

impl EmbeddedPostgres {
    /// Initialises the cluster if needed, starts it and waits until it accepts
    /// connections.
    pub async fn start(options: EmbeddedPostgresOptions) -> Result<Self> {
        Self::start_inner(options, None).await
    }

    /// As [`EmbeddedPostgres::start`], serving TLS (`ssl=on`) with `ssl`'s
    /// certificate and key, written into the data directory as `server.crt`
    /// and `server.key`; clients choose whether to use it (`sslmode`).
    pub async fn start_with_ssl(
        options: EmbeddedPostgresOptions,
        ssl: EmbeddedSsl,
    ) -> Result<Self> {
        Self::start_inner(options, Some(ssl)).await
    }

    async fn start_inner(
        options: EmbeddedPostgresOptions,
        ssl: Option<EmbeddedSsl>,
    ) -> Result<Self> {
        let prepared =
            tokio::task::spawn_blocking(move || prepare_and_spawn(&options, ssl.as_ref()))
                .await
                .map_err(|e| failed("start", e))??;
        let (mut cluster, deadline) = prepared;
        if let Err(error) = cluster.wait_until_ready(deadline).await {
            cluster.stop_blocking_in_place();
            return Err(error);
        }
        Ok(cluster)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL of `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<()> {
        let mut conn = AsyncPgConnection::establish(&self.url("postgres"))
            .await
            .map_err(|e| failed("connecting", e))?;
        #[derive(diesel::QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            exists: bool,
        }
        let found: Found =
            sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
                .bind::<diesel::sql_types::Text, _>(database)
                .get_result(&mut conn)
                .await
                .map_err(|e| failed("looking up the database", e))?;
        if !found.exists {
            sql_query(format!(
                "CREATE DATABASE \"{}\"",
                database.replace('"', "\"\"")
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| failed("creating the database", e))?;
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected, data is
    /// checkpointed) and waits for it to exit.
    pub async fn stop(mut self) {
        let keeper = self.keeper.take();
        let pid = self.postmaster_pid;
        let _ = tokio::task::spawn_blocking(move || stop_postmaster(pid, keeper)).await;
    }

    fn stop_blocking_in_place(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            stop_postmaster(self.postmaster_pid, Some(keeper));
        }
    }

    async fn wait_until_ready(&mut self, deadline: Instant) -> Result<()> {
        let url = self.url("postgres");
        loop {
            match AsyncPgConnection::establish(&url).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let exited = self.keeper.as_ref().is_none_or(|k| k.is_finished());
                    if exited || Instant::now() > deadline {
                        let reason = if exited {
                            "the server exited during start-up".to_owned()
                        } else {
                            format!("not accepting connections in time ({})", describe(&error))
                        };
                        let root = self.root_dir.clone();
                        let log = tokio::task::spawn_blocking(move || log_tail(&root))
                            .await
                            .unwrap_or_default();
                        return Err(EmbeddedPostgresError::Failed {
                            step: "start",
                            reason,
                            log,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            // Signal only: waiting here could block an async runtime thread.
            // The keeper thread reaps the postmaster when it exits.
            let _ = kill(self.postmaster_pid, Signal::SIGINT);
            drop(keeper);
        }
    }
}

fn describe(error: &ConnectionError) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn stop_postmaster(pid: Pid, keeper: Option<JoinHandle<()>>) {
    let Some(keeper) = keeper else { return };
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !keeper.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !keeper.is_finished() {
        let _ = kill(pid, Signal::SIGQUIT);
    }
    let _ = keeper.join();
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_binaries() -> Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Ok(dir);
            }
            // Debian puts wrappers for initdb/pg_ctl on PATH but not postgres.
            if dir.join("initdb").is_file()
                && let Ok(target) = fs::canonicalize(dir.join("initdb"))
                && let Some(parent) = target.parent()
                && has_both(parent)
            {
                return Ok(parent.to_path_buf());
            }
        }
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|dir| has_both(dir))
        .ok_or(EmbeddedPostgresError::BinariesNotFound)
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| failed("finding a free port", e))
}

fn prepare_and_spawn(
    options: &EmbeddedPostgresOptions,
    ssl: Option<&EmbeddedSsl>,
) -> Result<(EmbeddedPostgres, Instant)> {
    let bin_dir = find_binaries()?;
    let runner = run_as()?;
    let root = &options.root_dir;
    fs::create_dir_all(root).map_err(|e| failed("creating the data directory", e))?;
    let root = fs::canonicalize(root).map_err(|e| failed("resolving the data directory", e))?;
    let pgdata = root.join("pgdata");
    let password_file = root.join("superuser.password");
    runner.ensure_reachable(&pgdata)?;

    if pgdata.join("PG_VERSION").is_file() {
        let owner = fs::metadata(&pgdata)
            .map_err(|e| failed("reading the data directory", e))?
            .uid();
        if owner != runner.uid.as_raw() {
            return Err(EmbeddedPostgresError::ForeignDataDirectory {
                path: pgdata,
                owner,
                runner: runner.uid.as_raw(),
            });
        }
    } else {
        init_cluster(&bin_dir, &runner, &root, &pgdata, &password_file, options)?;
    }
    let password = fs::read_to_string(&password_file)
        .map_err(|e| failed("reading the superuser password", e))?
        .trim()
        .to_owned();
    previous_run::wait_for_postmaster(&pgdata, runner.uid, options.startup_timeout)?;
    if let Some(ssl) = ssl {
        ssl::write_files(&pgdata, ssl, |path| runner.own(path))?;
    }

    let port = if options.port == 0 {
        free_port()?
    } else {
        options.port
    };
    let log_path = root.join("postgres.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| failed("opening the server log", e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| failed("opening the server log", e))?;
    // Remember where this start's output begins, for error reports.
    let _ = fs::write(
        root.join("postgres.log.offset"),
        log.metadata().map(|m| m.len()).unwrap_or(0).to_string(),
    );

    let mut command = runner.command(&bin_dir.join("postgres"));
    command
        .arg("-D")
        .arg(&pgdata)
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .arg("-c")
        .arg(format!("max_connections={}", options.max_connections))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if ssl.is_some() {
        command.args(["-c", "ssl=on"]);
    }
    for setting in &options.settings {
        command.arg("-c").arg(setting);
    }
    if !options.durable {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            // A test's database is dropped WITH (FORCE) while the test's
            // last tasks may still be logging in; a connection stuck in
            // authentication would hold the drop for the default minute.
            "-c",
            "authentication_timeout=5s",
        ]);
    }
    die_with_parent(&mut command);

    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let keeper = std::thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(error) => {
                let _ = pid_tx.send(Err(error));
            }
        })
        .map_err(|e| failed("starting the keeper thread", e))?;
    let pid = pid_rx
        .recv()
        .map_err(|e| failed("starting postgres", e))?
        .map_err(|e| failed("starting postgres", e))?;
    let cluster = EmbeddedPostgres {
        root_dir: root,
        port,
        password,
        postmaster_pid: Pid::from_raw(pid as i32),
        keeper: Some(keeper),
    };
    Ok((cluster, Instant::now() + options.startup_timeout))
}

/// Has the kernel send SIGINT to the postmaster when the thread that
/// started it ends (the keeper thread ends only with the process).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe. It runs after the uid switch, which would
    // otherwise clear the parent-death signal.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
        });
    }
}

fn init_cluster(
    bin_dir: &Path,
    runner: &RunAs,
    root: &Path,
    pgdata: &Path,
    password_file: &Path,
    options: &EmbeddedPostgresOptions,
) -> Result<()> {
    // A half-made cluster from an interrupted initdb is useless: start over.
    if pgdata.exists() {
        fs::remove_dir_all(pgdata).map_err(|e| failed("clearing a half-made cluster", e))?;
    }
    fs::create_dir_all(pgdata).map_err(|e| failed("creating pgdata", e))?;
    runner.own(pgdata)?;
    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    // initdb runs as the server user, so it gets its own copy to read.
    let init_password = root.join("initdb.password");
    fs::write(&init_password, &password).map_err(|e| failed("writing the password", e))?;
    runner.own(&init_password)?;
    let mut command = runner.command(&bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(pgdata)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale"])
        .args(["--auth", "scram-sha-256"])
        .arg(format!("--pwfile={}", init_password.display()))
        .stdin(Stdio::null());
    if !options.durable {
        command.arg("--no-sync");
    }
    let output = command.output().map_err(|e| failed("running initdb", e));
    let _ = fs::remove_file(&init_password);
    let output = output?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(pgdata);
        return Err(EmbeddedPostgresError::Failed {
            step: "initdb",
            reason: output.status.to_string(),
            log: format!("\n{}", String::from_utf8_lossy(&output.stderr).trim_end()),
        });
    }
    write_secret(password_file, &password)
}

/// Writes a file only its owner can read.
pub(crate) fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed("writing a secret file", e))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())
        .map_err(|e| failed("writing a secret file", e))
}

/// The server log written since the last start, at most its last 20 lines.
fn log_tail(root: &Path) -> String {
    let offset: u64 = fs::read_to_string(root.join("postgres.log.offset"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(root.join("postgres.log")) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n{tail}")
    }
}
