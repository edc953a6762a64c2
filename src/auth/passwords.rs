//! bcrypt, always on blocking threads and at most one hash per core at a
//! time, so logins never stall other RPCs on the async runtime. The queue in
//! front of the cores is bounded in length and in waiting time: a burst of
//! logins is refused with RESOURCE_EXHAUSTED rather than queued forever.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OnceCell, Semaphore};

use crate::{config::PasswordArgs, error::AppError};

/// Shortest password when nothing else is configured.
pub const DEFAULT_MIN_LENGTH: usize = 8;

/// bcrypt reads at most 72 bytes; longer passwords are refused rather than
/// silently cut.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashes and verifies passwords with a fixed cost.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    cost: u32,
    min_length: usize,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    max_wait: Duration,
    dummy_hash: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher of the given bcrypt cost, with the default rules and queue.
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            cost,
            min_length: DEFAULT_MIN_LENGTH,
            slots: Arc::new(Semaphore::new(cores)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: 16 * cores,
            max_wait: Duration::from_secs(5),
            dummy_hash: Arc::new(OnceCell::new()),
        }
    }

    /// A hasher as configured.
    pub fn from_args(args: &PasswordArgs) -> Self {
        let mut hasher = Self::new(args.bcrypt_cost);
        hasher.min_length = args.password_min_length as usize;
        if args.password_queue_max > 0 {
            hasher.max_waiting = args.password_queue_max;
        }
        hasher.max_wait = Duration::from_millis(args.password_queue_wait_ms.max(1));
        hasher
    }

    /// The same hasher with another queue bound (tests make it tiny).
    pub fn with_queue(mut self, max_waiting: usize, max_wait: Duration) -> Self {
        self.max_waiting = max_waiting;
        self.max_wait = max_wait;
        self
    }

    /// The shortest password accepted, in characters.
    pub fn min_length(&self) -> usize {
        self.min_length
    }

    /// Checks the length rules of a new password; `field` names the request
    /// field in the error.
    pub fn validate(&self, field: &str, password: &str) -> Result<(), AppError> {
        let min_chars = self.min_length;
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AppError::invalid(
                field,
                format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        if password.chars().count() < min_chars {
            return Err(AppError::invalid(
                field,
                format!("must be at least {min_chars} characters"),
            ));
        }
        Ok(())
    }

    /// Hashes a password.
    pub async fn hash(&self, password: &str) -> Result<String, AppError> {
        let password = password.to_owned();
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost)).await
    }

    /// Verifies a password against a stored hash. A malformed stored hash
    /// verifies as false.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, AppError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let password = password.to_owned();
        let hash = hash.to_owned();
        self.run(move || Ok(bcrypt::verify(password, &hash).unwrap_or(false)))
            .await
    }

    /// Spends the same time as a real verification, for unknown users, so
    /// that response times do not tell which logins exist.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), AppError> {
        let hash = self.dummy_hash().await?;
        self.verify(password, &hash).await.map(drop)
    }

    /// Makes the hash [`Self::verify_dummy`] checks against, so that not even
    /// the first unknown login takes longer than a known one. Call before
    /// serving.
    pub async fn prepare(&self) -> Result<(), AppError> {
        self.dummy_hash().await.map(drop)
    }

    async fn dummy_hash(&self) -> Result<String, AppError> {
        self.dummy_hash
            .get_or_try_init(|| self.hash("not-a-real-password"))
            .await
            .cloned()
    }

    async fn run<T, F>(&self, work: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    {
        let busy = || AppError::ResourceExhausted {
            message: "too many password checks at once".into(),
            retry_after: Duration::from_secs(1),
        };
        let _waiting = QueuePlace::take(&self.waiting, self.max_waiting).ok_or_else(busy)?;
        let _slot = match tokio::time::timeout(self.max_wait, self.slots.acquire()).await {
            Ok(slot) => slot.map_err(|_| AppError::internal("password hasher closed"))?,
            Err(_) => return Err(busy()),
        };
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AppError::internal(format!("bcrypt task: {e}")))?
            .map_err(|e| AppError::internal(format!("bcrypt: {e}")))
    }
}

/// A place in the queue of password checks, given back on drop whatever
/// happens to the check.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_long_passwords_are_refused() {
        let hasher = PasswordHasher::new(4);
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hasher.verify("correct horse", &hash).await.unwrap());
        assert!(!hasher.verify("wrong horse", &hash).await.unwrap());
        assert!(!hasher.verify("x", "not a hash").await.unwrap());
        let long = "a".repeat(73);
        assert!(hasher.validate("password", &long).is_err());
        assert!(hasher.validate("password", "short").is_err());
        assert!(hasher.validate("password", &"a".repeat(72)).is_ok());
        hasher.verify_dummy("whatever").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let hasher = PasswordHasher::new(10).with_queue(1, Duration::from_millis(50));
        let hash = hasher.hash("correct horse").await.unwrap();
        let checks = (0..8).map(|_| {
            let hasher = hasher.clone();
            let hash = hash.clone();
            tokio::spawn(async move { hasher.verify("correct horse", &hash).await })
        });
        let results = futures_util::future::join_all(checks).await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(AppError::ResourceExhausted { .. }))))
            .count();
        assert!(refused > 0, "some checks were refused: {results:?}");
        assert_eq!(
            hasher.waiting.load(Ordering::Acquire),
            0,
            "every place given back"
        );
    }
}
