//! The bounded way to Redis shared by the cache and the rate limiter: one multiplexed
//! connection made on first use, a timeout, a circuit breaker, and [`Connection::run`], which
//! makes one round trip within the configured timeout or reports that it could not.
//!
//! For the cache, each connection also knows which server process it reached, and which
//! history of the data that process serves ([`ServerId`]: Redis's `run_id`, random at every
//! start, and its `master_replid`, new at every promotion): an entry or a fill ticket from
//! another process (a restart, empty or from an old snapshot; a failover) or from before a
//! promotion of this one (a failback to a master that took its data back from a replica
//! that had missed deletions) is never trusted.
//!
//! Connections come from a deadpool-redis pool, which makes them (with our timeouts) and
//! checks a returned one with `PING` before handing it out again. That check would cost every
//! call a second round trip, so the connection is checked out once and kept: a multiplexed
//! connection is shared by all calls (concurrent ones are pipelined on its socket) and
//! checked by nothing but the calls themselves, so one call is one round trip. It is checked
//! out lazily, so that the service starts while Redis is down, and given up when a call on it
//! fails in a way that may have broken it (an I/O error, a closed socket, a timeout): the next
//! call checks one out again, which the pool verifies or makes anew, after a restart, a pause
//! or a silent network loss alike.
//!
//! A change the cache must not lose is sent with [`Connection::run_replicated`]: it counts as
//! done only once every replica of the server has it (`WAIT`), so that a replica promoted
//! later, or one promoted already that its old master does not know of (a split brain),
//! never lacks it. Which replicas: for a Redis Cluster node, those its slot map names or that
//! the node said follow it (see [`crate::replicas`]; a short count has the map read again); for
//! the one server, those connected to it, counted when the connection is made and again with
//! every change.
//!
//! A connection may also carry Redis's client-side caching ([`Tracking`]): it then speaks
//! RESP3, turns `CLIENT TRACKING ON` before its first call, and hands every message Redis
//! pushes to the given handler as redis-rs reads it.
//!
//! Nothing here knows about keys or values; what must not live here is anything specific to
//! one port.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, Pool, PoolError, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, ProtocolVersion,
    PushInfo, RedisError, ScriptInvocation,
};

use crate::breaker::{CircuitBreaker, Permit, Transition};
use crate::config::{RedisCacheConfig, RedisCacheError, SentinelConfig};
use crate::replicas::{ReplicaWatch, Syncs, connected_addresses, started_anew, syncs_served};

/// One round trip to Redis.
pub(crate) enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a ScriptInvocation<'a>),
    /// A pipeline followed by `WAIT` for the server's replicas: see [`Connection::run_replicated`].
    Replicated(&'a redis::Pipeline),
}

/// Which Redis server process a connection reached, and the history of its data:
/// `{run_id}.{master_replid}` (each 40 random hex digits: `run_id` chosen at every start,
/// `master_replid` at every promotion to master, and taken from the master while a replica),
/// or empty for users that do not ask ([`Role::identify_server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerId(Arc<str>);

impl ServerId {
    /// A server id as written in a stamp (see the cache's entry format).
    pub(crate) fn new(id: &str) -> Self {
        Self(id.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The process it names.
    pub(crate) fn run_id(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(run_id, _)| run_id)
    }

    /// The replication id it names (empty when none).
    pub(crate) fn replication_id(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, replid)| replid)
    }
}

/// Whether a call respects the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// Skip Redis while the breaker is open (every call that must not wait for an outage).
    Respect,
    /// Call Redis anyway: for a caller that waits for Redis to confirm a change and would
    /// otherwise wait for the cooldown rather than for Redis.
    Ignore,
}

/// Why a call did not answer.
#[derive(Debug)]
enum Failure {
    Connect(PoolError<RedisError>),
    Identify(redis::RedisError),
    Redis(redis::RedisError),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "no connection: {error}"),
            Self::Identify(error) => write!(f, "INFO did not name the server's run_id and replication id: {error}"),
            Self::Redis(error) => write!(f, "{error}"),
            Self::Timeout(timeout) => write!(f, "no answer within {} ms", timeout.as_millis()),
        }
    }
}

