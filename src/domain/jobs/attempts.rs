//! A job's attempt history (`ListJobAttempts`, the console's job page):
//! the attempts that ended, as the statements ending them recorded them,
//! and the running one from the job row.

use uuid::Uuid;

use super::Jobs;
use crate::{
    db,
    domain::Page,
    error::AppError,
    store::{
        jobs::{self as rows, AttemptRow},
        pagination::{Cursor, PageRequest},
    },
};

impl Jobs {
    /// One page of job `id`'s attempts, oldest first. NOT_FOUND when the
    /// job does not exist, as [`Jobs::get`] answers; whoever may read a
    /// job may read its attempts.
    pub async fn attempts(
        &self,
        id: Uuid,
        page: PageRequest,
    ) -> Result<Page<AttemptRow>, AppError> {
        let after = match &page.after {
            None => 0,
            // A token of this list names its job and the last attempt.
            Some(cursor) if cursor.id == id => cursor
                .key
                .parse::<i32>()
                .ok()
                .filter(|attempt| *attempt >= 0)
                .ok_or_else(|| AppError::invalid("page_token", "is not a token from this list"))?,
            Some(_) => {
                return Err(AppError::invalid(
                    "page_token",
                    "is not a token from this list",
                ));
            }
        };
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "jobs.attempts", async |conn| {
            if rows::find(conn, id).await?.is_none() {
                return Err(AppError::NotFound(format!("job {id}")));
            }
            Ok(rows::list_attempts(conn, id, after, limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |attempt| Cursor {
            key: attempt.attempt.to_string(),
            id: attempt.job_id,
        }))
    }
}
