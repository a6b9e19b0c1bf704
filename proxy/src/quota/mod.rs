//! Quotas: which limits apply to a request, reserving its estimated usage before it
//! goes upstream, and settling to its real usage when it is over.
//!
//! A request's counters are every limit of every AIQuota whose target matches its
//! consumer, route and model, in the limit's current window (per consumer, or shared).
//! Admission reserves on all of them at once, and only while none is at its limit, so
//! concurrent requests can pass a limit by at most one request's reservation. The
//! estimate: one request; input tokens at one per four bytes of the body; output
//! tokens at the request's `max_tokens`, or the quota's `defaultOutputTokens`; cost at
//! the route's most expensive backend. Settling adds the difference between what was
//! used and what was reserved. See docs/quotas.md.

mod metrics;
mod store;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use switchboard_api::Snapshot;
use switchboard_api::quota::{self as counters, SHARED_SCOPE};
use switchboard_api::snapshot::{Quota, QuotaLimit, Route};
use switchboard_api::v1alpha1::{FailurePolicy, MidStreamPolicy, QuotaMetric, QuotaScope};

pub use self::metrics::QuotaMetrics;
pub use self::store::{Adjustment, CounterOp, LocalStore, RedisStore, Reserved, StoreError};
use crate::error::ProxyError;
use crate::ir::chat::{Finish, FinishReason, StreamEvent};
use crate::ir::{Request, Usage};

/// Counters outlive their window by this much, so a late settle still finds them.
const TTL_MARGIN: Duration = Duration::from_secs(60);

/// The quota engine of one proxy.
#[derive(Debug)]
pub struct Quotas {
    local: LocalStore,
    redis: Option<RedisStore>,
    metrics: Option<QuotaMetrics>,
}

/// What a request asks for, as admission sees it.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    pub consumer: &'a str,
    pub route: &'a str,
    /// The model name the client asked for.
    pub model: &'a str,
    pub stream: bool,
    pub input_tokens: u64,
    /// The request's own output limit (`max_tokens`), if it set one.
    pub max_output_tokens: Option<u64>,
    /// USD per token of the route's most expensive backend (input, output).
    pub prices: (f64, f64),
}

/// A request over a limit.
#[derive(Debug)]
pub struct Refusal {
    pub quota: String,
    pub limit: String,
    /// Until the limit's window ends.
    pub retry_after: Duration,
    /// Where the quota sends such requests instead, if anywhere.
    pub fallback_route: Option<String>,
    pub rate_limits: RateLimits,
}

/// Why admission did not reserve.
#[derive(Debug)]
pub enum Refused {
    OverLimit(Refusal),
    /// The shared store is down and a quota that applies fails closed.
    Unavailable {
        quota: String,
    },
}

/// What a request holds on its counters until it is settled.
#[derive(Debug)]
pub struct Reservation {
    quotas: Arc<Quotas>,
    held: Vec<Held>,
    in_redis: bool,
    pub rate_limits: RateLimits,
    /// For a stream under a limit that cuts: the output it may still produce.
    pub stream_budget: Option<StreamBudget>,
}

#[derive(Debug, Clone)]
struct Held {
    key: String,
    metric: QuotaMetric,
    reserved: i64,
    ttl: Duration,
}

/// OpenAI-style rate-limit headers: the tightest request limit and the tightest token
/// limit the request is under.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    requests: Option<Headroom>,
    tokens: Option<Headroom>,
}

#[derive(Debug, Clone, Copy)]
struct Headroom {
    limit: i64,
    remaining: i64,
    reset: Duration,
}

/// Output a stream may still produce before a token or cost limit cuts it, counted as
/// one token per four bytes of text (the provider's own count arrives only at the end).
#[derive(Debug, Clone, Copy)]
pub struct StreamBudget {
    allowance: u64,
    bytes: u64,
}

/// One counter a request is charged on, with what it stands for.
struct Charge<'r> {
    quota_id: &'r str,
    quota: &'r Quota,
    limit: &'r QuotaLimit,
    op: CounterOp,
    window_end: i64,
    /// The consumer id for per-consumer counters, `SHARED_SCOPE` otherwise.
    scope: &'r str,
}