/// What receives the messages Redis pushes on a tracking connection: called by redis-rs's
/// reader as it reads each one, before it hands out any answer that follows it. It must not
/// block.
pub(crate) type Tracking = Arc<dyn Fn(&PushInfo) + Send + Sync>;

/// Who uses a [`Connection`], for its log lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Role {
    /// What Redis is to this user, e.g. `cache`: "Redis cache unavailable".
    pub(crate) name: &'static str,
    /// What happens while Redis is skipped, logged when the breaker opens.
    pub(crate) degraded: &'static str,
    /// Whether each new connection asks which server process it reached (`INFO server`).
    pub(crate) identify_server: bool,
}

/// The multiplexed connection in use, numbered so that a failed call drops the connection it
/// failed on and never a newer one another call has made since.
#[derive(Clone)]
struct Current {
    number: u64,
    connection: MultiplexedConnection,
    server: ServerId,
    /// The replicas connected to the server when the connection was made, counted again
    /// with every change (0 for users that do not ask, [`Role::identify_server`]).
    replicas: Arc<AtomicUsize>,
    /// The pool's object, kept while the connection is in use.
    checked_out: Arc<CheckedOut>,
}

/// A connection checked out of the pool, back in it when the last call using it is done.
/// Once given up (a call failed on it in a way that may have broken it), it leaves the pool
/// for good at once ([`Self::give_up`]): the calls still using it keep their own handle on its
/// socket until they end, but no place in the pool, so that calls that take long to end (or
/// futures that are kept but never polled again) never keep the next call from connecting;
/// and it never goes back to wait there, perhaps for a long time, and pass a `PING` later on
/// a server that may no longer be the right one.
struct CheckedOut {
    object: Mutex<Option<Object<Connector>>>,
}

impl CheckedOut {
    fn give_up(&self) {
        let object = self.object.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(object) = object {
            drop(Object::take(object));
        }
    }
}

/// A lazily checked-out multiplexed connection, its timeout and its circuit breaker. Built
/// without connecting.
pub(crate) struct Connection {
    pool: Pool<Connector>,
    /// The connection calls share; `None` before the first call and after one failed on it.
    current: Mutex<Option<Current>>,
    /// Held while connecting, so that calls arriving meanwhile wait for that connection
    /// instead of each making their own.
    connecting: tokio::sync::Mutex<()>,
    made: AtomicU64,
    timeout: Duration,
    /// Shared by a server's connections (see [`Self::sharing_breaker`]): it judges the server.
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) redacted_url: String,
    role: Role,
    /// Whether each connection turns client-side caching on (see [`Tracking`]).
    tracking: bool,
    /// Set by every failed call (a cluster node's: its slot map may be outdated).
    failed: Option<Arc<AtomicBool>>,
    /// A cluster node's replicas, shared by its two connections (see [`crate::replicas`]);
    /// `None` for the one server (whose connections count theirs).
    replica_watch: Option<Arc<ReplicaWatch>>,
    /// Round trips sent (for tests that count them).
    #[cfg(test)]
    pub(crate) round_trips: AtomicU64,
}

/// One answer, the server process and the connection that gave it.
pub(crate) struct Answer<T> {
    pub(crate) value: T,
    pub(crate) server: ServerId,
    /// The connection's number: each connection made gets the next one.
    pub(crate) connection: u64,
}

impl Connection {
    /// Builds the client from `config` (its URL, timeout and breaker settings). Does not
    /// connect and needs no Tokio runtime; calls must run inside one. One multiplexed
    /// connection serves all calls. With `tracking`, each connection speaks RESP3 and has
    /// client-side caching on, its pushes handed to `tracking`.
    pub(crate) fn build(
        config: &RedisCacheConfig,
        role: Role,
        tracking: Option<Tracking>,
    ) -> Result<Self, RedisCacheError> {
        Self::build_for(config, None, role, tracking)
    }

