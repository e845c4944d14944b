//! The contract of the [`ProfileCache`] port: cache-aside with a fill guard. A miss hands
//! out a [`FillTicket`]; a fill with it lands only if the user was not invalidated since;
//! an invalidation deletes the entry and makes every earlier ticket useless; entries live
//! their TTL; users are independent.
//!
//! [`profile_cache_contract_tests!`](crate::profile_cache_contract_tests) turns every case into
//! a test against a cache that is up. Cases isolate themselves with fresh user ids; the
//! implementation isolates its store (e.g. with a key prefix per test). Implementation
//! details stay out: what a ticket contains, how entries are stored, how outages degrade.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domain::cache::{CacheHealth, CacheLookup, FillTicket, Invalidation, ProfileCache};
use domain::eligibility::Channel;
use domain::user::UserId;

/// Generates one `#[tokio::test]` per profile-cache contract case, in a module named
/// `profile_cache_contract` of the calling module.
///
/// The first argument reads like a closure from the entry TTL to the cache under test: the
/// expression is evaluated in each test, inside the runtime, with the TTL bound to the given
/// name and the calling module's items in scope (`use super::*`). Most cases ask for
/// [`TTL`], the expiry case for [`SHORT_TTL`]. The optional `clean_up` is a future evaluated
/// and awaited after a case passed, with the cache bound to the given name (e.g. to delete
/// the keys of a shared store). The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) among its dependencies.
///
/// ```ignore
/// adapters_memory::profile_cache_contract_tests!(
///     |ttl| RedisCache::build(RedisCacheConfig { ttl, ..config() }).expect("build"),
///     clean_up: |cache| delete_keys(cache),
/// );
/// ```
#[macro_export]
macro_rules! profile_cache_contract_tests {
    (|$ttl:ident| $cache:expr $(,)?) => {
        $crate::profile_cache_contract_tests!(|$ttl| $cache, clean_up: |_cache| async {});
    };
    (|$ttl:ident| $cache:expr, clean_up: |$used:ident| $clean_up:expr $(,)?) => {
        $crate::profile_cache_contract_tests!(@cases ($ttl, $cache, $used, $clean_up);
            a_miss_then_a_fill_makes_a_hit_with_the_same_bytes => TTL,
            lookups_without_an_invalidation_between_give_the_same_ticket => TTL,
            a_fill_whose_ticket_predates_an_invalidation_is_discarded => TTL,
            a_fill_with_a_ticket_from_before_two_invalidations_is_discarded => TTL,
            after_an_invalidation_a_lookup_misses_with_a_new_ticket_that_fills => TTL,
            invalidating_many_ids_at_once_deletes_every_entry_and_spares_the_others => TTL,
            fills_and_invalidations_of_different_users_are_independent => TTL,
            an_entry_expires_after_its_ttl_and_can_then_be_filled_again => SHORT_TTL,
            lookup_many_answers_like_lookup_in_the_order_of_the_ids => TTL,
            concurrent_readers_never_see_a_value_older_than_an_acknowledged_write => TTL,
            what_was_decoded_from_an_entry_is_never_answered_for_the_entry_that_replaced_it => TTL,
            a_working_cache_is_up => TTL,
        );
    };
    (@cases ($ttl:ident, $cache:expr, $used:ident, $clean_up:expr); $($case:ident => $case_ttl:ident),+ $(,)?) => {
        mod profile_cache_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let $ttl: ::std::time::Duration = $crate::contract::profile_cache::$case_ttl;
                    let cache = $cache;
                    $crate::contract::profile_cache::$case(&cache).await;
                    let $used = &cache;
                    $clean_up.await;
                }
            )+
        }
    };
}

/// The entry TTL the cases ask for, except the expiry case: far longer than any case takes.
pub const TTL: Duration = Duration::from_secs(60);

/// The entry TTL of the expiry case.
pub const SHORT_TTL: Duration = Duration::from_millis(300);

/// The ticket of a miss; panics with `what` on any other answer.
async fn miss(cache: &dyn ProfileCache, id: UserId, what: &str) -> FillTicket {
    match cache.lookup(id).await {
        CacheLookup::Miss(ticket) => ticket,
        other => panic!("{what}: expected a miss, got {other:?}"),
    }
}

/// Panics with `what` unless a lookup of `id` misses.
async fn assert_miss(cache: &dyn ProfileCache, id: UserId, what: &str) {
    let _ = miss(cache, id, what).await;
}

/// Panics with `what` unless a lookup of `id` hits with `bytes`.
async fn assert_hit(cache: &dyn ProfileCache, id: UserId, bytes: &[u8], what: &str) {
    assert_eq!(cache.lookup(id).await, CacheLookup::Hit(bytes.to_vec().into()), "{what}");
}

