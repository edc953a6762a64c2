//! What the dispatcher asks about workers that found nothing the last time
//! they were claimed for (see `dispatch::idle` and `store::jobs::runnable`).
//! Reads only, each in a transaction of its own with the probes' planner
//! settings (`rows::plan_as_probe`).

use super::Jobs;
use crate::{db, error::AppError, store::jobs as rows};

impl Jobs {
    /// The distinct names of pending jobs, at most `cap` of them.
    pub async fn pending_names(&self, cap: usize) -> Result<Vec<String>, AppError> {
        db::transaction(&self.pool, "jobs.pending_names", async |conn| {
            rows::plan_as_probe(conn).await?;
            Ok(rows::pending_names(conn, cap).await?)
        })
        .await
    }

    /// Of `names`, those that may have a job a claim could take now (never
    /// one left out that has).
    pub async fn names_with_work(&self, names: &[String]) -> Result<Vec<String>, AppError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        db::transaction(&self.pool, "jobs.names_with_work", async |conn| {
            rows::plan_as_probe(conn).await?;
            Ok(rows::names_with_work(conn, names).await?)
        })
        .await
    }

    /// Whether any job at all is runnable now.
    pub async fn anything_runnable(&self) -> Result<bool, AppError> {
        db::transaction(&self.pool, "jobs.anything_runnable", async |conn| {
            rows::plan_as_probe(conn).await?;
            Ok(rows::anything_runnable(conn).await?)
        })
        .await
    }
}