    /// [`Self::build`] for the Redis Cluster node at `host` and `port` (with the URL's
    /// credentials), rather than the URL's server or the Sentinels' master, watching its
    /// replicas in `replica_watch` (shared by the node's connections).
    /// Every failed call sets `failed`.
    pub(crate) fn build_node(
        config: &RedisCacheConfig,
        (host, port): (&str, u16),
        role: Role,
        failed: Arc<AtomicBool>,
        replica_watch: Arc<ReplicaWatch>,
    ) -> Result<Self, RedisCacheError> {
        let mut connection = Self::build_for(config, Some((host, port)), role, None)?;
        connection.failed = Some(failed);
        connection.replica_watch = Some(replica_watch);
        Ok(connection)
    }

    fn build_for(
        config: &RedisCacheConfig,
        node: Option<(&str, u16)>,
        role: Role,
        tracking: Option<Tracking>,
    ) -> Result<Self, RedisCacheError> {
        // Redis's own defaults (1 s to connect, 500 ms per response) would outlast ours.
        let mut connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        let mut info = config.url.as_str().into_connection_info().map_err(|_| RedisCacheError::InvalidUrl)?;
        if let Some((host, port)) = node {
            info = info.set_addr(ConnectionAddr::Tcp(host.to_owned(), port));
        }
        let is_tracking = tracking.is_some();
        if let Some(tracking) = tracking {
            // Pushes need RESP3; redis-rs hands them to this closure in stream order.
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
            connection_config = connection_config.set_push_sender(move |push: PushInfo| {
                tracking(&push);
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let sentinel = config.sentinel.as_ref().filter(|_| node.is_none());
        let connector = match sentinel {
            None => Connector::Direct(
                deadpool_redis::Manager::new_with_config(info, connection_config)
                    .map_err(|_| RedisCacheError::InvalidUrl)?,
            ),
            Some(sentinel) => Connector::Sentinel {
                clients: (0..sentinel.sentinels.len())
                    .map(|first| sentinel_client(sentinel, first, &info).map(tokio::sync::Mutex::new))
                    .collect::<Result<_, _>>()?,
                next: AtomicU64::new(0),
                config: connection_config,
            },
        };
        // One connection in use; a second one can be made while calls still hold a given-up one.
        let pool = Pool::builder(connector)
            .max_size(2)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|_| RedisCacheError::InvalidUrl)?;
        Ok(Self {
            pool,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            made: AtomicU64::new(0),
            timeout: config.timeout,
            breaker: Arc::new(CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown)),
            redacted_url: match node {
                Some((host, port)) => format!("redis://{host}:{port}"),
                None => config.redacted_url(),
            },
            role,
            tracking: is_tracking,
            failed: None,
            replica_watch: None,
            #[cfg(test)]
            round_trips: AtomicU64::new(0),
        })
    }

    /// This connection, judged by `other`'s circuit breaker: a second connection to the same
    /// server (a call that succeeds on either closes it for both).
    pub(crate) fn sharing_breaker(mut self, other: &Self) -> Self {
        self.breaker = Arc::clone(&other.breaker);
        self
    }

    /// Whether a connection is currently held (for debug output; it may have broken since).
    pub(crate) fn is_connected(&self) -> bool {
        self.slot().is_some()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shared connection, made first if there is none. Not bounded here: the caller's
    /// timeout bounds it (and the connection config bounds each attempt).
    async fn acquire(&self) -> Result<Current, Failure> {
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        // Made by the call this one waited for?
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        let checked_out = self.pool.get().await.map_err(Failure::Connect)?;
        let mut connection = (*checked_out).clone();
        let (server, replicas) = if self.role.identify_server {
            let watched = self.replica_watch.is_some();
            let (server, replication, stats) = identify(&mut connection, watched).await.map_err(Failure::Identify)?;
            // Just identified: the same history.
            let _ = self.saw_replication_on(&replication, stats.as_deref(), &server);
            (server, connected_replicas(&replication).unwrap_or(0))
        } else {
            (ServerId::new(""), 0)
        };
        if self.tracking {
            // Before any read: every key this connection reads from now on is tracked. A
            // connection the pool made earlier has it on already; turning it on again is
            // harmless. Refused (an ACL without CLIENT), the connection still serves: the
            // near-cache's probe then finds no pushes and stays off.
            let tracking: redis::RedisResult<()> =
                redis::cmd("CLIENT").arg("TRACKING").arg("ON").query_async(&mut connection).await;
            if let Err(error) = tracking {
                if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
                    return Err(Failure::Redis(error));
                }
                tracing::warn!(error = %error, "CLIENT TRACKING ON refused: the near-cache is off on this connection");
            }
        }
        let number = self.made.fetch_add(1, Ordering::Relaxed);
        let checked_out = Arc::new(CheckedOut { object: Mutex::new(Some(checked_out)) });
        let replicas = Arc::new(AtomicUsize::new(replicas));
        let current = Current { number, connection, server, replicas, checked_out };
        *self.slot() = Some(current.clone());
        Ok(current)
    }

    /// Drops connection `number`, whose server is no longer the one it reached (see
    /// [`ServerId`]): the next call connects again and asks again, and a cluster reads its
    /// slot map again.
    pub(crate) fn distrust(&self, number: u64) {
        self.suspect_map();
        self.discard(number);
    }

    /// Has a cluster read its slot map again (at most every 100 ms): this node may no longer
    /// be what the map says.
    pub(crate) fn suspect_map(&self) {
        if let Some(failed) = &self.failed {
            failed.store(true, Ordering::Relaxed);
        }
    }

    /// A cluster node's replicas, as its connections and the slot map see them (`None` for
    /// the one server).
    pub(crate) fn replica_watch(&self) -> Option<&Arc<ReplicaWatch>> {
        self.replica_watch.as_ref()
    }

    /// Records which replicas a cluster node said (`INFO replication`) follow it now, and
    /// how many syncs it said (`INFO stats`) it had served, said on a connection that reached
    /// `server`; whether the node's history started anew since (see
    /// [`crate::replicas::started_anew`]): the caller then makes the connection again, so that
    /// the next call compares with the new id.
    pub(crate) fn saw_replication_on(&self, replication: &str, stats: Option<&str>, server: &ServerId) -> bool {
        let Some(watch) = &self.replica_watch else { return false };
        let now = Instant::now();
        let syncs = stats.and_then(syncs_served).zip(info_field(replication, "master_replid:")).map(
            |(served, replication_id)| Syncs {
                process: server.run_id().to_owned(),
                history: replication_id.to_owned(),
                served,
            },
        );
        watch.observed(connected_addresses(replication), syncs, now);
        let started_anew = started_anew(replication, server.replication_id());
        if started_anew {
            watch.history_changed(now);
        }
        started_anew
    }

    /// The replicas a cluster node must have follow it, for a change on it to count and a
    /// read from it to be trusted (0 for the one server): see [`crate::replicas`].
    pub(crate) fn replicas_to_follow(&self) -> usize {
        self.replica_watch.as_ref().map_or(0, |watch| watch.required())
    }

    /// How many replicas must have a change on `current` before it counts: see the module's docs.
    fn replicas_of(&self, current: &Current) -> usize {
        match &self.replica_watch {
            Some(watch) => watch.required(),
            None => current.replicas.load(Ordering::Relaxed),
        }
    }

    /// How long `WAIT` waits for the replicas: half the call's timeout, so that a short count
    /// still answers in time (and never 0, which would wait for ever).
    fn replication_wait_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis() / 2).unwrap_or(u64::MAX).max(1)
    }

    /// Drops connection `number` if it is still the shared one, so that the next call
    /// connects again; it leaves the pool (see [`CheckedOut`]).
    fn discard(&self, number: u64) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|current| current.number == number)
            && let Some(current) = slot.take()
        {
            current.checked_out.give_up();
        }
    }

    /// Runs one round trip unless the breaker skips Redis; `None` when skipped or failed.
    pub(crate) async fn run<T: FromRedisValue>(&self, request: Request<'_>) -> Option<T> {
        self.call(request, Breaker::Respect, None).await.map(|answer| answer.value)
    }

    /// [`Self::run`], also when the breaker is open.
    pub(crate) async fn run_despite_breaker<T: FromRedisValue>(&self, request: Request<'_>) -> Option<T> {
        self.call(request, Breaker::Ignore, None).await.map(|answer| answer.value)
    }

    /// [`Self::run`], with the server process and the connection that answered.
    pub(crate) async fn run_identified<T: FromRedisValue>(&self, request: Request<'_>) -> Option<Answer<T>> {
        self.call(request, Breaker::Respect, None).await
    }

    /// Runs `pipeline` (whose answers are ignored), then, in the same round trip, `WAIT`s (for
    /// at most half the timeout) until every replica of the server has it: whether both
    /// happened. On a short count the cluster's map is read again; the one server's replicas
    /// are counted again with every change. Not an outage: the breaker is not told.
    pub(crate) async fn run_replicated(&self, pipeline: &redis::Pipeline, breaker: Breaker) -> bool {
        self.call::<redis::Value>(Request::Replicated(pipeline), breaker, None).await.is_some()
    }

    /// [`Self::run`] on a connection to the `server` process only: `None`, and nothing sent,
    /// when the current connection reached another one.
    pub(crate) async fn run_on<T: FromRedisValue>(&self, server: &ServerId, request: Request<'_>) -> Option<T> {
        self.call(request, Breaker::Respect, Some(server)).await.map(|answer| answer.value)
    }

    /// One round trip within the timeout; see the public variants.
    async fn call<T: FromRedisValue>(
        &self,
        request: Request<'_>,
        breaker: Breaker,
        only_on: Option<&ServerId>,
    ) -> Option<Answer<T>> {
        if breaker == Breaker::Respect && self.breaker.permit(Instant::now()) == Permit::Denied {
            return None;
        }
        // The connection the call used, to drop it if the call failed in a way that may have
        // broken it (read after the call future, cancelled or not, is gone).
        let used = OnceLock::new();
        let replicated = matches!(request, Request::Replicated(_));
        let call = async {
            // The object stays checked out while this call uses its connection (`used` holds it).
            let current = self.acquire().await?;
            let replicas = self.replicas_of(&current);
            let counted = Arc::clone(&current.replicas);
            let Current { number, mut connection, server, checked_out, .. } = current;
            let _ = used.set((number, checked_out));
            if only_on.is_some_and(|expected| *expected != server) {
                return Ok(None);
            }
            #[cfg(test)]
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let answer = match request {
                Request::Command(command) => command.query_async(&mut connection).await,
                Request::Pipeline(pipeline) => pipeline.query_async(&mut connection).await,
                Request::Script(invocation) => invocation.invoke_async(&mut connection).await,
                Request::Replicated(pipeline) => {
                    let mut pipeline = pipeline.clone();
                    if replicas > 0 {
                        pipeline.cmd("WAIT").arg(replicas).arg(self.replication_wait_ms());
                    }
                    // The replicas, counted again after every change: the one server's next
                    // change waits for those there are then (one that left, or came back); a
                    // cluster node's are watched (see `crate::replicas`).
                    let recount = self.role.identify_server;
                    if recount {
                        pipeline.cmd("INFO").arg("replication");
                    }
                    let watched = recount && self.replica_watch.is_some();
                    if watched {
                        pipeline.cmd("INFO").arg("stats");
                    }
                    let answers: Vec<redis::Value> = match pipeline.query_async(&mut connection).await {
                        Ok(answers) => answers,
                        Err(error) => return Err(Failure::Redis(error)),
                    };
                    let mut answers = answers.into_iter();
                    let acknowledged = if replicas > 0 {
                        answers.next().and_then(|count| redis::from_redis_value::<usize>(count).ok())
                    } else {
                        Some(0)
                    };
                    let mut required = replicas;
                    if recount {
                        let mut text = || answers.next().and_then(|info| redis::from_redis_value::<String>(info).ok());
                        let info = text();
                        let stats = if watched { text() } else { None };
                        if let Some(info) = info.as_deref() {
                            if let Some(connected) = connected_replicas(info) {
                                counted.store(connected, Ordering::Relaxed);
                            }
                            // A cluster node's replicas as it says now: one that attached since
                            // is waited for too (the next try sends its `WAIT`).
                            if self.saw_replication_on(info, stats.as_deref(), &server) {
                                self.discard(number);
                            }
                            required = required.max(self.replicas_to_follow());
                        }
                    }
                    if acknowledged.is_none_or(|count| count < required) {
                        tracing::debug!(url = %self.redacted_url, replicas, "a change did not reach every replica in time");
                        if self.replica_watch.is_some() {
                            self.suspect_map();
                        }
                        return Ok(None);
                    }
                    redis::from_redis_value(redis::Value::Okay)
                        .map_err(|_| RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not an answer")))
                }
            };
            answer.map(|value| Some(Answer { value, server, connection: number })).map_err(Failure::Redis)
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            // Not sent, to another server than the caller's, or not replicated in time: neither
            // a success nor a failure.
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(answer))) => Ok(answer),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Timeout(self.timeout)),
        };
        if let (Err(failure), Some((number, checked_out))) = (&outcome, used.get())
            && breaks_the_connection(failure)
        {
            // Out of the pool for good, whether or not it is still the shared connection.
            checked_out.give_up();
            self.discard(*number);
        }
        drop(used);
        let role = self.role.name;
        match outcome {
            Ok(value) => {
                if self.breaker.success() == Transition::Closed {
                    tracing::info!(url = %self.redacted_url, "Redis {role} reachable again");
                }
                Some(value)
            }
            Err(failure) => {
                if let Some(failed) = &self.failed {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Failure::Redis(error) = &failure
                    && error.is_cluster_error()
                {
                    // `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the node answers, for a slot
                    // it does not serve now. Not an outage of the node: the map is read again.
                    tracing::debug!(url = %self.redacted_url, error = %failure, "Redis Cluster redirection");
                    return None;
                }
                if replicated {
                    // Invalidations queue behind one another's `WAIT` on their connection while
                    // a replica does not answer: no sign that the server is down, which the
                    // other calls judge. (Their successes still close the breaker.)
                    tracing::debug!(url = %self.redacted_url, error = %failure, "Redis {role} invalidation failed");
                    return None;
                }
                // One warning per outage (when the breaker opens), not one per request.
                if self.breaker.failure(Instant::now()) == Transition::Opened {
                    tracing::warn!(
                        url = %self.redacted_url,
                        error = %failure,
                        "Redis {role} unavailable: {}",
                        self.role.degraded
                    );
                } else {
                    tracing::debug!(error = %failure, "Redis {role} call failed");
                }
                None
            }
        }
    }
}