/// Misses, fills `bytes` with the miss's ticket, and checks that `id` then hits.
async fn warm(cache: &dyn ProfileCache, id: UserId, bytes: &[u8]) {
    let ticket = miss(cache, id, "before warming").await;
    cache.fill(id, ticket, bytes.to_vec()).await;
    assert_hit(cache, id, bytes, "after warming").await;
}

/// A miss, a fill with its ticket, and the next lookups hit with exactly the filled bytes,
/// whatever they contain.
pub async fn a_miss_then_a_fill_makes_a_hit_with_the_same_bytes(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    let bytes = b"{\"name\":\"Ada\"}\n\x00\xff not UTF-8".to_vec();
    let ticket = miss(cache, id, "a user never cached").await;
    cache.fill(id, ticket, bytes.clone()).await;
    assert_hit(cache, id, &bytes, "the first lookup after the fill").await;
    assert_hit(cache, id, &bytes, "the second lookup after the fill").await;

    let empty = UserId::generate();
    warm(cache, empty, b"").await;
}

/// Two lookups with no invalidation between give equal tickets, before and after a user's
/// first invalidation: the service lets concurrent misses share one load only then.
pub async fn lookups_without_an_invalidation_between_give_the_same_ticket(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    let first = miss(cache, id, "the first lookup").await;
    assert_eq!(miss(cache, id, "the second lookup").await, first, "a user never invalidated");
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    let after = miss(cache, id, "the first lookup after an invalidation").await;
    assert_eq!(miss(cache, id, "the second lookup after an invalidation").await, after);
}

/// The stale set, forced: a reader misses and loads the old row; a writer commits and
/// invalidates; the reader then fills what it loaded. The fill must not land, whether the
/// user had been invalidated before or never.
pub async fn a_fill_whose_ticket_predates_an_invalidation_is_discarded(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    for round in ["a user never invalidated", "a user invalidated before"] {
        let ticket = miss(cache, id, round).await;
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        cache.fill(id, ticket, b"stale".to_vec()).await;
        assert_miss(cache, id, &format!("{round}: the stale fill must not be served")).await;
    }
    // Two readers missed together; the fast one filled before the write, the slow one fills
    // after it.
    let cached = UserId::generate();
    let slow = miss(cache, cached, "the slow reader").await;
    let fast = miss(cache, cached, "the fast reader").await;
    cache.fill(cached, fast, b"old".to_vec()).await;
    assert_hit(cache, cached, b"old", "the fast reader's fill").await;
    assert_eq!(cache.invalidate(&[cached]).await, Invalidation::Confirmed);
    cache.fill(cached, slow, b"old".to_vec()).await;
    assert_miss(cache, cached, "the slow reader's fill after the write").await;
}

/// A ticket stays useless however many invalidations follow, and each one hands out a
/// ticket unlike every earlier one.
pub async fn a_fill_with_a_ticket_from_before_two_invalidations_is_discarded(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    let first = miss(cache, id, "before the writes").await;
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    let second = miss(cache, id, "after one write").await;
    assert_ne!(second, first, "an invalidation moves the ticket on");
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);

    cache.fill(id, first.clone(), b"two writes old".to_vec()).await;
    assert_miss(cache, id, "a ticket from before two writes").await;
    cache.fill(id, second.clone(), b"one write old".to_vec()).await;
    assert_miss(cache, id, "a ticket from before the last write").await;

    let third = miss(cache, id, "after two writes").await;
    assert!(third != first && third != second, "tickets are never reused: {first:?}, {second:?}, {third:?}");
    cache.fill(id, third, b"current".to_vec()).await;
    assert_hit(cache, id, b"current", "a ticket from after the last write fills").await;
}

/// An invalidation deletes the entry; the next lookup misses with a new ticket, which
/// fills. Invalidating a user that was never cached is fine too.
pub async fn after_an_invalidation_a_lookup_misses_with_a_new_ticket_that_fills(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    let before = miss(cache, id, "before warming").await;
    cache.fill(id, before.clone(), b"old".to_vec()).await;
    assert_hit(cache, id, b"old", "after warming").await;

    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    let after = miss(cache, id, "after the invalidation").await;
    assert_ne!(after, before, "the miss carries a new ticket");
    cache.fill(id, after, b"new".to_vec()).await;
    assert_hit(cache, id, b"new", "the new ticket fills").await;

    let never_cached = UserId::generate();
    assert_eq!(cache.invalidate(&[never_cached]).await, Invalidation::Confirmed);
    warm(cache, never_cached, b"first").await;
}

