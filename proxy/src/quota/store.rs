//! Where quota counters live: this proxy's memory, or Redis shared by every proxy.
//!
//! Both stores do the same two things, atomically per call: `reserve` checks that no
//! counter is at its limit and then adds every amount (all or nothing), and `adjust`
//! adds deltas (the difference between what was reserved and what was used). In Redis
//! each is one Lua script, so an admission costs one round trip.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};

/// One counter to reserve on.
#[derive(Debug, Clone)]
pub struct CounterOp {
    pub key: String,
    /// What this request adds.
    pub amount: i64,
    /// The limit: no reservation while the counter is at or above it.
    pub max: i64,
    /// How long the counter outlives its window's start (its window, and a margin).
    pub ttl: Duration,
}

/// A difference to add to a counter.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub key: String,
    pub delta: i64,
    pub ttl: Duration,
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Every amount was added; each counter's value after it, in order.
    Admitted(Vec<i64>),
    /// Nothing was added: counter `index` stands at `used`, at or above its limit.
    Refused { index: usize, used: i64 },
}

/// The shared store failed or is known to be down.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quota store unreachable (retrying after a pause): {0}")]
    Down(String),
    #[error("quota store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("quota store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("quota store answered something unexpected: {0}")]
    Protocol(String),
}

// === LocalStore ===

/// Counters in this proxy's memory: the store without Redis, and the fallback when
/// Redis is down and a quota fails open.
#[derive(Debug, Default)]
pub struct LocalStore {
    counters: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    value: i64,
    expires: Instant,
}

/// Expired counters are swept once the map holds this many.
const SWEEP_AT: usize = 4096;

impl LocalStore {
    pub fn reserve(&self, ops: &[&CounterOp]) -> Reserved {
        let now = Instant::now();
        let mut counters = self.lock();
        if counters.len() >= SWEEP_AT {
            counters.retain(|_, e| e.expires > now);
        }
        let value = |counters: &HashMap<String, Entry>, key: &str| {
            counters
                .get(key)
                .filter(|e| e.expires > now)
                .map_or(0, |e| e.value)
        };
        for (index, op) in ops.iter().enumerate() {
            let used = value(&counters, &op.key);
            if used >= op.max {
                return Reserved::Refused { index, used };
            }
        }
        let after = ops
            .iter()
            .map(|op| add(&mut counters, &op.key, op.amount, op.ttl, now))
            .collect();
        Reserved::Admitted(after)
    }

    pub fn adjust(&self, adjustments: &[Adjustment]) {
        let now = Instant::now();
        let mut counters = self.lock();
        for a in adjustments {
            add(&mut counters, &a.key, a.delta, a.ttl, now);
        }
    }

