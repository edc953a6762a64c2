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
