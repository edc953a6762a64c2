//! What the dispatcher asks about workers that found nothing the last time
//! they were claimed for (see `dispatch::idle`).

use super::Jobs;
use crate::{db, error::AppError, store::jobs as rows};

impl Jobs {
    /// Of `names`, those that may have a job a claim could take now (never
    /// one left out that has), and, when `any` is asked, whether any job
    /// at all is runnable. Reads only.
    pub async fn names_with_work(
        &self,
        names: &[String],
        any: bool,
    ) -> Result<(Vec<String>, bool), AppError> {
        db::with_connection(&self.pool, "jobs.names_with_work", async |conn| {
            Ok(rows::names_with_work(conn, names, any).await?)
        })
        .await
    }
}
