//! The use cases: what the REST surface (or any other driver) can ask of the service.
//!
//! - `mod.rs`: the service, its ports, the reads, and the two rules every write follows;
//! - `users.rs` (registration, contact, preferences, erasure), `devices.rs` and
//!   `credentials.rs` (login, password change): the writes, one file per concern;
//! - `categories.rs`: the category catalogue, users' choices in it, the consent history and
//!   eligibility as recorded at a past instant;
//! - the read engine under the reads (cache, fill guard, single flight) is `read_through.rs`.
//!
//! **Writes run to their end.** Every write use case runs on its own task
//! ([`UserService::detached`], through the [`Spawner`] port), so that a caller that stops
//! waiting cannot cut it between its commit and its invalidation. The invalidation itself,
//! [`Write::after_write`], exists only on the [`Write`] that `detached` hands its task (no
//! other code makes one). `UserService` still holds the cache port (the read engine reads
//! through it), so "never invalidate outside a `Write`" is a rule kept by review.
//!
//! **A change is acknowledged once no reader can be served what it replaced.** Every
//! committed change invalidates the cached representations of the users it touched (a moved
//! device touches two), and answers `InvalidationUnconfirmed` (of the operation's error)
//! when the cache could not confirm it.

mod categories;
mod credentials;
mod devices;
mod users;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use time::OffsetDateTime;

use crate::cache::ProfileCache;
use crate::device::Device;
use crate::failure::{ReadError, ServiceError};
use crate::idempotency::{Idempotent, IdempotentRequest, StoredResponse};
use crate::ports::{
    CategoryRepository, Clock, ConsentHistory, DeviceRepository, IdempotencyRepository, PasswordHasher, ProfileEncoder,
    RepositoryError, Spawner, UserRepository,
};
pub use crate::read_through::EncodedProfile;
use crate::read_through::ReadThrough;
use crate::user::{Page, PageRequest, UserId, UserProfile};
pub use categories::{PreferencesOverview, RecordedEligibility};

/// The adapters the use cases run on.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "trait objects of the ports have no Debug")]
pub struct Ports {
    /// Users and preferences.
    pub users: Arc<dyn UserRepository>,
    /// Devices.
    pub devices: Arc<dyn DeviceRepository>,
    /// The category catalogue and users' choices in it.
    pub categories: Arc<dyn CategoryRepository>,
    /// Users' consent history.
    pub history: Arc<dyn ConsentHistory>,
    /// Stored answers of idempotent requests.
    pub idempotency: Arc<dyn IdempotencyRepository>,
    /// Password hashing.
    pub hasher: Arc<dyn PasswordHasher>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The representation cache ([`crate::cache::NoCache`] when none is configured).
    pub cache: Arc<dyn ProfileCache>,
    /// How representations are serialized for readers and the cache.
    pub encoder: Arc<dyn ProfileEncoder>,
    /// Where writes run to their end.
    pub spawner: Arc<dyn Spawner>,
}

/// The user-service use cases over its ports.
#[derive(Clone)]
pub struct UserService {
    ports: Ports,
    reads: ReadThrough,
}

impl std::fmt::Debug for UserService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserService").finish_non_exhaustive()
    }
}

/// A write use case running on its own task: what it writes through, and the only way to
/// acknowledge a change ([`Write::after_write`]).
struct Write {
    ports: Ports,
}

impl UserService {
    /// Wires the use cases to their adapters.
    pub fn new(ports: Ports) -> Self {
        let reads = ReadThrough::new(ports.users.clone(), ports.cache.clone(), ports.encoder.clone());
        Self { ports, reads }
    }

    /// The current time of the service's [`Clock`]: what every time-based
    /// decision of a caller (token lifetimes, record expiry, "now" in eligibility) must use.
    pub fn now(&self) -> OffsetDateTime {
        self.ports.clock.now()
    }

    /// Runs `write` on its own task (the [`Spawner`]) and answers its result: the write runs
    /// to its end even if the caller stops waiting.
    async fn detached<T, E, F>(&self, write: impl FnOnce(Write) -> F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<ServiceError> + Send + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (answer, answered) = futures_channel::oneshot::channel();
        let task = write(Write { ports: self.ports.clone() });
        self.ports.spawner.spawn(Box::pin(async move {
            // The caller may be gone: then nobody needs the answer.
            let _ = answer.send(task.await);
        }));
        answered
            .await
            .unwrap_or_else(|_| Err(ServiceError::Unexpected("a write's task stopped before answering".into()).into()))
    }

