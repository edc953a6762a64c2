//! Parsed manifests, kept per module version, so that CreateJob does not
//! read and parse a module's manifest (up to 256 KiB of JSON) on every call.
//!
//! An entry is keyed by the module's id and stamped with what identifies the
//! stored manifest: the version and the row's version in PostgreSQL (`xmin`,
//! which every write of the row changes — a manifest can change without a
//! new version). Each create reads the stamp (a few bytes, with the share
//! lock it takes anyway) and uses the entry only when the stamp matches, so
//! a change made through any replica, a version change, or a deletion and a
//! re-registration under the same name is never served stale; an entry that
//! stopped matching is replaced at its next use or evicted. The cache is
//! bounded by entries and by the declarations they hold, least recently
//! used first out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

use super::manifest::JobTypes;

/// Modules whose manifests are kept.
pub const CAPACITY: usize = 256;
/// Declarations kept, summed over entries.
pub const MAX_DECLARATIONS: usize = 256 * 1024;

/// What identifies one stored manifest of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The module's version.
    pub version: String,
    /// The row's version (`xmin`).
    pub row_version: i64,
}

/// The cache; shared behind an `Arc`.
#[derive(Debug)]
pub struct ManifestCache {
    inner: Mutex<Inner>,
    capacity: usize,
    max_declarations: usize,
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self::with_bounds(CAPACITY, MAX_DECLARATIONS)
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Uuid, Entry>,
    declarations: usize,
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    stamp: Stamp,
    types: Arc<JobTypes>,
    used: u64,
}

impl ManifestCache {
    /// An empty cache with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache keeping at most `capacity` modules' manifests and
    /// `max_declarations` declarations in all.
    pub fn with_bounds(capacity: usize, max_declarations: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            max_declarations,
        }
    }

    /// The job types of module `id`'s manifest as of `stamp`, when kept.
    pub fn get(&self, id: Uuid, stamp: &Stamp) -> Option<Arc<JobTypes>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.entries.get_mut(&id)?;
        if entry.stamp != *stamp {
            return None;
        }
        entry.used = now;
        Some(entry.types.clone())
    }

    /// Keeps `types` for module `id` as of `stamp` (replacing what was kept
    /// for it), evicting the least recently used entries beyond the bounds.
    pub fn insert(&self, id: Uuid, stamp: Stamp, types: JobTypes) -> Arc<JobTypes> {
        let types = Arc::new(types);
        let size = types.len();
        let mut inner = self.lock();
        inner.clock += 1;
        let used = inner.clock;
        if let Some(old) = inner.entries.insert(
            id,
            Entry {
                stamp,
                types: types.clone(),
                used,
            },
        ) {
            inner.declarations -= old.types.len();
        }
        inner.declarations += size;
        while inner.entries.len() > self.capacity
            || (inner.declarations > self.max_declarations && inner.entries.len() > 1)
        {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter(|(key, _)| **key != id)
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| *key)
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.declarations -= gone.types.len();
            }
        }
        types
    }

    /// Drops what is kept for module `id` (it changed or is gone).
    pub fn forget(&self, id: Uuid) {
        let mut inner = self.lock();
        if let Some(gone) = inner.entries.remove(&id) {
            inner.declarations -= gone.types.len();
        }
    }

    /// How many modules' manifests are kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The cache holds no invariant a panic elsewhere could break halfway
        // that matters more than serving: take it back from a poisoned lock.
        crate::sync::lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::modules::manifest::Manifest;

    fn types(n: usize) -> JobTypes {
        let jobs: Vec<_> = (0..n).map(|i| json!({"name": format!("t{i}")})).collect();
        Manifest::from_stored(json!({ "jobs": jobs })).types
    }

    fn stamp(version: &str, row: i64) -> Stamp {
        Stamp {
            version: version.into(),
            row_version: row,
        }
    }

    #[test]
    fn an_entry_serves_only_its_stamp() {
        let cache = ManifestCache::new();
        let id = Uuid::now_v7();
        assert!(cache.get(id, &stamp("1.0.0", 7)).is_none());
        cache.insert(id, stamp("1.0.0", 7), types(3));
        assert_eq!(cache.get(id, &stamp("1.0.0", 7)).unwrap().len(), 3);
        // A new version, or the same version rewritten: not served.
        assert!(cache.get(id, &stamp("1.1.0", 7)).is_none());
        assert!(cache.get(id, &stamp("1.0.0", 8)).is_none());
        cache.insert(id, stamp("1.0.0", 8), types(1));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(id, &stamp("1.0.0", 8)).unwrap().len(), 1);
        cache.forget(id);
        assert!(cache.is_empty());
    }

    #[test]
    fn it_is_bounded_least_recently_used_first() {
        let cache = ManifestCache::with_bounds(16, 1000);
        let ids: Vec<Uuid> = (0..26).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.insert(*id, stamp("1", 1), types(1));
            // The first stays in use.
            assert!(cache.get(ids[0], &stamp("1", 1)).is_some());
        }
        assert_eq!(cache.len(), 16);
        assert!(cache.get(ids[1], &stamp("1", 1)).is_none());
        assert!(cache.get(ids[25], &stamp("1", 1)).is_some());
        // By declarations too.
        let cache = ManifestCache::with_bounds(16, 1000);
        for id in ids.iter().take(4) {
            cache.insert(*id, stamp("1", 1), types(251));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(ids[0], &stamp("1", 1)).is_none());
    }
}
