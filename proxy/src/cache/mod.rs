//! The response cache: exact-match answers in this proxy's memory or in Redis, and
//! coalescing of identical requests in flight.
//!
//! A request on a route with a cache policy gets a `Decision`: off (no policy), bypass
//! (the client said so, or the request is not cacheable), or a key to look up and
//! store under. A hit is answered from the entry before quota admission and costs
//! nothing. A miss first waits for an identical request already on its way upstream
//! (bounded), then goes upstream itself, and its answer is stored once complete by a
//! `Recorder`. Redis trouble makes lookups misses and stores no-ops; requests never
//! fail because of the cache. See docs/cache.md.

mod entry;
mod key;
mod metrics;
mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{CachePolicy, Route};
use tokio::sync::watch;

pub use self::entry::Entry;
pub use self::key::{Key, NotCacheable};
pub use self::metrics::CacheMetrics;
pub use self::record::Recorder;
use crate::error::ProxyError;
use crate::ir::record::CacheResult;
use crate::ir::reply::Reply;
use crate::ir::{Request, Usage};
use crate::redis::{RedisError, SharedRedis};

/// Request header: `bypass` (no lookup, nothing stored) or `refresh` (no lookup, the
/// new answer is stored).
pub const CACHE_HEADER: &str = "x-switchboard-cache";
/// Request header: seconds to keep this request's answer, if shorter than the route's TTL.
pub const CACHE_TTL_HEADER: &str = "x-switchboard-cache-ttl";

/// Where entries live.
#[derive(Debug)]
enum Store {
    Memory(moka::sync::Cache<Key, Arc<Entry>>),
    Redis(Arc<SharedRedis>),
}

/// The cache of one proxy.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    /// Requests on their way upstream, by key, with a channel that carries their answer.
    flights: Flights,
    metrics: Option<Arc<CacheMetrics>>,
}

/// Requests on their way upstream, by key, with a channel that carries their answer.
type Flights = Arc<Mutex<HashMap<Key, watch::Receiver<Option<Arc<Entry>>>>>>;

/// What a request does with the cache.
#[derive(Debug)]
enum Decision {
    /// The route has no cache.
    Off,
    /// Not looked up, not stored.
    Bypass,
    Use(Ticket),
}

/// What the cache had for a request.
#[derive(Debug)]
pub enum Lookup {
    /// The answer, from the cache.
    Hit(Hit),
    /// Nothing: the request goes upstream.
    Miss(Miss),
}

/// A request answered from the cache.
#[derive(Debug)]
pub struct Hit {
    /// The stored answer, as a reply to the request.
    pub reply: Reply,
    /// What the stored answer used, and what it had cost (what the hit saves).
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    /// Seconds since it was stored.
    pub age: u64,
}

/// A request the cache did not answer.
#[derive(Debug)]
pub struct Miss {
    /// What the cache did: `None` on a route without a cache.
    pub result: Option<CacheResult>,
    /// Stores the answer, if the route caches it.
    pub recorder: Option<Recorder>,
}

/// A cacheable request's key and what it may do with it.
#[derive(Debug, Clone)]
struct Ticket {
    key: Key,
    ttl: Duration,
    max_bytes: u64,
    /// False for `refresh`: straight upstream, then stored.
    look_up: bool,
    coalesce_wait: Duration,
}

/// What the store had for a ticket.
#[derive(Debug)]
enum Found {
    /// An entry; `coalesced` when it was the answer of an identical request in flight.
    Hit { entry: Arc<Entry>, coalesced: bool },
    /// Nothing: go upstream, and store the answer with this.
    Miss(Recorder),
}

/// Answers an identical request waits for: dropped without landing, it releases them.
#[derive(Debug)]
pub struct Flight {
    key: Key,
    sender: watch::Sender<Option<Arc<Entry>>>,
    flights: Flights,
}

// === impl Cache ===

impl Cache {
    /// Entries in memory, up to `memory_bytes`; or in `redis` when given.
    pub fn new(
        redis: Option<Arc<SharedRedis>>,
        memory_bytes: u64,
        metrics: Option<CacheMetrics>,
    ) -> Self {
        let metrics = metrics.map(Arc::new);
        let store = match redis {
            Some(redis) => Store::Redis(redis),
            None => {
                let evictions = metrics.clone();
                Store::Memory(
                    moka::sync::Cache::builder()
                        .max_capacity(memory_bytes)
                        .weigher(|_, entry: &Arc<Entry>| entry.weight())
                        .expire_after(EntryTtl)
                        .eviction_listener(move |_, _, cause| {
                            if let Some(metrics) = &evictions {
                                match cause {
                                    moka::notification::RemovalCause::Size => {
                                        metrics.evicted("size");
                                    }
                                    moka::notification::RemovalCause::Expired => {
                                        metrics.evicted("expired");
                                    }
                                    _ => {}
                                }
                            }
                        })
                        .build(),
                )
            }
        };
        Self {
            store,
            flights: Arc::default(),
            metrics,
        }
    }