/// One call invalidates many users (duplicates included) and only them; a call with no ids
/// changes nothing.
pub async fn invalidating_many_ids_at_once_deletes_every_entry_and_spares_the_others(cache: &dyn ProfileCache) {
    let ids: Vec<UserId> = (0..500).map(|_| UserId::generate()).collect();
    let bystander = UserId::generate();
    for &id in ids.iter().chain([&bystander]) {
        let ticket = miss(cache, id, "before warming").await;
        cache.fill(id, ticket, id.to_string().into_bytes()).await;
    }

    assert_eq!(cache.invalidate(&[]).await, Invalidation::Confirmed);
    assert_hit(cache, ids[0], ids[0].to_string().as_bytes(), "invalidating no ids").await;

    let mut with_duplicate = ids.clone();
    with_duplicate.push(ids[0]);
    assert_eq!(cache.invalidate(&with_duplicate).await, Invalidation::Confirmed);

    for &id in &ids {
        assert_miss(cache, id, &format!("{id} after the invalidation")).await;
    }
    assert_hit(cache, bystander, bystander.to_string().as_bytes(), "a user not named").await;
}

/// A user's invalidation neither deletes another's entry nor refuses another's fill.
pub async fn fills_and_invalidations_of_different_users_are_independent(cache: &dyn ProfileCache) {
    let (written, other) = (UserId::generate(), UserId::generate());
    let written_ticket = miss(cache, written, "the written user").await;
    let other_ticket = miss(cache, other, "the other user").await;

    assert_eq!(cache.invalidate(&[written]).await, Invalidation::Confirmed);
    cache.fill(other, other_ticket, b"other".to_vec()).await;
    assert_hit(cache, other, b"other", "another user's write does not refuse this fill").await;
    cache.fill(written, written_ticket, b"stale".to_vec()).await;
    assert_miss(cache, written, "the written user's stale fill").await;

    warm(cache, written, b"written").await;
    assert_hit(cache, other, b"other", "another user's fill does not replace this entry").await;
    assert_eq!(cache.invalidate(&[other]).await, Invalidation::Confirmed);
    assert_hit(cache, written, b"written", "another user's invalidation does not delete this entry").await;
    assert_miss(cache, other, "the invalidated user").await;
}

/// An entry is served until its TTL ([`SHORT_TTL`] here) has passed, then misses; as no
/// write happened, the new miss's ticket fills again.
pub async fn an_entry_expires_after_its_ttl_and_can_then_be_filled_again(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    let ticket = miss(cache, id, "before the fill").await;
    let fill_started = Instant::now();
    cache.fill(id, ticket, b"short-lived".to_vec()).await;
    let fill_ended = Instant::now();
    let lookup = cache.lookup(id).await;
    // Only a lookup that ended within the TTL of the fill's start must hit: on a machine
    // slow enough to take longer, the entry may rightly be gone already.
    if fill_started.elapsed() < SHORT_TTL {
        assert_eq!(lookup, CacheLookup::Hit(b"short-lived".to_vec().into()), "within the TTL");
    }

    // The entry expires at most one TTL after the fill returned; the margin covers clocks
    // that count in whole milliseconds.
    tokio::time::sleep_until((fill_ended + SHORT_TTL + Duration::from_millis(100)).into()).await;
    let ticket = miss(cache, id, "after the TTL").await;
    cache.fill(id, ticket, b"refreshed".to_vec()).await;
    assert_hit(cache, id, b"refreshed", "an expired entry fills again").await;
}

/// `lookup_many` answers what `lookup` answers for each id, in the order of the ids,
/// duplicates included; no ids, no answers.
pub async fn lookup_many_answers_like_lookup_in_the_order_of_the_ids(cache: &dyn ProfileCache) {
    let (cached, unknown, invalidated) = (UserId::generate(), UserId::generate(), UserId::generate());
    warm(cache, cached, b"cached").await;
    warm(cache, invalidated, b"old").await;
    assert_eq!(cache.invalidate(&[invalidated]).await, Invalidation::Confirmed);

    let ids = [unknown, cached, invalidated, cached];
    let mut one_by_one = Vec::with_capacity(ids.len());
    for &id in &ids {
        one_by_one.push(cache.lookup(id).await);
    }
    assert!(matches!(one_by_one[0], CacheLookup::Miss(_)), "{:?}", one_by_one[0]);
    assert_eq!(one_by_one[1], CacheLookup::Hit(b"cached".to_vec().into()));
    assert!(matches!(one_by_one[2], CacheLookup::Miss(_)), "{:?}", one_by_one[2]);
    assert_eq!(cache.lookup_many(&ids).await, one_by_one);
    assert_eq!(cache.lookup_many(&[]).await, Vec::new());
}

