//! The bounded way to Redis shared by the cache and the rate limiter: a pool built with
//! timeouts, a circuit breaker, and [`Connection::run`], which makes one round trip within
//! the configured timeout or reports that it could not.
//!
//! Nothing here knows about keys or values; what must not live here is anything specific to
//! one port.

use std::fmt;
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncConnectionConfig, FromRedisValue, ScriptInvocation};
use deadpool_redis::{Manager, Pool, Runtime};

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
    Pool(deadpool_redis::PoolError),
    Redis(redis::RedisError),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(error) => write!(f, "no connection: {error}"),
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

/// A pool, its timeout and its circuit breaker. Built without connecting.
pub(crate) struct Connection {
    pub(crate) pool: Pool,
    timeout: Duration,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) redacted_url: String,
    role: Role,
}

impl Connection {
    /// Builds the pool from `config` (its URL, timeout, pool size and breaker settings).
    /// Does not connect and needs no Tokio runtime; calls must run inside one.
    pub(crate) fn build(config: &RedisCacheConfig, role: Role) -> Result<Self, RedisCacheError> {
        // Redis's own defaults (1 s to connect, 500 ms per response) would outlast ours.
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        let manager = Manager::new_with_config(config.url.as_str(), connection_config)
            .map_err(|_| RedisCacheError::InvalidUrl)?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_max_size.max(2))
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| RedisCacheError::Pool(error.to_string()))?;
        Ok(Self {
            pool,
            timeout: config.timeout,
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown),
            redacted_url: config.redacted_url(),
            role,
        })
    }

    /// Runs one round trip unless the breaker skips Redis; `None` when skipped or failed.
    pub(crate) async fn run<T: FromRedisValue>(&self, request: Request<'_>) -> Option<T> {
        if self.breaker.permit(Instant::now()) == Permit::Denied {
            return None;
        }
        let call = async {
            let mut connection = self.pool.get().await.map_err(Failure::Pool)?;
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