    /// A counter's value (0 when absent or expired).
    pub fn get(&self, key: &str) -> i64 {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|e| e.expires > now)
            .map_or(0, |e| e.value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Adds `delta` to `key`; a new (or expired) counter starts at 0 and lives `ttl`.
fn add(
    counters: &mut HashMap<String, Entry>,
    key: &str,
    delta: i64,
    ttl: Duration,
    now: Instant,
) -> i64 {
    // The key is copied only for a new counter.
    if !counters.contains_key(key) {
        counters.insert(
            key.to_string(),
            Entry {
                value: 0,
                expires: now + ttl,
            },
        );
    }
    let Some(entry) = counters.get_mut(key) else {
        return 0;
    };
    if entry.expires <= now {
        *entry = Entry {
            value: 0,
            expires: now + ttl,
        };
    }
    entry.value = entry.value.saturating_add(delta);
    entry.value
}

// === RedisStore ===

/// Checks every counter, then adds to all of them, or to none. KEYS: the counters;
/// ARGV: amount, max and TTL (ms) per key. Returns {1, values after...} or
/// {0, index (1-based), value}.
const RESERVE: &str = r"
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= tonumber(ARGV[3 * i - 1]) then
    return {0, i, used}
  end
end
local out = {1}
for i = 1, #KEYS do
  out[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
  end
end
return out
";

/// Adds a delta to each counter. ARGV: delta and TTL (ms) per key.
const ADJUST: &str = r"
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  end
end
return 1
";

/// After a failure, Redis is not tried again for this long: a request during an
/// outage must not wait out a timeout every time.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Counters in Redis, shared by every proxy pointed at it.
pub struct RedisStore {
    connection: ConnectionManager,
    reserve: Script,
    adjust: Script,
    /// The most an operation may take before it counts as a failure.
    timeout: Duration,
    /// Until when Redis is considered down.
    down_until: Mutex<Option<Instant>>,
    /// Where it is, without credentials, for logs.
    pub address: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url` (`redis://host:port/db` or `rediss://` for TLS), with
    /// `password` if given. Connects lazily: a proxy starts while Redis is down.
    pub fn new(url: &str, password: Option<&str>, timeout: Duration) -> Result<Self, StoreError> {
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
            reserve: Script::new(RESERVE),
            adjust: Script::new(ADJUST),
            timeout,
            down_until: Mutex::new(None),
            address,
        })
    }

    pub async fn reserve(&self, ops: &[&CounterOp]) -> Result<Reserved, StoreError> {
        let mut invocation = self.reserve.prepare_invoke();
        for op in ops {
            invocation
                .key(&op.key)
                .arg(op.amount)
                .arg(op.max)
                .arg(millis(op.ttl));
        }
        let reply: Vec<i64> = self.run(invocation).await?;
        match reply.as_slice() {
            [1, after @ ..] if after.len() == ops.len() => Ok(Reserved::Admitted(after.to_vec())),
            [0, index, used] if *index >= 1 && (*index as usize) <= ops.len() => {
                Ok(Reserved::Refused {
                    index: *index as usize - 1,
                    used: *used,
                })
            }
            other => Err(StoreError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn adjust(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        let mut invocation = self.adjust.prepare_invoke();
        for a in adjustments {
            invocation.key(&a.key).arg(a.delta).arg(millis(a.ttl));
        }
        let _: i64 = self.run(invocation).await?;
        Ok(())
    }

    /// Counter values (0 for absent ones), in order.
    pub async fn get(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let command = redis::cmd("MGET").arg(keys).to_owned();
        let values: Vec<Option<i64>> = self
            .bounded(async move { command.query_async(&mut connection).await })
            .await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    /// Runs `operation` unless Redis is paused after a failure, within the timeout;
    /// a failure pauses Redis for `PAUSE_AFTER_FAILURE`.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let paused = *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused.is_some_and(|until| Instant::now() < until) {
            return Err(StoreError::Down(self.address.clone()));
        }
        let result = match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::Redis(error)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, amount: i64, max: i64) -> CounterOp {
        CounterOp {
            key: key.to_string(),
            amount,
            max,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn local_reservations_are_all_or_nothing() {
        let store = LocalStore::default();
        let (a, b) = (op("a", 1, 2), op("b", 10, 100));
        assert_eq!(store.reserve(&[&a, &b]), Reserved::Admitted(vec![1, 10]));
        assert_eq!(store.reserve(&[&a, &b]), Reserved::Admitted(vec![2, 20]));
        // `a` is at its limit: nothing is added to `b` either.
        assert_eq!(
            store.reserve(&[&b, &a]),
            Reserved::Refused { index: 1, used: 2 }
        );
        assert_eq!(store.get("b"), 20);
        // Settling gives back what was not used.
        store.adjust(&[Adjustment {
            key: "a".into(),
            delta: -1,
            ttl: Duration::from_secs(60),
        }]);
        assert_eq!(store.get("a"), 1);
    }

    #[tokio::test]
    async fn local_counters_expire() {
        let store = LocalStore::default();
        let short = CounterOp {
            ttl: Duration::from_millis(20),
            ..op("a", 1, 1)
        };
        let short = [&short];
        assert_eq!(store.reserve(&short), Reserved::Admitted(vec![1]));
        assert!(matches!(store.reserve(&short), Reserved::Refused { .. }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(store.reserve(&short), Reserved::Admitted(vec![1]));
    }
}