/// Makes the connections: to the URL's server, or to the master that Redis Sentinel names.
enum Connector {
    Direct(deadpool_redis::Manager),
    /// Each new connection asks the Sentinels which server is the master, and that server
    /// confirms it is (`ROLE`). A failover breaks the connection to the old master (Sentinel
    /// disconnects its clients when it demotes it, and a write it refuses gives the
    /// connection up), and the next one reaches the new master. Each new connection asks the
    /// Sentinels starting from the next one in turn (one client per starting point): a
    /// Sentinel that hangs rather than refusing, which uses up a connection's whole timeout,
    /// then only delays the attempts that start with it.
    Sentinel {
        clients: Vec<tokio::sync::Mutex<SentinelClient>>,
        next: AtomicU64,
        config: AsyncConnectionConfig,
    },
}

impl managed::Manager for Connector {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        match self {
            Self::Direct(manager) => manager.create().await,
            Self::Sentinel { clients, next, config } => {
                let first = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or_default() % clients.len();
                clients[first].lock().await.get_async_connection_with_config(config).await
            }
        }
    }

    async fn recycle(&self, connection: &mut MultiplexedConnection, metrics: &Metrics) -> RecycleResult<RedisError> {
        match self {
            Self::Direct(manager) => manager.recycle(connection, metrics).await,
            // A connection kept from before a failover may reach a server that is a replica now.
            Self::Sentinel { .. } => {
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(connection).await?;
                match role.first() {
                    Some(redis::Value::BulkString(role)) if role == b"master" => Ok(()),
                    _ => Err(managed::RecycleError::message("no longer the master")),
                }
            }
        }
    }
}

