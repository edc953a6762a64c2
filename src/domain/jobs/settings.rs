//! How the queue is configured: built from the command line
//! ([`JobSettings::from_args`]) or by tests, read by the queue, the lease
//! service and the dispatcher.

use std::time::Duration;

use super::FREE_RETURNS;
use crate::{
    config::JobArgs,
    store::jobs::{Backoff, ReturnRule},
};

/// How the queue is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// Largest payload, result or error, encoded as JSON.
    pub payload_max_bytes: usize,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// Delay after a job's first hand-back (release, drain); doubles with
    /// each further one, so a release loop cannot spin.
    pub release_delay_base: Duration,
    /// Longest delay after a hand-back.
    pub release_delay_cap: Duration,
    /// How often dispatch looks for work even without a notification.
    pub poll_interval: Duration,
    /// What streams may hold open on one replica.
    pub streams: StreamLimits,
    /// Pending jobs one transaction of a pause's or resume's walk updates.
    pub queue_walk_batch: i64,
    /// Most pauses stored at once.
    pub queue_pauses_max: i64,
}

/// Bounds on the long-lived streams callers open on one replica (Work,
/// WatchJob, WatchModule): what one caller, and all callers together, may
/// hold, and how long the server waits on a peer that stopped reading. A
/// caller is an account; an API key counts as its owner, so minting keys
/// does not multiply the allowance. Refusals answer RESOURCE_EXHAUSTED
/// with an ErrorInfo naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Work streams one caller may hold open at once.
    pub work_streams_per_caller: usize,
    /// Jobs one Work stream may hold at once, whatever its hello and
    /// credits ask for.
    pub capacity_per_stream: usize,
    /// Jobs all Work streams of one caller may hold at once on this
    /// replica, so that one caller cannot take the replica's whole capacity.
    pub capacity_per_caller: usize,
    /// Jobs all Work streams of this replica may hold at once, summed over
    /// what they advertise; a stream asking beyond it gets what is left.
    pub capacity_per_replica: usize,
    /// WatchJob and WatchModule streams one caller may hold open at once.
    pub watches_per_caller: usize,
    /// WatchJob and WatchModule streams of everyone on this replica.
    pub watches_per_replica: usize,
    /// Longest a message may wait for a peer that stopped reading before
    /// its stream is ended (a Work stream's leases then go back at once).
    /// Never more than a third of the lease: see
    /// [`JobSettings::stalled_send_timeout`].
    pub send_timeout: Duration,
    /// Messages per second a Work stream may send, sustained (twice that in
    /// a burst); past it the stream ends with RESOURCE_EXHAUSTED.
    pub inbound_messages_per_sec: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            work_streams_per_caller: 256,
            capacity_per_stream: 1_000,
            capacity_per_caller: 10_000,
            capacity_per_replica: 50_000,
            watches_per_caller: 100,
            watches_per_replica: 10_000,
            send_timeout: Duration::from_secs(5),
            inbound_messages_per_sec: 1_000,
        }
    }
}

impl JobSettings {
    /// How often workers should heartbeat: a third of the lease, so that two
    /// heartbeats can be lost before the lease ends.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
    }

    /// How long a send may wait on a peer that stopped reading: the
    /// configured timeout, but never more than a third of the lease, so a
    /// stuck stream is ended (and its leases handed back) before they expire.
    pub fn stalled_send_timeout(&self) -> Duration {
        self.streams
            .send_timeout
            .min(self.lease / 3)
            .max(Duration::from_millis(100))
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_base,
            cap: self.retry_cap,
        }
    }

    pub(crate) fn return_rule(&self) -> ReturnRule {
        ReturnRule {
            free: FREE_RETURNS,
            base: self.release_delay_base,
            cap: self.release_delay_cap,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            payload_max_bytes: 1024 * 1024,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(3600),
            release_delay_base: Duration::from_millis(100),
            release_delay_cap: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            streams: StreamLimits::default(),
            queue_walk_batch: 5_000,
            queue_pauses_max: 10_000,
        }
    }
}

impl JobSettings {
    /// The settings the command line (or its environment) gives.
    pub fn from_args(args: &JobArgs) -> Self {
        Self {
            lease: Duration::from_secs(args.job_lease_secs),
            payload_max_bytes: args.job_payload_max_bytes as usize,
            retry_base: Duration::from_millis(args.job_retry_base_ms),
            retry_cap: Duration::from_secs(args.job_retry_cap_secs),
            release_delay_base: Duration::from_millis(args.job_release_delay_base_ms),
            release_delay_cap: Duration::from_millis(args.job_release_delay_cap_ms),
            poll_interval: Duration::from_millis(args.job_poll_interval_ms),
            streams: StreamLimits {
                work_streams_per_caller: args.work_streams_per_caller as usize,
                capacity_per_stream: args.work_capacity_per_stream as usize,
                capacity_per_caller: args.work_capacity_per_caller as usize,
                capacity_per_replica: args.work_capacity_per_replica as usize,
                watches_per_caller: args.watches_per_caller as usize,
                watches_per_replica: args.watches_per_replica as usize,
                send_timeout: Duration::from_millis(args.stream_send_timeout_ms),
                inbound_messages_per_sec: args.work_inbound_messages_per_sec,
            },
            queue_walk_batch: args.queue_walk_batch as i64,
            queue_pauses_max: args.queue_pauses_max as i64,
        }
    }
}
