//! Tests of [`RedisCache`] and [`RedisRateLimiter`] against real Redis servers.
//!
//! Tests on the shared server (127.0.0.1, port `TEST_REDIS_PORT`, default 6379, as set by
//! `tests/with-services.sh`) each use a random key prefix and delete their keys at the end;
//! they never flush or stop it. Tests that pause, kill or restart
//! Redis start their own `redis-server` on a free port. Both ports also run the contract
//! suites shared with the in-process adapters (`adapters_memory::contract`): what every cache
//! and every limiter must do is tested there, and what is particular to Redis (key layout,
//! TTLs in Redis, the Lua fill guard, rolling deploys, downstream keys, outages) here. The
//! state machines (breaker, retry queue) and the helpers are also tested on their own,
//! without Redis.

use std::process::{Child, Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::cache::{
    CacheHealth, CacheLookup, CommitPosition, CommitPositions, FillTicket, Invalidation, InvalidationLedger,
    LedgerEntry, ProfileCache, ReadFloor,
};
use domain::eligibility::Channel;
use domain::ports::RepositoryError;
use domain::rate_limit::{RateDecision, RateLimit, RateLimitUnavailable, RateLimiter};
use domain::user::UserId;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use crate::breaker::{CircuitBreaker, Permit, Transition};
use crate::connection::{Breaker, Request, ServerId};
use crate::lease::{ReadLease, Renewal};
use crate::pending::PendingInvalidations;
use crate::{
    Generation, RedisCache, RedisCacheConfig, RedisCacheError, RedisRateLimiter, config, current_payload, encode_entry,
    parse_stamp, rate_limit, stamp,
};

/// The shared server's URL.
fn shared_url() -> String {
    let port = std::env::var("TEST_REDIS_PORT").unwrap_or_else(|_| "6379".to_owned());
    format!("redis://127.0.0.1:{port}")
}

/// The per-call timeout of the tests that measure it (the production default).
const TIMEOUT: Duration = Duration::from_millis(100);

/// A configuration with a random key prefix. On the shared server the timeout is generous,
/// so that a loaded test machine cannot turn a slow answer into a flaky `Unavailable`.
fn config_for(url: &str, timeout: Duration) -> RedisCacheConfig {
    let mut config = RedisCacheConfig::new(url);
    config.key_prefix = format!("test-{}", Uuid::new_v4());
    config.timeout = timeout;
    config.generation_ttl = Duration::from_secs(600);
    config
}

fn shared_config() -> RedisCacheConfig {
    config_for(&shared_url(), Duration::from_secs(2))
}

async fn raw_connection(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("a valid URL");
    client.get_multiplexed_async_connection().await.expect("connect to Redis")
}

/// Deletes every key of a test's prefix from the shared server.
/// Every key of the shared server starting with `prefix`: a whole `SCAN`, however many keys
/// other users of the server hold.
async fn keys_prefixed(prefix: &str) -> Vec<String> {
    let mut connection = raw_connection(&shared_url()).await;
    let (mut cursor, mut found) = (0_u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .expect("scan");
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

async fn delete_prefixed(prefix: &str) {
    let keys = keys_prefixed(prefix).await;
    if !keys.is_empty() {
        let mut connection = raw_connection(&shared_url()).await;
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.expect("delete");
    }
}

async fn exists(connection: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(connection).await.expect("EXISTS") == 1
}

async fn miss_ticket(cache: &RedisCache, id: UserId) -> FillTicket {
    match cache.lookup(id).await {
        CacheLookup::Miss(ticket) => ticket,
        other => panic!("expected a miss, got {other:?}"),
    }
}

/// The generation a ticket names (empty when the user had none).
fn generation_in(ticket: &FillTicket) -> String {
    let (_, generation) = parse_stamp(ticket.generation().expect("a ticket has a stamp")).expect("a valid stamp");
    generation.to_owned()
}

/// What the stamps name the server at `url` by: `{run_id}.{master_replid}`.
async fn server_id(url: &str) -> String {
    let mut connection = raw_connection(url).await;
    let mut field = async |section: &str, name: &str| {
        let info: String = redis::cmd("INFO").arg(section).query_async(&mut connection).await.expect("INFO");
        info.lines().find_map(|line| line.strip_prefix(name)).expect("the field").trim().to_owned()
    };
    let run_id = field("server", "run_id:").await;
    format!("{run_id}.{}", field("replication", "master_replid:").await)
}

/// Fills `id` with `bytes` and checks that it is then a hit.
async fn warm(cache: &RedisCache, id: UserId, bytes: &[u8]) {
    let ticket = miss_ticket(cache, id).await;
    cache.fill(id, ticket, bytes.to_vec()).await;
    assert_eq!(cache.lookup(id).await, CacheLookup::Hit(bytes.to_vec().into()));
}

/// Polls `condition` every 20 ms until it holds or `limit` has passed; returns how long it took.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A private `redis-server` for tests that pause or kill it; killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        Self::start_in(port, None).await
    }

    /// Starts a server that saves only on `SAVE`, in `directory`, and loads what it saved
    /// there when started again.
    async fn start_in(port: u16, directory: Option<&std::path::Path>) -> Self {
        let mut command = Command::new("redis-server");
        command.args(["--save", "", "--appendonly", "no", "--port", &port.to_string(), "--bind", "127.0.0.1"]);
        if let Some(directory) = directory {
            command.arg("--dir").arg(directory);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start redis-server");
        let server = Self { port, child: Some(child) };
        let url = server.url();
        eventually(Duration::from_secs(5), "the private redis-server answers", || async {
            let Ok(client) = redis::Client::open(url.as_str()) else { return false };
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else { return false };
            redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: connections stay open, nothing answers.
    fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and wait until the process is gone (the port is then free again).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ----- The contract of the cache port, on the shared server -----

adapters_memory::profile_cache_contract_tests!(
    |ttl| RedisCache::build(RedisCacheConfig { ttl, ..shared_config() }).expect("build"),
    clean_up: |cache| delete_prefixed(&cache.inner.keys.prefix),
);

// ----- Hit, miss and fill on the shared server -----

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_is_stored_under_its_versioned_key_for_the_configured_ttl() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();

    let ticket = miss_ticket(&cache, id).await;
    assert_eq!(generation_in(&ticket), "", "a user never invalidated has no generation");
    cache.fill(id, ticket, b"{\"name\":\"Ada\"}".to_vec()).await;

    let mut connection = raw_connection(&shared_url()).await;
    let entry = format!("{prefix}:v1:user:{id}");
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&entry).query_async(&mut connection).await.expect("PTTL");
    assert!((290_000..=300_000).contains(&ttl_ms), "the entry lives CACHE_TTL (300 s), got {ttl_ms} ms");
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidation_stores_a_random_generation_that_outlives_any_fill() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    warm(&cache, id, b"old").await;

    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);

    let ticket = miss_ticket(&cache, id).await;
    let generation = generation_in(&ticket);
    let mut connection = raw_connection(&shared_url()).await;
    let stored: String =
        redis::cmd("GET").arg(format!("{prefix}:gen:{id}")).query_async(&mut connection).await.expect("GET");
    assert_eq!(generation, stored);
    assert!(Uuid::parse_str(&generation).is_ok_and(|uuid| uuid.get_version_num() == 4), "a random UUID");
    let ttl_ms: i64 =
        redis::cmd("PTTL").arg(format!("{prefix}:gen:{id}")).query_async(&mut connection).await.expect("PTTL");
    assert!(ttl_ms > 500_000, "the generation outlives any fill by far, got {ttl_ms} ms");
    delete_prefixed(&prefix).await;
}

// ----- Read floors (a read replica's) -----

/// The store's commit position, as the test sets it.
struct SetPositions(std::sync::atomic::AtomicU64);

#[async_trait]
impl CommitPositions for SetPositions {
    async fn current(&self) -> Result<CommitPosition, RepositoryError> {
        Ok(CommitPosition(self.0.load(Ordering::SeqCst)))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidation_reaching_redis_late_never_lowers_the_floor_and_an_unknown_one_stays_unknown() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let positions = Arc::new(SetPositions(std::sync::atomic::AtomicU64::new(0x10)));
    let cache = RedisCache::build_inner(config, None, Some(positions.clone())).expect("build");
    let id = UserId::generate();
    // The barrier: observed at the first read from this Redis process.
    assert_eq!(miss_ticket(&cache, id).await.floor(), ReadFloor::AtLeast(CommitPosition(0x10)));

    positions.0.store(0x200, Ordering::SeqCst);
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    assert_eq!(miss_ticket(&cache, id).await.floor(), ReadFloor::AtLeast(CommitPosition(0x200)));

    // An earlier change's invalidation, sent before a stall, arrives now: the floor stays.
    let late = Generation { unique: Uuid::new_v4().to_string(), position: "100".to_owned() };
    assert!(cache.inner.invalidate_now(&[id], &late, Breaker::Ignore).await);
    let ticket = miss_ticket(&cache, id).await;
    assert_eq!(ticket.floor(), ReadFloor::AtLeast(CommitPosition(0x200)), "{ticket:?}");
    assert!(generation_in(&ticket).starts_with(&late.unique), "the generation still moved on");

    // A change whose position is unknown: the primary, also after later known ones.
    let unknown = Generation { unique: Uuid::new_v4().to_string(), position: String::new() };
    assert!(cache.inner.invalidate_now(&[id], &unknown, Breaker::Ignore).await);
    assert_eq!(miss_ticket(&cache, id).await.floor(), ReadFloor::Primary);
    positions.0.store(0x300, Ordering::SeqCst);
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    assert_eq!(miss_ticket(&cache, id).await.floor(), ReadFloor::Primary);
    delete_prefixed(&prefix).await;
}

// ----- The fill guard -----

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_whose_ticket_predates_an_invalidation_writes_nothing() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();

    // The contract suite sees a miss; here the script itself must refuse, not only the read
    // that compares the entry's generation.
    for round in 0..2 {
        let ticket = miss_ticket(&cache, id).await;
        assert_eq!(!generation_in(&ticket).is_empty(), round == 1);
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        cache.fill(id, ticket, b"stale".to_vec()).await;
    }
    let mut connection = raw_connection(&shared_url()).await;
    assert!(!exists(&mut connection, &format!("{prefix}:v1:user:{id}")).await, "nothing was stored");
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_fill_guard_the_same_interleaving_serves_the_stale_entry() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();

    let _ticket = miss_ticket(&cache, id).await;
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    cache.fill_unguarded(id, b"stale".to_vec()).await;

    assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"stale".to_vec().into()));
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidation_by_a_writer_running_another_format_version_hides_the_entry_too() {
    let old_config = shared_config();
    let prefix = old_config.key_prefix.clone();
    let mut new_config = old_config.clone();
    new_config.format_version = "v2".to_owned();
    let old = RedisCache::build(old_config).expect("build v1");
    let new = RedisCache::build(new_config).expect("build v2");
    let id = UserId::generate();
    warm(&old, id, b"v1 bytes").await;
    warm(&new, id, b"v2 bytes").await;

    assert_eq!(old.invalidate(&[id]).await, Invalidation::Confirmed);

    assert!(matches!(new.lookup(id).await, CacheLookup::Miss(_)), "a rolling deploy never serves stale data");
    assert!(matches!(old.lookup(id).await, CacheLookup::Miss(_)));
    delete_prefixed(&prefix).await;
}

// ----- Invalidation -----

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidation_deletes_the_downstream_keys_named_by_the_templates() {
    let mut config = shared_config();
    let prefix = config.key_prefix.clone();
    config.extra_invalidation_keys = vec![format!("{prefix}-usercache:{{id}}"), format!("{prefix}-gw:{{id}}:body")];
    let cache = RedisCache::build(config).expect("build");
    let (id, other) = (UserId::generate(), UserId::generate());
    let mut connection = raw_connection(&shared_url()).await;
    for key in
        [format!("{prefix}-usercache:{id}"), format!("{prefix}-gw:{id}:body"), format!("{prefix}-usercache:{other}")]
    {
        let _: () = redis::cmd("SET").arg(key).arg("gateway copy").query_async(&mut connection).await.expect("SET");
    }

    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);

    assert!(!exists(&mut connection, &format!("{prefix}-usercache:{id}")).await);
    assert!(!exists(&mut connection, &format!("{prefix}-gw:{id}:body")).await);
    assert!(exists(&mut connection, &format!("{prefix}-usercache:{other}")).await, "other users' copies stay");
    delete_prefixed(&prefix).await;
}

/// Writes `key` as a downstream client's unguarded fill does.
async fn set_copy(connection: &mut MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("SET").arg(key).arg("old body").query_async(connection).await.expect("SET");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_put_back_after_an_invalidation_is_deleted_again_at_each_follow_up_delay() {
    let mut config = shared_config();
    let prefix = config.key_prefix.clone();
    config.extra_invalidation_keys = vec![format!("{prefix}-usercache:{{id}}")];
    config.extra_invalidation_delays = vec![Duration::from_millis(200), Duration::from_millis(600)];
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    let copy = format!("{prefix}-usercache:{id}");
    let mut connection = raw_connection(&shared_url()).await;

    let invalidated = Instant::now();
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    assert_eq!(cache.scheduled_follow_ups(), 2);
    // A reader that loaded before the change fills its copy after our deletion...
    set_copy(&mut connection, &copy).await;
    // ...and the first follow-up deletes it.
    eventually(Duration::from_secs(1), "the first follow-up deleted the copy", || async {
        !exists(&mut raw_connection(&shared_url()).await, &copy).await
    })
    .await;
    assert!(invalidated.elapsed() >= Duration::from_millis(200), "deleted before its delay");
    // A slower reader is caught by the second.
    set_copy(&mut connection, &copy).await;
    eventually(Duration::from_secs(1), "the second follow-up deleted the copy", || async {
        !exists(&mut raw_connection(&shared_url()).await, &copy).await
    })
    .await;
    assert!(invalidated.elapsed() >= Duration::from_millis(600), "deleted before its delay");
    assert_eq!(cache.scheduled_follow_ups(), 0);
    // A fill after the last delay is the client's own business.
    set_copy(&mut connection, &copy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(exists(&mut connection, &copy).await);
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_downstream_keys_nothing_is_scheduled() {
    let cache = RedisCache::build(shared_config()).expect("build");
    assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
    assert_eq!(cache.scheduled_follow_ups(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_ups_due_while_redis_is_paused_are_sent_once_it_resumes() {
    let server = PrivateRedis::start().await;
    let mut config = config_for(&server.url(), TIMEOUT);
    config.extra_invalidation_keys = vec!["usercache:{id}".to_owned()];
    config.extra_invalidation_delays = vec![Duration::from_millis(150)];
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    let copy = format!("usercache:{id}");
    let mut connection = raw_connection(&server.url()).await;

    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    set_copy(&mut connection, &copy).await;
    server.pause();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cache.scheduled_follow_ups(), 1, "the due deletion failed and stays scheduled");
    server.resume();
    eventually(Duration::from_secs(2), "the follow-up reached Redis after the pause", || async {
        cache.scheduled_follow_ups() == 0
    })
    .await;
    assert!(!exists(&mut raw_connection(&server.url()).await, &copy).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn finishing_before_exit_waits_for_the_scheduled_follow_ups() {
    let mut config = shared_config();
    let prefix = config.key_prefix.clone();
    config.extra_invalidation_keys = vec![format!("{prefix}-usercache:{{id}}")];
    config.extra_invalidation_delays = vec![Duration::from_millis(400)];
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    let copy = format!("{prefix}-usercache:{id}");
    let mut connection = raw_connection(&shared_url()).await;

    let started = Instant::now();
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
    set_copy(&mut connection, &copy).await;
    cache.finish_pending().await;
    assert!(started.elapsed() >= Duration::from_millis(400), "returned before the follow-up was due");
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    assert!(!exists(&mut connection, &copy).await);
    assert_eq!(cache.scheduled_follow_ups(), 0);
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalidating_no_ids_does_nothing() {
    let cache = RedisCache::build(shared_config()).expect("build");
    assert_eq!(cache.invalidate(&[]).await, Invalidation::Confirmed);
    assert_eq!(cache.pending_invalidations(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidation_abandoned_half_way_is_finished_by_the_retry_task() {
    let config = shared_config();
    let timeout = config.timeout;
    let prefix = config.key_prefix.clone();
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    let ids = [id];

    // The request that committed the write is dropped (its client went away) mid-call. The
    // first poll sends the `MULTI` at once (no pool checkout before it), so on a busy machine
    // Redis may answer before that poll returns: then the invalidation is complete, and the
    // scenario is tried again.
    for attempt in 1.. {
        warm(&cache, id, b"old").await;
        let mut invalidation = cache.invalidate(&ids);
        let first_poll = std::future::poll_fn(|context| Poll::Ready(invalidation.as_mut().poll(context))).await;
        if first_poll.is_pending() {
            drop(invalidation);
            break;
        }
        assert_eq!(cache.pending_invalidations(), 0, "an invalidation that returned was confirmed");
        assert!(attempt < 20, "the invalidation never waited for Redis");
    }

    assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable, "never the old entry");
    // The retry task leaves the first attempt its timeout before taking over.
    eventually(timeout + Duration::from_secs(2), "the retry task invalidated it", || async {
        cache.pending_invalidations() == 0 && matches!(cache.lookup(id).await, CacheLookup::Miss(_))
    })
    .await;
    delete_prefixed(&prefix).await;
}

// ----- Redis down, paused or restarted -----

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_builds_while_nothing_listens_and_then_answers_unavailable_quickly() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let mut config = config_for(&url, TIMEOUT);
    config.confirm_wait = Duration::from_millis(200);
    let cache = RedisCache::build(config).expect("building does not connect");
    let id = UserId::generate();

    let started = Instant::now();
    assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable);
    cache.fill(id, FillTicket::new(None), b"bytes".to_vec()).await;
    assert_eq!(cache.health().await, CacheHealth::Down);
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    // A change waits for Redis up to the confirmation wait; without a ledger, it is then
    // unconfirmed.
    let started = Instant::now();
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Unconfirmed);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(700), "waited {waited:?}");
    assert_eq!(cache.pending_invalidations(), 1, "the failed invalidation waits for a retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_up_while_redis_answers_and_down_while_it_does_not() {
    let mut server = PrivateRedis::start().await;
    let cache = RedisCache::build(config_for(&server.url(), TIMEOUT)).expect("build");
    assert_eq!(cache.health().await, CacheHealth::Up);

    server.pause();
    let started = Instant::now();
    assert_eq!(cache.health().await, CacheHealth::Down);
    assert!(started.elapsed() < Duration::from_millis(600), "bounded by the timeout: {:?}", started.elapsed());
    server.resume();
    eventually(Duration::from_secs(3), "health is up after SIGCONT", || async {
        cache.health().await == CacheHealth::Up
    })
    .await;

    let port = server.port;
    server.kill();
    assert_eq!(cache.health().await, CacheHealth::Down);
    let _restarted = PrivateRedis::start_on(port).await;
    eventually(Duration::from_secs(3), "health is up after a restart", || async {
        cache.health().await == CacheHealth::Up
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_costs_one_timeout_per_second_not_one_per_lookup() {
    let server = PrivateRedis::start().await;
    let cache = RedisCache::build(config_for(&server.url(), TIMEOUT)).expect("build");
    let id = UserId::generate();
    warm(&cache, id, b"cached").await;

    server.pause();
    // Until the breaker opens (3 failures), each lookup waits for the timeout.
    for attempt in 0..3 {
        let started = Instant::now();
        assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= TIMEOUT.mul_f32(0.9) && elapsed < TIMEOUT * 4,
            "attempt {attempt}: bounded by the timeout, took {elapsed:?}"
        );
    }
    assert!(cache.is_bypassed(), "three failures open the breaker");

    // Then only one probe per second waits; every other lookup returns at once.
    let (started, mut slow, mut skipped) = (Instant::now(), 0, Vec::new());
    while started.elapsed() < Duration::from_millis(2_500) {
        let call = Instant::now();
        assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable);
        let elapsed = call.elapsed();
        if elapsed >= TIMEOUT / 2 {
            slow += 1;
        } else {
            skipped.push(elapsed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(skipped.len() > 100, "only {} quick lookups", skipped.len());
    assert!((1..=3).contains(&slow), "{slow} lookups waited for Redis in 2.5 s");
    skipped.sort();
    // A percentile, not the maximum: a busy machine may deschedule the thread mid-call.
    let p95 = skipped[skipped.len() * 95 / 100];
    assert!(p95 < Duration::from_millis(2), "skipped lookups took up to {p95:?} (95th percentile)");

    server.resume();
    eventually(Duration::from_secs(2), "lookups hit again after SIGCONT", || async {
        cache.lookup(id).await == CacheLookup::Hit(b"cached".to_vec().into())
    })
    .await;
    assert!(!cache.is_bypassed());
}

/// A call left pending on a connection that was then given up (its future kept but no longer
/// polled, as by a request whose client went away mid-call) keeps that connection's socket
/// until it ends, never a place in the pool: however many such calls there are, the next
/// call connects. (Found by a hostile run: slow Redis and aborted requests left an instance
/// whose every Redis call waited for a pool slot, for good.)
#[tokio::test(flavor = "multi_thread")]
async fn calls_left_pending_on_given_up_connections_never_keep_the_next_call_from_connecting() {
    let server = PrivateRedis::start().await;
    let role = crate::connection::Role { name: "test", degraded: "", identify_server: false };
    let connection =
        crate::connection::Connection::build(&config_for(&server.url(), TIMEOUT), role, None).expect("build");
    let ping = redis::cmd("PING");
    let mut left_pending = Vec::new();
    for round in 0..4 {
        let answered = connection.run_despite_breaker::<String>(Request::Command(&ping)).await;
        assert_eq!(answered.as_deref(), Some("PONG"), "round {round}: no connection to a Redis that answers");
        server.pause();
        // A call on that connection, polled until it has sent its PING, then left.
        let mut call = Box::pin(connection.run_despite_breaker::<String>(Request::Command(&ping)));
        assert!(tokio::time::timeout(TIMEOUT / 4, &mut call).await.is_err(), "answered by a paused Redis");
        left_pending.push(call);
        // Another one times out on it: the connection is given up.
        assert_eq!(connection.run_despite_breaker::<String>(Request::Command(&ping)).await, None);
        server.resume();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_waits_for_a_paused_redis_and_is_confirmed_as_soon_as_it_resumes() {
    let server = PrivateRedis::start().await;
    let mut config = config_for(&server.url(), TIMEOUT);
    config.confirm_wait = Duration::from_secs(3);
    let cache = RedisCache::build(config).expect("build");
    let (written, untouched) = (UserId::generate(), UserId::generate());
    for id in [written, untouched] {
        warm(&cache, id, b"filled before the pause").await;
    }

    server.pause();
    // Lookups open the breaker; the change waits for Redis all the same, not for the cooldown.
    for _ in 0..3 {
        assert_eq!(cache.lookup(untouched).await, CacheLookup::Unavailable);
    }
    assert!(cache.is_bypassed());
    let started = Instant::now();
    let ids = [written];
    let (invalidation, ()) = tokio::join!(cache.invalidate(&ids), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.resume();
    });
    let waited = started.elapsed();
    assert_eq!(invalidation, Invalidation::Confirmed);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(400) + TIMEOUT * 3,
        "confirmed {waited:?} after the change, Redis resumed after 400 ms"
    );
    assert_eq!(cache.pending_invalidations(), 0);
    assert!(!exists(&mut raw_connection(&server.url()).await, &cache.inner.keys.entry(written)).await);
    assert!(matches!(cache.lookup(written).await, CacheLookup::Miss(_)));
    assert_eq!(cache.lookup(untouched).await, CacheLookup::Hit(b"filled before the pause".to_vec().into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_redis_does_not_confirm_in_time_is_unconfirmed_without_a_ledger_and_applied_after_it_resumes() {
    let server = PrivateRedis::start().await;
    let mut config = config_for(&server.url(), TIMEOUT);
    config.confirm_wait = Duration::from_millis(300);
    let cache = RedisCache::build(config).expect("build");
    let (first, second, untouched) = (UserId::generate(), UserId::generate(), UserId::generate());
    for id in [first, second, untouched] {
        warm(&cache, id, b"filled before the pause").await;
    }

    server.pause();
    for id in [first, second] {
        let started = Instant::now();
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Unconfirmed);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(300) + TIMEOUT * 3,
            "{waited:?}"
        );
    }
    assert_eq!(cache.pending_invalidations(), 2);
    assert_eq!(cache.lookup(first).await, CacheLookup::Unavailable);

    server.resume();
    eventually(Duration::from_secs(2), "the stale entries are gone", || async {
        cache.pending_invalidations() == 0
            && matches!(cache.lookup(first).await, CacheLookup::Miss(_))
            && matches!(cache.lookup(second).await, CacheLookup::Miss(_))
    })
    .await;
    let mut connection = raw_connection(&server.url()).await;
    for id in [first, second] {
        assert!(!exists(&mut connection, &cache.inner.keys.entry(id)).await, "{id}'s entry is deleted");
    }
    assert_eq!(cache.lookup(untouched).await, CacheLookup::Hit(b"filled before the pause".to_vec().into()));
}

/// A private master and a private replica of it, in sync, and the directory the replica
/// saves into (its own, not the crate's).
async fn master_and_replica() -> (PrivateRedis, PrivateRedis, std::path::PathBuf) {
    let master = PrivateRedis::start().await;
    let directory = std::env::temp_dir().join(format!("redis-replica-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).expect("a directory for the replica");
    let replica = PrivateRedis::start_in(free_port(), Some(&directory)).await;
    let master_connection = raw_connection(&master.url()).await;
    // At once, rather than after the default 5 s for more replicas to join.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query_async(&mut master_connection.clone())
        .await
        .expect("CONFIG SET");
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .query_async(&mut raw_connection(&replica.url()).await)
        .await
        .expect("REPLICAOF");
    wait_until_a_replica_is_in_sync(&master_connection).await;
    (master, replica, directory)
}

/// Waits until the master behind `master` has a replica in sync.
async fn wait_until_a_replica_is_in_sync(master: &MultiplexedConnection) {
    eventually(Duration::from_secs(5), "a replica in sync", || {
        let mut connection = master.clone();
        async move {
            let info: String =
                redis::cmd("INFO").arg("replication").query_async(&mut connection).await.unwrap_or_default();
            info.contains("state=online")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_counts_only_once_every_replica_of_the_server_has_it() {
    // A master and its replica; the cache on the master, which counts the replica.
    let (master, replica, directory) = master_and_replica().await;
    let master_connection = raw_connection(&master.url()).await;
    let mut replica_connection = raw_connection(&replica.url()).await;
    let mut config = config_for(&master.url(), TIMEOUT);
    // Room for a loaded machine: a healthy replica acknowledges within a few retries.
    config.confirm_wait = Duration::from_secs(1);
    let cache = RedisCache::build(config).expect("build");
    let (first, second) = (UserId::generate(), UserId::generate());
    for id in [first, second] {
        warm(&cache, id, b"before the change").await;
    }
    assert_eq!(cache.invalidate(&[first]).await, Invalidation::Confirmed);

    // The replica stops acknowledging (as behind a partition, or promoted elsewhere): the
    // master still applies the change, but it does not count.
    replica.pause();
    assert_eq!(cache.invalidate(&[second]).await, Invalidation::Unconfirmed);
    assert_eq!(cache.lookup(second).await, CacheLookup::Unavailable, "not served while unconfirmed");

    // Back: the retry is confirmed, and the replica has the deletion.
    replica.resume();
    eventually(Duration::from_secs(3), "the change is confirmed once replicated", || async {
        cache.pending_invalidations() == 0 && matches!(cache.lookup(second).await, CacheLookup::Miss(_))
    })
    .await;
    assert!(!exists(&mut replica_connection, &cache.inner.keys.entry(second)).await, "the replica has the deletion");

    // The replica leaves (restarted, or detached), and comes back: the count follows it
    // both ways, so a frozen replica holds changes up again afterwards.
    let replicate = |target: Option<u16>| {
        let mut connection = replica_connection.clone();
        async move {
            let mut command = redis::cmd("REPLICAOF");
            match target {
                Some(port) => command.arg("127.0.0.1").arg(port),
                None => command.arg("NO").arg("ONE"),
            };
            let _: () = command.query_async(&mut connection).await.expect("REPLICAOF");
        }
    };
    replicate(None).await;
    let third = UserId::generate();
    warm(&cache, third, b"before the change").await;
    eventually(Duration::from_secs(3), "a change counts without the replica that left", || async {
        cache.invalidate(&[third]).await == Invalidation::Confirmed
    })
    .await;
    replicate(Some(master.port)).await;
    wait_until_a_replica_is_in_sync(&master_connection).await;
    // One change sees it back (and is confirmed: it has it); the next waits for it.
    assert_eq!(cache.invalidate(&[third]).await, Invalidation::Confirmed);
    replica.pause();
    assert_eq!(cache.invalidate(&[third]).await, Invalidation::Unconfirmed, "the replica back is waited for");
    replica.resume();
    drop(replica);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_do_not_wait_behind_invalidations_waiting_for_a_frozen_replica() {
    let (master, replica, directory) = master_and_replica().await;
    let mut config = config_for(&master.url(), TIMEOUT);
    config.confirm_wait = Duration::from_millis(300);
    let cache = RedisCache::build(config).expect("build");
    let (changed, read) = (UserId::generate(), UserId::generate());
    warm(&cache, changed, b"changed").await;
    warm(&cache, read, b"read throughout").await;

    // Four writers keep a WAIT (half the timeout) pending at all times, while reads go on.
    replica.pause();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(1) {
                    let _ = cache.invalidate(&[changed]).await;
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let asked = Instant::now();
        assert_eq!(cache.lookup(read).await, CacheLookup::Hit(b"read throughout".to_vec().into()));
        latencies.push(asked.elapsed());
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    replica.resume();
    latencies.sort_unstable();
    let median = latencies[latencies.len() / 2];
    assert!(median < TIMEOUT / 5, "reads waited behind the invalidations: median {median:?} of {}", latencies.len());
    assert!(!cache.is_bypassed(), "the breaker opened");
    drop(replica);
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalidations_made_while_redis_is_dead_are_applied_after_its_restart_and_lookups_recover() {
    let mut server = PrivateRedis::start().await;
    let port = server.port;
    let mut config = config_for(&server.url(), TIMEOUT);
    config.confirm_wait = Duration::from_millis(100);
    let cache = RedisCache::build(config).expect("build");
    let id = UserId::generate();
    warm(&cache, id, b"before the crash").await;

    server.kill();
    assert_eq!(cache.invalidate(&[id]).await, Invalidation::Unconfirmed);
    assert_eq!(cache.pending_invalidations(), 1);
    assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable);

    let restarted = PrivateRedis::start_on(port).await;
    let took = eventually(Duration::from_secs(2), "the queue drains on the new server", || async {
        cache.pending_invalidations() == 0 && matches!(cache.lookup(id).await, CacheLookup::Miss(_))
    })
    .await;
    let mut connection = raw_connection(&restarted.url()).await;
    assert!(
        exists(&mut connection, &cache.inner.keys.generation(id)).await,
        "the queued invalidation ran on the new server (after {took:?})"
    );

    let ticket = miss_ticket(&cache, id).await;
    assert!(!generation_in(&ticket).is_empty());
    cache.fill(id, ticket, b"after the restart".to_vec()).await;
    assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"after the restart".to_vec().into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_whose_invalidation_is_pending_is_neither_served_nor_filled_while_redis_answers() {
    let server = PrivateRedis::start().await;
    let mut config = config_for(&server.url(), TIMEOUT);
    // No retry during this test: the invalidation stays pending while Redis answers again.
    config.retry_interval = Duration::from_secs(600);
    config.confirm_wait = Duration::from_millis(100);
    let cache = RedisCache::build(config).expect("build");
    let (written, other) = (UserId::generate(), UserId::generate());
    warm(&cache, written, b"old").await;
    warm(&cache, other, b"other").await;

    server.pause();
    assert_eq!(cache.invalidate(&[written]).await, Invalidation::Unconfirmed);
    server.resume();
    eventually(Duration::from_secs(2), "Redis answers again", || async {
        cache.lookup(other).await == CacheLookup::Hit(b"other".to_vec().into())
    })
    .await;

    assert_eq!(cache.pending_invalidations(), 1);
    assert_eq!(cache.lookup(written).await, CacheLookup::Unavailable);
    // A ticket with the generation Redis holds now: only the pending check can refuse it.
    let mut connection = raw_connection(&server.url()).await;
    let generation: Option<String> =
        redis::cmd("GET").arg(cache.inner.keys.generation(written)).query_async(&mut connection).await.expect("GET");
    let current = stamp(&ServerId::new(&server_id(&server.url()).await), generation.as_deref());
    cache.fill(written, FillTicket::new(Some(current)), b"stale".to_vec()).await;
    let entry: Option<Vec<u8>> =
        redis::cmd("GET").arg(cache.inner.keys.entry(written)).query_async(&mut connection).await.expect("GET");
    assert!(entry.is_none_or(|entry| !entry.ends_with(b"stale")), "a pending id is never filled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_invalidation_queue_bypasses_the_cache_until_the_entries_that_missed_it_expired() {
    let mut server = PrivateRedis::start().await;
    let port = server.port;
    let mut config = config_for(&server.url(), TIMEOUT);
    config.max_pending_invalidations = 2;
    config.ttl = Duration::from_millis(1_500);
    config.confirm_wait = Duration::from_millis(50);
    let cache = RedisCache::build(config).expect("build");
    let (a, b, c, bystander) = (UserId::generate(), UserId::generate(), UserId::generate(), UserId::generate());

    server.kill();
    let dropped_at = Instant::now();
    assert_eq!(cache.invalidate(&[a, b, c]).await, Invalidation::Unconfirmed);
    assert_eq!(cache.pending_invalidations(), 2, "the queue holds at most 2 ids");
    let _restarted = PrivateRedis::start_on(port).await;

    eventually(Duration::from_secs(2), "the queue drains", || async { cache.pending_invalidations() == 0 }).await;
    assert!(dropped_at.elapsed() < Duration::from_secs(3), "the test is too slow to check the bypass");
    assert_eq!(cache.lookup(bystander).await, CacheLookup::Unavailable, "c's entry may be stale: trust nothing");

    eventually(Duration::from_secs(5), "the cache is used again", || async {
        matches!(cache.lookup(bystander).await, CacheLookup::Miss(_))
    })
    .await;
    assert!(dropped_at.elapsed() >= Duration::from_secs(3), "bypassed for twice the entry TTL");
    warm(&cache, bystander, b"fresh").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_task_stops_when_the_last_clone_is_dropped() {
    let cache = RedisCache::build(shared_config()).expect("build");
    let clone = cache.clone();
    let task = cache.take_retry_task().expect("the retry task");

    drop(cache);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "a clone still uses the cache");

    drop(clone);
    tokio::time::timeout(Duration::from_secs(1), task).await.expect("the task stops").expect("the task ends cleanly");
}

// ----- Another server process: restarted empty or from an old snapshot -----

#[tokio::test(flavor = "multi_thread")]
async fn entries_and_tickets_from_before_a_restart_from_an_old_snapshot_are_never_used() {
    let directory = std::env::temp_dir().join(format!("redis-snapshot-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).expect("a directory");
    let port = free_port();
    let mut server = PrivateRedis::start_in(port, Some(&directory)).await;
    let cache = RedisCache::build(config_for(&server.url(), TIMEOUT)).expect("build");
    let (changed, unchanged, reading) = (UserId::generate(), UserId::generate(), UserId::generate());
    warm(&cache, changed, b"before the change").await;
    warm(&cache, unchanged, b"never changed").await;
    let before = server_id(&server.url()).await;
    let _: () = redis::cmd("SAVE").query_async(&mut raw_connection(&server.url()).await).await.expect("SAVE");

    // A change confirmed after the snapshot; a reader takes a ticket and loads meanwhile.
    assert_eq!(cache.invalidate(&[changed]).await, Invalidation::Confirmed);
    let ticket = miss_ticket(&cache, reading).await;
    server.kill();
    let server = PrivateRedis::start_in(port, Some(&directory)).await;
    assert_ne!(server_id(&server.url()).await, before, "a new process");

    // The snapshot brought the old entry and generation back...
    let mut connection = raw_connection(&server.url()).await;
    assert!(exists(&mut connection, &cache.inner.keys.entry(changed)).await, "the snapshot holds the old entry");
    // ...but an entry of the old process is never served, changed or not.
    eventually(Duration::from_secs(3), "the cache reaches the new process", || async {
        cache.health().await == CacheHealth::Up
    })
    .await;
    for id in [changed, unchanged] {
        assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)), "{id}: an entry of the old process");
    }
    // A ticket of the old process fills nothing in the new one.
    cache.fill(reading, ticket, b"loaded before the restart".to_vec()).await;
    assert!(!exists(&mut connection, &cache.inner.keys.entry(reading)).await);
    // The cache works on as before.
    warm(&cache, changed, b"after the restart").await;
    drop(server);
    let _ = std::fs::remove_dir_all(&directory);
}

// ----- The invalidation ledger and the read lease -----

/// An in-process [`InvalidationLedger`] shared by the caches of a test, standing for the
/// store's (whose own contract is tested with each store). Can be made to fail.
#[derive(Default)]
struct TestLedger {
    entries: Mutex<Vec<LedgerEntry>>,
    fail_reads: AtomicBool,
    fail_records: AtomicBool,
    /// Keeps every recording listed, replayed or not.
    keep_recordings: AtomicBool,
}

impl TestLedger {
    fn users(&self) -> Vec<UserId> {
        self.entries.lock().expect("entries").iter().map(|entry| entry.user).collect()
    }
}

fn store_down() -> RepositoryError {
    RepositoryError::Unavailable("the test store is down".into())
}

#[async_trait]
impl InvalidationLedger for TestLedger {
    async fn record(&self, users: &[UserId]) -> Result<(), RepositoryError> {
        if self.fail_records.load(Ordering::SeqCst) {
            return Err(store_down());
        }
        let mut entries = self.entries.lock().expect("entries");
        entries.retain(|entry| !users.contains(&entry.user));
        let mut users = users.to_vec();
        users.dedup();
        entries.extend(users.into_iter().map(|user| LedgerEntry { user, mark: Uuid::new_v4() }));
        Ok(())
    }

    async fn recorded(&self, limit: usize) -> Result<Vec<LedgerEntry>, RepositoryError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(store_down());
        }
        Ok(self.entries.lock().expect("entries").iter().take(limit).copied().collect())
    }

    async fn forget(&self, forgotten: &[LedgerEntry]) -> Result<(), RepositoryError> {
        if self.keep_recordings.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.entries.lock().expect("entries").retain(|entry| !forgotten.contains(entry));
        Ok(())
    }
}

/// A cache of one instance on `url`, sharing `ledger` with the other instances of the test.
fn instance(url: &str, ledger: &Arc<TestLedger>, prefix: &str) -> RedisCache {
    let mut config = config_for(url, TIMEOUT);
    config.key_prefix = prefix.to_owned();
    config.confirm_wait = Duration::from_millis(200);
    RedisCache::build_with_ledger(config, Arc::clone(ledger) as Arc<dyn InvalidationLedger>).expect("build")
}

/// Waits until `cache` holds a lease (its first ledger read is done).
async fn leased(cache: &RedisCache) {
    let probe = UserId::generate();
    eventually(Duration::from_secs(2), "the first lease", || async {
        !matches!(cache.lookup(probe).await, CacheLookup::Unavailable)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_redis_cannot_confirm_is_recorded_and_acknowledged_once_no_instance_serves_the_old_entry() {
    let server = PrivateRedis::start().await;
    let ledger = Arc::new(TestLedger::default());
    let prefix = format!("test-{}", Uuid::new_v4());
    // The writer's instance cannot reach Redis; the reader's can (a partition).
    let writer = instance(&format!("redis://127.0.0.1:{}", free_port()), &ledger, &prefix);
    let reader = instance(&server.url(), &ledger, &prefix);
    let (changed, other) = (UserId::generate(), UserId::generate());
    leased(&reader).await;
    warm(&reader, changed, b"before the change").await;
    warm(&reader, other, b"other").await;

    let ids = [changed];
    let acknowledged = std::sync::OnceLock::new();
    let old = CacheLookup::Hit(b"before the change".to_vec().into());
    let started = Instant::now();
    let (invalidation, served_old_after_ack) = tokio::join!(
        async {
            let invalidation = writer.invalidate(&ids).await;
            let _ = acknowledged.set(Instant::now());
            invalidation
        },
        async {
            // The reader reads on throughout: until the change is acknowledged it may serve the
            // old entry (the read is concurrent with the change), never after.
            let mut served_old_after_ack = 0;
            while acknowledged.get().is_none_or(|at| at.elapsed() < Duration::from_millis(500)) {
                let asked = Instant::now();
                let lookup = reader.lookup(changed).await;
                if lookup == old && acknowledged.get().is_some_and(|at| *at < asked) {
                    served_old_after_ack += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            served_old_after_ack
        }
    );
    assert_eq!(invalidation, Invalidation::Deferred);
    assert_eq!(served_old_after_ack, 0, "the old entry was served after the change was acknowledged");
    let waited = acknowledged.get().expect("acknowledged").duration_since(started);
    // The confirmation wait (200 ms), then one lease (1 s).
    assert!(waited >= Duration::from_millis(1_200), "acknowledged after {waited:?}");
    assert_eq!(writer.pending_invalidations(), 1, "the writer keeps retrying too");

    // The reader, which reaches Redis, replays the invalidation there and forgets the
    // recording; it then serves fresh misses again.
    eventually(Duration::from_secs(2), "the reader replayed the recorded invalidation", || async {
        ledger.users().is_empty()
    })
    .await;
    assert!(!exists(&mut raw_connection(&server.url()).await, &reader.inner.keys.entry(changed)).await);
    eventually(Duration::from_secs(2), "the reader trusts the user again", || async {
        matches!(reader.lookup(changed).await, CacheLookup::Miss(_))
    })
    .await;
    assert_eq!(
        reader.lookup(other).await,
        CacheLookup::Hit(b"other".to_vec().into()),
        "only the recorded user was skipped"
    );
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_user_is_not_served_by_any_instance_from_the_next_ledger_read_on() {
    let server = PrivateRedis::start().await;
    let ledger = Arc::new(TestLedger::default());
    let prefix = format!("test-{}", Uuid::new_v4());
    let reader = instance(&server.url(), &ledger, &prefix);
    let (recorded, other) = (UserId::generate(), UserId::generate());
    leased(&reader).await;
    warm(&reader, recorded, b"old").await;
    warm(&reader, other, b"other").await;
    // The recording stays listed, and its entry is put back after each replay deleted it
    // (as a writer without the fill guard would): only the ledger keeps it from readers.
    ledger.keep_recordings.store(true, Ordering::SeqCst);
    ledger.record(&[recorded]).await.expect("record");
    let lease = reader.inner.ledger.as_ref().expect("a ledger").1.duration();
    let took = eventually(Duration::from_secs(1), "the recorded user is skipped", || async {
        reader.lookup(recorded).await == CacheLookup::Unavailable
    })
    .await;
    assert!(took <= lease, "served {took:?} after the recording");
    let until = Instant::now() + 2 * lease;
    while Instant::now() < until {
        reader.fill_unguarded(recorded, b"old".to_vec()).await;
        assert_eq!(reader.lookup(recorded).await, CacheLookup::Unavailable, "a listed user was served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reader.lookup(other).await,
        CacheLookup::Hit(b"other".to_vec().into()),
        "only the recorded user is skipped"
    );
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_cannot_read_the_ledger_stops_serving_cached_entries_within_one_lease() {
    let server = PrivateRedis::start().await;
    let ledger = Arc::new(TestLedger::default());
    let prefix = format!("test-{}", Uuid::new_v4());
    let cache = instance(&server.url(), &ledger, &prefix);
    let id = UserId::generate();
    leased(&cache).await;
    warm(&cache, id, b"cached").await;

    ledger.fail_reads.store(true, Ordering::SeqCst);
    let failed_at = Instant::now();
    let took = eventually(Duration::from_secs(2), "the lease ran out", || async {
        cache.lookup(id).await == CacheLookup::Unavailable
    })
    .await;
    assert!(took <= Duration::from_millis(1_100), "served cached entries {took:?} after the ledger failed");

    ledger.fail_reads.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(2), "the cache is used again", || async {
        cache.lookup(id).await == CacheLookup::Hit(b"cached".to_vec().into())
    })
    .await;
    assert!(failed_at.elapsed() >= Duration::from_millis(500));
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_neither_redis_nor_the_ledger_confirms_is_unconfirmed() {
    let ledger = Arc::new(TestLedger::default());
    ledger.fail_records.store(true, Ordering::SeqCst);
    let writer = instance(&format!("redis://127.0.0.1:{}", free_port()), &ledger, "unused");
    assert_eq!(writer.invalidate(&[UserId::generate()]).await, Invalidation::Unconfirmed);
    assert!(ledger.users().is_empty());
}

#[test]
fn a_lease_lasts_from_the_start_of_the_ledger_read_and_excludes_what_it_listed() {
    let lease = ReadLease::new(Duration::from_secs(1));
    let start = Instant::now();
    let (listed, other) = (UserId::generate(), UserId::generate());
    assert!(!lease.trusts(other, start), "no lease before the first read");

    assert_eq!(lease.renew(start, &[LedgerEntry { user: listed, mark: Uuid::new_v4() }], false), Renewal::Unchanged);
    assert!(lease.trusts(other, start + Duration::from_millis(999)));
    assert!(!lease.trusts(other, start + Duration::from_secs(1)), "ends one lease after the read began");
    assert!(!lease.trusts(listed, start), "a listed user is never trusted");
    assert_eq!(lease.listed(), 1);

    assert_eq!(lease.renew(start, &[], true), Renewal::Unchanged);
    assert!(!lease.trusts(other, start), "a truncated list distrusts everyone");

    assert_eq!(lease.renewal_failed(), Renewal::Failing);
    assert_eq!(lease.renewal_failed(), Renewal::Unchanged, "a lapse is reported once");
    assert_eq!(lease.renew(start, &[], false), Renewal::Recovered);
    assert!(lease.trusts(listed, start));
}

// ----- Configuration -----

#[tokio::test(flavor = "multi_thread")]
async fn follow_up_delays_are_bounded_and_the_database_number_is_read_from_the_url() {
    let mut config = shared_config();
    config.extra_invalidation_delays = vec![Duration::from_secs(11)];
    assert!(matches!(RedisCache::build(config.clone()), Err(RedisCacheError::Invalid(_))));
    config.extra_invalidation_delays = vec![Duration::from_secs(1); 6];
    assert!(matches!(RedisCache::build(config.clone()), Err(RedisCacheError::Invalid(_))));
    config.extra_invalidation_delays = vec![Duration::ZERO];
    assert!(matches!(RedisCache::build(config), Err(RedisCacheError::Invalid(_))));
    assert_eq!(RedisCacheConfig::new("redis://127.0.0.1:6379/3").database(), Some(3));
    assert_eq!(RedisCacheConfig::new("redis://127.0.0.1:6379").database(), Some(0));
    assert_eq!(RedisCacheConfig::new("not a url").database(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_without_the_id_placeholder_is_refused() {
    let mut config = shared_config();
    config.extra_invalidation_keys = vec!["usercache:{id}".to_owned(), "usercache:all".to_owned()];
    let error = RedisCache::build(config).expect_err("refused");
    assert!(matches!(&error, RedisCacheError::TemplateWithoutId(template) if template == "usercache:all"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_url_is_refused_without_echoing_it() {
    let error = RedisCache::build(RedisCacheConfig::new("http://user:hunter2@host")).expect_err("refused");
    assert!(matches!(error, RedisCacheError::InvalidUrl));
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn building_outside_a_tokio_runtime_is_an_error() {
    let error = RedisCache::build(RedisCacheConfig::new(shared_url())).expect_err("refused");
    assert!(matches!(error, RedisCacheError::NoRuntime));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_never_appears_in_debug_output() {
    let config = RedisCacheConfig::new("redis://cache:hunter2@127.0.0.1:6379/0");
    let cache = RedisCache::build(config.clone()).expect("build");
    for output in [format!("{config:?}"), format!("{cache:?}")] {
        assert!(!output.contains("hunter2"), "{output}");
        assert!(output.contains("redis://cache:***@127.0.0.1:6379/0"), "{output}");
    }
}

#[test]
fn urls_are_redacted_whatever_their_user_info() {
    assert_eq!(config::redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(config::redact_url("redis://:secret@host:6379/1"), "redis://:***@host:6379/1");
    assert_eq!(config::redact_url("rediss://user:p@ss@host"), "rediss://user:***@host");
    assert_eq!(config::redact_url("redis://secret@host"), "redis://***@host");
    // An '@' anywhere hides everything before it: over-masking, never a leak.
    assert_eq!(config::redact_url("redis://host/0?password=x@y"), "redis://***@y");
    for (url, redacted) in [
        ("postgres://app:pa/ss@db/users", "postgres://app:***@db/users"),
        ("postgres://app:p?ss@db/users", "postgres://app:***@db/users"),
        ("postgres://app:p#ss@db/users", "postgres://app:***@db/users"),
        ("postgres://db/users?%70assword=hunter2", "postgres://db/users?%70assword=***"),
        ("unix:///tmp/r.sock?%70ass=hunter2", "unix:///tmp/r.sock?%70ass=***"),
        ("postgres://h/db?password=ab#cd&sslmode=require", "postgres://h/db?password=***&sslmode=require"),
    ] {
        assert_eq!(config::redact_url(url), redacted, "{url}");
    }
    assert_eq!(config::redact_url("unix:///tmp/r.sock?db=0&pass=hunter2"), "unix:///tmp/r.sock?db=0&pass=***");
    assert_eq!(
        config::redact_url("postgres:///db?host=/tmp&PASSWORD=hunter2#x"),
        "postgres:///db?host=/tmp&PASSWORD=***"
    );
    // A URL that lost its '@': what follows a ':' is a port only when it is digits.
    assert_eq!(config::redact_url("amqp://guest:S3cretPW"), "amqp://guest:***");
    assert_eq!(config::redact_url("amqp://guest:S3cretPW/%2f?x=1"), "amqp://guest:***");
    assert_eq!(config::redact_url("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
    assert_eq!(config::redact_url("redis://[::1]:6379/0"), "redis://[::1]:6379/0");
}

#[test]
fn the_defaults_are_those_of_the_issue() {
    let config = RedisCacheConfig::new(shared_url());
    assert_eq!(config.key_prefix, "user-service");
    assert_eq!(config.format_version, "v1");
    assert_eq!(config.ttl, Duration::from_secs(300));
    assert_eq!(config.timeout, Duration::from_millis(100));
    assert_eq!(config.generation_ttl, Duration::from_secs(86_400));
    assert_eq!(config.max_pending_invalidations, 100_000);
    assert!(config.validate().is_ok());
}

// ----- The rate limiter -----

adapters_memory::rate_limiter_contract_tests!(RedisRateLimiter::build(&shared_config()).expect("build"));

const THREE_PER_MINUTE: RateLimit = RateLimit { limit: 3, window: Duration::from_secs(60) };

#[tokio::test(flavor = "multi_thread")]
async fn two_limiters_on_the_same_redis_share_their_counts() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    // Two instances of the service.
    let first = RedisRateLimiter::build(&config).expect("build");
    let second = RedisRateLimiter::build(&config).expect("build");
    let key = "login-failures:ada@example.com";

    for limiter in [&first, &second, &first] {
        assert_eq!(limiter.hit(key, THREE_PER_MINUTE).await, Ok(RateDecision::Allowed));
    }
    assert!(matches!(second.check(key, THREE_PER_MINUTE).await, Ok(RateDecision::Limited { .. })));
    assert!(matches!(second.hit(key, THREE_PER_MINUTE).await, Ok(RateDecision::Limited { .. })));

    first.reset(key).await.expect("reset");
    assert_eq!(second.check(key, THREE_PER_MINUTE).await, Ok(RateDecision::Allowed), "a reset is seen by all");
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_is_one_key_under_the_prefix_whose_expiry_is_set_by_the_first_hit_only() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let limiter = RedisRateLimiter::build(&config).expect("build");
    let mut connection = raw_connection(&shared_url()).await;
    let counter = format!("{prefix}:rl:login-failures:ada@example.com");

    limiter.hit("login-failures:ada@example.com", THREE_PER_MINUTE).await.expect("hit");
    let first_ttl: i64 = redis::cmd("PTTL").arg(&counter).query_async(&mut connection).await.expect("PTTL");
    assert!((59_000..=60_000).contains(&first_ttl), "the window is the expiry, got {first_ttl} ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
    limiter.hit("login-failures:ada@example.com", THREE_PER_MINUTE).await.expect("hit");
    let count: i64 = redis::cmd("GET").arg(&counter).query_async(&mut connection).await.expect("GET");
    let second_ttl: i64 = redis::cmd("PTTL").arg(&counter).query_async(&mut connection).await.expect("PTTL");
    assert_eq!(count, 2);
    assert!(second_ttl < first_ttl, "a later hit must not push the expiry back ({first_ttl} then {second_ttl} ms)");

    limiter.check("login-failures:ada@example.com", THREE_PER_MINUTE).await.expect("check");
    let count: i64 = redis::cmd("GET").arg(&counter).query_async(&mut connection).await.expect("GET");
    assert_eq!(count, 2, "check counts nothing");
    limiter.reset("login-failures:ada@example.com").await.expect("reset");
    assert!(!exists(&mut connection, &counter).await, "reset deletes the key");
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_key_is_stored_under_its_sha256() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let limiter = RedisRateLimiter::build(&config).expect("build");
    let long = format!("login-failures:{}@example.com", "a".repeat(100_000));

    limiter.hit(&long, THREE_PER_MINUTE).await.expect("hit");

    // A whole SCAN: one call of 10,000 missed the key when the server held 10,000 others.
    let keys = keys_prefixed(&format!("{prefix}:rl:")).await;
    assert_eq!(keys, [rate_limit::counter_key(&prefix, &long)]);
    assert_eq!(keys[0].len(), prefix.len() + ":rl:sha256:".len() + 64, "{}", keys[0]);
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_left_without_expiry_is_given_the_window_by_the_next_hit() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let limiter = RedisRateLimiter::build(&config).expect("build");
    let mut connection = raw_connection(&shared_url()).await;
    let counter = format!("{prefix}:rl:stuck");
    let _: () = redis::cmd("SET").arg(&counter).arg(7).query_async(&mut connection).await.expect("SET");

    let retry_after = match limiter.hit("stuck", THREE_PER_MINUTE).await {
        Ok(RateDecision::Limited { retry_after }) => retry_after,
        other => panic!("expected Limited, got {other:?}"),
    };
    assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&counter).query_async(&mut connection).await.expect("PTTL");
    assert!(ttl_ms > 0, "the counter would otherwise limit forever, PTTL {ttl_ms}");
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_is_not_a_counter_makes_the_limiter_unavailable() {
    let config = shared_config();
    let prefix = config.key_prefix.clone();
    let limiter = RedisRateLimiter::build(&config).expect("build");
    let mut connection = raw_connection(&shared_url()).await;
    let _: () =
        redis::cmd("SET").arg(format!("{prefix}:rl:odd")).arg("text").query_async(&mut connection).await.expect("SET");

    assert_eq!(limiter.hit("odd", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
    assert_eq!(limiter.check("odd", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
    delete_prefixed(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limiter_builds_while_nothing_listens_and_then_answers_unavailable_quickly() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limiter = RedisRateLimiter::build(&config_for(&url, TIMEOUT)).expect("building does not connect");

    let started = Instant::now();
    assert_eq!(limiter.hit("k", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
    assert_eq!(limiter.check("k", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
    assert_eq!(limiter.reset("k").await, Err(RateLimitUnavailable));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_costs_the_limiter_one_timeout_per_call_until_the_breaker_skips_it() {
    let server = PrivateRedis::start().await;
    let limiter = RedisRateLimiter::build(&config_for(&server.url(), TIMEOUT)).expect("build");
    assert_eq!(limiter.hit("k", THREE_PER_MINUTE).await, Ok(RateDecision::Allowed));

    server.pause();
    for attempt in 0..3 {
        let started = Instant::now();
        assert_eq!(limiter.hit("k", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
        assert!(
            started.elapsed() < TIMEOUT * 4,
            "attempt {attempt}: bounded by the timeout, took {:?}",
            started.elapsed()
        );
    }
    assert!(limiter.is_bypassed(), "three failures open the breaker");
    // The quickest of a few calls, so that a descheduled thread cannot fail the test.
    let mut quickest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(limiter.check("k", THREE_PER_MINUTE).await, Err(RateLimitUnavailable));
        quickest = quickest.min(started.elapsed());
    }
    assert!(quickest < TIMEOUT / 2, "skipped calls took at least {quickest:?}");

    server.resume();
    eventually(Duration::from_secs(3), "the limiter answers again after SIGCONT", || async {
        limiter.check("k", THREE_PER_MINUTE).await.is_ok()
    })
    .await;
    assert!(!limiter.is_bypassed());
}

#[test]
fn the_rate_limiter_builds_outside_a_tokio_runtime() {
    assert!(RedisRateLimiter::build(&RedisCacheConfig::new(shared_url())).is_ok());
}

#[test]
fn the_rate_limiter_refuses_a_bad_url_or_prefix_and_never_shows_the_password() {
    let error = RedisRateLimiter::build(&RedisCacheConfig::new("http://user:hunter2@host")).expect_err("refused");
    assert!(matches!(error, RedisCacheError::InvalidUrl));
    let mut config = RedisCacheConfig::new("redis://cache:hunter2@127.0.0.1:6379/0");
    let limiter = RedisRateLimiter::build(&config).expect("build");
    let output = format!("{limiter:?}");
    assert!(!output.contains("hunter2") && output.contains("redis://cache:***@127.0.0.1:6379/0"), "{output}");
    config.key_prefix.clear();
    assert!(matches!(RedisRateLimiter::build(&config), Err(RedisCacheError::Invalid(_))));
}

// ----- The pieces on their own -----

#[test]
fn rate_limit_keys_are_kept_when_short_and_hashed_when_long_or_looking_hashed() {
    assert_eq!(
        rate_limit::counter_key("svc", "login-failures:ada@example.com"),
        "svc:rl:login-failures:ada@example.com"
    );
    let longest = "k".repeat(200);
    assert_eq!(rate_limit::counter_key("svc", &longest), format!("svc:rl:{longest}"));
    let hashed = rate_limit::counter_key("svc", &"k".repeat(201));
    assert!(hashed.starts_with("svc:rl:sha256:") && hashed.len() == "svc:rl:sha256:".len() + 64, "{hashed}");
    assert!(
        hashed["svc:rl:sha256:".len()..].bytes().all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase())
    );
    assert_ne!(rate_limit::counter_key("svc", "sha256:00"), "svc:rl:sha256:00", "a clear key cannot name a hashed one");
}

#[test]
fn an_entry_is_served_only_under_the_server_and_generation_it_was_filled_with() {
    let (server, restarted) = (ServerId::new("a1"), ServerId::new("b2"));
    let filled = stamp(&server, Some("gen-1"));
    assert_eq!(filled, "a1/gen-1");
    let entry = encode_entry(&filled, b"payload\nwith newline");
    assert_eq!(current_payload(entry.clone(), &server, Some("gen-1")), Some(b"payload\nwith newline".to_vec()));
    assert_eq!(current_payload(entry.clone(), &server, Some("gen-2")), None);
    assert_eq!(current_payload(entry.clone(), &server, None), None);
    assert_eq!(current_payload(entry, &restarted, Some("gen-1")), None, "another server process");
    let without_generation = encode_entry(&stamp(&server, None), b"");
    assert_eq!(current_payload(without_generation.clone(), &server, None), Some(Vec::new()));
    assert_eq!(current_payload(without_generation, &restarted, None), None);
    assert_eq!(current_payload(b"no separator".to_vec(), &server, None), None);
    // An entry written before stamps named the server (a rolling deploy) is never served.
    assert_eq!(current_payload(b"gen-1\npayload".to_vec(), &server, Some("gen-1")), None);

    assert_eq!(parse_stamp("a1/gen-1"), Some((server.clone(), "gen-1")));
    assert_eq!(parse_stamp("a1/"), Some((server, "")));
    assert_eq!(parse_stamp("/gen-1"), None, "no server");
    assert_eq!(parse_stamp("gen-1"), None, "a stamp of the old format");
}

#[test]
fn the_breaker_opens_after_three_failures_and_lets_one_probe_through_per_cooldown() {
    let breaker = CircuitBreaker::new(3, Duration::from_secs(1));
    let start = Instant::now();
    assert_eq!(breaker.failure(start), Transition::None);
    assert_eq!(breaker.failure(start), Transition::None);
    assert_eq!(breaker.permit(start), Permit::Closed);
    assert_eq!(breaker.failure(start), Transition::Opened);

    assert_eq!(breaker.permit(start + Duration::from_millis(999)), Permit::Denied);
    let later = start + Duration::from_secs(1);
    assert_eq!(breaker.permit(later), Permit::Probe);
    assert_eq!(breaker.permit(later), Permit::Denied, "one probe at a time");
    assert_eq!(breaker.failure(later), Transition::None, "a failed probe keeps it open");
    assert_eq!(breaker.permit(later + Duration::from_millis(999)), Permit::Denied);
    assert_eq!(breaker.permit(later + Duration::from_secs(1)), Permit::Probe, "even if a probe was abandoned");

    assert_eq!(breaker.success(), Transition::Closed);
    assert_eq!(breaker.permit(later), Permit::Closed);
    assert_eq!(breaker.failure(later), Transition::None, "the count starts again");
}

#[test]
fn a_success_resets_the_consecutive_failure_count() {
    let breaker = CircuitBreaker::new(3, Duration::from_secs(1));
    let now = Instant::now();
    breaker.failure(now);
    breaker.failure(now);
    assert_eq!(breaker.success(), Transition::None);
    breaker.failure(now);
    assert_eq!(breaker.failure(now), Transition::None);
    assert_eq!(breaker.failure(now), Transition::Opened);
}

#[test]
fn the_queue_deduplicates_ids_and_keeps_one_queued_again_during_a_retry() {
    let queue = PendingInvalidations::new(10, Duration::from_secs(1), TIMEOUT);
    let (a, b) = (UserId::generate(), UserId::generate());
    let start = Instant::now();
    let _failed = queue.queue(&[a, b, a], start);
    assert_eq!(queue.len(), 2);

    let retry_at = start + TIMEOUT;
    let batch = queue.batch(10, retry_at).expect("a batch");
    assert_eq!(batch.ids.len(), 2);
    // A later write of `a` is being invalidated while the batch is retried.
    let _in_flight = queue.queue(&[a], retry_at);
    queue.complete(&batch);

    assert_eq!(queue.len(), 1);
    assert!(queue.blocks(a));
    assert!(!queue.blocks(b));
    let batch = queue.batch(10, retry_at + TIMEOUT).expect("a batch");
    queue.complete(&batch);
    assert!(queue.batch(10, retry_at + TIMEOUT).is_none());
}

#[test]
fn the_retry_task_leaves_an_invalidation_in_flight_to_its_caller() {
    let queue = PendingInvalidations::new(10, Duration::from_secs(1), TIMEOUT);
    let id = UserId::generate();
    let start = Instant::now();
    let in_flight = queue.queue(&[id], start);

    assert!(queue.batch(10, start + TIMEOUT / 2).is_none(), "the first attempt may still succeed");
    assert!(queue.blocks(id), "but the entry is not trusted meanwhile");
    queue.complete(&in_flight);
    assert!(!queue.blocks(id));
    assert!(queue.batch(10, start + TIMEOUT).is_none());
}

#[test]
fn a_full_queue_drops_ids_only_when_their_invalidation_fails_and_then_distrusts_every_id() {
    let queue = PendingInvalidations::new(2, Duration::from_secs(10), TIMEOUT);
    let ids: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
    let now = Instant::now();
    let succeeded = queue.queue(&ids, now);
    queue.complete(&succeeded);
    assert_eq!(queue.len(), 0);
    assert!(!queue.blocks(ids[3]), "ids that did not fit but were invalidated are not lost");

    let failed = queue.queue(&ids, now);
    assert_eq!(queue.len(), 2, "the queue holds at most 2 ids");
    assert!(queue.give_up_unqueued(&failed, now), "the first drop starts an overflow");
    let failed_again = queue.queue(&ids[3..], now);
    assert!(!queue.give_up_unqueued(&failed_again, now), "later drops are counted, not announced");
    assert!(queue.blocks(UserId::generate()), "every id is distrusted");

    let batch = queue.batch(10, now + TIMEOUT).expect("a batch");
    queue.complete(&batch);
    assert_eq!(queue.end_overflow_if_due(now + Duration::from_secs(9)), None);
    assert_eq!(queue.end_overflow_if_due(now + Duration::from_secs(10)), Some(3));
    assert!(!queue.blocks(UserId::generate()));
}

/// How many times `server` ran `command` (from `INFO commandstats`).
async fn command_calls(server: &PrivateRedis, command: &str) -> u64 {
    let mut connection = raw_connection(&server.url()).await;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_entry_is_served_from_process_until_another_instance_invalidates_it() {
    let server = PrivateRedis::start().await;
    let reader_config = config_for(&server.url(), Duration::from_secs(2));
    let mut writer_config = reader_config.clone();
    writer_config.near_cache_max_bytes = 0;
    let reader = RedisCache::build(reader_config).expect("build");
    let writer = RedisCache::build(writer_config).expect("build");
    let id = UserId::generate();
    // Filled, then read from Redis: kept in process once the connection's pushes were seen
    // to arrive (a probe the first read started).
    warm(&reader, id, b"before").await;
    eventually(Duration::from_secs(2), "the entry is kept in process", || async {
        reader.lookup(id).await == CacheLookup::Hit(b"before".to_vec().into())
            && reader.near_cache_size().is_some_and(|(entries, _)| entries > 0)
    })
    .await;
    let reads = command_calls(&server, "mget").await;
    for _ in 0..10 {
        assert_eq!(reader.lookup(id).await, CacheLookup::Hit(b"before".to_vec().into()));
    }
    assert_eq!(command_calls(&server, "mget").await, reads, "a hot entry was read from Redis");
    // What readers decode from a hot entry is kept with it: decoded once for all of them.
    let mut decodes = 0;
    for _ in 0..10 {
        let CacheLookup::Hit(entry) = reader.lookup(id).await else { panic!("a hot entry missed") };
        let _ = entry.sending(Channel::Push, |_, _| {
            decodes += 1;
            None
        });
    }
    assert_eq!(decodes, 1, "a hot entry was decoded again");

    // Another instance's change: Redis pushes the invalidation, the next read misses.
    assert_eq!(writer.invalidate(&[id]).await, Invalidation::Confirmed);
    assert!(matches!(reader.lookup(id).await, CacheLookup::Miss(_)));
    // An entry another instance fills is read from Redis again, not served from before.
    let ticket = miss_ticket(&writer, id).await;
    writer.fill(id, ticket, b"after".to_vec()).await;
    assert_eq!(reader.lookup(id).await, CacheLookup::Hit(b"after".to_vec().into()));
    assert_eq!(reader.lookup(id).await, CacheLookup::Hit(b"after".to_vec().into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_entry_is_not_served_after_redis_restarted_or_while_it_pauses() {
    let mut server = PrivateRedis::start().await;
    let cache = RedisCache::build(config_for(&server.url(), TIMEOUT)).expect("build");
    let id = UserId::generate();
    warm(&cache, id, b"kept").await;
    assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"kept".to_vec().into()));

    server.pause();
    assert_eq!(cache.lookup(id).await, CacheLookup::Unavailable, "served in process while Redis was paused");
    server.resume();

    // A restart loses every tracked key, and the pushes with them: nothing kept is served.
    let port = server.port;
    server.kill();
    let _restarted = PrivateRedis::start_on(port).await;
    eventually(Duration::from_secs(5), "the cache reaches the restarted server", || async {
        !matches!(cache.lookup(id).await, CacheLookup::Unavailable)
    })
    .await;
    assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_user_refused_client_tracking_still_caches_without_a_near_cache() {
    let server = PrivateRedis::start().await;
    let mut admin = raw_connection(&server.url()).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "limited", "on", ">limited-password", "~*", "+@all", "-client"][..])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://limited:limited-password@127.0.0.1:{}", server.port);
    let cache = RedisCache::build(config_for(&url, Duration::from_secs(2))).expect("build");
    let id = UserId::generate();
    warm(&cache, id, b"cached").await;
    let reads = command_calls(&server, "mget").await;
    for _ in 0..5 {
        assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"cached".to_vec().into()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(command_calls(&server, "mget").await, reads + 5, "each read goes to Redis");
    assert_eq!(cache.near_cache_size().map(|(entries, _)| entries), Some(0), "kept without pushes");
}

// ----- Redis Cluster (the three masters of `tests/with-services.sh`) -----

mod cluster {
    use super::*;
    use crate::servers::{Servers, slot};
    use domain::cache::CachedProfile;

    /// The test cluster's masters (`TEST_REDIS_CLUSTER`, set by `tests/with-services.sh`).
    fn cluster_nodes() -> Vec<(String, u16)> {
        let nodes = std::env::var("TEST_REDIS_CLUSTER")
            .expect("TEST_REDIS_CLUSTER names the test Redis Cluster: run the tests through tests/with-services.sh");
        nodes
            .split(',')
            .map(|node| {
                let (host, port) = node.rsplit_once(':').expect("host:port");
                (host.to_owned(), port.parse().expect("a port"))
            })
            .collect()
    }

    /// A cache configuration on the test cluster: its first node in the URL (whose host the
    /// cluster mode does not use), no near-cache, a random prefix.
    fn cluster_config() -> RedisCacheConfig {
        let nodes = cluster_nodes();
        let mut config = config_for(&format!("redis://{}:{}", nodes[0].0, nodes[0].1), Duration::from_secs(2));
        config.cluster = Some(nodes);
        config.near_cache_max_bytes = 0;
        config
    }

    async fn node_connection((host, port): &(String, u16)) -> MultiplexedConnection {
        raw_connection(&format!("redis://{host}:{port}")).await
    }

    /// Deletes the keys of `prefix` from every master.
    async fn delete_prefixed_everywhere(prefix: &str) {
        for node in cluster_nodes() {
            let mut connection = node_connection(&node).await;
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.expect("KEYS");
            for key in keys {
                let _: () = redis::cmd("DEL").arg(key).query_async(&mut connection).await.expect("DEL");
            }
        }
    }

    /// The keys of `prefix` on each master, in `cluster_nodes()`'s order.
    async fn keys_per_node(prefix: &str) -> Vec<Vec<String>> {
        let mut per_node = Vec::new();
        for node in cluster_nodes() {
            let mut connection = node_connection(&node).await;
            let mut keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.expect("KEYS");
            keys.sort();
            per_node.push(keys);
        }
        per_node
    }

    adapters_memory::profile_cache_contract_tests!(
        |ttl| RedisCache::build(RedisCacheConfig { ttl, ..cluster_config() }).expect("build"),
        clean_up: |cache| delete_prefixed_everywhere(&cache.inner.keys.prefix),
    );

    adapters_memory::rate_limiter_contract_tests!(RedisRateLimiter::build(&cluster_config()).expect("build"));

    #[tokio::test(flavor = "multi_thread")]
    async fn slots_are_the_ones_redis_computes() {
        let mut connection = node_connection(&cluster_nodes()[0]).await;
        let id = UserId::generate();
        let keys = [
            "somekey".to_owned(),
            "foo{hash_tag}".to_owned(),
            "foo{}bar".to_owned(),
            "foo{{bar}}zap".to_owned(),
            "{user1000}.following".to_owned(),
            "a}b{c}".to_owned(),
            format!("user-service:v1:user:{{{id}}}"),
            format!("user-service:rl:login:{id}"),
        ];
        for key in keys {
            let expected: i64 =
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut connection).await.unwrap();
            assert_eq!(i64::from(slot(key.as_bytes())), expected, "{key}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_users_keys_share_a_hash_tag_and_live_where_the_cluster_says() {
        let mut config = cluster_config();
        config.extra_invalidation_keys = vec!["gateway-{id}".to_owned()];
        let prefix = config.key_prefix.clone();
        let cache = RedisCache::build(config).expect("build");
        let id = UserId::generate();
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        warm(&cache, id, b"tagged").await;
        assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"tagged".to_vec().into()));

        let (entry, generation) = (format!("{prefix}:v1:user:{{{id}}}"), format!("{prefix}:gen:{{{id}}}"));
        let holding: Vec<usize> = keys_per_node(&prefix)
            .await
            .iter()
            .enumerate()
            .filter(|(_, keys)| keys.contains(&entry) && keys.contains(&generation))
            .map(|(index, _)| index)
            .collect();
        assert_eq!(holding.len(), 1, "the entry and the generation are on one master");
        let mut connection = node_connection(&cluster_nodes()[holding[0]]).await;
        let keyslot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&entry).query_async(&mut connection).await.unwrap();
        assert_eq!(keyslot, i64::from(slot(entry.as_bytes())));
        assert_eq!(slot(entry.as_bytes()), slot(generation.as_bytes()));

        // A downstream copy on whichever master holds it goes with the invalidation.
        let copy = format!("gateway-{id}");
        let mut holder = None;
        for node in cluster_nodes() {
            let mut connection = node_connection(&node).await;
            let set: redis::RedisResult<()> =
                redis::cmd("SET").arg(&copy).arg("old").query_async(&mut connection).await;
            if set.is_ok() {
                holder = Some(node);
            }
        }
        let holder = holder.expect("one master takes the copy");
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        assert!(!exists(&mut node_connection(&holder).await, &copy).await, "the downstream copy was deleted");
        assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)));
        delete_prefixed_everywhere(&prefix).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bulk_lookup_of_a_thousand_users_takes_one_round_trip_per_master() {
        let config = cluster_config();
        let prefix = config.key_prefix.clone();
        let cache = RedisCache::build(config).expect("build");
        let ids: Vec<UserId> = (0..1_000).map(|_| UserId::generate()).collect();
        for id in &ids[..500] {
            warm(&cache, *id, id.to_string().as_bytes()).await;
        }
        let masters = cache.inner.servers.masters().await.expect("the slot map");
        assert_eq!(masters.len(), 3);
        let round_trips = || masters.iter().map(|node| node.round_trips.load(Ordering::Relaxed)).collect::<Vec<_>>();

        let before = round_trips();
        let lookups = cache.lookup_many(&ids).await;
        let after = round_trips();
        let sent: Vec<u64> = after.iter().zip(&before).map(|(after, before)| after - before).collect();
        assert_eq!(sent, vec![1, 1, 1], "round trips per master");
        for (index, (id, lookup)) in ids.iter().zip(&lookups).enumerate() {
            match lookup {
                CacheLookup::Hit(payload) if index < 500 => {
                    assert_eq!(*payload, CachedProfile::from(id.to_string().into_bytes()));
                }
                CacheLookup::Miss(_) if index >= 500 => {}
                other => panic!("user {index}: {other:?}"),
            }
        }
        delete_prefixed_everywhere(&prefix).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cluster_refuses_what_needs_one_server() {
        let mut near = cluster_config();
        near.near_cache_max_bytes = 1024 * 1024;
        assert!(matches!(RedisCache::build(near), Err(RedisCacheError::Invalid(_))));
        let mut other_database = cluster_config();
        other_database.url.push_str("/2");
        assert!(matches!(RedisCache::build(other_database), Err(RedisCacheError::Invalid(_))));
        let servers = Servers::build(
            &cluster_config(),
            crate::connection::Role { name: "test", degraded: "", identify_server: false },
            None,
        );
        assert!(servers.is_ok_and(|servers| servers.single().is_none()));
    }
}
