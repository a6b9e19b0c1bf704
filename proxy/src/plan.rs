//! The attempt plan for a request: the order in which a route's backends are tried, how
//! long to wait before trying one again, and the budget that bounds retries.
//!
//! Order: the lowest priority tier first; within a tier, a weighted random order (the
//! first pick follows the weights, the others follow as fallbacks); then the next
//! tiers the same way. Backends with weight 0 take no traffic and are not tried.
//! When attempts remain after every backend was tried, the plan starts over, and a
//! backend tried before waits an exponential, jittered backoff first.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchboard_api::snapshot::{Backend, Retry, Route};

/// Backends in the order to try them; `usable` filters out those that cannot serve
/// the request at all (a provider without the operation's API).
pub fn order(route: &Route, usable: impl Fn(&Backend) -> bool) -> Vec<&Backend> {
    let mut tiers: Vec<u32> = route.backends.iter().map(|b| b.priority).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let mut plan = Vec::with_capacity(route.backends.len());
    for tier in tiers {
        let mut remaining: Vec<&Backend> = route
            .backends
            .iter()
            .filter(|b| b.priority == tier && b.weight > 0 && usable(b))
            .collect();
        while !remaining.is_empty() {
            let index = weighted_index(&remaining);
            plan.push(remaining.swap_remove(index));
        }
    }
    plan
}

/// An index drawn with probability proportional to weight.
fn weighted_index(backends: &[&Backend]) -> usize {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let mut ticket = fastrand::u64(0..total.max(1));
    for (i, backend) in backends.iter().enumerate() {
        let weight = u64::from(backend.weight);
        if ticket < weight {
            return i;
        }
        ticket -= weight;
    }
    backends.len() - 1
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
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    balance: f64,
    refilled: Instant,
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
            state: Mutex::new(BudgetState {
                balance: MIN_RETRIES_PER_SECOND,
                refilled: Instant::now(),
            }),
        }
    }

    /// A request arrived.
    pub fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.balance = (state.balance + self.ratio).min(self.cap());
    }

    /// True if a retry may go ahead (and pays for it).
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        state.balance = (state.balance + elapsed * MIN_RETRIES_PER_SECOND).min(self.cap());
        if state.balance >= 1.0 {
            state.balance -= 1.0;
            true
        } else {
            false
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

    fn route(backends: Vec<Backend>) -> Route {
        Route {
            models: ["m".to_string()].into(),
            headers: vec![],
            backends,
            request_timeout_ms: None,
            total_timeout_ms: None,
            retry: Retry::default(),
        }
    }

    fn names(plan: &[&Backend]) -> Vec<String> {
        plan.iter().map(|b| b.provider.clone()).collect()
    }

    #[test]
    fn lower_tiers_come_first_and_zero_weights_never() {
        let r = route(vec![
            backend("fallback", 5, 1),
            backend("zero", 0, 0),
            backend("primary", 1, 0),
        ]);
        for _ in 0..200 {
            assert_eq!(names(&order(&r, |_| true)), ["primary", "fallback"]);
        }
        assert_eq!(names(&order(&r, |b| b.provider != "primary")), ["fallback"]);
    }

    #[test]
    fn first_picks_follow_the_weights_and_the_rest_follow_as_fallbacks() {
        let r = route(vec![backend("a", 3, 0), backend("b", 1, 0)]);
        let mut first_a = 0;
        for _ in 0..4000 {
            let plan = order(&r, |_| true);
            assert_eq!(plan.len(), 2);
            if plan[0].provider == "a" {
                first_a += 1;
                assert_eq!(plan[1].provider, "b");
            }
        }
        // Expected 3000; a fair weighted pick lands well inside this band.
        assert!((2700..3300).contains(&first_a), "a first {first_a} times");
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
