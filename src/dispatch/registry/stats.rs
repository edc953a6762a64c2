//! A read-only summary of the registry for the metrics sampler.

use super::Registry;

/// What the Work streams of this replica hold, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Work streams registered.
    pub streams: usize,
    /// Job slots granted and not holding a lease (0 for a stream that
    /// drains).
    pub free_slots: usize,
    /// Leases held.
    pub held_slots: usize,
}

impl Registry {
    /// The summary: one pass over the streams, under the lock the caller
    /// holds (cheap: a few thousand streams at most).
    pub fn stats(&self) -> RegistryStats {
        self.streams
            .values()
            .fold(RegistryStats::default(), |mut stats, entry| {
                stats.streams += 1;
                stats.free_slots += entry.free();
                stats.held_slots += entry.held.len();
                stats
            })
    }
}

/// One Work stream as the console's Workers page shows it: a copy taken
/// under the lock, so nothing outside the registry reads its maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// The stream (a time-ordered UUID: when it connected).
    pub stream: uuid::Uuid,
    /// The account it works for (an API key counts as its owner).
    pub caller: uuid::Uuid,
    /// The API key it connected with, if any.
    pub api_key: Option<uuid::Uuid>,
    /// What the worker calls itself.
    pub worker_id: String,
    /// Job names it takes; empty: any.
    pub names: Vec<String>,
    /// Module names it takes; empty: any.
    pub modules: Vec<String>,
    /// Jobs it may hold at once.
    pub capacity: usize,
    /// Leases it holds now.
    pub held: usize,
    /// False once its worker said it drains.
    pub accepting: bool,
    /// When its worker last sent a heartbeat.
    pub last_heartbeat: Option<std::time::SystemTime>,
}

impl Registry {
    /// Every stream, in order of arrival.
    pub fn snapshot(&self) -> Vec<StreamSnapshot> {
        self.streams
            .iter()
            .map(|(id, entry)| StreamSnapshot {
                stream: *id,
                caller: entry.caller,
                api_key: entry.api_key,
                worker_id: entry.worker_id.clone(),
                names: entry.filter.names.clone(),
                modules: entry.filter.modules.clone(),
                capacity: entry.capacity,
                held: entry.held.len(),
                accepting: entry.accepting,
                last_heartbeat: entry.last_heartbeat,
            })
            .collect()
    }

    /// Notes a heartbeat of `stream` (a stream that ended is ignored).
    pub fn note_heartbeat(&mut self, stream: uuid::Uuid) {
        if let Some(entry) = self.streams.get_mut(&stream) {
            entry.last_heartbeat = Some(std::time::SystemTime::now());
        }
    }
}
