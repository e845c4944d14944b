//! Ports: what the use cases need from the outside world. Adapters implement them
//! (`adapters-postgres` and `adapters-sqlite` for storage, `adapters-argon2` for hashing;
//! the clock is [`SystemClock`] here); every port is object-safe (the async ones through
//! `async_trait`), held as `Arc<dyn Port>`.
//!
//! With the `mock` feature (or in this crate's tests) each trait has a `mockall` mock:
//! `MockUserRepository`, `MockDeviceRepository`, `MockCategoryRepository`,
//! `MockConsentHistory`, `MockIdempotencyRepository`, `MockPasswordHasher`, `MockClock`, …

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::auth::Credentials;
use crate::category::{Category, CategoryChoice, CategoryKey, CategoryPatch};
use crate::consent::{ConsentRecord, HistoryPage, Provenance};
use crate::device::{Device, DeviceRegistration, DeviceSelector, HeldToken, RegisteredDevice};
use crate::error::BoxError;
use crate::event::{Backlog, ChangeEvent, RelayRound};
use crate::idempotency::{IdempotencyConflict, IdempotencyKey, IdempotencyRecord, Idempotent, IdempotentWrite};
use crate::preferences::{Preferences, PreferencesUpdate};
use crate::user::{
    ContactUpdate, EmailAddress, Page, PageRequest, Password, PasswordHash, PhoneNumber, User, UserId, UserName,
    UserProfile,
};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The email address belongs to another user (the unique email constraint).
    #[error("email address already registered")]
    EmailTaken,
    /// The user the write refers to does not exist (or was deleted meanwhile).
    #[error("user not found")]
    UserNotFound,
    /// The category the write refers to does not exist.
    #[error("category not found")]
    CategoryNotFound,
    /// A category with this key already exists.
    #[error("category already exists")]
    CategoryExists,
    /// The store cannot serve now (no connection within the pool's timeout, connection
    /// lost, statement timeout); retrying later may succeed.
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// An idempotent write cannot run: its key is in flight or was used for another request.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyConflict),
    /// Anything else.
    #[error("unexpected store failure")]
    Unexpected(#[source] BoxError),
}

/// A user to create, with the hash of its password and its initial preferences.
#[derive(Debug, Clone)]
pub struct NewUserRecord {
    /// The identifier, chosen by the use case.
    pub id: UserId,
    /// The display name.
    pub name: UserName,
    /// The normalized email address.
    pub email: EmailAddress,
    /// The optional phone number.
    pub phone: Option<PhoneNumber>,
    /// The argon2id hash of the password.
    pub password_hash: PasswordHash,
    /// The initial preferences (defaults with the caller's choices applied).
    pub preferences: Preferences,
    /// A device to register in the same transaction (a `push_token` given at registration).
    pub device: Option<DeviceRegistration>,
    /// What to do with `device` when another user holds its token.
    pub if_token_held: HeldToken,
    /// The registration time.
    pub created_at: OffsetDateTime,
    /// Who registers, for the consent history.
    pub provenance: Provenance,
}

/// A user just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    /// The stored profile.
    pub profile: UserProfile,
    /// The user the initial device's token was moved from, if it belonged to another user.
    pub device_moved_from: Option<UserId>,
    /// Whether the initial device was left out because another user holds its token
    /// ([`HeldToken::Leave`]).
    pub token_left_with_its_owner: bool,
}