    /// A new config serves: the cache metrics of routes it deleted go.
    pub fn config_applied(&self, snapshot: &Snapshot) {
        if let Some(metrics) = &self.metrics {
            metrics.config_applied(snapshot);
        }
    }

    /// Serves `request` on `route` from `consumer` from the cache if it can: the
    /// stored answer, or that of an identical request in flight. A hit is answered
    /// before quota admission: it uses no allowance, and its tokens and cost count as
    /// saved. A stored answer this version cannot read is a miss.
    pub async fn look_up(
        self: &Arc<Self>,
        (route_id, route): (&str, &Route),
        consumer: &str,
        request: &Request,
        headers: &HeaderMap,
    ) -> Result<Lookup, ProxyError> {
        let ticket = match Self::decide(route_id, route, consumer, request, headers)? {
            Decision::Off => {
                return Ok(Lookup::Miss(Miss {
                    result: None,
                    recorder: None,
                }));
            }
            Decision::Bypass => {
                self.looked_up(route_id, CacheResult::Bypass, false);
                return Ok(Lookup::Miss(Miss {
                    result: Some(CacheResult::Bypass),
                    recorder: None,
                }));
            }
            Decision::Use(ticket) => ticket,
        };
        let (entry, coalesced) = match self.find(route_id, &ticket).await {
            Found::Hit { entry, coalesced } => (entry, coalesced),
            Found::Miss(recorder) => {
                self.looked_up(route_id, CacheResult::Miss, false);
                return Ok(Lookup::Miss(Miss {
                    result: Some(CacheResult::Miss),
                    recorder: Some(recorder),
                }));
            }
        };
        let Some(reply) = entry.reply(request) else {
            // Unreadable (written by another version): answered upstream instead.
            self.looked_up(route_id, CacheResult::Miss, false);
            return Ok(Lookup::Miss(Miss {
                result: Some(CacheResult::Miss),
                recorder: None,
            }));
        };
        self.looked_up(route_id, CacheResult::Hit, coalesced);
        Ok(Lookup::Hit(Hit {
            reply,
            usage: entry.usage,
            cost_usd: entry.cost_usd,
            age: entry.age(),
        }))
    }