// === impl Quotas ===

impl Quotas {
    pub fn new(redis: Option<RedisStore>, metrics: Option<QuotaMetrics>) -> Self {
        if let (Some(metrics), Some(_)) = (&metrics, &redis) {
            metrics.store_up(true);
        }
        Self {
            local: LocalStore::default(),
            redis,
            metrics,
        }
    }

    /// Reserves `demand` on every counter that applies to it (except those of
    /// `excluded` quotas); `Ok(None)` when no quota applies.
    pub async fn admit(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        demand: &Demand<'_>,
        excluded: &BTreeSet<String>,
    ) -> Result<Option<Reservation>, Refused> {
        let now = unix_now();
        let charged = charges(snapshot, demand, excluded, now);
        if charged.is_empty() {
            return Ok(None);
        }
        let ops: Vec<&CounterOp> = charged.iter().map(|p| &p.op).collect();
        let (reserved, in_redis) = match &self.redis {
            None => (self.local.reserve(&ops), false),
            Some(redis) => match redis.reserve(&ops).await {
                Ok(reserved) => {
                    self.store_ok();
                    (reserved, true)
                }
                Err(error) => {
                    self.store_failed(&error);
                    if let Some(closed) = charged
                        .iter()
                        .find(|p| p.quota.failure_policy == FailurePolicy::FailClosed)
                    {
                        return Err(Refused::Unavailable {
                            quota: closed.quota_id.to_string(),
                        });
                    }
                    (self.local.reserve(&ops), false)
                }
            },
        };
        match reserved {
            Reserved::Admitted(after) => {
                self.record_usage(&charged, &after);
                let rate_limits = RateLimits::from_charges(&charged, &after, now);
                let stream_budget = demand
                    .stream
                    .then(|| stream_budget(&charged, &after, demand))
                    .flatten();
                Ok(Some(Reservation {
                    quotas: self.clone(),
                    held: charged
                        .into_iter()
                        .map(|p| Held {
                            metric: p.limit.metric,
                            reserved: p.op.amount,
                            ttl: p.op.ttl,
                            key: p.op.key,
                        })
                        .collect(),
                    in_redis,
                    rate_limits,
                    stream_budget,
                }))
            }
            Reserved::Refused { index, used } => {
                let refused = &charged[index];
                let limit = counters::limit_name(refused.limit).to_string();
                if let Some(metrics) = &self.metrics {
                    metrics.rejected(refused.quota_id, &limit);
                }
                // The store reports only the counter that refused; it has no headroom.
                let mut rate_limits = RateLimits::default();
                rate_limits.exhaust(refused, now);
                tracing::debug!(quota = refused.quota_id, %limit, used, "over a quota limit");
                Err(Refused::OverLimit(Refusal {
                    quota: refused.quota_id.to_string(),
                    limit,
                    retry_after: Duration::from_secs(
                        u64::try_from(refused.window_end - now).unwrap_or(1).max(1),
                    ),
                    fallback_route: refused.quota.fallback_route.clone(),
                    rate_limits,
                }))
            }
        }
    }

    fn record_usage(&self, charged: &[Charge<'_>], after: &[i64]) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        for (p, used) in charged.iter().zip(after) {
            metrics.used(
                p.quota_id,
                counters::limit_name(p.limit),
                if p.scope == SHARED_SCOPE { "" } else { p.scope },
                counters::from_units(p.limit.metric, *used),
            );
        }
    }