    /// The user with preferences and devices.
    pub async fn profile(&self, id: UserId) -> Result<UserProfile, ReadError> {
        self.reads.profile(id).await
    }

    /// The user's representation as the encoder serializes it, from the cache when warm.
    pub async fn encoded_profile(&self, id: UserId) -> Result<EncodedProfile, ReadError> {
        self.reads.encoded_profile(id).await
    }

    /// The serialized representations of many users, in the order of `ids` (`None` for
    /// unknown users): cache hits in one cache round trip, misses in one store query.
    pub async fn encoded_profiles(&self, ids: &[UserId]) -> Result<Vec<(UserId, Option<EncodedProfile>)>, ReadError> {
        let encoded = self.reads.encoded_many(ids).await?;
        Ok(ids.iter().map(|id| (*id, encoded.get(id).map(Arc::clone))).collect())
    }

    /// A page of users.
    pub async fn list(&self, page: PageRequest) -> Result<Page<UserProfile>, ReadError> {
        Ok(self.ports.users.list_profiles(page).await?)
    }

    /// The user's devices.
    pub async fn devices(&self, user: UserId) -> Result<Vec<Device>, ReadError> {
        self.ports.devices.list(user).await?.ok_or(ReadError::UserNotFound)
    }

    /// The token version access tokens of `user` must carry; `None` when the user is gone.
    pub async fn token_version(&self, user: UserId) -> Result<Option<i32>, ReadError> {
        Ok(self.ports.users.token_version(user).await?)
    }
}

impl Write {
    /// The time of this write.
    fn now(&self) -> OffsetDateTime {
        self.ports.clock.now()
    }

    /// Invalidates the cached representations of the users a write touched, once the write
    /// returned, if it may have changed them: `changed` says so of a result, a failure of
    /// the store may still have committed, and a refused write changed nothing (so that
    /// refusals cost no wait and no ledger row while Redis is down). Answers with the
    /// write's result: its own error first, then an invalidation the cache could not
    /// confirm, since a change is acknowledged only once no reader can be served what it
    /// replaced.
    async fn after_write<T>(
        &self,
        written: Result<T, RepositoryError>,
        ids: &[UserId],
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T, ServiceError> {
        let may_have_changed = match &written {
            Ok(value) => changed(value),
            Err(RepositoryError::Unavailable(_) | RepositoryError::Unexpected(_)) => true,
            Err(
                RepositoryError::EmailTaken
                | RepositoryError::UserNotFound
                | RepositoryError::CategoryNotFound
                | RepositoryError::CategoryExists
                | RepositoryError::Idempotency(_),
            ) => false,
        };
        if !may_have_changed || ids.is_empty() {
            return Ok(written?);
        }
        let invalidation = self.ports.cache.invalidate(ids).await;
        let value = written?;
        if invalidation.is_effective() { Ok(value) } else { Err(ServiceError::InvalidationUnconfirmed) }
    }

    /// Answers a retry from the first request's record, after invalidating again the users
    /// that request's change touched: the first answer may have been cut short before their
    /// invalidation held (a 503 `change_not_confirmed` asks for exactly this retry).
    async fn replayed<T>(&self, replay: StoredResponse) -> Result<Idempotent<T>, ServiceError> {
        let ids = replay.invalidates.clone();
        self.after_write(Ok(Idempotent::Replayed(replay)), &ids, |_| true).await
    }

    /// The answer stored for a completed idempotent request, if any.
    async fn stored_answer(&self, request: &IdempotentRequest) -> Result<Option<StoredResponse>, ServiceError> {
        match self.ports.idempotency.find_record(&request.caller, &request.key, request.received_at).await? {
            Some(record) => Ok(Some(record.replay_for(&request.fingerprint)?)),
            None => Ok(None),
        }
    }
}

/// Records that a device changed hands (both owners, never the token): moving a token is
/// what a phone passed to another user looks like, and what a stolen token would too.
fn log_device_moved(from: UserId, to: UserId) {
    tracing::info!(from_user = %from, to_user = %to, "a push token moved to another user");
}
