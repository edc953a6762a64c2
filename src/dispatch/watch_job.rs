//! WatchJob: the job as it is now, then each change, until it is finished.
//! Changes are heard through the replica's LISTEN connection, whichever
//! replica made them; a slow re-read covers notifications lost while that
//! connection was down. The stream re-checks its caller as Work streams do
//! and ends when the server drains.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::Shared;
use crate::{
    api::jobs::job_message, auth::tokens::TokenSubject, domain::Actor, error::AppError,
    proto::automation_v1 as pb, store::jobs::JobRow,
};

/// The server's half of a WatchJob stream.
pub type WatchStream = ReceiverStream<Result<pb::WatchJobResponse, Status>>;

/// Changes queued towards a slow reader; older ones are superseded anyway.
const BUFFER: usize = 8;

/// Reads the job (NOT_FOUND before the stream starts when it does not
/// exist) and starts streaming it.
pub async fn open(shared: Arc<Shared>, actor: Actor, id: Uuid) -> Result<WatchStream, AppError> {
    // Subscribe first, so that a change between the read and the wait is
    // not missed.
    let subscription = shared.watchers.subscribe(id);
    let job = shared.jobs.get(id).await?;
    let (out, response) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        if let Err(status) = follow(&shared, actor, subscription, job, &out).await {
            let _ = out.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(response))
}

async fn follow(
    shared: &Shared,
    actor: Actor,
    mut subscription: super::watch::Subscription,
    mut job: JobRow,
    out: &mpsc::Sender<Result<pb::WatchJobResponse, Status>>,
) -> Result<(), Status> {
    let send = |job: JobRow| async {
        out.send(Ok(pb::WatchJobResponse {
            job: Some(job_message(job)),
        }))
        .await
        .map_err(|_| Status::cancelled("the watcher went away"))
    };
    send(job.clone()).await?;
    let interval = shared
        .settings
        .heartbeat_interval()
        .max(Duration::from_millis(50));
    let mut reread = tokio::time::interval(shared.settings.poll_interval);
    let mut recheck = tokio::time::interval(interval);
    reread.tick().await;
    recheck.tick().await;
    while !job.status.is_terminal() {
        tokio::select! {
            changed = subscription.changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = reread.tick() => {}
            _ = recheck.tick() => {
                recheck_caller(shared, &actor).await?;
                continue;
            }
            () = shared.draining.cancelled() => {
                return Err(Status::unavailable("the server is shutting down; watch again"));
            }
            () = out.closed() => return Ok(()),
        }
        let now = match shared.jobs.get(job.id).await {
            Ok(now) => now,
            Err(AppError::NotFound(_)) => {
                return Err(Status::not_found(format!("job {} was deleted", job.id)));
            }
            // The database is away: the slow re-read tries again.
            Err(_) => continue,
        };
        if now != job {
            job = now;
            send(job.clone()).await?;
        }
    }
    Ok(())
}

async fn recheck_caller(shared: &Shared, actor: &Actor) -> Result<(), Status> {
    let subject = TokenSubject {
        user_id: actor.caller.user_id,
        session_id: actor.caller.session_id,
    };
    match shared.sessions.resolve_caller(subject).await {
        Ok(caller) if caller.holds("jobs:read") => Ok(()),
        Ok(_) => {
            Err(AppError::PermissionDenied("the caller no longer holds jobs:read".into()).into())
        }
        Err(error @ AppError::Unauthenticated(_)) => Err(error.into()),
        Err(_) => Ok(()),
    }
}
