//! Read-only views of the registry: a summary for the metrics sampler, and
//! the streams for the fleet (the console's Workers page).

use super::Registry;
use crate::domain::fleet::WorkerStream;

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

impl Registry {
    /// Every stream, in order of arrival: a copy taken under the lock, so
    /// nothing outside the registry reads its maps.
    pub fn snapshot(&self) -> Vec<WorkerStream> {
        self.streams
            .iter()
            .map(|(id, entry)| WorkerStream {
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
