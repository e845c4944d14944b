//! argon2id password hashing off the async executor, behind a bulkhead.
//!
//! Hashing takes tens of milliseconds of CPU: it runs in `spawn_blocking` (keeping the
//! request's tracing span) and at most `concurrency` hashes run at once. A request that
//! cannot get a slot within the queue timeout answers 503 instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash as PhcHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use domain::ports::{HashError, PasswordHasher};
use domain::user::{Password, PasswordHash};
use tokio::sync::Semaphore;

/// OWASP's recommended argon2id parameters: 19 MiB, 2 passes, 1 lane.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const OWASP_ITERATIONS: u32 = 2;
/// Parallel lanes.
pub const OWASP_PARALLELISM: u32 = 1;

/// The argon2id [`PasswordHasher`].
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    slots: Arc<Semaphore>,
    concurrency: usize,
    queue_timeout: Duration,
    /// A hash of a random password, verified against for unknown accounts.
    dummy: PasswordHash,
}

impl Argon2Hasher {
    /// A hasher running at most `concurrency` hashes at once. Computes its dummy hash
    /// (one hash's worth of CPU) up front, so the first unknown-account login is not faster.
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Result<Self, HashError> {
        let random_password = uuid::Uuid::new_v4().to_string();
        let salt = SaltString::generate(&mut OsRng);
        let dummy = Self::argon2()?
            .hash_password(random_password.as_bytes(), &salt)
            .map_err(|error| HashError::Unexpected(error.to_string().into()))?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            queue_timeout,
            dummy: PasswordHash::new(dummy.to_string()),
        })
    }

    /// How many hashes are computing now (for metrics).
    pub fn running(&self) -> usize {
        self.concurrency.saturating_sub(self.slots.available_permits())
    }

    fn argon2() -> Result<Argon2<'static>, HashError> {
        let params = Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, None)
            .map_err(|error| HashError::Unexpected(error.to_string().into()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Runs `work` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = tokio::time::timeout(self.queue_timeout, self.slots.acquire())
            .await
            .map_err(|_| HashError::Overloaded)?
            .map_err(|error| HashError::Unexpected(Box::new(error)))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|error| HashError::Unexpected(Box::new(error)))?
    }
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            let hash = Self::argon2()?
                .hash_password(password.expose().as_bytes(), &salt)
                .map_err(|error| HashError::Unexpected(error.to_string().into()))?;
            Ok(PasswordHash::new(hash.to_string()))
        })
        .await
    }

    async fn verify(&self, password: Password, hash: PasswordHash) -> Result<bool, HashError> {
        self.run(move || {
            let parsed =
                PhcHash::new(hash.as_str()).map_err(|error| HashError::Unexpected(error.to_string().into()))?;
            // The parameters stored in the hash are used, so older hashes still verify.
            Ok(Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok())
        })
        .await
    }

    fn dummy_hash(&self) -> PasswordHash {
        self.dummy.clone()
    }

    fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        let Ok(parsed) = PhcHash::new(hash.as_str()) else {
            return true;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != "argon2id"
            || parsed.version != Some(Version::V0x13.into())
            || params.m_cost() < OWASP_MEMORY_KIB
            || params.t_cost() < OWASP_ITERATIONS
            || params.p_cost() != OWASP_PARALLELISM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_owasp_argon2id_and_verify() {
        let hasher = Argon2Hasher::new(2, Duration::from_secs(5)).unwrap();
        let password = Password::parse("StrongPass123!").unwrap();
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", hash.as_str());
        assert!(hasher.verify(password, hash.clone()).await.unwrap());
        assert!(!hasher.verify(Password::parse("WrongPass123!").unwrap(), hash).await.unwrap());
    }

    #[tokio::test]
    async fn weaker_hashes_need_a_rehash_and_current_ones_do_not() {
        let hasher = Argon2Hasher::new(1, Duration::from_secs(5)).unwrap();
        let current = hasher.hash(Password::parse("StrongPass123!").unwrap()).await.unwrap();
        assert!(!hasher.needs_rehash(&current));
        assert!(!hasher.needs_rehash(&hasher.dummy_hash()));
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap())
            .hash_password(b"StrongPass123!", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.needs_rehash(&PasswordHash::new(weak.clone())));
        // The weak hash still verifies, so the upgrade can happen at login.
        assert!(hasher.verify(Password::parse("StrongPass123!").unwrap(), PasswordHash::new(weak)).await.unwrap());
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"StrongPass123!", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.needs_rehash(&PasswordHash::new(argon2i)));
        assert!(hasher.needs_rehash(&PasswordHash::new("not a phc string".into())));
    }

    #[tokio::test]
    async fn a_saturated_hasher_answers_overloaded_instead_of_queueing() {
        let hasher = Argon2Hasher::new(1, Duration::from_millis(1)).unwrap();
        let _held = hasher.slots.clone().acquire_owned().await.unwrap();
        let result = hasher.hash(Password::parse("StrongPass123!").unwrap()).await;
        assert!(matches!(result, Err(HashError::Overloaded)));
    }
}
