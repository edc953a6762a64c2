//! Pausing and resuming queues (a job name's jobs, or a module's) and the
//! figures of every queue (ListQueues).
//!
//! A pause is a row of `queue_pauses`; the jobs it holds stay PENDING and
//! leave the dispatch index (`held`, as for a module that is not ENABLED),
//! so that the claim never walks them. It is stored in two transactions:
//! the pause itself (under the lock that orders it against every statement
//! computing `held`, held for microseconds), then the walk over the queue's
//! pending jobs, which may be long and blocks nobody. A failure between the
//! two is repaired by calling again: both steps are idempotent.

use serde_json::json;

use super::{Jobs, Page, QueueChanges};
use crate::{
    db,
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent, AuditTrail},
        validate,
    },
    error::AppError,
    store::{
        jobs::{self as rows, PauseRow, QueueFigures, QueueKey, Rehold},
        modules as module_rows,
        pagination::{Cursor, PageRequest},
    },
};

/// One page of ListQueues: queues by name, and every pause (with the first
/// page only).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePage {
    pub queues: Page<QueueFigures>,
    pub pauses: Vec<PauseRow>,
}

impl Jobs {
    /// Pauses a queue; returns the pause that holds it (an earlier one when
    /// it was paused already) and how many pending jobs it holds.
    pub async fn pause(&self, actor: &Actor, key: QueueKey) -> Result<(PauseRow, i64), AppError> {
        let key = checked(key)?;
        let (pause, created) = db::transaction(&self.pool, "jobs.pause_queue", async |conn| {
            if let QueueKey::Module(module) = &key
                && module_rows::find(conn, module).await?.is_none()
            {
                return Err(AppError::NotFound(format!("module {module}")));
            }
            rows::lock_pauses(conn).await?;
            let (pause, created) = rows::insert_pause(conn, &key, actor.caller.user_id).await?;
            if created {
                audit(conn, actor, AuditAction::PauseQueue, &key, json!({})).await?;
            }
            Ok((pause, created))
        })
        .await?;
        let rehold = self.rehold(&key).await?;
        if created {
            tracing::info!(queue = %resource(&key), held = rehold.held_now, "queue paused");
        }
        Ok((pause, rehold.held_now))
    }

    /// Resumes a queue; returns whether a pause was removed and how many
    /// pending jobs were released for dispatch.
    pub async fn resume(&self, actor: &Actor, key: QueueKey) -> Result<(bool, i64), AppError> {
        let key = checked(key)?;
        let removed = db::transaction(&self.pool, "jobs.resume_queue", async |conn| {
            rows::lock_pauses(conn).await?;
            let removed = rows::delete_pause(conn, &key).await?;
            if removed {
                audit(conn, actor, AuditAction::ResumeQueue, &key, json!({})).await?;
            }
            Ok(removed)
        })
        .await?;
        let rehold = self.rehold(&key).await?;
        if rehold.released > 0 {
            self.wake.notify_one();
        }
        Ok((removed, rehold.released))
    }

    /// Recomputes `held` for the queue's pending jobs, and tells every
    /// replica's dispatch when some became runnable.
    async fn rehold(&self, key: &QueueKey) -> Result<Rehold, AppError> {
        db::transaction(&self.pool, "jobs.rehold_queue", async |conn| {
            let rehold = rows::rehold_queue(conn, key).await?;
            if rehold.released > 0 {
                QueueChanges {
                    runnable_now: true,
                    runnable_later: true,
                    ..QueueChanges::default()
                }
                .announce(conn)
                .await?;
            }
            Ok(rehold)
        })
        .await
    }

    /// The queues by name, one page at a time, of `module` only when given.
    pub async fn queues(
        &self,
        module: Option<String>,
        page: PageRequest,
    ) -> Result<QueuePage, AppError> {
        if let Some(module) = &module {
            validate::module_name("module_name", module)?;
        }
        let first = page.after.is_none();
        let after = page.after.map(|cursor| cursor.key).unwrap_or_default();
        let limit = page.limit;
        let (rows, pauses) = db::transaction(&self.pool, "jobs.list_queues", async |conn| {
            let figures = rows::queue_figures(conn, &after, module.as_deref(), limit + 1).await?;
            let pauses = if first {
                rows::pauses(conn).await?
            } else {
                Vec::new()
            };
            Ok((figures, pauses))
        })
        .await?;
        Ok(QueuePage {
            queues: Page::from_rows(rows, limit, |queue| Cursor {
                key: queue.name.clone(),
                id: uuid::Uuid::nil(),
            }),
            pauses,
        })
    }
}

/// The queue with its name checked (`queue.job_name`, `queue.module_name`).
fn checked(key: QueueKey) -> Result<QueueKey, AppError> {
    Ok(match key {
        QueueKey::Job(name) => QueueKey::Job(validate::job_name("queue.job_name", &name)?),
        QueueKey::Module(name) => {
            QueueKey::Module(validate::module_name("queue.module_name", &name)?)
        }
    })
}

/// How an audit row names a queue: `queues/job/<name>`, `queues/module/<name>`.
fn resource(key: &QueueKey) -> String {
    format!("queues/{}/{}", key.kind(), key.name())
}

async fn audit(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    action: AuditAction,
    key: &QueueKey,
    details: serde_json::Value,
) -> Result<(), AppError> {
    let mut details = details;
    details[key.kind()] = json!(key.name());
    let event = AuditEvent::success(action, Some(actor.caller.user_id), resource(key))
        .with_details(details);
    AuditTrail::record(conn, &actor.client, &event).await
}
