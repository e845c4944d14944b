//! The read engine under the use cases: reads of the user representation through the cache
//! with a fill guard ([`FillTicket`]), concurrent misses of one user on one instance sharing
//! a single load, and many users read in one cache round trip and one store query.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::cache::{CacheLookup, CachedProfile, FillTicket, ProfileCache, ReadFloor};
use crate::eligibility::{Channel, SendingProfile};
use crate::failure::ReadError;
use crate::ports::{ProfileEncoder, UserRepository};
use crate::user::{UserId, UserProfile};

/// A serialized user representation, shared between concurrent readers.
pub type EncodedProfile = Arc<[u8]>;

/// The outcome of one load, shareable between the readers that wait for it.
type SharedLoad = Shared<BoxFuture<'static, Result<CachedProfile, Arc<ReadError>>>>;

/// In-flight loads by user and the cache generation their reader observed: a reader joins
/// a load only if it observed the same generation, so it never receives data loaded
/// before a write that it observed as invalidated.
type InflightLoads = Mutex<HashMap<(UserId, FillTicket), SharedLoad>>;

/// A reader's share of an in-flight load. When the reader is done with it, however it is done
/// (it has the result, or its request went away), the load leaves the map if it has finished
/// or no other reader waits for it: a load that nobody polls is then dropped with its last
/// reader, never kept in the map unpolled, holding what it had taken (a cache connection
/// being made, a database connection) for good.
struct JoinedLoad<'a> {
    inflight: &'a InflightLoads,
    key: (UserId, FillTicket),
    load: SharedLoad,
}

