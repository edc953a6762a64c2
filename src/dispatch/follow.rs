//! WatchJob and WatchModule: a record as it is now, then each change, until
//! it is settled (a finished job, a module out of its transition) or gone.
//! Changes are heard through the replica's LISTEN connection, whichever
//! replica made them; a slow re-read covers notifications lost while that
//! connection was down. The stream re-checks its caller as Work streams do
//! and ends when the server drains.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::{Shared, watch::Subscription};
use crate::{
    api::{jobs::job_message, modules::module_message},
    domain::{Actor, modules::lifecycle},
    error::AppError,
    proto::automation_v1 as pb,
    store::{jobs::JobRow, modules::ModuleRow},
};

/// The server's half of a watch stream.
pub type FollowStream<M> = ReceiverStream<Result<M, Status>>;

/// Changes queued towards a slow reader; older ones are superseded anyway.
const BUFFER: usize = 8;

/// A record a client can follow.
pub(crate) trait Followed: Clone + PartialEq + Send + Sync + 'static {
    /// One message of the stream.
    type Message: Send + 'static;
    /// What the caller must keep holding while the stream is open.
    const PERMISSION: &'static str;
    fn id(&self) -> Uuid;
    /// Whether nothing more will happen that a watcher waits for.
    fn settled(&self) -> bool;
    fn message(&self) -> Self::Message;
    /// The end of the stream when the record disappears.
    fn gone(&self) -> Result<Self::Message, Status>;
    /// The record now; `None` when it is gone.
    fn reload(
        shared: &Shared,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self>, AppError>> + Send;
}

impl Followed for JobRow {
    type Message = pb::WatchJobResponse;
    const PERMISSION: &'static str = "jobs:read";
    fn id(&self) -> Uuid {
        self.id
    }
    fn settled(&self) -> bool {
        self.status.is_terminal()
    }
    fn message(&self) -> Self::Message {
        pb::WatchJobResponse {
            job: Some(job_message(self.clone())),
        }
    }
    fn gone(&self) -> Result<Self::Message, Status> {
        Err(AppError::NotFound(format!("job {} (deleted while watched)", self.id)).into())
    }
    async fn reload(shared: &Shared, id: Uuid) -> Result<Option<Self>, AppError> {
        match shared.jobs.get(id).await {
            Ok(job) => Ok(Some(job)),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Followed for ModuleRow {
    type Message = pb::WatchModuleResponse;
    const PERMISSION: &'static str = "modules:read";
    fn id(&self) -> Uuid {
        self.id
    }
    fn settled(&self) -> bool {
        !lifecycle::is_transition(self.status)
    }
    fn message(&self) -> Self::Message {
        pb::WatchModuleResponse {
            module: Some(module_message(self.clone())),
            deleted: false,
        }
    }
    fn gone(&self) -> Result<Self::Message, Status> {
        Ok(pb::WatchModuleResponse {
            module: Some(module_message(self.clone())),
            deleted: true,
        })
    }
    async fn reload(shared: &Shared, id: Uuid) -> Result<Option<Self>, AppError> {
        match shared.modules.get(&id.to_string()).await {
            Ok(module) => Ok(Some(module)),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Starts streaming `record`, read after `subscription` began (so that no
/// change between the read and the wait is missed).
pub(crate) fn open<T: Followed>(
    shared: Arc<Shared>,
    actor: Actor,
    subscription: Subscription,
    record: T,
) -> FollowStream<T::Message> {
    let (out, response) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        if let Err(status) = follow(&shared, actor, subscription, record, &out).await {
            let _ = out.send(Err(status)).await;
        }
    });
    ReceiverStream::new(response)
}

async fn follow<T: Followed>(
    shared: &Shared,
    actor: Actor,
    mut subscription: Subscription,
    mut record: T,
    out: &mpsc::Sender<Result<T::Message, Status>>,
) -> Result<(), Status> {
    // A watcher that stops reading would hold this task (and skip its
    // re-checks and the drain) forever: it gets a lease's worth of time.
    let patience = shared.settings.lease;
    let send = |message: T::Message| async move {
        match tokio::time::timeout(patience, out.send(Ok(message))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::cancelled("the watcher went away")),
            Err(_) => Err(AppError::ResourceExhausted {
                message: "the watcher stopped reading its stream".into(),
                retry_after: Duration::from_secs(1),
            }
            .into()),
        }
    };
    send(record.message()).await?;
    let interval = shared
        .settings
        .heartbeat_interval()
        .max(Duration::from_millis(50));
    let mut reread = tokio::time::interval(shared.settings.poll_interval);
    let mut recheck = tokio::time::interval(interval);
    reread.tick().await;
    recheck.tick().await;
    while !record.settled() {
        tokio::select! {
            changed = subscription.changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = reread.tick() => {}
            _ = recheck.tick() => {
                shared.recheck(&actor.caller, T::PERMISSION).await?;
                continue;
            }
            () = shared.draining.cancelled() => {
                return Err(AppError::Draining(
                    "the server is shutting down; watch again".into(),
                )
                .into());
            }
            () = out.closed() => return Ok(()),
        }
        let now = match T::reload(shared, record.id()).await {
            Ok(Some(now)) => now,
            Ok(None) => return send(record.gone()?).await,
            // The database is away: the slow re-read tries again.
            Err(_) => continue,
        };
        if now != record {
            record = now;
            send(record.message()).await?;
        }
    }
    Ok(())
}