    fn looked_up(&self, route: &str, result: CacheResult, coalesced: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.lookup(route, result.as_str(), coalesced);
        }
    }

    /// A hit was answered: what it saved (the stored answer's usage and cost).
    pub fn count_saved(&self, route: &str, usage: &Usage, cost_usd: Option<f64>) {
        if let Some(metrics) = &self.metrics {
            metrics.saved(route, usage, cost_usd);
        }
    }

    /// How `request` on `route` from `consumer` uses the cache, from the route's
    /// policy and the request's headers. A header with a value it does not know is a
    /// 400, so that a typo does not silently cache.
    fn decide(
        route_id: &str,
        route: &Route,
        consumer: &str,
        request: &Request,
        headers: &HeaderMap,
    ) -> Result<Decision, ProxyError> {
        let Some(policy) = route.cache else {
            return Ok(Decision::Off);
        };
        let bypass_asked = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                matches!(
                    d.trim().to_ascii_lowercase().as_str(),
                    "no-cache" | "no-store"
                )
            });
        let look_up = match headers.get(CACHE_HEADER).map(|v| v.to_str()) {
            None => true,
            Some(Ok(v)) if v.eq_ignore_ascii_case("bypass") => return Ok(Decision::Bypass),
            Some(Ok(v)) if v.eq_ignore_ascii_case("refresh") => false,
            Some(_) => {
                return Err(ProxyError::BadRequest(format!(
                    "header {CACHE_HEADER} must be 'bypass' or 'refresh'"
                )));
            }
        };
        if bypass_asked {
            return Ok(Decision::Bypass);
        }
        let ttl = ttl(&policy, headers)?;
        match key::of(
            route_id,
            route,
            policy.requests,
            policy.scope,
            consumer,
            request,
        ) {
            Ok(key) => Ok(Decision::Use(Ticket {
                key,
                ttl,
                max_bytes: policy.max_entry_bytes,
                look_up,
                coalesce_wait: Duration::from_millis(policy.coalesce_wait_ms),
            })),
            Err(_) => Ok(Decision::Bypass),
        }
    }

    /// The entry for `ticket`, or the answer of an identical request in flight; else a
    /// recorder for this request's own answer.
    async fn find(self: &Arc<Self>, route: &str, ticket: &Ticket) -> Found {
        if ticket.look_up
            && let Some(entry) = self.get(ticket.key, ticket.max_bytes).await
        {
            return Found::Hit {
                entry,
                coalesced: false,
            };
        }
        let mut flight = None;
        if ticket.look_up && !ticket.coalesce_wait.is_zero() {
            match self.board(ticket.key) {
                Boarding::Leader(own) => flight = Some(own),
                Boarding::Follower(mut answer) => {
                    let landed = tokio::time::timeout(
                        ticket.coalesce_wait,
                        answer.wait_for(Option::is_some),
                    )
                    .await;
                    if let Ok(Ok(entry)) = landed
                        && let Some(entry) = entry.clone()
                    {
                        return Found::Hit {
                            entry,
                            coalesced: true,
                        };
                    }
                    // The first request failed, was not stored, or is taking too long:
                    // this one goes upstream itself.
                }
            }
        }
        Found::Miss(Recorder::new(
            self.clone(),
            route.to_string(),
            ticket.key,
            ticket.ttl,
            ticket.max_bytes,
            flight,
        ))
    }

    fn board(&self, key: Key) -> Boarding {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(answer) = flights.get(&key) {
            return Boarding::Follower(answer.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key, receiver);
        Boarding::Leader(Flight {
            key,
            sender,
            flights: self.flights.clone(),
        })
    }

    /// The entry under `key`, if the store has one with a body of at most `max_body`
    /// bytes (the route's `maxEntryBytes`: nothing larger is stored).
    async fn get(&self, key: Key, max_body: u64) -> Option<Arc<Entry>> {
        match &self.store {
            Store::Memory(memory) => memory.get(&key),
            Store::Redis(redis) => {
                // Never more than an entry of the route can take, plus one byte to tell a
                // value over it: a value grown in Redis (by hand, another writer, or
                // corruption) would otherwise be read whole, and held, by every lookup.
                // A missing key reads as empty, which is a miss too.
                let max = Entry::max_stored(max_body);
                let value: Result<Vec<u8>, _> = redis
                    .query(
                        redis::cmd("GETRANGE")
                            .arg(key.redis_key())
                            .arg(0)
                            .arg(max)
                            .to_owned(),
                    )
                    .await;
                match value {
                    Ok(value) if value.len() > max => None,
                    Ok(value) => Entry::decode(&value, max_body).map(Arc::new),
                    Err(error) => {
                        self.redis_failed(&error);
                        None
                    }
                }
            }
        }
    }

    /// Stores `entry` (in Redis, off the request's path).
    fn store(self: &Arc<Self>, route: &str, key: Key, entry: Arc<Entry>) {
        if let Some(metrics) = &self.metrics {
            metrics.stored(route, entry.body.len());
        }
        match &self.store {
            Store::Memory(memory) => memory.insert(key, entry),
            Store::Redis(redis) => {
                let redis = redis.clone();
                let cache = self.clone();
                tokio::spawn(async move {
                    let ttl = u64::try_from(entry.ttl.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let command = redis::cmd("SET")
                        .arg(key.redis_key())
                        .arg(entry.encode())
                        .arg("PX")
                        .arg(ttl)
                        .to_owned();
                    if let Err(error) = redis.query::<()>(command).await {
                        cache.redis_failed(&error);
                    }
                });
            }
        }
    }

    fn too_large(&self, route: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.too_large(route);
        }
    }

    fn redis_failed(&self, error: &RedisError) {
        if let Some(metrics) = &self.metrics {
            metrics.store_error();
        }
        // Once per pause, not once per request: `Down` is the pause itself.
        if !matches!(error, RedisError::Down(_)) {
            tracing::warn!(%error, "cache store failed; requests go upstream until it answers again");
        }
    }

    /// Updates the gauges of entries and bytes held in memory (0 with Redis), before
    /// a scrape.
    pub fn measure_memory(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let usage = match &self.store {
            Store::Memory(memory) => {
                memory.run_pending_tasks();
                Some((memory.entry_count(), memory.weighted_size()))
            }
            Store::Redis(_) => None,
        };
        metrics.memory(usage);
    }
}

enum Boarding {
    /// No identical request is in flight: this one is, until its `Flight` drops.
    Leader(Flight),
    /// One is; its answer arrives here.
    Follower(watch::Receiver<Option<Arc<Entry>>>),
}

/// The route's TTL, or the request's shorter one.
fn ttl(policy: &CachePolicy, headers: &HeaderMap) -> Result<Duration, ProxyError> {
    let route = Duration::from_millis(policy.ttl_ms);
    let Some(value) = headers.get(CACHE_TTL_HEADER) else {
        return Ok(route);
    };
    let seconds: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            ProxyError::BadRequest(format!(
                "header {CACHE_TTL_HEADER} must be a positive number of seconds"
            ))
        })?;
    Ok(route.min(Duration::from_secs(seconds)))
}

/// Each entry lives for its own TTL, also when replaced (`refresh`).
struct EntryTtl;

impl moka::Expiry<Key, Arc<Entry>> for EntryTtl {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

// === impl Flight ===

impl Flight {
    /// The answer arrived: identical requests waiting get it.
    fn land(self, entry: Arc<Entry>) {
        self.sender.send_replace(Some(entry));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        // Only this flight's own entry: a later one may have taken the key since.
        if flights
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.sender.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}
