//! The previous run's postmaster, when it is still shutting down.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::unistd::Uid;

use super::{Result, failed};

/// Waits until the postmaster that `pgdata/postmaster.pid` names has exited,
/// when it is a live postgres process: the previous run's, still shutting
/// down after its parent died (the parent-death signal asks for a fast
/// shutdown, which ends with a checkpoint). A stale file (its process gone,
/// or its PID reused by something else) needs no wait: PostgreSQL replaces
/// it. After `timeout` the start fails, naming the process.
pub(super) fn wait_for_postmaster(pgdata: &Path, owner: Uid, timeout: Duration) -> Result<()> {
    let Some(pid) = recorded_postmaster(pgdata) else {
        return Ok(());
    };
    if !is_live_postgres(pid, owner) {
        return Ok(());
    }
    let started = Instant::now();
    tracing::warn!(
        pid,
        data_dir = %pgdata.display(),
        timeout_secs = timeout.as_secs(),
        "a PostgreSQL from an earlier run is still using the data directory (shutting down after \
         that run ended?); waiting for it to exit before starting"
    );
    while is_live_postgres(pid, owner) {
        if started.elapsed() >= timeout {
            return Err(failed(
                "start",
                format!(
                    "PostgreSQL (pid {pid}) still holds {} after {} s: if another serve uses this \
                     data directory, stop it or choose another --data-dir; otherwise stop that \
                     process (kill -INT {pid}) and start again",
                    pgdata.display(),
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(
        pid,
        waited_ms = started.elapsed().as_millis() as u64,
        "the earlier PostgreSQL exited; starting"
    );
    Ok(())
}

/// The PID on the first line of `postmaster.pid`, if any.
fn recorded_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Whether `pid` is a postgres process of `owner` (the user the cluster
/// runs as) that has not been reaped. A zombie counts: PostgreSQL itself
/// sees its PID as alive and refuses to start.
fn is_live_postgres(pid: i32, owner: Uid) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let owned = fs::metadata(&proc_dir).is_ok_and(|meta| meta.uid() == owner.as_raw());
    owned
        && fs::read_to_string(proc_dir.join("comm"))
            .is_ok_and(|comm| matches!(comm.trim(), "postgres" | "postmaster"))
}
