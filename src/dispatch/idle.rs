//! The probe for idle groups of Work streams (see
//! [`super::registry::idle`]): one look for all of them at which names have
//! work, after every notice of runnable work (coalesced), a new group, and
//! on the poll interval; the groups it finds work for are claimed for on
//! the next round. A look walks the names of pending jobs and matches them
//! with the cold groups' names, so ten thousand idle names with nothing
//! pending cost a few index descents and a few hash look-ups, not ten
//! thousand of each.
//!
//! It runs beside the claim loop, on a pooled connection, so claims for
//! busy streams never wait for it, and it takes at most about a quarter of
//! the time: after a probe that took `t`, the next waits `3t` (bounded), so
//! that under a stream of notices ten thousand idle names cost a bounded
//! share of one connection.

use std::{sync::Arc, time::Duration};

use super::{Shared, registry::idle::ColdCount};
use crate::error::AppError;

/// Up to this many cold names are asked about one by one, without walking
/// the pending names first (the walk would cost a round trip of its own).
const DIRECT: usize = 32;

/// The walk of the pending names stops after one name per this many cold
/// names: a step of the walk costs about four probes of one name (see
/// `store::jobs::runnable`), so a look costs at most about twice the
/// cheaper of the two ways.
const WALK_SHARE: usize = 4;

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
        let cold = shared.registry().cold_count();
        if cold.named == 0 && !cold.any {
            continue;
        }
        let started = std::time::Instant::now();
        match look(&shared, cold).await {
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

/// One look: which cold names have work, and (when a cold group takes any
/// name) whether anything is runnable. With many cold names it first walks
/// the names of pending jobs, and asks only about the cold names among
/// them; the registry is held only to match names, never while the
/// database answers.
async fn look(shared: &Shared, cold: ColdCount) -> Result<(Vec<String>, bool), AppError> {
    let mut asked = None;
    if cold.named > DIRECT {
        let cap = cold.named / WALK_SHARE;
        let pending = shared.jobs.pending_names(cap).await?;
        if pending.len() < cap {
            asked = Some(shared.registry().cold_among(&pending));
        }
    }
    let asked = match asked {
        Some(names) => names,
        None if cold.named > 0 => shared.registry().cold_names().names,
        None => Vec::new(),
    };
    let names = shared.jobs.names_with_work(&asked).await?;
    let any = cold.any && shared.jobs.anything_runnable().await?;
    Ok((names, any))
}
