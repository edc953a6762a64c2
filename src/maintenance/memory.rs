//! Giving freed memory back to the system when the load that took it is
//! gone. mimalloc keeps the pages a thread allocated in that thread's heap,
//! and frees that reach them from other threads wait there until the owner
//! next allocates: after ten thousand idle Work streams left, RSS stayed at
//! ~190 MiB for as long as the runtime's threads had little to do, and came
//! down to ~80 MiB only once they worked again (BENCHMARKS.md, "Idle
//! workers with job names of their own").
//!
//! So every [`INTERVAL`] a purge is asked for, and each runtime thread
//! collects its own heap (`mi_collect`, which can only collect the calling
//! thread's) the next time it goes idle ([`on_park`], installed with
//! `tokio::runtime::Builder::on_thread_park`), where the pause costs no
//! request anything. A thread that stays busy allocates, and so collects
//! as it goes.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// How often the runtime's threads are asked to give freed memory back.
/// A forced collection walks the thread's pages: well under a millisecond
/// for the heaps measured here, so every few seconds costs nothing seen.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Purges asked for so far.
static ASKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The purge this thread last made.
    static MADE: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime thread to collect its heap when it next goes idle.
pub fn purge_soon() {
    ASKED.fetch_add(1, Ordering::Relaxed);
}

/// Run by each runtime thread before it parks: collects the thread's heap
/// when a purge was asked for since its last one (one atomic load
/// otherwise).
pub fn on_park() {
    let asked = ASKED.load(Ordering::Relaxed);
    if MADE.get() != asked {
        MADE.set(asked);
        collect();
    }
}

/// Frees the calling thread's empty pages, those that other threads' frees
/// emptied included, and returns them to the system.
fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; it only touches the calling thread's heap and
    // the arenas' own locks. When mimalloc is not the global allocator
    // (the test harness), its heap is empty and this does nothing.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Asks for a purge every [`INTERVAL`] until `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => purge_soon(),
        }
    }
}