/// A Sentinel client for `sentinel` that asks its Sentinels from the one at `first` on, in
/// turn, connecting to the master with the URL's credentials, database and protocol.
fn sentinel_client(
    sentinel: &SentinelConfig,
    first: usize,
    url: &ConnectionInfo,
) -> Result<SentinelClient, RedisCacheError> {
    let (before, from) = sentinel.sentinels.split_at(first);
    let sentinels = from.iter().chain(before).map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
    let settings = url.redis_settings();
    let mut builder = SentinelClientBuilder::new(sentinels, &sentinel.master_name, SentinelServerType::Master)
        .map_err(|_| RedisCacheError::InvalidUrl)?
        .set_client_to_redis_db(settings.db())
        .set_client_to_redis_protocol(settings.protocol());
    if let Some(username) = settings.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    builder.build().map_err(|_| RedisCacheError::InvalidUrl)
}

/// Whether a call that failed so may have left its connection unusable. An error answer of
/// Redis (e.g. `WRONGTYPE`) or an unexpected value does not; an I/O error, a closed socket or
/// no answer in time (a paused server, a lost network) may.
fn breaks_the_connection(failure: &Failure) -> bool {
    match failure {
        Failure::Connect(_) | Failure::Identify(_) | Failure::Timeout(_) => true,
        // `READONLY`: the server is a replica now (a failover demoted it).
        Failure::Redis(error) => {
            error.is_io_error()
                || error.is_connection_dropped()
                || error.is_timeout()
                || error.is_unrecoverable_error()
                || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        }
    }
}

