//! What the queue tells every replica, through PostgreSQL's NOTIFY on one
//! channel (delivered at commit, so never about something that rolled back):
//! work to pick up, jobs that changed (for WatchJob), leases taken away (for
//! the stream holding them, wherever it is connected).
//!
//! Architecture invariant: this sits below the job queue ([`super::jobs`])
//! and the module registry ([`super::modules`]), which both send these
//! notes (a module's removal cancels its jobs), and imports neither: so the
//! registry never names the queue.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::{
    error::AppError,
    store::jobs::{self as rows, JobStatus},
};

/// NOTIFY payloads are at most 8000 bytes; job ids are 36.
const IDS_PER_NOTIFICATION: usize = 200;

/// Why a lease was taken from its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeCause {
    /// A caller cancelled the job.
    Cancelled,
    /// The lease expired or its stream was cut off.
    LeaseLost,
    /// The job's module is being removed.
    ModuleRemoved,
}

impl RevokeCause {
    fn code(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::LeaseLost => "lease_lost",
            Self::ModuleRemoved => "module_removed",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "cancelled" => Self::Cancelled,
            "lease_lost" => Self::LeaseLost,
            "module_removed" => Self::ModuleRemoved,
            _ => return None,
        })
    }
}

/// A lease taken away: the stream holding it must tell its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub stream: Uuid,
    pub job: Uuid,
    pub attempt: i32,
    pub cause: RevokeCause,
}

/// Everything a transaction changed in the queue, announced when it commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChanges {
    /// Jobs whose row changed.
    pub changed: Vec<Uuid>,
    /// Some job became runnable now.
    pub runnable_now: bool,
    /// Some job will become runnable later (a schedule, a backoff).
    pub runnable_later: bool,
    /// Leases taken from their holders.
    pub revoked: Vec<Revocation>,
    /// Schedules may fire at other times now (one was written, or a module
    /// became ENABLED): every replica's firing loop looks again.
    pub schedules: bool,
}

impl QueueChanges {
    /// Notes cancelled jobs, telling the streams that held the running ones
    /// why (`cause`).
    pub fn note_cancelled(&mut self, cancelled: &[rows::CancelledJob], cause: RevokeCause) {
        for job in cancelled {
            self.changed.push(job.id);
            if let Some(stream) = job.holder {
                self.revoked.push(Revocation {
                    stream,
                    job: job.id,
                    attempt: job.attempt,
                    cause,
                });
            }
        }
    }

    /// Notes that job `id` is now in `status`, runnable at once or not.
    pub fn note(&mut self, id: Uuid, status: JobStatus, runnable_now: bool) {
        self.changed.push(id);
        if status == JobStatus::Pending {
            if runnable_now {
                self.runnable_now = true;
            } else {
                self.runnable_later = true;
            }
        }
    }

    /// Whether there is nothing to announce.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && !self.runnable_now
            && !self.runnable_later
            && self.revoked.is_empty()
            && !self.schedules
    }

    /// Queues the notifications in `conn`'s transaction.
    pub async fn announce(&self, conn: &mut AsyncPgConnection) -> Result<(), AppError> {
        for payload in self.payloads() {
            rows::notify(conn, &payload).await?;
        }
        Ok(())
    }

    fn payloads(&self) -> Vec<String> {
        let mut payloads = Vec::new();
        if self.runnable_now {
            payloads.push("w".to_owned());
        }
        if self.runnable_later {
            payloads.push("s".to_owned());
        }
        for chunk in self.changed.chunks(IDS_PER_NOTIFICATION) {
            let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            payloads.push(format!("c {}", ids.join(",")));
        }
        if self.schedules {
            payloads.push("sc".to_owned());
        }
        for revoked in &self.revoked {
            payloads.push(format!(
                "x {} {} {} {}",
                revoked.stream,
                revoked.job,
                revoked.attempt,
                revoked.cause.code()
            ));
        }
        payloads
    }
}

/// One notification, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// Work is runnable now.
    Runnable,
    /// Work will be runnable later: re-read the schedule.
    Scheduled,
    /// These jobs changed.
    Changed(Vec<Uuid>),
    /// A lease was taken away.
    Revoked(Revocation),
    /// Schedules changed: the firing loop looks again.
    Schedules,
}

impl QueueEvent {
    /// Parses a payload; `None` for anything this version does not know
    /// (a newer replica's), which is then ignored.
    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, rest) = payload.split_once(' ').unwrap_or((payload, ""));
        match kind {
            "w" => Some(Self::Runnable),
            "s" => Some(Self::Scheduled),
            "sc" => Some(Self::Schedules),
            "c" => Some(Self::Changed(
                rest.split(',').filter_map(|id| id.parse().ok()).collect(),
            )),
            "x" => {
                let mut parts = rest.split(' ');
                Some(Self::Revoked(Revocation {
                    stream: parts.next()?.parse().ok()?,
                    job: parts.next()?.parse().ok()?,
                    attempt: parts.next()?.parse().ok()?,
                    cause: RevokeCause::from_code(parts.next()?)?,
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_back() {
        let mut changes = QueueChanges::default();
        let ids: Vec<Uuid> = (0..450).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            changes.note(*id, JobStatus::Pending, true);
        }
        changes.revoked.push(Revocation {
            stream: Uuid::now_v7(),
            job: ids[0],
            attempt: 3,
            cause: RevokeCause::Cancelled,
        });
        let payloads = changes.payloads();
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let events: Vec<QueueEvent> = payloads
            .iter()
            .filter_map(|p| QueueEvent::parse(p))
            .collect();
        assert_eq!(events[0], QueueEvent::Runnable);
        let changed: Vec<Uuid> = events
            .iter()
            .filter_map(|e| match e {
                QueueEvent::Changed(ids) => Some(ids.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(changed, ids);
        assert_eq!(
            events.last(),
            Some(&QueueEvent::Revoked(changes.revoked[0]))
        );
        assert_eq!(QueueEvent::parse("z whatever"), None);
    }
}
