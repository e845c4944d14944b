//! The read engine under the use cases: reads of the user representation through the cache
//! with a fill guard ([`FillTicket`]), concurrent misses of one user on one instance sharing
//! a single load, and many users read in one cache round trip and one store query.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::cache::{CacheLookup, FillTicket, ProfileCache};
use crate::eligibility::{Channel, SendingProfile};
use crate::failure::ReadError;
use crate::ports::{ProfileEncoder, UserRepository};
use crate::user::{UserId, UserProfile};

/// A serialized user representation, shared between concurrent readers.
pub type EncodedProfile = Arc<[u8]>;

/// The outcome of one load, shareable between the readers that wait for it.
type SharedLoad = Shared<BoxFuture<'static, Result<EncodedProfile, Arc<ReadError>>>>;

/// In-flight loads by user and the cache generation their reader observed: a reader joins
/// a load only if it observed the same generation, so it never receives data loaded
/// before a write that it observed as invalidated.
type InflightLoads = Mutex<HashMap<(UserId, FillTicket), SharedLoad>>;

/// Re-creates a shared error for one reader.
fn unshare(error: &ReadError) -> ReadError {
    match error {
        ReadError::UserNotFound => ReadError::UserNotFound,
        ReadError::Unavailable(source) => ReadError::Unavailable(source.to_string().into()),
        ReadError::Unexpected(source) => ReadError::Unexpected(source.to_string().into()),
    }
}

/// Reads user representations through the cache.
#[derive(Clone)]
pub(crate) struct ReadThrough {
    users: Arc<dyn UserRepository>,
    cache: Arc<dyn ProfileCache>,
    encoder: Arc<dyn ProfileEncoder>,
    inflight: Arc<InflightLoads>,
}

impl ReadThrough {
    /// A read engine over the store, the cache and the encoder.
    pub(crate) fn new(
        users: Arc<dyn UserRepository>,
        cache: Arc<dyn ProfileCache>,
        encoder: Arc<dyn ProfileEncoder>,
    ) -> Self {
        Self { users, cache, encoder, inflight: Arc::default() }
    }

    /// The user with preferences and devices, from the store.
    pub(crate) async fn profile(&self, id: UserId) -> Result<UserProfile, ReadError> {
        self.users.find_profile(id).await?.ok_or(ReadError::UserNotFound)
    }

    /// The user's representation as the encoder serializes it, from the cache when warm.
    pub(crate) async fn encoded_profile(&self, id: UserId) -> Result<EncodedProfile, ReadError> {
        let ticket = match self.cache.lookup(id).await {
            CacheLookup::Hit(bytes) => return Ok(bytes.into()),
            CacheLookup::Miss(ticket) => ticket,
            // Without a ticket a load could not be joined safely: load alone, don't fill.
            CacheLookup::Unavailable => {
                let profile = self.profile(id).await?;
                return Ok(self.encoder.encode(&profile).into());
            }
        };
        let key = (id, ticket.clone());
        let load = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let reads = self.clone();
                    async move { reads.load_and_fill(id, ticket).await.map_err(Arc::new) }.boxed().shared()
                })
                .clone()
        };
        let result = load.clone().await;
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(&key).is_some_and(|current| current.ptr_eq(&load)) {
            inflight.remove(&key);
        }
        result.map_err(|error| unshare(&error))
    }

    /// The profile in `encoded` when it decodes, else the user's profile from the store
    /// (bytes written by another format version).
    pub(crate) async fn decoded(&self, id: UserId, encoded: &[u8]) -> Result<UserProfile, ReadError> {
        match self.encoder.decode(encoded) {
            Some(profile) => Ok(profile),
            None => self.profile(id).await,
        }
    }

    /// Loads many users: each found user's bytes, and its profile when it was read from the
    /// store. Misses are loaded in one query and filled with their tickets.
    pub(crate) async fn load_many(
        &self,
        ids: &[UserId],
    ) -> Result<HashMap<UserId, (EncodedProfile, Option<UserProfile>)>, ReadError> {
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::with_capacity(ids.len());
        unique.extend(ids.iter().copied().filter(|id| seen.insert(*id)));

        let lookups = self.cache.lookup_many(&unique).await;
        let mut loaded = HashMap::with_capacity(unique.len());
        let mut tickets: HashMap<UserId, Option<FillTicket>> = HashMap::new();
        for (id, lookup) in unique.iter().zip(lookups) {
            match lookup {
                CacheLookup::Hit(bytes) => {
                    loaded.insert(*id, (EncodedProfile::from(bytes), None));
                }
                CacheLookup::Miss(ticket) => {
                    tickets.insert(*id, Some(ticket));
                }
                CacheLookup::Unavailable => {
                    tickets.insert(*id, None);
                }
            }
        }
        if tickets.is_empty() {
            return Ok(loaded);
        }
        let missing: Vec<UserId> = tickets.keys().copied().collect();
        let profiles = self.users.find_profiles(&missing).await?;
        let mut fills = Vec::new();
        for profile in profiles {
            let id = profile.user.id;
            let bytes = self.encoder.encode(&profile);
            if let Some(Some(ticket)) = tickets.remove(&id) {
                fills.push(self.cache.fill(id, ticket, bytes.clone()));
            }
            loaded.insert(id, (EncodedProfile::from(bytes), Some(profile)));
        }
        futures_util::future::join_all(fills).await;
        Ok(loaded)
    }

    /// What send decisions on `channel` read of `encoded`, `id`'s representation (see
    /// [`SendingProfile`]), else of the user's profile from the store (bytes written by
    /// another format version).
    pub(crate) async fn decoded_sending(
        &self,
        id: UserId,
        encoded: &[u8],
        channel: Channel,
    ) -> Result<SendingProfile, ReadError> {
        match self.encoder.decode_sending(encoded, channel) {
            Some(sending) => Ok(sending),
            None => Ok(SendingProfile::of(&self.profile(id).await?, channel)),
        }
    }

    /// What send decisions on `channel` read of many users, by id (unknown users are
    /// absent): cache hits in one cache round trip, each decoded no further than a decision
    /// needs; misses, and bytes that do not decode, in one store query each.
    pub(crate) async fn sending_many(
        &self,
        ids: &[UserId],
        channel: Channel,
    ) -> Result<HashMap<UserId, SendingProfile>, ReadError> {
        let loaded = self.load_many(ids).await?;
        let mut sending = HashMap::with_capacity(loaded.len());
        let mut undecodable = Vec::new();
        for (id, (encoded, profile)) in loaded {
            let projected = match profile {
                Some(profile) => Some(SendingProfile::of(&profile, channel)),
                None => self.encoder.decode_sending(&encoded, channel),
            };
            match projected {
                Some(projected) => {
                    sending.insert(id, projected);
                }
                None => undecodable.push(id),
            }
        }
        if !undecodable.is_empty() {
            for profile in self.users.find_profiles(&undecodable).await? {
                sending.insert(profile.user.id, SendingProfile::of(&profile, channel));
            }
        }
        Ok(sending)
    }

    /// Whether no load is in flight (every reader of every load has taken its result).
    #[cfg(test)]
    pub(crate) fn no_load_in_flight(&self) -> bool {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    async fn load_and_fill(&self, id: UserId, ticket: FillTicket) -> Result<EncodedProfile, ReadError> {
        let profile = self.profile(id).await?;
        let bytes = self.encoder.encode(&profile);
        self.cache.fill(id, ticket, bytes.clone()).await;
        Ok(bytes.into())
    }
}