/// Users and their preferences, which live and die together.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Creates the user, its preferences and its optional device in one transaction and
    /// returns the stored profile. A device whose token another user holds is moved or left
    /// out, as [`NewUserRecord::if_token_held`] says; never duplicated. With `idempotency`, the same transaction first claims the
    /// key (a stored answer is returned as [`Idempotent::Replayed`] without writing) and
    /// stores the rendered answer with the change.
    ///
    /// Errors: [`RepositoryError::EmailTaken`] when another user has the email address
    /// (compared case-insensitively); nothing is written then.
    /// [`RepositoryError::Idempotency`] when the key is in flight or was used for another
    /// request.
    async fn create(
        &self,
        user: NewUserRecord,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RepositoryError>;

    /// Loads the user with preferences and devices (active first, most recently seen
    /// first). `Ok(None)` when no user has this id.
    async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError>;

    /// Loads the profiles of these users (in any order; unknown ids are left out). The
    /// default loads them one by one; stores override it with a single query.
    async fn find_profiles(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, RepositoryError> {
        let mut profiles = Vec::with_capacity(ids.len());
        for id in ids {
            profiles.extend(self.find_profile(*id).await?);
        }
        Ok(profiles)
    }

    /// Loads the profiles of these users as [`UserRepository::find_profiles`] does, each from
    /// a copy of the store (a read replica) that has applied the position it is given, or
    /// else from the primary: never older than a change committed before that position. A
    /// user a replica does not know is looked for on the primary (it may be newer than the
    /// replica). The default reads the primary.
    async fn find_profiles_at_least(
        &self,
        wanted: &[(UserId, crate::cache::CommitPosition)],
    ) -> Result<Vec<UserProfile>, RepositoryError> {
        let ids: Vec<UserId> = wanted.iter().map(|(id, _)| *id).collect();
        self.find_profiles(&ids).await
    }

    /// Lists profiles ordered by registration time, oldest first, with the total count.
    async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError>;

    /// Whether a user with this id exists.
    async fn exists(&self, id: UserId) -> Result<bool, RepositoryError>;

    /// Applies a non-empty contact change and returns the updated user, `Ok(None)` when no
    /// user has this id. A changed email address or phone number is recorded in the consent
    /// history in the same transaction.
    ///
    /// Errors: [`RepositoryError::EmailTaken`] when the new address belongs to another user.
    async fn update_contact(
        &self,
        id: UserId,
        update: ContactUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<User>, RepositoryError>;

    /// Deletes the user, its preferences and its devices. `Ok(false)` when no user had this id.
    async fn delete(&self, id: UserId) -> Result<bool, RepositoryError>;

    /// Applies a partial change atomically (concurrent updates of different fields both
    /// survive) and returns the result, `Ok(None)` when no user has this id. Each changed
    /// field is recorded in the consent history in the same transaction, its old value read
    /// under the write's lock ([`crate::consent::preferences_changes`]).
    async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Preferences>, RepositoryError>;

    /// The credentials of the account with this email (compared case-insensitively).
    async fn find_credentials(&self, email: &EmailAddress) -> Result<Option<Credentials>, RepositoryError>;

    /// The credentials of the account with this id.
    async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError>;

    /// The token version of the account, `Ok(None)` when it no longer exists.
    async fn token_version(&self, id: UserId) -> Result<Option<i32>, RepositoryError>;

    /// Replaces the password hash, but only while it is still `current` (the hash the caller
    /// checked a password against): a change made in between (a concurrent password change,
    /// or a login upgrading the old hash) is never overwritten. With `revoke_tokens`, the
    /// token version moves on so that every access token issued before stops working;
    /// returns the new version. `Ok(None)` when no user has this id or its hash is no longer
    /// `current`; nothing is written then.
    async fn replace_password_hash(
        &self,
        id: UserId,
        current: PasswordHash,
        new: PasswordHash,
        revoke_tokens: bool,
    ) -> Result<Option<i32>, RepositoryError>;
}

/// Push devices. A token is unique across all users: registering a known token moves it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait DeviceRepository: Send + Sync {
    /// Registers `registration.token` for `user` in one atomic step: a new token creates a
    /// device; a known one (the user's own or another user's) is moved to `user` with its
    /// platform and state updated and `last_seen_at = now`. Never creates a duplicate, also
    /// under concurrent registrations of the same token.
    ///
    /// With `idempotency`, the key is claimed and the answer stored in the same transaction,
    /// as for [`UserRepository::create`].
    ///
    /// Errors: [`RepositoryError::UserNotFound`] when `user` does not exist;
    /// [`RepositoryError::Idempotency`] as for [`UserRepository::create`].
    async fn upsert(
        &self,
        user: UserId,
        registration: DeviceRegistration,
        now: OffsetDateTime,
        by: &Provenance,
        idempotency: Option<IdempotentWrite<RegisteredDevice>>,
    ) -> Result<Idempotent<RegisteredDevice>, RepositoryError>;

    /// The user's devices, active first, most recently seen first; `Ok(None)` when the user
    /// does not exist.
    async fn list(&self, user: UserId) -> Result<Option<Vec<Device>>, RepositoryError>;

    /// Activates or deactivates the user's device named by `selector` and returns it;
    /// `updated_at` changes only when the state does. `Ok(None)` when the user has no such
    /// device (or does not exist).
    async fn set_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Device>, RepositoryError>;

    /// Deletes the user's device named by `selector`; `Ok(false)` when there is none.
    async fn delete(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<bool, RepositoryError>;
}

/// What removing a category did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CategoryRemoval {
    /// Removed, with the users whose choices in it were dropped (their representations
    /// changed).
    Removed(Vec<UserId>),
    /// Not removed: this many users have choices in it (remove with `force`).
    InUse(u64),
    /// No such category.
    NotFound,
}

/// A user's choice in a category: set some channels, or clear it (back to the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceChange {
    /// Set the channels the choice names; the others stay as they are.
    Set(CategoryChoice),
    /// Forget the user's choice: the category's defaults apply again.
    Clear,
}

