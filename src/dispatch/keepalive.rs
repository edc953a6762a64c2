//! The leases the server keeps alive itself.
//!
//! A worker heartbeats the jobs it runs. It cannot heartbeat a job it has
//! not received yet (the assignment is still queued here, or on its way),
//! and it has no reason to heartbeat a job it has finished while the
//! report waits for the report writers (the SDKs say nothing while they run
//! nothing). Neither lease is the worker's to keep: were it left to lapse
//! while the server or its database is slow, the reaper would take it and
//! charge the job an attempt that never ran, or refuse a result that was
//! delivered. So every heartbeat interval, one statement extends, for every
//! stream of this replica, the leases being reported and those leased less
//! than a lease ago. A lease its worker received and then stopped naming
//! still ends: a lease after the window closes.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::Shared;
use crate::{error::AppError, store::jobs::LeaseRef};

/// Extends the server's leases every heartbeat interval until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let every = shared
        .settings
        .heartbeat_interval()
        .max(Duration::from_millis(50));
    let window = shared.settings.lease;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leases = shared.registry().kept_by_server(window);
        if leases.is_empty() {
            continue;
        }
        if let Err(error) = shared.leases.keep_alive(&leases).await {
            shared.note_db_failure(&error);
        }
    }
}

/// Hands leases back in the background, trying again while the database
/// is away or the write collides, until it lands or the server stops: left
/// to the reaper, each would cost its job an attempt it never used.
/// `undelivered` leases were never sent and give their attempt back.
pub fn hand_back_in_background(shared: &Arc<Shared>, leases: Vec<LeaseRef>, undelivered: bool) {
    if leases.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let noted = |error: &AppError| shared.note_db_failure(error);
        match shared
            .leases
            .hand_back_retrying(&leases, undelivered, &shared.shutdown, &noted)
            .await
        {
            Ok(_) => shared.wake.notify_one(),
            Err(error) => shared.note_db_failure(&error),
        }
    });
}

/// Takes the leases of a stream that vanished, in the background, trying
/// again like [`hand_back_in_background`]: until then the jobs stay
/// RUNNING for nobody.
pub fn lose_in_background(shared: &Arc<Shared>, stream: Uuid, jobs: Vec<Uuid>) {
    if jobs.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let noted = |error: &AppError| shared.note_db_failure(error);
        match shared
            .leases
            .lose_retrying(stream, &jobs, &shared.shutdown, &noted)
            .await
        {
            Ok(_) => shared.wake.notify_one(),
            Err(error) => shared.note_db_failure(&error),
        }
    });
}

/// After a claim whose answer was lost (its connection failed or timed
/// out), the claim may have committed all the same: jobs leased that no
/// stream was told of, which no worker will ever get. Finds them — by the
/// tags of the lost claims (`lost`), whichever stream they were for, even
/// one that closed since; and any lease a stream of this replica holds in
/// the database that the stream does not know of — and hands them back as
/// never sent (they cost no attempt); returns how many.
pub async fn give_back_unknown_leases(
    shared: &Arc<Shared>,
    lost: &[Uuid],
) -> Result<usize, AppError> {
    let streams = shared.registry().stream_ids();
    let mut held = shared.leases.leases_of_claims(lost).await?;
    if !streams.is_empty() {
        held.extend(shared.leases.held_by(&streams).await?);
    }
    let unknown: Vec<LeaseRef> = {
        let registry = shared.registry();
        let mut unknown: Vec<LeaseRef> = held
            .into_iter()
            .filter(|lease| !registry.accounts_for(lease))
            .collect();
        unknown.sort_by_key(|lease| lease.job);
        unknown.dedup();
        unknown
    };
    if unknown.is_empty() {
        return Ok(0);
    }
    tracing::warn!(
        leases = unknown.len(),
        "a lost claim had leased jobs no stream knew of; handing them back"
    );
    let given = shared.leases.hand_back(&unknown, true).await?;
    shared.wake.notify_one();
    Ok(given)
}
