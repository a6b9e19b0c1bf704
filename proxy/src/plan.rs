//! The attempt plan for a request: the order in which a route's backends are tried, how
//! long to wait before trying one again, and the budget that bounds retries.
//!
//! Order: the lowest priority tier first; within a tier, the route's strategy (by
//! default a weighted random order: the first pick follows the weights, the others
//! follow as fallbacks); then the next tiers the same way. Backends with weight 0 take
//! no traffic, and ejected ones (see `health`) none while they are ejected.
//! When attempts remain after every backend was tried, the plan starts over, and a
//! backend tried before waits an exponential, jittered backoff first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_api::snapshot::{Backend, Retry, Strategy};

/// What the plan knows about one backend.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'r> {
    /// Its position in the route's backends.
    pub index: usize,
    pub backend: &'r Backend,
    /// Requests this proxy has in flight to it.
    pub in_flight: u32,
    /// Moving average of its latency, once measured.
    pub latency: Option<Duration>,
    /// Its model's input plus output price per million tokens, when priced.
    pub price: Option<f64>,
    /// Since when its circuit has been open, if it is ejected.
    pub ejected_since: Option<Instant>,
}

/// The order in which to try `candidates` (the backends that can serve the request):
/// tier by tier, each tier ordered by `strategy`. Ejected backends are left out;
/// when every backend is ejected, the one ejected longest ago is tried rather than
/// failing outright.
pub fn attempt_order(strategy: Strategy, candidates: Vec<Candidate<'_>>) -> Vec<Candidate<'_>> {
    let (live, ejected): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .filter(|c| c.backend.weight > 0)
        .partition(|c| c.ejected_since.is_none());
    if live.is_empty() {
        return ejected
            .into_iter()
            .min_by_key(|c| c.ejected_since)
            .into_iter()
            .collect();
    }
    let mut tiers: Vec<u32> = live.iter().map(|c| c.backend.priority).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let mut plan = Vec::with_capacity(live.len());
    for tier in tiers {
        let in_tier: Vec<Candidate<'_>> = live
            .iter()
            .filter(|c| c.backend.priority == tier)
            .copied()
            .collect();
        plan.extend(order_tier(strategy, in_tier));
    }
    plan
}

fn order_tier(strategy: Strategy, mut tier: Vec<Candidate<'_>>) -> Vec<Candidate<'_>> {
    // Every strategy starts from a weighted random order, so that ties (and the
    // weighted strategy itself) follow the weights.
    let mut ordered = Vec::with_capacity(tier.len());
    while !tier.is_empty() {
        let index = weighted_index(&tier);
        ordered.push(tier.swap_remove(index));
    }
    match strategy {
        Strategy::Weighted => {}
        Strategy::LeastInFlight => {
            // Power of two choices: of the first two weighted draws, the less busy
            // goes first; the rest follow from least to most busy.
            if ordered.len() >= 2 && ordered[1].in_flight < ordered[0].in_flight {
                ordered.swap(0, 1);
            }
            if ordered.len() > 2 {
                ordered[1..].sort_by_key(|c| c.in_flight);
            }
        }
        // Stable sorts: equal keys keep their weighted order.
        Strategy::LowestLatency => ordered.sort_by_key(|c| c.latency.unwrap_or_default()),
        Strategy::LowestCost => ordered.sort_by(|a, b| {
            let key = |c: &Candidate<'_>| c.price.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        }),
    }
    ordered
}

/// An index drawn with probability proportional to weight.
fn weighted_index(candidates: &[Candidate<'_>]) -> usize {
    let total: u64 = candidates.iter().map(|c| u64::from(c.backend.weight)).sum();
    let mut ticket = fastrand::u64(0..total.max(1));
    for (i, candidate) in candidates.iter().enumerate() {
        let weight = u64::from(candidate.backend.weight);
        if ticket < weight {
            return i;
        }
        ticket -= weight;
    }
    candidates.len() - 1
}

/// Exponential with "equal jitter": half the step fixed, half random, so clients that
/// failed together do not retry in lockstep. `tries` counts from 1.
pub fn backoff(base: Duration, max: Duration, tries: u32) -> Duration {
    let step = base
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(max);
    let half = step / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Bounds retries to a share of recent requests, as Finagle's and Linkerd's retry
/// budgets do: every request deposits `percent / 100` of a retry, every retry withdraws
/// one, and a small allowance per second lets a quiet route still retry. The balance
/// is capped at ten seconds' worth, so a long quiet spell cannot fund a retry storm.
///
/// Every request of a route deposits, so the budget is two atomics rather than a
/// mutex: requests on a busy route never wait for each other here.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// The balance in retries, as an `f64`'s bits (updated by compare-and-swap).
    balance: AtomicU64,
    /// Nanoseconds from `origin` to the last refill.
    refilled: AtomicU64,
    origin: Instant,
}

/// Retries per second a route may always make, whatever its traffic.
const MIN_RETRIES_PER_SECOND: f64 = 3.0;
/// The balance never exceeds this many seconds of the minimum allowance.
const CAP_SECONDS: f64 = 10.0;

// === impl RetryBudget ===

impl RetryBudget {
    pub fn new(policy: &Retry) -> Self {
        Self {
            ratio: f64::from(policy.budget_percent) / 100.0,
            balance: AtomicU64::new(MIN_RETRIES_PER_SECOND.to_bits()),
            refilled: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// A request arrived.
    pub fn deposit(&self) {
        let cap = self.cap();
        self.update(|balance| ((balance + self.ratio).min(cap), ()));
    }

    /// True if a retry may go ahead (and pays for it).
    pub fn withdraw(&self) -> bool {
        // u64 nanoseconds last 584 years.
        let now = self.origin.elapsed().as_nanos() as u64;
        // Each moment is refilled once, by whichever withdrawal claims it first.
        let last = self.refilled.fetch_max(now, Ordering::Relaxed);
        let elapsed = Duration::from_nanos(now.saturating_sub(last)).as_secs_f64();
        let cap = self.cap();
        self.update(|balance| {
            let balance = (balance + elapsed * MIN_RETRIES_PER_SECOND).min(cap);
            match balance >= 1.0 {
                true => (balance - 1.0, true),
                false => (balance, false),
            }
        })
    }

    /// Applies `change` to the balance atomically (retried if another request changed
    /// it meanwhile); returns what the applied change returned.
    fn update<T>(&self, mut change: impl FnMut(f64) -> (f64, T)) -> T {
        let mut current = self.balance.load(Ordering::Relaxed);
        loop {
            let (balance, result) = change(f64::from_bits(current));
            match self.balance.compare_exchange_weak(
                current,
                balance.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return result,
                Err(actual) => current = actual,
            }
        }
    }

    fn cap(&self) -> f64 {
        CAP_SECONDS * MIN_RETRIES_PER_SECOND + CAP_SECONDS * self.ratio * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(provider: &str, weight: u32, priority: u32) -> Backend {
        Backend {
            provider: provider.to_string(),
            model: "m".to_string(),
            weight,
            priority,
        }
    }

    fn candidate(backend: &Backend) -> Candidate<'_> {
        Candidate {
            index: 0,
            backend,
            in_flight: 0,
            latency: None,
            price: None,
            ejected_since: None,
        }
    }

    fn names(plan: &[Candidate<'_>]) -> Vec<String> {
        plan.iter().map(|c| c.backend.provider.clone()).collect()
    }

    #[test]
    fn lower_tiers_come_first_and_zero_weights_never() {
        let backends = [
            backend("fallback", 5, 1),
            backend("zero", 0, 0),
            backend("primary", 1, 0),
        ];
        for _ in 0..200 {
            let plan = attempt_order(Strategy::Weighted, backends.iter().map(candidate).collect());
            assert_eq!(names(&plan), ["primary", "fallback"]);
        }
    }

    #[test]
    fn first_picks_follow_the_weights_and_the_rest_follow_as_fallbacks() {
        let backends = [backend("a", 3, 0), backend("b", 1, 0)];
        let mut first_a = 0;
        for _ in 0..4000 {
            let plan = attempt_order(Strategy::Weighted, backends.iter().map(candidate).collect());
            assert_eq!(plan.len(), 2);
            if plan[0].backend.provider == "a" {
                first_a += 1;
                assert_eq!(plan[1].backend.provider, "b");
            }
        }
        // Expected 3000; a fair weighted pick lands well inside this band.
        assert!((2700..3300).contains(&first_a), "a first {first_a} times");
    }

    #[test]
    fn ejected_backends_are_skipped_unless_all_are() {
        let t0 = Instant::now();
        let backends = [backend("a", 1, 0), backend("b", 1, 0), backend("c", 1, 1)];
        let mut candidates: Vec<_> = backends.iter().map(candidate).collect();
        candidates[0].ejected_since = Some(t0);
        for _ in 0..50 {
            assert_eq!(
                names(&attempt_order(Strategy::Weighted, candidates.clone())),
                ["b", "c"]
            );
        }
        candidates[1].ejected_since = Some(t0 + Duration::from_secs(1));
        candidates[2].ejected_since = Some(t0 + Duration::from_secs(2));
        assert_eq!(
            names(&attempt_order(Strategy::Weighted, candidates)),
            ["a"],
            "ejected longest ago"
        );
    }

    #[test]
    fn strategies_order_each_tier_by_their_signal() {
        let backends = [
            backend("a", 1, 0),
            backend("b", 1, 0),
            backend("c", 1, 0),
            backend("z", 1, 1),
        ];
        let mut candidates: Vec<_> = backends.iter().map(candidate).collect();
        candidates[0].in_flight = 9;
        candidates[1].in_flight = 1;
        candidates[2].in_flight = 5;
        candidates[3].in_flight = 0;
        candidates[0].latency = Some(Duration::from_millis(300));
        candidates[1].latency = Some(Duration::from_millis(100));
        candidates[2].latency = None; // not measured yet: goes first
        candidates[0].price = Some(1.0);
        candidates[1].price = None; // unpriced: goes last
        candidates[2].price = Some(0.5);
        for _ in 0..50 {
            assert_eq!(
                names(&attempt_order(Strategy::LowestLatency, candidates.clone())),
                ["c", "b", "a", "z"]
            );
            assert_eq!(
                names(&attempt_order(Strategy::LowestCost, candidates.clone())),
                ["c", "a", "b", "z"]
            );
            let least = attempt_order(Strategy::LeastInFlight, candidates.clone());
            // The less busy of two random draws first: never the busiest of the three.
            assert_ne!(least[0].backend.provider, "a");
            assert_eq!(least[3].backend.provider, "z", "tiers still hold");
        }
    }

    #[test]
    fn backoff_doubles_is_jittered_and_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for tries in 1..30 {
            let step = base.saturating_mul(1 << (tries - 1).min(16)).min(max);
            let delay = backoff(base, max, tries);
            assert!(delay >= step / 2 && delay <= step, "{tries}: {delay:?}");
        }
    }

    /// Deposits from many threads at once all count.
    #[test]
    fn concurrent_deposits_all_count() {
        let budget = RetryBudget::new(&Retry {
            budget_percent: 20,
            ..Retry::default()
        });
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..250).for_each(|_| budget.deposit()));
            }
        });
        // 3 to start with, 1,000 requests at 20%, and at most a moment's allowance.
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
            assert!(retries < 300);
        }
        assert!((203..=205).contains(&retries), "{retries}");
    }

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_small_allowance() {
        let budget = RetryBudget::new(&Retry {
            budget_percent: 20,
            ..Retry::default()
        });
        // The starting allowance, then nothing without traffic (within this instant).
        let mut allowed = 0;
        while budget.withdraw() {
            allowed += 1;
            assert!(allowed < 10, "the budget never ran out");
        }
        assert!(allowed >= 3);
        // 100 requests fund about 20 retries.
        for _ in 0..100 {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
            assert!(retries < 40);
        }
        assert!((19..=22).contains(&retries), "{retries}");
    }
}