/// The category catalogue and users' choices in it. Every write of the catalogue appends
/// a revision, so that [`CategoryRepository::as_of`] can say what a category was at an
/// instant; every change of a user's choice is recorded in the consent history in the same
/// transaction.
///
/// The `now` of a write is the domain's clock; a store whose clock every instance shares
/// (PostgreSQL's) stamps revisions and history rows with that clock instead, taken under
/// the write's locks, so that instants recorded by different instances compare.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait CategoryRepository: Send + Sync {
    /// Every category, by key.
    async fn list(&self) -> Result<Vec<Category>, RepositoryError>;

    /// The category with this key.
    async fn find(&self, key: &CategoryKey) -> Result<Option<Category>, RepositoryError>;

    /// The category as it was at `at` (`Ok(None)`: it did not exist then).
    async fn as_of(&self, key: &CategoryKey, at: OffsetDateTime) -> Result<Option<Category>, RepositoryError>;

    /// Adds a category and returns it as stored (its times as the store recorded them).
    ///
    /// Errors: [`RepositoryError::CategoryExists`] when the key is taken.
    async fn create(&self, category: Category) -> Result<Category, RepositoryError>;

    /// Applies a non-empty patch and returns the category, `Ok(None)` when there is none.
    async fn update(
        &self,
        key: &CategoryKey,
        patch: CategoryPatch,
        now: OffsetDateTime,
    ) -> Result<Option<Category>, RepositoryError>;

    /// Removes a category: refused while users have choices in it, unless `force`, which
    /// drops those choices (each recorded in the owner's consent history, by `by`).
    async fn remove(
        &self,
        key: &CategoryKey,
        force: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<CategoryRemoval, RepositoryError>;

    /// Changes `user`'s choice in the category and returns the choice now stored
    /// (`CategoryChoice::default()` when cleared); `Ok(None)` when no user has this id.
    ///
    /// Errors: [`RepositoryError::CategoryNotFound`] when there is no such category.
    async fn change_choice(
        &self,
        user: UserId,
        key: &CategoryKey,
        change: ChoiceChange,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<CategoryChoice>, RepositoryError>;
}

/// What the history says after an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSince {
    /// For each field changed after the instant, its first change after it (in any order):
    /// its old value is the field's value at the instant, all that taking the changes back
    /// needs, however many were made since.
    pub changes: Vec<ConsentRecord>,
    /// When the last change at or before the instant was made (what the state at the
    /// instant rests on), if any.
    pub last_before: Option<OffsetDateTime>,
}

/// Users' consent history: appended by the writes of the other repositories, read here.
/// No method changes or deletes a row; erasing a user erases its history with it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ConsentHistory: Send + Sync {
    /// A page of `user`'s history, newest first: at most `limit` rows older than the
    /// `before` cursor (a [`ConsentRecord::sequence`]); `Ok(None)` when no user has this id.
    async fn page(&self, user: UserId, limit: u32, before: Option<i64>)
    -> Result<Option<HistoryPage>, RepositoryError>;

    /// The first change of each of `user`'s fields made after `at`, and the time of the
    /// last change at or before it.
    async fn since(&self, user: UserId, at: OffsetDateTime) -> Result<RecordedSince, RepositoryError>;
}

/// Why publishing events failed. Nothing was marked published: the events are sent again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker cannot be reached (connection refused or lost, timeout).
    #[error("event broker unreachable")]
    Unreachable(#[source] BoxError),
    /// The broker refuses us: wrong credentials or virtual host, or the exchange cannot be
    /// declared (another type under the same name). An operator must act.
    #[error("event broker refuses the publisher")]
    Refused(#[source] BoxError),
    /// The broker did not confirm every event (a negative acknowledgement, or no answer in time).
    #[error("event broker did not confirm")]
    Unconfirmed(#[source] BoxError),
}

/// Where change events go: a message broker.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `events` in their order and returns once the broker has confirmed every
    /// one of them (publisher confirms): only then may they be marked published.
    async fn publish(&self, events: &[ChangeEvent]) -> Result<(), PublishError>;

    /// Whether the broker would take events now (a round trip to it), for the health of an
    /// instance with nothing to publish. The default knows of no broker to ask.
    async fn check(&self) -> Result<(), PublishError> {
        Ok(())
    }
}

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] RepositoryError),
    /// The broker failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// The events every write records in its own transaction (the transactional outbox), each
