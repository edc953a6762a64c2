//! Firing: turning a due schedule's fire times into jobs, exactly one per
//! fire time whatever the number of replicas. Each replica's loop claims one
//! due schedule at a time (`FOR UPDATE SKIP LOCKED`, due by the database's
//! clock) and, in the same transaction, creates its jobs through CreateJob's
//! rules, ties each to its fire time (unique per schedule in the database)
//! and advances the schedule's next fire time. A replica that dies midway
//! rolls back; another claims the schedule again.

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

impl Schedules {
    /// Fires every schedule due now, one transaction each; returns what
    /// each claim did.
    pub async fn fire_due(&self) -> Result<Vec<Fired>, AppError> {
        let mut done = Vec::new();
        while done.len() < MAX_CLAIMS_PER_ROUND {
            let fired = db::transaction(&self.pool, "schedules.fire", async |conn| {
                let Some(row) = rows::claim_due(conn).await? else {
                    return Ok(None);
                };
                self.fire(conn, row).await.map(Some)
            })
            .await?;
            match fired {
                Some(fired) => {
                    if fired.created > 0 {
                        self.jobs.wake_dispatch();
                    }
                    done.push(fired);
                }
                None => break,
            }
        }
        Ok(done)
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
