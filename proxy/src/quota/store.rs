//! Where quota counters live: this proxy's memory, or Redis shared by every proxy.
//!
//! Both stores do the same two things, atomically per call: `reserve` checks that no
//! counter is at its limit and then adds every amount (all or nothing), and `adjust`
//! adds deltas (the difference between what was reserved and what was used). In Redis
//! each is one Lua script, so an admission costs one round trip.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use redis::Script;

use crate::redis::SharedRedis;

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
pub use crate::redis::RedisError as StoreError;

// === LocalStore ===

/// Counters in this proxy's memory: the store without Redis, and the fallback when
/// Redis is down and a quota fails open.
///
/// One mutex for every counter: a reservation must check and add on all of its
/// counters atomically, which shards would turn into taking several locks in order;
/// with the sweep amortized, the lock is held for a few map lookups per request.
#[derive(Debug, Default)]
pub struct LocalStore {
    counters: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    map: HashMap<String, Entry>,
    /// Counters left by the last sweep: the next waits for the map to double.
    after_sweep: usize,
    /// Sweeps run, for the tests.
    sweeps: u64,
}

#[derive(Debug)]
struct Entry {
    value: i64,
    expires: Instant,
}

/// Expired counters are swept once the map holds this many, and from then on each time
/// it holds twice as many as the last sweep left.
const SWEEP_AT: usize = 4096;

impl Counters {
    /// Removes expired counters once the map has doubled since the last sweep. A
    /// sweep visits every counter, so sweeping whenever the map is large would cost
    /// each request O(counters) once that many are live; a sweep at 2n counters follows
    /// at least n new ones, which makes its cost O(1) per reservation. Expired counters
    /// read as 0 (`value`, `add`), so when they go changes no answer, only memory,
    /// which stays within twice the live counters (or `SWEEP_AT`).
    fn sweep(&mut self, now: Instant) {
        if self.map.len() >= SWEEP_AT.max(self.after_sweep.saturating_mul(2)) {
            self.map.retain(|_, e| e.expires > now);
            self.after_sweep = self.map.len();
            self.sweeps += 1;
        }
    }
}

impl LocalStore {
    pub fn reserve(&self, ops: &[&CounterOp]) -> Reserved {
        let now = Instant::now();
        let mut guard = self.lock();
        guard.sweep(now);
        let counters = &mut guard.map;
        let value = |counters: &HashMap<String, Entry>, key: &str| {
            counters
                .get(key)
                .filter(|e| e.expires > now)
                .map_or(0, |e| e.value)
        };
        for (index, op) in ops.iter().enumerate() {
            let used = value(counters, &op.key);
            if used >= op.max {
                return Reserved::Refused { index, used };
            }
        }
        let after = ops
            .iter()
            .map(|op| add(counters, &op.key, op.amount, op.ttl, now))
            .collect();
        Reserved::Admitted(after)
    }

    pub fn adjust(&self, adjustments: &[Adjustment]) {
        let now = Instant::now();
        let mut guard = self.lock();
        for a in adjustments {
            add(&mut guard.map, &a.key, a.delta, a.ttl, now);
        }
    }

    /// A counter's value (0 when absent or expired).
    pub fn get(&self, key: &str) -> i64 {
        let now = Instant::now();
        self.lock()
            .map
            .get(key)
            .filter(|e| e.expires > now)
            .map_or(0, |e| e.value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
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

/// Counters in Redis, shared by every proxy pointed at it.
#[derive(Debug)]
pub struct RedisStore {
    redis: Arc<SharedRedis>,
    reserve: Script,
    adjust: Script,
}

impl RedisStore {
    pub fn new(redis: Arc<SharedRedis>) -> Self {
        Self {
            redis,
            reserve: SharedRedis::script(RESERVE),
            adjust: SharedRedis::script(ADJUST),
        }
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
        let reply: Vec<i64> = self.redis.invoke(invocation).await?;
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
        let _: i64 = self.redis.invoke(invocation).await?;
        Ok(())
    }

    /// Counter values (0 for absent ones), in order.
    pub async fn get(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<i64>> = self
            .redis
            .query(redis::cmd("MGET").arg(keys).to_owned())
            .await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    pub fn address(&self) -> &str {
        &self.redis.address
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

    fn live(key: String) -> CounterOp {
        CounterOp {
            key,
            amount: 1,
            max: 100,
            ttl: Duration::from_secs(600),
        }
    }

    /// Once 10,000 counters are live, reservations do not each sweep the whole map: a
    /// sweep waits until the map has doubled since the last one.
    #[test]
    fn a_full_local_store_does_not_sweep_on_every_reservation() {
        let store = LocalStore::default();
        for i in 0..10_000 {
            let op = live(format!("c{i}"));
            assert!(matches!(store.reserve(&[&op]), Reserved::Admitted(_)));
        }
        // At 4,096 and at 8,192 counters, each leaving every (live) counter.
        assert_eq!(store.lock().sweeps, 2);
        for i in 0..10_000 {
            let op = live(format!("c{i}"));
            assert_eq!(store.reserve(&[&op]), Reserved::Admitted(vec![2]));
        }
        assert_eq!(store.lock().sweeps, 2, "no sweep without new counters");
        // 10,000 new counters: one sweep, at 16,384.
        for i in 10_000..20_000 {
            let op = live(format!("c{i}"));
            assert!(matches!(store.reserve(&[&op]), Reserved::Admitted(_)));
        }
        let counters = store.lock();
        assert_eq!(counters.sweeps, 3);
        assert_eq!(counters.map.len(), 20_000, "live counters are kept");
    }

    /// Expired counters are still removed, once new counters have doubled the map.
    #[tokio::test]
    async fn a_local_store_removes_expired_counters_as_it_grows() {
        let store = LocalStore::default();
        for i in 0..10_000 {
            let op = CounterOp {
                ttl: Duration::from_millis(300),
                ..live(format!("old{i}"))
            };
            assert!(matches!(store.reserve(&[&op]), Reserved::Admitted(_)));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let sweeps = store.lock().sweeps;
        let mut new = 0;
        while store.lock().sweeps == sweeps {
            assert!(new < 20_000, "no sweep after {new} new counters");
            let op = live(format!("new{new}"));
            assert!(matches!(store.reserve(&[&op]), Reserved::Admitted(_)));
            new += 1;
        }
        let counters = store.lock();
        assert!(
            counters.map.keys().all(|k| k.starts_with("new")),
            "expired counters are gone"
        );
        // Left: every new counter, the one of the reservation that swept included.
        assert_eq!(counters.map.len(), new);
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
