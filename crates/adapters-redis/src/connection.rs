//! The bounded way to Redis shared by the cache and the rate limiter: one multiplexed
//! connection made on first use, a timeout, a circuit breaker, and [`Connection::run`], which
//! makes one round trip within the configured timeout or reports that it could not.
//!
//! Why no pool: a pool checks its connection on every checkout (deadpool-redis sends `PING`),
//! so a call cost two or three round trips. A multiplexed connection is shared by all calls
//! (concurrent ones are pipelined on its socket) and checked by nothing but the calls
//! themselves: one call is one round trip. It is made lazily, so that the service starts
//! while Redis is down, and dropped when a call on it fails in a way that may have broken it
//! (an I/O error, a closed socket, a timeout), so that the next call connects again: after a
//! restart, a pause or a silent network loss alike.
//!
//! Nothing here knows about keys or values; what must not live here is anything specific to
//! one port.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, ScriptInvocation};

use crate::breaker::{CircuitBreaker, Permit, Transition};
use crate::config::{RedisCacheConfig, RedisCacheError};

/// One round trip to Redis.
pub(crate) enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a ScriptInvocation<'a>),
}

/// Why a call did not answer.
#[derive(Debug)]
enum Failure {
    Connect(redis::RedisError),
    Redis(redis::RedisError),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "no connection: {error}"),
            Self::Redis(error) => write!(f, "{error}"),
            Self::Timeout(timeout) => write!(f, "no answer within {} ms", timeout.as_millis()),
        }
    }
}

/// Who uses a [`Connection`], for its log lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Role {
    /// What Redis is to this user, e.g. `cache`: "Redis cache unavailable".
    pub(crate) name: &'static str,
    /// What happens while Redis is skipped, logged when the breaker opens.
    pub(crate) degraded: &'static str,
}

/// The multiplexed connection in use, numbered so that a failed call drops the connection it
/// failed on and never a newer one another call has made since.
#[derive(Clone)]
struct Current {
    number: u64,
    connection: MultiplexedConnection,
}

/// A lazily made multiplexed connection, its timeout and its circuit breaker. Built without
/// connecting.
pub(crate) struct Connection {
    client: Client,
    connection_config: AsyncConnectionConfig,
    /// The connection calls share; `None` before the first call and after one failed on it.
    current: Mutex<Option<Current>>,
    /// Held while connecting, so that calls arriving meanwhile wait for that connection
    /// instead of each making their own.
    connecting: tokio::sync::Mutex<()>,
    made: AtomicU64,
    timeout: Duration,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) redacted_url: String,
    role: Role,
}

impl Connection {
    /// Builds the client from `config` (its URL, timeout and breaker settings). Does not
    /// connect and needs no Tokio runtime; calls must run inside one. One multiplexed
    /// connection serves all calls.
    pub(crate) fn build(config: &RedisCacheConfig, role: Role) -> Result<Self, RedisCacheError> {
        // Redis's own defaults (1 s to connect, 500 ms per response) would outlast ours.
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        let client = Client::open(config.url.as_str()).map_err(|_| RedisCacheError::InvalidUrl)?;
        Ok(Self {
            client,
            connection_config,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            made: AtomicU64::new(0),
            timeout: config.timeout,
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown),
            redacted_url: config.redacted_url(),
            role,
        })
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
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await
            .map_err(Failure::Connect)?;
        let current = Current { number: self.made.fetch_add(1, Ordering::Relaxed), connection };
        *self.slot() = Some(current.clone());
        Ok(current)
    }

    /// Drops connection `number` if it is still the shared one, so that the next call
    /// connects again.
    fn discard(&self, number: u64) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|current| current.number == number) {
            *slot = None;
        }
    }

    /// Runs one round trip unless the breaker skips Redis; `None` when skipped or failed.
    pub(crate) async fn run<T: FromRedisValue>(&self, request: Request<'_>) -> Option<T> {
        if self.breaker.permit(Instant::now()) == Permit::Denied {
            return None;
        }
        // The connection the call used, to drop it if the call failed in a way that may have
        // broken it (read after the call future, cancelled or not, is gone).
        let used = OnceLock::new();
        let call = async {
            let Current { number, mut connection } = self.acquire().await?;
            let _ = used.set(number);
            let answer = match request {
                Request::Command(command) => command.query_async(&mut connection).await,
                Request::Pipeline(pipeline) => pipeline.query_async(&mut connection).await,
                Request::Script(invocation) => invocation.invoke_async(&mut connection).await,
            };
            answer.map_err(Failure::Redis)
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        };
        if let (Err(failure), Some(number)) = (&outcome, used.get().copied())
            && breaks_the_connection(failure)
        {
            self.discard(number);
        }
        let role = self.role.name;
        match outcome {
            Ok(value) => {
                if self.breaker.success() == Transition::Closed {
                    tracing::info!(url = %self.redacted_url, "Redis {role} reachable again");
                }
                Some(value)
            }
            Err(failure) => {
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

/// Whether a call that failed so may have left its connection unusable. An error answer of
/// Redis (e.g. `WRONGTYPE`) or an unexpected value does not; an I/O error, a closed socket or
/// no answer in time (a paused server, a lost network) may.
fn breaks_the_connection(failure: &Failure) -> bool {
    match failure {
        Failure::Connect(_) | Failure::Timeout(_) => true,
        Failure::Redis(error) => {
            error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_unrecoverable_error()
        }
    }
}
