//! The probe for idle groups of Work streams (see [`registry::idle`]): one
//! read for all of them of which names have work, after every notice of
//! runnable work (coalesced), a new group, and on the poll interval; the
//! groups it finds work for are claimed for on the next round.
//!
//! It runs beside the claim loop, on a pooled connection, so claims for
//! busy streams never wait for it, and it takes at most about a quarter of
//! the time: after a probe that took `t`, the next waits `3t` (bounded), so
//! that under a stream of notices ten thousand idle names cost a bounded
//! share of one connection.

use std::{sync::Arc, time::Duration};

use super::{Shared, registry};

/// Longest pause between two probes asked for back to back (a probe of
/// 10,000 names took 0.6–0.9 s on a saturated machine: a shorter bound
/// would let probes take most of a connection's and a core's time).
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Probes until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let signal = shared.registry().probe_signal();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = signal.notified() => {}
            () = tokio::time::sleep(shared.settings.poll_interval) => {}
        }
        let cold: registry::idle::ColdNames = shared.registry().cold_names();
        if cold.names.is_empty() && !cold.any {
            continue;
        }
        let started = std::time::Instant::now();
        match shared.jobs.names_with_work(&cold.names, cold.any).await {
            Ok((names, any)) => {
                if shared.registry().found_work(&names, any) {
                    shared.wake.notify_one();
                }
            }
            Err(error) => shared.note_db_failure(&error),
        }
        let pause = (started.elapsed() * 3).min(MAX_PAUSE);
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