    fn store_ok(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.store_up(true);
        }
    }

    fn store_failed(&self, error: &StoreError) {
        if let Some(metrics) = &self.metrics {
            metrics.store_error();
        }
        // Once per pause, not once per request: `Down` is the pause itself.
        if !matches!(error, StoreError::Down(_)) {
            tracing::warn!(%error, "quota store failed; each quota's failurePolicy applies until it answers again");
        }
    }

    async fn adjust(&self, adjustments: Vec<Adjustment>, in_redis: bool) {
        match (&self.redis, in_redis) {
            (Some(redis), true) => match redis.adjust(&adjustments).await {
                Ok(()) => self.store_ok(),
                // The reservation stays counted: an outage errs on the side of the limit.
                Err(error) => self.store_failed(&error),
            },
            _ => self.local.adjust(&adjustments),
        }
    }

    /// The shared store, if there is one (the operator's status reads the same).
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// A request goes to `quota`'s fallback route instead of being refused.
    pub fn fallback_taken(&self, quota: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.fallback(quota);
        }
    }

    /// A new config serves: its quotas' limits, for the limit gauges; the series of
    /// quotas and consumers it deleted go.
    pub fn config_applied(&self, snapshot: &Snapshot) {
        if let Some(metrics) = &self.metrics {
            metrics.config_applied(snapshot);
        }
    }
}

/// Every counter `demand` is charged on, in quota order.
fn charges<'r>(
    snapshot: &'r Snapshot,
    demand: &Demand<'r>,
    excluded: &BTreeSet<String>,
    now: i64,
) -> Vec<Charge<'r>> {
    let mut charged = Vec::new();
    for (quota_id, quota) in &snapshot.quotas {
        let applies = quota
            .consumers
            .as_ref()
            .is_none_or(|c| c.contains(demand.consumer))
            && quota
                .routes
                .as_ref()
                .is_none_or(|r| r.contains(demand.route))
            && quota
                .models
                .as_ref()
                .is_none_or(|m| m.contains(demand.model))
            && !excluded.contains(quota_id);
        if !applies {
            continue;
        }
        let scope = match quota.scope {
            QuotaScope::PerConsumer => demand.consumer,
            QuotaScope::Shared => SHARED_SCOPE,
        };
        let output = demand
            .max_output_tokens
            .unwrap_or(u64::from(quota.default_output_tokens));
        for limit in &quota.limits {
            let (start, end) = counters::window_bounds(limit.window, now);
            let amount = match limit.metric {
                QuotaMetric::Requests => 1.0,
                QuotaMetric::InputTokens => demand.input_tokens as f64,
                QuotaMetric::OutputTokens => output as f64,
                QuotaMetric::TotalTokens => (demand.input_tokens + output) as f64,
                QuotaMetric::CostUsd => {
                    demand.input_tokens as f64 * demand.prices.0 + output as f64 * demand.prices.1
                }
            };
            charged.push(Charge {
                quota_id,
                quota,
                limit,
                op: CounterOp {
                    key: counters::counter_key(quota_id, limit, scope, start),
                    amount: counters::to_units(limit.metric, amount),
                    max: counters::to_units(limit.metric, limit.max),
                    ttl: Duration::from_secs(u64::try_from(end - now).unwrap_or(0)) + TTL_MARGIN,
                },
                window_end: end,
                scope,
            });
        }
    }
    charged
}