/// with its subject's next sequence number. The relay gives them their place in the pull
/// feed (the order in which their transactions committed) and publishes them.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventOutbox: Send + Sync {
    /// One relay round, run by one instance at a time (`Busy` when another holds the relay):
    /// gives the events committed since the last round their feed positions, then, with a
    /// `publisher`, publishes up to `limit` unpublished events in feed order and marks them
    /// published once the broker confirmed them (on an error none is marked, all are sent
    /// again next round: at least once).
    async fn relay<'a>(
        &self,
        publisher: Option<&'a dyn EventPublisher>,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<RelayRound, RelayError>;

    /// At most `limit` events of the feed after the event `after` (from the oldest kept
    /// when `None`), oldest first. `Ok(None)`: no event has the id `after` (never, or
    /// pruned since): the consumer must start again from the oldest.
    async fn feed(&self, after: Option<uuid::Uuid>, limit: u32) -> Result<Option<Vec<ChangeEvent>>, RepositoryError>;

    /// Deletes events recorded before `before` that are done with: published ones (with a
    /// broker), or those in the feed (`published_only == false`, without a broker). Returns
    /// how many were deleted (in bounded batches: call again while it deletes).
    async fn prune(&self, before: OffsetDateTime, published_only: bool) -> Result<u64, RepositoryError>;

    /// The events not yet published (`unpublished`) or not yet in the feed.
    async fn backlog(&self, unpublished: bool) -> Result<Backlog, RepositoryError>;
}

/// Stored answers of idempotent requests.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait IdempotencyRepository: Send + Sync {
    /// The record of `caller`'s `key` unexpired at `now`, if any. A fast check before
    /// expensive work; the write itself checks again under a lock.
    async fn find_record(
        &self,
        caller: &str,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, RepositoryError>;
}

/// Why hashing or verifying a password failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are running or queued; the caller should retry later.
    #[error("password hashing is saturated")]
    Overloaded,
    /// The hasher failed (a malformed stored hash, a panicked worker).
    #[error("password hashing failed")]
    Unexpected(#[source] BoxError),
}

/// Password hashing. Implementations run the CPU-heavy work off the async executor.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Hashes a password with a fresh salt.
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashError>;

    /// Checks a password against a stored hash; `Ok(false)` on a mismatch.
    async fn verify(&self, password: Password, hash: PasswordHash) -> Result<bool, HashError>;

    /// A hash of no one's password, verified against when an account does not exist, so
    /// that unknown accounts take as long to refuse as wrong passwords.
    fn dummy_hash(&self) -> PasswordHash;

    /// Whether a stored hash is weaker than what `hash` produces today and should be
    /// replaced at the next successful login.
    fn needs_rehash(&self, hash: &PasswordHash) -> bool;
}

/// Turns a profile into the bytes that readers receive and the cache stores (the HTTP
/// layer's JSON), so that a cache hit costs no re-serialization, and back (for decisions
/// such as send eligibility made from cached profiles).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait ProfileEncoder: Send + Sync {
    /// Serializes the profile.
    fn encode(&self, profile: &UserProfile) -> Vec<u8>;

    /// Reads bytes written by [`ProfileEncoder::encode`]; `None` if they are not such bytes
    /// (the caller then loads the profile from the store).
    fn decode(&self, bytes: &[u8]) -> Option<UserProfile>;

    /// What a send decision on `channel` reads of the user in `bytes` (see
    /// [`SendingProfile`](crate::eligibility::SendingProfile)), without decoding the rest;
    /// `None` if they are not bytes [`ProfileEncoder::encode`] wrote.
    fn decode_sending(
        &self,
        bytes: &[u8],
        channel: crate::eligibility::Channel,
    ) -> Option<crate::eligibility::SendingProfile> {
        self.decode(bytes).map(|profile| crate::eligibility::SendingProfile::of(&profile, channel))
    }
}

/// The current time, injectable so that use cases are deterministic under test.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync {
    /// Now, in UTC, at microsecond precision (what PostgreSQL stores).
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        now.replace_microsecond(now.microsecond()).unwrap_or(now)
    }
}

/// A dependency whose health `/health` reports.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// Answers `Ok` when the dependency serves requests.
    async fn check(&self) -> Result<(), BoxError>;
}

/// Runs a task on the driver's runtime to its end, whether or not anyone still waits for
/// its result: the use cases run every write this way ([`crate::service::UserService`]), so
/// that a caller that goes away (a closed connection drops the handler's future) cannot cut
/// a write between its commit and the cache invalidation that follows it. The domain stays
/// free of any runtime; the driver gives its own (`tokio::spawn` in the web service).
pub trait Spawner: Send + Sync {
    /// Starts `task` and returns at once.
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>);
}
