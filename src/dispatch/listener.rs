//! The LISTEN connection: one per replica, outside the pool, for as long as
//! the replica runs, to `LISTEN_DATABASE_URL` (or `DATABASE_URL`): a
//! direct session, since a transaction pooler (PgBouncer) would hand the
//! LISTEN to another client's session after one transaction. It reconnects with backoff, and after every (re)connect
//! the dispatcher looks for work and each watched record is read again, since
//! notifications sent while it was away are lost. A quiet connection is
//! probed once per poll interval, so a dead one is noticed.

use std::{pin::pin, sync::Arc, time::Duration};

use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use futures_util::StreamExt as _;

use super::Shared;
use crate::{domain::events::QueueEvent, store::jobs::CHANNEL};

/// How long a probe of the connection may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens until shutdown.
pub async fn run(shared: Arc<Shared>, url: String) {
    let mut pause = Duration::from_millis(100);
    let mut reported = false;
    while !shared.shutdown.is_cancelled() {
        let connected = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            connected = connect(&url) => connected,
        };
        match connected {
            Ok(mut conn) => {
                if reported {
                    tracing::info!("job notifications connected again");
                }
                pause = Duration::from_millis(100);
                reported = false;
                caught_up(&shared);
                listen(&shared, &mut conn).await;
            }
            Err(error) => {
                if !reported {
                    tracing::warn!(%error, "cannot listen for job notifications; retrying");
                    reported = true;
                }
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn connect(url: &str) -> Result<AsyncPgConnection, crate::AppError> {
    let mut conn = tokio::time::timeout(PROBE_TIMEOUT, crate::db::open_connection(url))
        .await
        .map_err(|_| crate::AppError::Unavailable("timed out connecting".into()))??;
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Anything may have happened while nobody listened.
fn caught_up(shared: &Shared) {
    shared
        .schedule_changed
        .store(true, std::sync::atomic::Ordering::Release);
    shared.registry().reconnected();
    shared.wake.notify_one();
    shared.schedules_wake.notify_one();
    shared.watchers.bump_all();
}

/// Hands notifications to the dispatcher until the connection fails.
async fn listen(shared: &Shared, conn: &mut AsyncPgConnection) {
    loop {
        let next = {
            let mut notifications = pin!(conn.notifications_stream());
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                next = notifications.next() => Some(next),
                () = tokio::time::sleep(shared.settings.poll_interval) => None,
            }
        };
        match next {
            Some(Some(Ok(notification))) => {
                if let Some(event) = QueueEvent::parse(&notification.payload) {
                    shared.on_event(event);
                }
            }
            Some(Some(Err(error))) => {
                tracing::warn!(%error, "job notifications connection failed");
                return;
            }
            Some(None) => {
                tracing::warn!("job notifications connection closed");
                return;
            }
            None => {
                let probe = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    diesel::sql_query("SELECT 1").execute(conn),
                )
                .await;
                if !matches!(probe, Ok(Ok(_))) {
                    tracing::warn!("job notifications connection stopped answering");
                    return;
                }
            }
        }
    }
}