impl Drop for JoinedLoad<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        // Shares: the map's and this reader's, and the other readers' (a reader's polled share
        // is gone by now).
        let unwanted = self.load.peek().is_some() || self.load.strong_count().is_none_or(|shares| shares <= 2);
        if unwanted && inflight.get(&self.key).is_some_and(|current| current.ptr_eq(&self.load)) {
            inflight.remove(&self.key);
        }
        // The map's lock is released before this reader's share, perhaps the load's last, is
        // dropped (and the load with it).
    }
}

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
        Ok(Arc::clone(self.cached_profile(id).await?.bytes()))
    }

    /// What a send decision on `channel` reads of the user (see [`SendingProfile`]), from
    /// the cache when warm (decoded once per entry kept in process,
    /// [`CachedProfile::sending`]), else from the store (also when the cached bytes were
    /// written by another format version).
    pub(crate) async fn sending(&self, id: UserId, channel: Channel) -> Result<Arc<SendingProfile>, ReadError> {
        let cached = self.cached_profile(id).await?;
        match cached.sending(channel, |bytes, channel| self.encoder.decode_sending(bytes, channel)) {
            Some(sending) => Ok(sending),
            None => Ok(Arc::new(SendingProfile::of(&self.profile(id).await?, channel))),
        }
    }

    /// The user's representation: the cache's when warm; else loaded (one load shared by the
    /// concurrent readers that observed the same generation) and filled.
    async fn cached_profile(&self, id: UserId) -> Result<CachedProfile, ReadError> {
        let ticket = match self.cache.lookup(id).await {
            CacheLookup::Hit(cached) => return Ok(cached),
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
        let joined = JoinedLoad { inflight: &self.inflight, key, load };
        let result = joined.load.clone().await;
        drop(joined);
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

    /// The representations of many users, by id (unknown users are absent): cache hits in one
    /// cache round trip, misses in one store query.
    pub(crate) async fn encoded_many(&self, ids: &[UserId]) -> Result<HashMap<UserId, EncodedProfile>, ReadError> {
        let (hits, misses) = self.lookup_many(ids).await;
        let mut encoded: HashMap<_, _> =
            hits.into_iter().map(|(id, cached)| (id, Arc::clone(cached.bytes()))).collect();
        for (profile, bytes) in self.load_many(misses, true).await? {
            let bytes = bytes.unwrap_or_else(|| self.encoder.encode(&profile).into());
            encoded.insert(profile.user.id, bytes);
        }
        Ok(encoded)
    }

    /// What send decisions on `channel` read of many users, by id (unknown users are
    /// absent): cache hits in one cache round trip, each decoded no further than a decision
    /// needs, and once per cached entry while a cache keeps it in process
    /// ([`CachedProfile::sending`]); misses, and bytes that do not decode (another format
    /// version's), in one store query.
    pub(crate) async fn sending_many(
        &self,
        ids: &[UserId],
        channel: Channel,
    ) -> Result<HashMap<UserId, Arc<SendingProfile>>, ReadError> {
        let (hits, mut misses) = self.lookup_many(ids).await;
        let mut sending = HashMap::with_capacity(hits.len());
        for (id, cached) in hits {
            match cached.sending(channel, |bytes, channel| self.encoder.decode_sending(bytes, channel)) {
                Some(projected) => {
                    sending.insert(id, projected);
                }
                // Not filled: the entry is there, in a format this version does not read.
                None => {
                    misses.insert(id, None);
                }
            }
        }
        for (profile, _) in self.load_many(misses, false).await? {
            sending.insert(profile.user.id, Arc::new(SendingProfile::of(&profile, channel)));
        }
        Ok(sending)
    }

    /// Looks many users up in one cache round trip (each id once): the hits, and the misses
    /// with the ticket to fill each with (`None`: the cache could not answer, don't fill).
    async fn lookup_many(&self, ids: &[UserId]) -> (Vec<(UserId, CachedProfile)>, HashMap<UserId, Option<FillTicket>>) {
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::with_capacity(ids.len());
        unique.extend(ids.iter().copied().filter(|id| seen.insert(*id)));

        let lookups = self.cache.lookup_many(&unique).await;
        let mut hits = Vec::with_capacity(unique.len());
        let mut misses = HashMap::new();
        for (id, lookup) in unique.into_iter().zip(lookups) {
            match lookup {
                CacheLookup::Hit(cached) => hits.push((id, cached)),
                CacheLookup::Miss(ticket) => {
                    misses.insert(id, Some(ticket));
                }
                CacheLookup::Unavailable => {
                    misses.insert(id, None);
                }
            }
        }
        (hits, misses)
    }

    /// Loads `misses` from the store in one query, and fills the cache with those that have
    /// a ticket: each found user, with its representation when it was encoded for a fill and
    /// `keep_bytes` asks for it (a copy of what the fill stores).
    async fn load_many(
        &self,
        mut misses: HashMap<UserId, Option<FillTicket>>,
        keep_bytes: bool,
    ) -> Result<Vec<(UserProfile, Option<EncodedProfile>)>, ReadError> {
        if misses.is_empty() {
            return Ok(Vec::new());
        }
        let profiles = self.load_profiles(&misses).await?;
        let mut fills = Vec::new();
        let mut loaded = Vec::with_capacity(profiles.len());
        for profile in profiles {
            let encoded = match misses.remove(&profile.user.id) {
                Some(Some(ticket)) => {
                    let bytes = self.encoder.encode(&profile);
                    let encoded = keep_bytes.then(|| EncodedProfile::from(bytes.as_slice()));
                    fills.push(self.cache.fill(profile.user.id, ticket, bytes));
                    encoded
                }
                _ => None,
            };
            loaded.push((profile, encoded));
        }
        futures_util::future::join_all(fills).await;
        Ok(loaded)
    }

    /// Whether no load is in flight (every reader of every load has taken its result).
    #[cfg(test)]
    pub(crate) fn no_load_in_flight(&self) -> bool {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Loads the profiles of `misses`: from the primary those whose ticket names no floor
    /// (or that have no ticket), in one query; the others in one more, each from any copy of
    /// the store that has applied its floor (see [`ReadFloor`]).
    async fn load_profiles(&self, misses: &HashMap<UserId, Option<FillTicket>>) -> Result<Vec<UserProfile>, ReadError> {
        let mut from_primary = Vec::new();
        let mut at_least = Vec::new();
        for (id, ticket) in misses {
            match ticket.as_ref().map(FillTicket::floor) {
                Some(ReadFloor::AtLeast(position)) => at_least.push((*id, position)),
                Some(ReadFloor::Primary) | None => from_primary.push(*id),
            }
        }
        let mut profiles =
            if from_primary.is_empty() { Vec::new() } else { self.users.find_profiles(&from_primary).await? };
        if !at_least.is_empty() {
            profiles.extend(self.users.find_profiles_at_least(&at_least).await?);
        }
        Ok(profiles)
    }

    async fn load_and_fill(&self, id: UserId, ticket: FillTicket) -> Result<CachedProfile, ReadError> {
        let profile = match ticket.floor() {
            ReadFloor::Primary => self.profile(id).await?,
            ReadFloor::AtLeast(position) => {
                self.users.find_profiles_at_least(&[(id, position)]).await?.pop().ok_or(ReadError::UserNotFound)?
            }
        };
        let bytes = self.encoder.encode(&profile);
        self.cache.fill(id, ticket, bytes.clone()).await;
        Ok(bytes.into())
    }
}
