//! Pausing and resuming queues (a job name's jobs, or a module's) and the
//! figures of every queue (ListQueues).
//!
//! A pause is a row of `queue_pauses`; the jobs it holds stay PENDING and
//! leave the dispatch index (`held`, as for a module that is not ENABLED),
//! so that the claim never walks them. A pause or a resume commits its row
//! change together with a `queue_walks` row (a walk is owed), under a
//! per-queue advisory lock (pauses and resumes of one queue one at a time;
//! no table lock, so creates and failure reports never wait on it). The
//! walk then recomputes `held` for the queue's pending jobs in short
//! batches (`store/jobs/walks.rs` argues why it misses none) and clears
//! the owed row. A walk cut short (a crash, a client gone, the database
//! away) stays owed: every replica finishes owed walks in the background
//! ([`Jobs::finish_owed_walks`]), and ListQueues shows the queue as
//! settling until then.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Jobs, Page, QueueChanges, owners::Owners};
use crate::{
    db,
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent, AuditTrail},
        validate,
    },
    error::AppError,
    store::{
        jobs::{self as rows, PauseRow, QueueFigures, QueueKey},
        modules as module_rows,
        pagination::{Cursor, PageRequest},
    },
};

/// Pauses ListQueues returns (with its first page).
pub const PAUSES_LISTED: i64 = 1_000;

/// How long a pause or a resume waits for another one of the same queue.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How long PauseQueue and ResumeQueue wait for their walk before they
/// answer with `settling` (the walk goes on).
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a walk right after a change waits for transactions older than
/// it (see `store/jobs/walks.rs`) before it walks anyway and stays owed.
const OLDER_WAIT: Duration = Duration::from_secs(10);

/// The same wait for a walk taken over in the background: it walks only
/// once no older transaction is open (else it waits for the next round),
/// so that a session idle in a transaction for hours does not make every
/// round walk the queue again.
const OLDER_WAIT_OWED: Duration = Duration::from_secs(1);

/// How old an owed walk must be before a background task takes it over
/// (younger ones are most likely being walked by the call that owes it).
pub const OWED_WALK_AGE: Duration = Duration::from_secs(30);

/// One page of ListQueues: queues by name, and the pauses (with the first
/// page only, at most [`PAUSES_LISTED`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePage {
    pub queues: Page<QueueFigures>,
    pub pauses: Vec<PauseRow>,
}

/// What a walk did (so far, when it is not finished).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    /// Jobs that became held.
    pub held: i64,
    /// Jobs that became dispatchable.
    pub released: i64,
    /// Pending jobs of the queue held after the walk.
    pub held_now: i64,
    /// The walk is not finished (it goes on, or is owed).
    pub settling: bool,
}

impl Jobs {
    /// Pauses a queue; returns the pause that holds it (an earlier one when
    /// it was paused already) and what its walk did.
    pub async fn pause(
        &self,
        actor: &Actor,
        key: QueueKey,
    ) -> Result<(PauseRow, Walked), AppError> {
        let key = checked(key)?;
        self.ensure_may_control(actor, &key).await?;
        let max = self.settings.queue_pauses_max;
        let (pause, created, generation) =
            db::transaction(&self.pool, "jobs.pause_queue", async |conn| {
                lock_queue(conn, &key).await?;
                if let QueueKey::Module(module) = &key
                    && module_rows::find(conn, module).await?.is_none()
                {
                    return Err(AppError::NotFound(format!("module {module}")));
                }
                let (pause, created) = rows::insert_pause(conn, &key, actor.caller.user_id).await?;
                // Counted with the new pause (the transaction rolls it back).
                if created && rows::pause_count(conn).await? > max {
                    return Err(AppError::LimitExceeded {
                        limit: "QUEUE_PAUSES_MAX",
                        message: format!("at most {max} queues may be paused at once"),
                        retry_after: Duration::from_secs(60),
                    });
                }
                let generation = if created {
                    audit(conn, actor, AuditAction::PauseQueue, &key, json!({})).await?;
                    Some(rows::owe_walk(conn, &key).await?)
                } else {
                    None
                };
                Ok((pause, created, generation))
            })
            .await?;
        let walked = self.walk_answer(&key, generation, true).await?;
        if created {
            tracing::info!(queue = %resource(&key), held = walked.held_now, "queue paused");
        }
        Ok((pause, walked))
    }