/// Asks a new connection which server process it reached, the history of its data
/// ([`ServerId`]) and its `INFO replication` (and, for a cluster node whose replicas are
/// watched, its `INFO stats`), and warns if that server may evict keys.
async fn identify(
    connection: &mut MultiplexedConnection,
    with_stats: bool,
) -> Result<(ServerId, String, Option<String>), redis::RedisError> {
    let server: String = redis::cmd("INFO").arg("server").query_async(connection).await?;
    let replication: String = redis::cmd("INFO").arg("replication").query_async(connection).await?;
    let stats: Option<String> =
        if with_stats { Some(redis::cmd("INFO").arg("stats").query_async(connection).await?) } else { None };
    let run_id = info_field(&server, "run_id:");
    let replication_id = info_field(&replication, "master_replid:");
    let server = match (run_id, replication_id) {
        (Some(run_id), Some(replication_id)) => ServerId::new(&format!("{run_id}.{replication_id}")),
        _ => {
            let missing = "no run_id in INFO server or no master_replid in INFO replication";
            return Err(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, missing)));
        }
    };
    let memory: String = redis::cmd("INFO").arg("memory").query_async(connection).await?;
    let field = |name: &str| memory.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
    let bounded = field("maxmemory:").is_some_and(|bytes| bytes != "0");
    let policy = field("maxmemory_policy:").unwrap_or("noeviction");
    if bounded && policy != "noeviction" {
        tracing::warn!(
            policy,
            "this Redis may evict keys (maxmemory is set with an eviction policy): an evicted generation key lets a \
             fill read before a change land after it, so the cache may serve a stale user; set maxmemory-policy \
             noeviction on the cache's Redis"
        );
    }
    Ok((server, replication, stats))
}

/// The replicas connected to the server, from its `INFO replication` answer.
pub(crate) fn connected_replicas(replication: &str) -> Option<usize> {
    info_field(replication, "connected_slaves:")?.parse().ok()
}

/// The value of a field (`name:`, e.g. `master_replid:`) of an `INFO` answer, when not empty.
pub(crate) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)).map(str::trim).filter(|value| !value.is_empty())
}
