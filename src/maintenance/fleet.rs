//! Publishing this replica's Work streams for the consoles of every replica
//! (`domain::fleet`), until the server stops; then its row is deleted.

use tokio_util::sync::CancellationToken;

use crate::{
    dispatch::Dispatcher,
    domain::fleet::{Fleet, PUBLISH_INTERVAL},
};

/// Publishes every [`PUBLISH_INTERVAL`] until `shutdown`, then leaves.
pub async fn run(fleet: Fleet, dispatcher: Dispatcher, shutdown: CancellationToken) {
    loop {
        let streams = dispatcher.workers();
        tokio::select! {
            () = shutdown.cancelled() => break,
            published = fleet.publish(&streams) => {
                if let Err(error) = published {
                    tracing::debug!(%error, "could not publish this replica's workers; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PUBLISH_INTERVAL) => {}
        }
    }
    if let Err(error) = fleet.leave().await {
        tracing::debug!(%error, "could not withdraw this replica's workers");
    }
}

/// How people tell this replica apart on the console's Workers page: its
/// host name and gRPC address.
pub async fn replica_label(grpc_addr: Option<std::net::SocketAddr>) -> String {
    let host = tokio::fs::read_to_string("/proc/sys/kernel/hostname")
        .await
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let addr = grpc_addr.map(|a| a.to_string()).unwrap_or_default();
    format!("{host} {addr}").trim().chars().take(255).collect()
}
