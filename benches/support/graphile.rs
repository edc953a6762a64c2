//! graphile-worker (the npm package, version locked in
//! `benches/graphile/package-lock.json`) draining the same number of no-op
//! jobs on the bench's own PostgreSQL, so that our drain is reported as a
//! ratio to a reference measured in the same run, not to a number from
//! another day. Skipped, with a line saying why, where Node is missing.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::support::Bench;

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/graphile")
}

/// Installs the locked package once; `Err` says why the reference is skipped.
async fn installed() -> Result<PathBuf, String> {
    let node = Command::new("node").arg("--version").output().await;
    if !node.is_ok_and(|out| out.status.success()) {
        return Err("node not found".into());
    }
    let dir = project();
    if !dir.join("node_modules/graphile-worker").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .status()
            .await
            .map_err(|e| format!("npm: {e}"))?;
        if !status.success() {
            return Err(format!("npm ci in {} failed: {status}", dir.display()));
        }
    }
    Ok(dir)
}

/// graphile-worker's drain rate in `mode` ("batched" or "default"), jobs/s
/// from the first job handled to the last completion committed.
pub async fn drain(bench: &Bench, jobs: usize, mode: &str) -> Result<f64, String> {
    let dir = installed().await?;
    let url = bench.other_database(&format!("graphile_{mode}")).await;
    let output = Command::new("node")
        .arg(dir.join("drain.mjs"))
        .arg(mode)
        .env("DATABASE_URL", url)
        .env("JOBS", jobs.to_string())
        .output()
        .await
        .map_err(|e| format!("node: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "drain.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("drain.mjs printed {line:?}: {e}"))?;
    report["jobs_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no jobs_per_second in {line}"))
}