/// The output a stream may produce before a limit that cuts would be passed; `None`
/// when no such limit is tighter than the request's own output estimate.
fn stream_budget(
    charged: &[Charge<'_>],
    after: &[i64],
    demand: &Demand<'_>,
) -> Option<StreamBudget> {
    let mut allowance: Option<u64> = None;
    for (p, used_after) in charged.iter().zip(after) {
        if p.quota.mid_stream != MidStreamPolicy::Cut {
            continue;
        }
        let left_before = (p.op.max - (used_after - p.op.amount)).max(0) as u64;
        let tokens = match p.limit.metric {
            QuotaMetric::OutputTokens => left_before,
            QuotaMetric::TotalTokens => left_before.saturating_sub(demand.input_tokens),
            QuotaMetric::CostUsd if demand.prices.1 > 0.0 => {
                let input_cost = demand.input_tokens as f64 * demand.prices.0;
                let left = counters::from_units(QuotaMetric::CostUsd, left_before as i64);
                ((left - input_cost).max(0.0) / demand.prices.1) as u64
            }
            _ => continue,
        };
        allowance = Some(allowance.map_or(tokens, |a| a.min(tokens)));
    }
    let allowance = allowance?;
    let own = demand.max_output_tokens.unwrap_or(u64::MAX);
    (allowance < own).then(|| StreamBudget::new(allowance.max(1)))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// === impl Demand ===

impl<'a> Demand<'a> {
    /// The demand of `request` from `consumer` on `route`.
    pub fn new(
        snapshot: &Snapshot,
        request: &'a Request,
        consumer: &'a str,
        route_id: &'a str,
        route: &Route,
    ) -> Self {
        Self {
            consumer,
            route: route_id,
            model: &request.model,
            stream: request.stream,
            input_tokens: request.estimated_input_tokens(),
            max_output_tokens: max_output_tokens(request),
            prices: highest_prices(snapshot, route),
        }
    }

    /// The same demand on another route (a quota's fallback).
    pub fn on_route(&self, snapshot: &Snapshot, route_id: &'a str, route: &Route) -> Self {
        Self {
            route: route_id,
            prices: highest_prices(snapshot, route),
            ..self.clone()
        }
    }
}

/// `max_completion_tokens` or `max_tokens` (the Responses API's `max_output_tokens`),
/// as the client set it.
fn max_output_tokens(request: &Request) -> Option<u64> {
    if let Some(chat) = &request.chat {
        return chat.max_tokens;
    }
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| request.fields.get(*field))
        .and_then(|raw| raw.get().parse().ok())
}

/// USD per input and per output token of the route's most expensive priced backend.
fn highest_prices(snapshot: &Snapshot, route: &Route) -> (f64, f64) {
    route
        .backends
        .iter()
        .filter_map(|b| {
            snapshot
                .providers
                .get(&b.provider)?
                .models
                .get(&b.model)?
                .pricing
        })
        .fold((0.0, 0.0), |(input, output), p| {
            (
                f64::max(input, p.input_per_million / 1e6),
                f64::max(output, p.output_per_million / 1e6),
            )
        })
}

// === impl Reservation ===

impl Reservation {
    /// Brings the counters from the reservation to what the request used: `usage` as
    /// the provider reported it (none: no tokens), `cost_usd` from its prices.
    pub fn settle(self, usage: Option<Usage>, cost_usd: Option<f64>) {
        let usage = usage.unwrap_or_default();
        let adjustments: Vec<Adjustment> = self
            .held
            .iter()
            .filter_map(|h| {
                let used = match h.metric {
                    QuotaMetric::Requests => 1,
                    QuotaMetric::InputTokens => usage.prompt_tokens as i64,
                    QuotaMetric::OutputTokens => usage.completion_tokens as i64,
                    QuotaMetric::TotalTokens => {
                        (usage.prompt_tokens + usage.completion_tokens) as i64
                    }
                    QuotaMetric::CostUsd => {
                        counters::to_units(QuotaMetric::CostUsd, cost_usd.unwrap_or_default())
                    }
                };
                let delta = used - h.reserved;
                (delta != 0).then(|| Adjustment {
                    key: h.key.clone(),
                    delta,
                    ttl: h.ttl,
                })
            })
            .collect();
        if adjustments.is_empty() {
            return;
        }
        let quotas = self.quotas.clone();
        if self.in_redis {
            // Off the request's path: the response is already on its way.
            tokio::spawn(async move { quotas.adjust(adjustments, true).await });
        } else {
            quotas.local.adjust(&adjustments);
        }
    }
}

// === impl RateLimits ===

impl RateLimits {
    fn from_charges(charged: &[Charge<'_>], used: &[i64], now: i64) -> Self {
        let mut limits = Self::default();
        for (p, used) in charged.iter().zip(used) {
            let headroom = Headroom {
                limit: p.op.max,
                remaining: (p.op.max - used).max(0),
                reset: Duration::from_secs(u64::try_from(p.window_end - now).unwrap_or(0)),
            };
            let slot = match p.limit.metric {
                QuotaMetric::Requests => &mut limits.requests,
                QuotaMetric::InputTokens | QuotaMetric::OutputTokens | QuotaMetric::TotalTokens => {
                    &mut limits.tokens
                }
                QuotaMetric::CostUsd => continue,
            };
            if slot.is_none_or(|s| headroom.remaining < s.remaining) {
                *slot = Some(headroom);
            }
        }
        limits
    }

    /// The refused counter shows no headroom.
    fn exhaust(&mut self, refused: &Charge<'_>, now: i64) {
        let headroom = Some(Headroom {
            limit: refused.op.max,
            remaining: 0,
            reset: Duration::from_secs(u64::try_from(refused.window_end - now).unwrap_or(0)),
        });
        match refused.limit.metric {
            QuotaMetric::Requests => self.requests = headroom,
            QuotaMetric::CostUsd => {}
            _ => self.tokens = headroom,
        }
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, as OpenAI sends them.
    pub fn write(&self, headers: &mut HeaderMap) {
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        for ([limit, remaining, reset], headroom) in
            NAMES.into_iter().zip([self.requests, self.tokens])
        {
            let Some(h) = headroom else {
                continue;
            };
            headers.insert(limit, HeaderValue::from(h.limit));
            headers.insert(remaining, HeaderValue::from(h.remaining));
            if let Ok(value) = HeaderValue::from_str(&reset_text(h.reset)) {
                headers.insert(reset, value);
            }
        }
    }
}

/// `45s`, `6m0s`, `2h3m0s`: the duration format of OpenAI's reset headers.
fn reset_text(reset: Duration) -> String {
    let secs = reset.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

// === impl StreamBudget ===

impl StreamBudget {
    pub fn new(allowance_tokens: u64) -> Self {
        Self {
            allowance: allowance_tokens,
            bytes: 0,
        }
    }

    /// Counts the output text of `event` (answer text, tool-call arguments); true once
    /// the allowance is spent, when the stream must be cut after this event.
    pub fn count(&mut self, event: &StreamEvent) -> bool {
        let bytes = match event {
            StreamEvent::Text(text) => text.len(),
            StreamEvent::ToolCallArguments { arguments, .. } => arguments.len(),
            _ => return false,
        };
        self.bytes += bytes as u64;
        self.tokens() >= self.allowance
    }

    /// Output tokens so far, estimated.
    pub fn tokens(&self) -> u64 {
        self.bytes.div_ceil(4)
    }

    /// What a stream cut here used: `input_tokens` (as reported, or estimated) and
    /// the output so far.
    pub fn used(&self, input_tokens: u64) -> Usage {
        Usage::new(input_tokens, self.tokens(), 0)
    }

    /// The events that end a stream cut at its budget, having used `usage`: finish
    /// reason `length`, the usage, and the end.
    pub fn closing_events(usage: Usage) -> [StreamEvent; 3] {
        [
            StreamEvent::Finish(Finish {
                reason: FinishReason::Length,
                stop_sequence: None,
            }),
            StreamEvent::Usage(usage),
            StreamEvent::Done,
        ]
    }
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        ProxyError::QuotaExceeded {
            quota: refusal.quota,
            limit: refusal.limit,
            retry_after: HeaderValue::from(refusal.retry_after.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_headers_read_like_openais() {
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_secs(7_380)), "2h3m0s");
    }

    #[test]
    fn a_stream_budget_counts_four_bytes_a_token() {
        let mut budget = StreamBudget::new(3);
        let text = |t: &str| StreamEvent::Text(t.to_string());
        assert!(!budget.count(&text("abcd")));
        assert!(!budget.count(&StreamEvent::Done), "only output counts");
        assert!(!budget.count(&StreamEvent::ToolCallArguments {
            index: 0,
            arguments: "{\"a\"".to_string()
        }));
        assert!(budget.count(&text("x")), "9 bytes round up to 3 tokens");
        assert_eq!(budget.tokens(), 3);
        assert_eq!(budget.used(7), Usage::new(7, 3, 0));
        let [finish, usage, done] = StreamBudget::closing_events(budget.used(7));
        assert_eq!(
            finish,
            StreamEvent::Finish(Finish {
                reason: FinishReason::Length,
                stop_sequence: None
            })
        );
        assert_eq!(usage, StreamEvent::Usage(Usage::new(7, 3, 0)));
        assert_eq!(done, StreamEvent::Done);
    }
}
