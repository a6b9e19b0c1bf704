//! The proxy's one Redis connection, shared by quota counters and the response cache.
//!
//! Every operation is bounded by a short timeout, and after a failure Redis is not
//! tried again for a pause, so that during an outage a request never waits longer than
//! the timeout, and most do not wait at all. What an outage means is each user's
//! decision: quotas follow their failure policy, the cache turns itself off.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};

/// After a failure, Redis is not tried again for this long: a request during an
/// outage must not wait out a timeout every time.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Redis failed or is known to be down.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis unreachable (retrying after a pause): {0}")]
    Down(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Protocol(String),
}

/// A lazily connected, automatically reconnecting Redis connection.
pub struct SharedRedis {
    connection: ConnectionManager,
    /// The most an operation may take before it counts as a failure.
    timeout: Duration,
    /// Until when Redis is considered down.
    down_until: Mutex<Option<Instant>>,
    /// Where it is, without credentials, for logs.
    pub address: String,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRedis")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedRedis {
    /// A connection to `url` (`redis://host:port/db` or `rediss://` for TLS), with
    /// `password` if given. Connects lazily: a proxy starts while Redis is down.
    pub fn new(url: &str, password: Option<&str>, timeout: Duration) -> Result<Self, RedisError> {
        let mut info = url.into_connection_info()?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let address = info.addr().to_string();
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(PAUSE_AFTER_FAILURE);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            timeout,
            down_until: Mutex::new(None),
            address,
        })
    }

    /// Runs a command.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        command: redis::Cmd,
    ) -> Result<T, RedisError> {
        let mut connection = self.connection.clone();
        self.bounded(async move { command.query_async(&mut connection).await })
            .await
    }

    /// Runs a script (by its SHA, loading it on first use).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut connection = self.connection.clone();
        self.bounded(async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    /// A script for `invoke`.
    pub fn script(source: &str) -> Script {
        Script::new(source)
    }

    /// Runs `operation` unless Redis is paused after a failure, within the timeout;
    /// a failure pauses Redis for `PAUSE_AFTER_FAILURE`.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        let paused = *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused.is_some_and(|until| Instant::now() < until) {
            return Err(RedisError::Down(self.address.clone()));
        }
        let result = match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisError::Redis(error)),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        };
        let mut down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *down = match &result {
            Ok(_) => None,
            Err(_) => Some(Instant::now() + PAUSE_AFTER_FAILURE),
        };
        result
    }
}
