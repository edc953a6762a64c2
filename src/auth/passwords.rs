//! bcrypt, always on blocking threads and at most one hash per core at a
//! time, so logins never stall other RPCs on the async runtime.

use std::sync::Arc;

use tokio::sync::{OnceCell, Semaphore};

use crate::error::AppError;

/// bcrypt reads at most 72 bytes; longer passwords are refused rather than
/// silently cut.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashes and verifies passwords with a fixed cost.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    cost: u32,
    slots: Arc<Semaphore>,
    dummy_hash: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher of the given bcrypt cost.
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            cost,
            slots: Arc::new(Semaphore::new(cores)),
            dummy_hash: Arc::new(OnceCell::new()),
        }
    }

    /// Checks length rules; `field` names the request field in the error.
    pub fn validate(&self, field: &str, password: &str, min_chars: usize) -> Result<(), AppError> {
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
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| AppError::internal("password hasher closed"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AppError::internal(format!("bcrypt task: {e}")))?
            .map_err(|e| AppError::internal(format!("bcrypt: {e}")))
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
        assert!(hasher.validate("password", &long, 8).is_err());
        assert!(hasher.validate("password", "short", 8).is_err());
        assert!(hasher.validate("password", &"a".repeat(72), 8).is_ok());
        hasher.verify_dummy("whatever").await.unwrap();
    }
}