/// A writer writing again and again while readers run cache-aside in parallel, each on a
/// thread of its own: no lookup that starts after an invalidation returned may hit with a
/// value loaded before its write. Needs a multi-thread runtime.
pub async fn concurrent_readers_never_see_a_value_older_than_an_acknowledged_write(cache: &dyn ProfileCache) {
    const READERS: usize = 3;
    const WRITES: u64 = 500;
    let id = UserId::generate();
    // The store: the version of the user's row, committed before its invalidation.
    let committed = AtomicU64::new(0);
    // The last version whose invalidation returned (the write was acknowledged).
    let acknowledged = AtomicU64::new(0);
    let writing = AtomicBool::new(true);
    let runtime = tokio::runtime::Handle::current();
    let decode = |bytes: &[u8]| match <[u8; 8]>::try_from(bytes) {
        Ok(version) => u64::from_be_bytes(version),
        Err(_) => panic!("the cache returned bytes nobody filled: {bytes:?}"),
    };

    // Threads of their own, so that an in-process cache is hammered in parallel too.
    tokio::task::block_in_place(|| {
        std::thread::scope(|threads| {
            for _ in 0..READERS {
                threads.spawn(|| {
                    runtime.block_on(async {
                        while writing.load(Ordering::SeqCst) {
                            let floor = acknowledged.load(Ordering::SeqCst);
                            match cache.lookup(id).await {
                                CacheLookup::Hit(bytes) => {
                                    let version = decode(bytes.bytes());
                                    assert!(version >= floor, "served version {version} after write {floor} returned");
                                }
                                CacheLookup::Miss(ticket) => {
                                    let loaded = committed.load(Ordering::SeqCst);
                                    // Widens the window between the load and the fill, in
                                    // which a write makes the loaded value stale.
                                    std::thread::sleep(Duration::from_micros(20));
                                    cache.fill(id, ticket, loaded.to_be_bytes().to_vec()).await;
                                }
                                CacheLookup::Unavailable => {}
                            }
                            // Leaves CPU to the writer and to the other tests sharing the machine.
                            std::thread::sleep(Duration::from_micros(10));
                        }
                    });
                });
            }
            threads.spawn(|| {
                runtime.block_on(async {
                    for version in 1..=WRITES {
                        committed.store(version, Ordering::SeqCst);
                        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
                        acknowledged.store(version, Ordering::SeqCst);
                        // Lets the readers look up between two writes.
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    writing.store(false, Ordering::SeqCst);
                });
            });
        });
    });

    match cache.lookup(id).await {
        CacheLookup::Hit(bytes) => assert_eq!(decode(bytes.bytes()), WRITES, "after the last write"),
        CacheLookup::Miss(ticket) => {
            cache.fill(id, ticket, WRITES.to_be_bytes().to_vec()).await;
            assert_hit(cache, id, &WRITES.to_be_bytes(), "a fill after the last write").await;
        }
        CacheLookup::Unavailable => panic!("the cache became unavailable"),
    }
}

/// A hit hands out its entry with what readers decoded from it
/// ([`CachedProfile::sending`](domain::cache::CachedProfile::sending)), which a cache may keep
/// with the entry so that it is decoded once. Once the entry changed, the next hit decodes
/// its own bytes: a decision is never made from what the replaced entry held.
pub async fn what_was_decoded_from_an_entry_is_never_answered_for_the_entry_that_replaced_it(cache: &dyn ProfileCache) {
    let id = UserId::generate();
    // The bytes a hit's decoding saw (`None`: it had been decoded before, by another hit).
    let decoded = |what: &'static str| async move {
        let CacheLookup::Hit(entry) = cache.lookup(id).await else { panic!("{what}: expected a hit") };
        let mut seen = None;
        let _ = entry.sending(Channel::Push, |bytes, _| {
            seen = Some(bytes.to_vec());
            None
        });
        seen
    };
    warm(cache, id, b"before").await;
    assert_eq!(decoded("the first hit").await.as_deref(), Some(&b"before"[..]));
    assert!(
        decoded("a second hit").await.is_none_or(|bytes| bytes == b"before"),
        "a second hit decodes the same bytes, or not at all"
    );
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    warm(cache, id, b"after").await;
    assert_eq!(decoded("the hit after a change").await.as_deref(), Some(&b"after"[..]));
}

/// A cache that answers reports itself up.
pub async fn a_working_cache_is_up(cache: &dyn ProfileCache) {
    assert_eq!(cache.health().await, CacheHealth::Up);
}
