//! The one way this crate takes a std mutex.
//!
//! A mutex is poisoned when a thread panicked while holding it. Every state
//! kept behind one here (the dispatcher's registry and outboxes, watch
//! subscriptions, the audit sampler, the codec's byte budget, the module
//! cache) is edited in steps that each leave it usable, and is never held
//! across an await; refusing it after one panic would take down every
//! stream and call that shares it for the life of the process, which costs
//! far more than a half-done step. So a poisoned lock is taken as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not (see the module's documentation). Never
/// hold the guard across an await.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_poisoned_mutex_is_still_taken() {
        let shared = Arc::new(Mutex::new(1));
        let held = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut value = held.lock().unwrap();
            *value = 2;
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        *lock(&shared) += 1;
        assert_eq!(*lock(&shared), 3);
    }
}
