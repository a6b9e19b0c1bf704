//! Admission under the quotas, with a quota's fallback route: the step between
//! `quota` (counters) and `routing` (who may use the fallback).

use std::collections::BTreeSet;

use switchboard_api::Snapshot;

use crate::auth::Caller;
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::ir::Request;
use crate::quota::{Demand, RateLimits, Refusal, Refused, Reservation};
use crate::routing::{self, Selected};

/// A request admitted under its quotas.
#[derive(Debug)]
pub struct Admitted<'r> {
    /// The route it goes to: the one asked for, or a quota's fallback route.
    pub route: Selected<'r>,
    /// What it holds on its counters until settled; `None` when no quota applies.
    pub reservation: Option<Reservation>,
    /// The quota whose limit sent it to its fallback route.
    pub fallback_from: Option<String>,
}

/// Reserves the request's usage on every quota that applies. A quota over its limit
/// refuses the request with 429, or sends it to the quota's fallback route (once, if
/// the consumer may use it), where the remaining quotas apply. Either way, the
/// rate-limit headers for the response.
pub async fn admit<'r>(
    gateway: &Gateway,
    snapshot: &'r Snapshot,
    caller: Caller<'_>,
    asked: Selected<'r>,
    request: &Request,
) -> (Result<Admitted<'r>, ProxyError>, Option<RateLimits>) {
    if snapshot.quotas.is_empty() {
        return admitted(asked, None, None);
    }
    let quotas = &gateway.quotas;
    let demand = Demand::new(snapshot, request, caller.id, asked.id, asked.route);
    let refusal = match quotas.admit(snapshot, &demand, &BTreeSet::new()).await {
        Ok(reservation) => return admitted(asked, reservation, None),
        Err(Refused::Unavailable { quota }) => {
            return (Err(unavailable(&quota, caller)), None);
        }
        Err(Refused::OverLimit(refusal)) => refusal,
    };
    let fallback = refusal
        .fallback_route
        .as_deref()
        .and_then(|id| routing::allowed(snapshot, caller.consumer, id));
    let Some(fallback) = fallback else {
        let rate_limits = Some(refusal.rate_limits.clone());
        return (Err(over_limit(refusal, caller)), rate_limits);
    };
    quotas.fallback_taken(&refusal.quota);
    let excluded = BTreeSet::from([refusal.quota.clone()]);
    let demand = demand.on_route(snapshot, fallback.id, fallback.route);
    match quotas.admit(snapshot, &demand, &excluded).await {
        Ok(reservation) => admitted(fallback, reservation, Some(refusal.quota)),
        Err(Refused::Unavailable { quota }) => (Err(unavailable(&quota, caller)), None),
        Err(Refused::OverLimit(refusal)) => {
            let rate_limits = Some(refusal.rate_limits.clone());
            (Err(over_limit(refusal, caller)), rate_limits)
        }
    }
}

/// The 429 for a refusal, naming the quota only to a caller of its namespace: one from
/// the platform namespace is not the caller's to read.
fn over_limit(mut refusal: Refusal, caller: Caller<'_>) -> ProxyError {
    refusal.quota = visible_quota(&refusal.quota, caller.id)
        .unwrap_or("of the platform namespace")
        .to_string();
    refusal.into()
}

fn unavailable(quota: &str, caller: Caller<'_>) -> ProxyError {
    ProxyError::QuotaUnavailable {
        quota: visible_quota(quota, caller.id)
            .unwrap_or("of the platform namespace")
            .to_string(),
    }
}

/// The quota's `namespace/name` if the caller (consumer `caller_id`) may read it: only
/// a quota of its own namespace. Others limit it from the platform namespace.
pub(super) fn visible_quota<'q>(quota_id: &'q str, caller_id: &str) -> Option<&'q str> {
    let namespace = |id: &str| id.split_once('/').map(|(ns, _)| ns.to_owned());
    (namespace(quota_id) == namespace(caller_id)).then_some(quota_id)
}

fn admitted<'r>(
    route: Selected<'r>,
    reservation: Option<Reservation>,
    fallback_from: Option<String>,
) -> (Result<Admitted<'r>, ProxyError>, Option<RateLimits>) {
    let rate_limits = reservation.as_ref().map(|r| r.rate_limits.clone());
    let admitted = Admitted {
        route,
        reservation,
        fallback_from,
    };
    (Ok(admitted), rate_limits)
}
