//! Firing: turning a due schedule's fire times into jobs, exactly one per
//! fire time whatever the number of replicas. Each replica's loop runs a
//! few claims at once, each claiming one due schedule
//! (`FOR UPDATE SKIP LOCKED`, due by the database's clock) and, in the same
//! transaction, creates its jobs through CreateJob's
//! rules, ties each to its fire time (unique per schedule in the database)
//! and advances the schedule's next fire time. A replica that dies midway
//! rolls back; another claims the schedule again.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{
    Schedules,
    cron::{self, CronSchedule},
    missed_policy,
    spec::{self, OverlapPolicy},
};
use crate::{
    db,
    domain::jobs::scheduled::TemplateCaller,
    error::AppError,
    store::schedules::{self as rows, ScheduleChanges, ScheduleRow},
};

/// What one claim did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fired {
    /// The schedule claimed.
    pub schedule: Uuid,
    /// Jobs created.
    pub created: usize,
    /// Fire times that made no job: missed (SKIP), skipped by the overlap
    /// policy, or refused by CreateJob's rules.
    pub skipped: usize,
    /// Unfinished jobs cancelled by the overlap policy.
    pub cancelled: usize,
}

/// Most schedules one call of [`Schedules::fire_due`] claims, so that the
/// loop looks up between bursts.
const MAX_CLAIMS_PER_ROUND: usize = 1000;

/// Claims fired at once by one replica, each in its own transaction (and
/// on its own pooled connection): a slow schedule holds one of them, not
/// every other due schedule.
pub const FIRING_TASKS: usize = 4;

/// Longest a firing transaction waits for a row lock before it fails and
/// its schedule backs off.
const FIRE_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// First pause of a schedule whose claim failed; it doubles with each
/// failure in a row (as this replica counts them) up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What the claims of one round share.
#[derive(Default)]
struct Round {
    fired: Mutex<Vec<Fired>>,
    /// Schedules whose claim failed this round: not claimed again in it.
    passed: Mutex<Vec<Uuid>>,
    claims: AtomicUsize,
}

impl Schedules {
    /// Fires every schedule due now, [`FIRING_TASKS`] claims at a time,
    /// one transaction each; returns what each claim did. A claim that
    /// fails (a lock wait past [`FIRE_LOCK_TIMEOUT`], a deadlock, an
    /// internal error) rolls back, and its schedule backs off in a
    /// transaction of its own (see [`Self::back_off`]) while the round goes
    /// on with the others: one failing schedule never stops the rest. An
    /// `Err` is a claim that could not even be made (the database is away).
    pub async fn fire_due(&self) -> Result<Vec<Fired>, AppError> {
        let round = Round::default();
        let tasks = (0..FIRING_TASKS).map(|_| self.fire_some(&round));
        let ended = futures_util::future::join_all(tasks).await;
        let fired = round.fired.into_inner().unwrap_or_else(|e| e.into_inner());
        match ended.into_iter().find_map(Result::err) {
            Some(error) if fired.is_empty() => Err(error),
            _ => Ok(fired),
        }
    }

    /// One firing task of a round: claims and fires until nothing is due.
    async fn fire_some(&self, round: &Round) -> Result<(), AppError> {
        while round.claims.fetch_add(1, Ordering::Relaxed) < MAX_CLAIMS_PER_ROUND {
            let passed = crate::sync::lock(&round.passed).clone();
            let claimed = Mutex::new(None);
            let result = db::transaction(&self.pool, "schedules.fire", async |conn| {
                let Some(row) = rows::claim_due(conn, &passed).await? else {
                    return Ok(None);
                };
                *crate::sync::lock(&claimed) = Some((row.id, row.next_fire_at));
                rows::bound_lock_waits(conn, FIRE_LOCK_TIMEOUT).await?;
                self.fire(conn, row).await.map(Some)
            })
            .await;
            let claimed = claimed.into_inner().unwrap_or_else(|e| e.into_inner());
            match (result, claimed) {
                (Ok(Some(fired)), _) => {
                    if fired.created > 0 {
                        self.jobs.wake_dispatch();
                    }
                    self.forget_failures(fired.schedule);
                    crate::sync::lock(&round.fired).push(fired);
                }
                (Ok(None), _) => return Ok(()),
                (Err(error), Some((schedule, Some(due)))) => {
                    crate::sync::lock(&round.passed).push(schedule);
                    self.back_off(schedule, due, &error).await?;
                }
                (Err(error), _) => return Err(error),
            }
        }
        Ok(())
    }

