//! Rate limits (`PutRateLimit`, `ListRateLimits`, `DeleteRateLimit`):
//! named token buckets a job takes a token from when it is leased. The
//! claim draws the tokens (`store::jobs::claim`); here are the rules of
//! declaring and removing buckets.
//!
//! Deleting a bucket that PENDING or RUNNING jobs name is refused
//! (FAILED_PRECONDITION): those jobs were created under a limit, and
//! running them unlimited the moment their bucket went away would break
//! the promise the limit made to whatever it protects. Cancel or finish
//! them first.

use serde_json::json;

use super::Jobs;
use crate::{
    db,
    domain::{
        Actor, Page,
        audit::{AuditAction, AuditEvent, AuditTrail},
        validate,
    },
    error::AppError,
    store::{
        pagination::{Cursor, PageRequest},
        rate_limits::{self as rows, NewRateLimit, RateLimitRow},
    },
};

/// The range of a bucket's units and burst.
pub const TOKENS_RANGE: std::ops::RangeInclusive<i32> = 1..=1_000_000;
/// The range of a bucket's interval, in milliseconds (1 ms to 1 day).
pub const INTERVAL_MS_RANGE: std::ops::RangeInclusive<i64> = 1..=86_400_000;

/// A bucket as a client declares it; `burst` 0 means `units`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub name: String,
    pub units: i32,
    /// `None`: not given.
    pub interval_ms: Option<i64>,
    pub burst: i32,
}

impl RateLimitSpec {
    /// Checks the shapes; errors name `rate_limit.<field>`.
    fn validate(&self) -> Result<NewRateLimit, AppError> {
        let name = validate::job_name("rate_limit.name", &self.name)?;
        let range = |field: &str| {
            AppError::invalid(
                format!("rate_limit.{field}"),
                format!(
                    "must be within {}..{}",
                    TOKENS_RANGE.start(),
                    TOKENS_RANGE.end()
                ),
            )
        };
        if !TOKENS_RANGE.contains(&self.units) {
            return Err(range("units"));
        }
        let burst = match self.burst {
            0 => self.units,
            burst if TOKENS_RANGE.contains(&burst) => burst,
            _ => return Err(range("burst")),
        };
        let interval_ms = self
            .interval_ms
            .filter(|ms| INTERVAL_MS_RANGE.contains(ms))
            .ok_or_else(|| {
                AppError::invalid("rate_limit.interval", "must be within 1 ms and 1 day")
            })?;
        Ok(NewRateLimit {
            name,
            units: self.units,
            interval_ms,
            burst,
        })
    }
}

impl Jobs {
    /// Creates or replaces a bucket.
    pub async fn put_rate_limit(
        &self,
        actor: &Actor,
        spec: RateLimitSpec,
    ) -> Result<RateLimitRow, AppError> {
        let new = spec.validate()?;
        let row = db::transaction(&self.pool, "rate_limits.put", async |conn| {
            let row = rows::put(conn, &new).await?;
            let created = row.created_at == row.updated_at;
            let event = AuditEvent::success(
                AuditAction::PutRateLimit,
                Some(actor.caller.user_id),
                format!("rate_limits/{}", row.name),
            )
            .with_details(json!({
                "created": created,
                "units": row.units,
                "interval_ms": row.interval_ms,
                "burst": row.burst,
            }));
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(row)
        })
        .await?;
        // Tokens may be there now: let the claim look.
        self.wake.notify_one();
        Ok(row)
    }

    /// Buckets by name, one page at a time.
    pub async fn list_rate_limits(
        &self,
        page: PageRequest,
    ) -> Result<Page<RateLimitRow>, AppError> {
        let limit = page.limit;
        let after = page.after.map(|cursor| cursor.key);
        let rows = db::with_connection(&self.pool, "rate_limits.list", async |conn| {
            Ok(rows::list(conn, after.as_deref(), limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |row| Cursor {
            key: row.name.clone(),
            id: uuid::Uuid::nil(),
        }))
    }

    /// Deletes a bucket no open job names.
    pub async fn delete_rate_limit(&self, actor: &Actor, name: &str) -> Result<(), AppError> {
        let name = validate::job_name("name", name)?;
        db::transaction(&self.pool, "rate_limits.delete", async |conn| {
            if !rows::lock_for_delete(conn, &name).await? {
                return Err(AppError::NotFound(format!("rate limit {name}")));
            }
            if rows::named_by_open_jobs(conn, &name).await? {
                return Err(AppError::FailedPrecondition(format!(
                    "PENDING or RUNNING jobs take tokens from rate limit {name}: cancel or \
                     finish them before deleting it"
                )));
            }
            rows::delete(conn, &name).await?;
            let event = AuditEvent::success(
                AuditAction::DeleteRateLimit,
                Some(actor.caller.user_id),
                format!("rate_limits/{name}"),
            );
            AuditTrail::record(conn, &actor.client, &event).await?;
            Ok(())
        })
        .await
    }
}