    /// Resumes a queue; returns whether a pause was removed and what its
    /// walk did (`released`: jobs released for dispatch).
    pub async fn resume(&self, actor: &Actor, key: QueueKey) -> Result<(bool, Walked), AppError> {
        let key = checked(key)?;
        self.ensure_may_control(actor, &key).await?;
        let generation = db::transaction(&self.pool, "jobs.resume_queue", async |conn| {
            lock_queue(conn, &key).await?;
            let removed = rows::delete_pause(conn, &key).await?;
            if removed {
                audit(conn, actor, AuditAction::ResumeQueue, &key, json!({})).await?;
                return Ok(Some(rows::owe_walk(conn, &key).await?));
            }
            Ok(None)
        })
        .await?;
        let walked = self.walk_answer(&key, generation, false).await?;
        Ok((generation.is_some(), walked))
    }

    /// Pausing or resuming a module's jobs, or a job name a module owns,
    /// changes what runs of the module's code: it needs `modules:execute`,
    /// as cancelling or retrying those jobs does.
    async fn ensure_may_control(&self, actor: &Actor, key: &QueueKey) -> Result<(), AppError> {
        let name = match key {
            QueueKey::Module(_) => return super::ensure_may_execute(actor),
            QueueKey::Job(name) => name,
        };
        if actor.caller.holds(crate::domain::modules::EXECUTE) {
            return Ok(());
        }
        let owned = db::with_connection(&self.pool, "jobs.queue_owner", async |conn| {
            let owners = Owners::read(conn, &self.manifests, &[name.as_str()], &[]).await?;
            Ok(!owners.of(name).is_empty())
        })
        .await?;
        if owned {
            return super::ensure_may_execute(actor);
        }
        Ok(())
    }

    /// Walks the queue when a change owes it (`generation`) on a task of
    /// its own, and waits for it at most [`ANSWER_WAIT`]: a longer walk
    /// goes on, and the answer says `settling`. Without a change (paused
    /// already, not paused) nothing is walked: the answer counts the held
    /// jobs (`count_held`) and says whether an earlier walk is owed.
    async fn walk_answer(
        &self,
        key: &QueueKey,
        generation: Option<i64>,
        count_held: bool,
    ) -> Result<Walked, AppError> {
        let Some(generation) = generation else {
            return db::transaction(&self.pool, "jobs.queue_held", async |conn| {
                let held_now = if count_held {
                    rows::held_count(conn, key).await?
                } else {
                    0
                };
                Ok(Walked {
                    held_now,
                    settling: rows::walk_owed(conn, key).await?,
                    ..Walked::default()
                })
            })
            .await;
        };
        let progress = Arc::new(Mutex::new(Walked::default()));
        let jobs = self.clone();
        let task_key = key.clone();
        let task_progress = progress.clone();
        let task =
            tokio::spawn(
                async move { jobs.walk(&task_key, generation, true, &task_progress).await },
            );
        match tokio::time::timeout(ANSWER_WAIT, task).await {
            Ok(Ok(done)) => done,
            Ok(Err(join)) => Err(AppError::Internal(format!("queue walk: {join}"))),
            Err(_) => {
                let mut walked = *progress.lock().expect("walk progress");
                walked.settling = true;
                Ok(walked)
            }
        }
    }

