//! The Work streams of this replica and the leases each holds: what the
//! claim loop fills, what reports and revocations empty. Guarded by one
//! mutex ([`Shared::registry`]), never held across an await.
//!
//! The registry is the one owner of lease bookkeeping: a stream's session
//! asks it (credits, its worker's drain, which leases a heartbeat names,
//! reports, what it gives back when it ends) and never edits an entry
//! itself; the fields of [`StreamEntry`] are private to this module.
//!
//! It also keeps what the streams may take, and bounds it: streams per
//! caller, capacity per stream and capacity of the replica
//! ([`StreamLimits`]). What a claim is offered is counted per stream, never
//! per unit of capacity, so a stream asking for 10,000 jobs costs the claim
//! loop what one asking for one does.
//!
//! - [`admission`]: registering a stream within the caps, credits, the
//!   stream's place among its caller's, the server's drain;
//! - [`leases`]: the leases each stream holds: assignment, reports,
//!   revocations, heartbeat matching, what goes back when a stream ends;
//! - [`demand`]: what the claim loop is asked to lease, dealt in turns.

mod admission;
mod demand;
pub mod idle;
mod leases;
pub mod stats;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, MutexGuard},
    time::{Instant, SystemTime},
};

use tokio::sync::mpsc;
use uuid::Uuid;

pub use self::{
    admission::{Admission, StreamSlot},
    leases::{ReportRefusal, Withdrawn},
};
use super::{Shared, outbox::Outbox};
use crate::{
    domain::{
        events::Revocation,
        jobs::{StreamLimits, leases::ReportOutcome},
    },
    store::jobs::{ClaimFilter, JobRow, LeaseRef},
};

/// Most jobs one stream may ask for in its hello (a larger hello is
/// invalid); what it gets is further bounded by
/// [`StreamLimits::capacity_per_stream`].
pub const MAX_CAPACITY: usize = 10_000;

/// Most jobs one claim leases for one group of streams: a claim round costs
/// what it leases, whatever the streams advertise.
pub const CLAIM_BATCH: usize = 512;

/// What a stream's session is told by the rest of the dispatcher.
#[derive(Debug)]
pub enum StreamCommand {
    /// A job leased to it (already recorded as held).
    Assign(Box<JobRow>),
    /// A lease taken away (already forgotten).
    Revoke(Revocation),
    /// A report was settled (the lease is still recorded until the session
    /// takes the outcome).
    Settled {
        lease: LeaseRef,
        outcome: ReportOutcome,
    },
    /// The server is draining.
    Drain {
        deadline: Instant,
        wall_deadline: SystemTime,
    },
}

/// One lease a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    attempt: i32,
    /// A report on it is being settled.
    reporting: bool,
    /// When it was leased to the stream.
    since: Instant,
}

/// One connected Work stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// The account it works for (an API key counts as its owner).
    caller: Uuid,
    worker_id: String,
    filter: ClaimFilter,
    /// Its group among the streams running the same jobs (see [`idle`]).
    group: u64,
    /// Jobs it may hold at once: granted by [`Registry::register`] and
    /// [`Registry::add_credit`], within the caps.
    capacity: usize,
    held: HashMap<Uuid, Held>,
    /// False once the worker said it drains.
    accepting: bool,
    commands: mpsc::UnboundedSender<StreamCommand>,
    /// What its session has queued for the worker: assignments still there
    /// were never sent, and their leases are kept alive however long they
    /// wait (see [`Registry::kept_by_server`]).
    outbox: Option<Arc<Outbox>>,
    /// When its worker last sent a heartbeat (the console's Workers page).
    last_heartbeat: Option<SystemTime>,
    /// The API key it connected with, if any (the console's Workers page).
    api_key: Option<Uuid>,
}

impl StreamEntry {
    /// A stream not registered yet (its capacity is granted on
    /// registration).
    pub fn new(
        caller: Uuid,
        worker_id: String,
        filter: ClaimFilter,
        commands: mpsc::UnboundedSender<StreamCommand>,
    ) -> Self {
        Self {
            caller,
            worker_id,
            filter,
            group: 0,
            capacity: 0,
            held: HashMap::new(),
            accepting: true,
            commands,
            outbox: None,
            last_heartbeat: None,
            api_key: None,
        }
    }

    /// The stream, with the outbox its session queues the worker's messages
    /// in.
    pub fn with_outbox(mut self, outbox: Arc<Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The stream, noting the API key its caller connected with.
    pub fn with_api_key(mut self, key: Option<Uuid>) -> Self {
        self.api_key = key;
        self
    }

    /// Jobs it may still be given.
    fn free(&self) -> usize {
        if self.accepting {
            self.capacity.saturating_sub(self.held.len())
        } else {
            0
        }
    }
}

/// The streams of this replica.
#[derive(Debug)]
pub struct Registry {
    /// By id: a time-ordered UUID, so in order of arrival.
    streams: BTreeMap<Uuid, StreamEntry>,
    limits: StreamLimits,
    /// What each caller holds open.
    per_caller: HashMap<Uuid, CallerShare>,
    /// Capacity granted to all streams together.
    granted: usize,
    /// Work streams whose transport is still open, registered or not.
    transports: usize,
    /// Set once the server drains: nothing new is leased.
    draining: Option<(Instant, SystemTime)>,
    /// Rotates which stream is offered jobs first: it moves on by one per
    /// job leased, so the next claim starts where the last one's turns
    /// ended (round-robin across claims, not only within one).
    turn: usize,
    /// The streams by what they run, and which groups are worth a claim.
    groups: idle::Groups,
}

/// The streams and capacity one caller holds on this replica.
#[derive(Debug, Default, Clone, Copy)]
struct CallerShare {
    /// Streams whose transport is still open (see [`StreamSlot`]).
    streams: usize,
    capacity: usize,
}

impl Registry {
    /// An empty registry bounded by `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            streams: BTreeMap::new(),
            limits,
            per_caller: HashMap::new(),
            transports: 0,
            granted: 0,
            draining: None,
            turn: 0,
            groups: idle::Groups::default(),
        }
    }

    /// Streams connected.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The streams connected here.
    pub fn stream_ids(&self) -> Vec<Uuid> {
        self.streams.keys().copied().collect()
    }
}

impl Shared {
    /// The registry, locked: never hold it across an await.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        crate::sync::lock(&self.registry)
    }
}

/// A registry and the parts of a stream entry its tests build.
#[cfg(test)]
mod tests {
    use super::*;

    /// Limits loose enough that only what a test sets binds.
    pub fn limits() -> StreamLimits {
        StreamLimits {
            work_streams_per_caller: 100,
            capacity_per_stream: 10_000,
            capacity_per_caller: 10_000_000,
            capacity_per_replica: 10_000_000,
            ..StreamLimits::default()
        }
    }

    /// A stream of `caller` running jobs named `name`.
    pub fn entry(caller: Uuid, name: &str) -> StreamEntry {
        entry_telling(caller, name, mpsc::unbounded_channel().0)
    }

    /// Like [`entry`], telling its session through `commands`.
    pub fn entry_telling(
        caller: Uuid,
        name: &str,
        commands: mpsc::UnboundedSender<StreamCommand>,
    ) -> StreamEntry {
        let filter = ClaimFilter {
            names: vec![name.to_owned()],
            modules: vec![],
            plain_only: false,
        };
        StreamEntry::new(caller, format!("worker-{name}"), filter, commands)
    }
}