    /// Puts off a schedule whose claim failed with `error`: its next fire
    /// time moves [`BACKOFF_FIRST`] from now, doubling with each failure in
    /// a row up to [`BACKOFF_MAX`], and `lastError` says why (its fire
    /// time, when it fires, is that later time). Counted in
    /// `schedule_fire_failures_total`.
    async fn back_off(
        &self,
        schedule: Uuid,
        due: NaiveDateTime,
        error: &AppError,
    ) -> Result<(), AppError> {
        let failures = {
            let mut failures = crate::sync::lock(&self.failures);
            let count = failures.entry(schedule).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let delay = BACKOFF_FIRST
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(BACKOFF_MAX);
        // An internal error's text is the server's, not the schedule
        // reader's: its kind is enough.
        let why = match error {
            AppError::Internal(detail) if detail.contains("lock timeout") => {
                "a job or row it must change stayed locked by another transaction".to_owned()
            }
            AppError::Internal(_) | AppError::Config(_) => error.reason().to_owned(),
            other => format!("{}: {other}", other.reason()),
        };
        let text = format!(
            "could not fire ({why}); failure {failures} in a row, tried again in {}s",
            delay.as_secs()
        );
        tracing::warn!(%schedule, %error, failures, "a schedule could not fire; backing off");
        crate::telemetry::names::schedule_fire_failed();
        db::transaction(&self.pool, "schedules.back_off", async |conn| {
            rows::back_off(conn, schedule, due, delay, &text).await?;
            Ok(())
        })
        .await
    }

    /// A schedule fired: its failures in a row start again from none.
    fn forget_failures(&self, schedule: Uuid) {
        let mut failures = crate::sync::lock(&self.failures);
        if !failures.is_empty() {
            failures.remove(&schedule);
        }
    }

    /// Acts on a claimed (locked) schedule's due fire times.
    async fn fire(
        &self,
        conn: &mut AsyncPgConnection,
        row: ScheduleRow,
    ) -> Result<Fired, AppError> {
        let mut fired = Fired {
            schedule: row.id,
            ..Fired::default()
        };
        let Some(due) = row.next_fire_at else {
            return Ok(fired);
        };
        let now = rows::database_now(conn).await?;
        let cron = match CronSchedule::parse(&row.cron, &row.time_zone, "cron", "time_zone") {
            Ok(cron) => cron,
            Err(error) => {
                // Only a row written behind the service's back can get
                // here: it stops firing and says why.
                let changes = ScheduleChanges {
                    next_fire_at: Some(None),
                    last_error: Some(Some(format!("cannot fire: {error}"))),
                    ..ScheduleChanges::default()
                };
                rows::update(conn, row.id, &changes).await?;
                return Ok(fired);
            }
        };
        let plan = cron::plan(
            &cron,
            due,
            now,
            self.settings.misfire_grace,
            missed_policy(&row.missed_fire_policy),
        );
        fired.skipped = plan.skipped;
        let overlap = OverlapPolicy::from_label(&row.overlap_policy);
        let spec = spec::job_spec(&row);
        let mut changes = ScheduleChanges {
            next_fire_at: Some(plan.next),
            ..ScheduleChanges::default()
        };
        for at in plan.fires {
            changes.last_fire_at = Some(Some(at));
            if rows::fired(conn, row.id, at).await? {
                // Only a fire time moved back by hand can have a job.
                fired.skipped += 1;
                continue;
            }
            let unfinished = match overlap {
                OverlapPolicy::Allow => Vec::new(),
                _ => rows::unfinished_runs(conn, row.id).await?,
            };
            if overlap == OverlapPolicy::Skip && !unfinished.is_empty() {
                fired.skipped += 1;
                continue;
            }
            match self.create_fire_job(conn, &row, &spec, at).await? {
                Ok(job) => {
                    fired.created += 1;
                    changes.last_job_id = Some(Some(job));
                    changes.last_error = Some(None);
                }
                Err(refusal) => {
                    fired.skipped += 1;
                    changes.last_error = Some(Some(refusal));
                    continue;
                }
            }
            if overlap == OverlapPolicy::CancelPrevious && !unfinished.is_empty() {
                let ids: Vec<Uuid> = unfinished.iter().map(|run| run.id).collect();
                fired.cancelled += self.jobs.cancel_for_schedule(conn, &ids).await?;
            }
        }
        rows::update(conn, row.id, &changes).await?;
        Ok(fired)
    }

    /// Creates the job of fire time `at`: `Ok(Err(why))` when CreateJob's
    /// rules refuse the template now (the fire time is passed over and the
    /// schedule says why); an `Err` is the database's and rolls the claim
    /// back.
    async fn create_fire_job(
        &self,
        conn: &mut AsyncPgConnection,
        row: &ScheduleRow,
        spec: &crate::domain::jobs::JobSpec,
        at: NaiveDateTime,
    ) -> Result<Result<Uuid, String>, AppError> {
        let created = self
            .jobs
            .create_from_template(
                conn,
                TemplateCaller::Fire {
                    creator: row.created_by,
                },
                spec,
                row.module_name.as_deref(),
            )
            .await;
        match created {
            Ok(job) => {
                rows::attach_jobs(conn, row.id, &[(job.id, Some(at))]).await?;
                Ok(Ok(job.id))
            }
            Err(
                error @ (AppError::InvalidArgument { .. }
                | AppError::NotFound(_)
                | AppError::FailedPrecondition(_)
                | AppError::PermissionDenied(_)
                | AppError::Conflict { .. }),
            ) => {
                tracing::warn!(schedule = %row.id, %error, "a fire time made no job");
                Ok(Err(error.to_string()))
            }
            Err(error) => Err(error),
        }
    }
}