    /// Recomputes `held` for the queue's pending jobs in batches (see
    /// `store/jobs/walks.rs`), tells every replica's dispatch when some
    /// became runnable, and marks the walk of `generation` done. Right
    /// after the change (`now`) it walks even while older transactions
    /// stay open (and the walk stays owed); taken over later, it walks
    /// only once they have ended.
    async fn walk(
        &self,
        key: &QueueKey,
        generation: i64,
        now: bool,
        progress: &Mutex<Walked>,
    ) -> Result<Walked, AppError> {
        let since = db::with_connection(&self.pool, "jobs.queue_walk", async |conn| {
            Ok(rows::database_now(conn).await?)
        })
        .await?;
        let deadline = Instant::now() + if now { OLDER_WAIT } else { OLDER_WAIT_OWED };
        let clean = loop {
            let older = db::with_connection(&self.pool, "jobs.queue_walk", async |conn| {
                Ok(rows::older_transactions(conn, since).await?)
            })
            .await?;
            if older == 0 {
                break true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(queue = %resource(key), older,
                    "transactions older than the queue's walk are still open; it stays owed");
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !clean && !now {
            return Ok(Walked {
                settling: true,
                ..Walked::default()
            });
        }
        let names: Vec<(String, Option<String>)> = match key {
            QueueKey::Job(name) => vec![(name.clone(), None)],
            QueueKey::Module(module) => {
                db::with_connection(&self.pool, "jobs.queue_walk", async |conn| {
                    Ok(rows::pending_names_of_module(conn, module).await?)
                })
                .await?
                .into_iter()
                .map(|name| (name, Some(module.clone())))
                .collect()
            }
        };
        let limit = self.settings.queue_walk_batch.max(1);
        let mut walked = Walked::default();
        for (name, module) in &names {
            let mut after = None;
            loop {
                let batch = db::transaction(&self.pool, "jobs.queue_walk", async |conn| {
                    let batch =
                        rows::walk_batch(conn, name, module.as_deref(), after, limit).await?;
                    if batch.released > 0 {
                        QueueChanges {
                            runnable_now: true,
                            runnable_later: true,
                            ..QueueChanges::default()
                        }
                        .announce(conn)
                        .await?;
                    }
                    Ok(batch)
                })
                .await?;
                walked.held += batch.held;
                walked.released += batch.released;
                walked.held_now += batch.held_now;
                *progress.lock().expect("walk progress") = walked;
                if batch.released > 0 {
                    self.wake.notify_one();
                }
                match batch.last {
                    Some(last) if batch.picked >= limit => after = Some(last),
                    _ => break,
                }
            }
        }
        if clean {
            db::with_connection(&self.pool, "jobs.queue_walk", async |conn| {
                Ok(rows::settle_walk(conn, key, generation).await?)
            })
            .await?;
        }
        // Owed still: this walk could not settle, or a later change owes one.
        walked.settling = !clean
            || db::with_connection(&self.pool, "jobs.queue_walk", async |conn| {
                Ok(rows::walk_owed(conn, key).await?)
            })
            .await?;
        Ok(walked)
    }

    /// Finishes the walks owed for longer than [`OWED_WALK_AGE`] (a
    /// replica that died or timed out in the middle of one), a few at a
    /// time; returns how many it walked. Every replica runs it: two walking
    /// the same queue only repeat each other's work.
    pub async fn finish_owed_walks(&self) -> Result<usize, AppError> {
        let owed = db::with_connection(&self.pool, "jobs.owed_walks", async |conn| {
            Ok(rows::owed_walks(conn, OWED_WALK_AGE.as_secs() as i64, 8).await?)
        })
        .await?;
        let progress = Mutex::new(Walked::default());
        let mut walked = 0;
        for walk in owed {
            let Some(key) = walk.key() else { continue };
            let done = self.walk(&key, walk.generation, false, &progress).await?;
            if done.settling {
                continue;
            }
            tracing::info!(queue = %resource(&key), "owed queue walk finished");
            walked += 1;
        }
        Ok(walked)
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
                rows::pauses(conn, PAUSES_LISTED).await?
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

/// Takes the advisory lock that orders pauses and resumes of the queue,
/// for the rest of the transaction; ABORTED when another call holds it
/// longer than [`LOCK_WAIT`] (never an unbounded wait).
async fn lock_queue(
    conn: &mut diesel_async::AsyncPgConnection,
    key: &QueueKey,
) -> Result<(), AppError> {
    let deadline = Instant::now() + LOCK_WAIT;
    while !rows::try_lock_queue(conn, key).await? {
        if Instant::now() >= deadline {
            return Err(AppError::Aborted(format!(
                "{} is being paused or resumed by another call; retry",
                resource(key)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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
