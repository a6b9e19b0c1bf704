//! AIRoute pass: header matches, backends against accepted providers, and which route
//! serves which model name.
//!
//! Two routes conflict when they claim the same model name with the same header
//! matches. The older one (by creation time, then namespace/name) keeps the name; the
//! other is rejected with `ModelConflict`. For one model name, routes with more header
//! matches are tried first, so a specific route can sit beside a catch-all.

use std::collections::{BTreeMap, BTreeSet};

use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::{age, cel_rules, duration_ms};
use super::status::{Problem, Verdict};
use crate::snapshot::{Backend, CachePolicy, Circuit, HeaderMatch, Provider, Retry, Route};
use crate::v1alpha1::condition::reasons;
use crate::v1alpha1::{AIRoute, HeaderMatchType, ObjectStatus};

/// Model names a route serves together with its header match: what two routes must not share.
type MatchKey = (String, Vec<(String, String, HeaderMatchType)>);

/// Compiles every AIRoute; returns accepted routes by `namespace/name` and, for each model
/// name, the routes that serve it in match order.
pub(super) fn compile(
    inputs: &Inputs,
    providers: &BTreeMap<String, Provider>,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> (BTreeMap<String, Route>, BTreeMap<String, Vec<String>>) {
    let mut candidates = Vec::new();
    for (key, object) in &inputs.routes {
        let mut verdict = Verdict::new(object.metadata.generation);
        let route = compile_one(inputs, providers, key, object, &mut verdict);
        candidates.push((age(object), key, route, verdict));
    }

    // Oldest first, so the older route keeps a contested model name.
    candidates.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut claimed: BTreeMap<MatchKey, &ObjectKey> = BTreeMap::new();
    let mut routes = BTreeMap::new();
    let mut order = Vec::new();
    for (age, key, route, mut verdict) in candidates {
        if let Some(route) = route.filter(|_| verdict.is_accepted()) {
            let keys = match_keys(&route);
            match keys
                .iter()
                .find_map(|k| claimed.get(k).map(|owner| (k, *owner)))
            {
                Some(((model, _), owner)) => verdict.reject(Problem::new(
                    reasons::MODEL_CONFLICT,
                    format!(
                        "spec.models: {model:?} is already served by AIRoute {}/{} with the same \
                         header matches; rename the model, add a header match, or delete one route",
                        owner.namespace, owner.name
                    ),
                )),
                None => {
                    claimed.extend(keys.into_iter().map(|k| (k, key)));
                    order.push((route.headers.len(), age, key.id()));
                    routes.insert(key.id(), route);
                }
            }
        }
        statuses.insert(key.clone(), verdict.into_status());
    }

    // Match order per model: more header matches first, then oldest.
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
    let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, _, id) in order {
        for model in &routes[&id].models {
            models.entry(model.clone()).or_default().push(id.clone());
        }
    }
    (routes, models)
}

fn compile_one(
    inputs: &Inputs,
    providers: &BTreeMap<String, Provider>,
    key: &ObjectKey,
    object: &AIRoute,
    verdict: &mut Verdict,
) -> Option<Route> {
    let spec = &object.spec;
    if let Err(problem) = cel_rules(object) {
        verdict.reject(problem);
    }
    let models: BTreeSet<String> = spec.models.iter().cloned().collect();
    if models.is_empty() || models.iter().any(String::is_empty) {
        verdict.reject(Problem::new(
            reasons::INVALID,
            "spec.models: list at least one non-empty model name",
        ));
    }

    let mut headers = Vec::new();
    for (i, header) in spec.headers.iter().enumerate() {
        let value = match header.type_ {
            HeaderMatchType::Exact => header.value.clone(),
            HeaderMatchType::RegularExpression => {
                // Checked on its own first: a value such as `a)|(b` would otherwise
                // close the anchoring group and match more than it says.
                let anchored = format!("^(?:{})$", header.value);
                if let Err(e) = regex::Regex::new(&header.value).and(regex::Regex::new(&anchored)) {
                    verdict.reject(Problem::new(
                        reasons::INVALID,
                        format!("spec.headers[{i}].value: not a valid regular expression: {e}"),
                    ));
                }
                anchored
            }
        };
        headers.push(HeaderMatch {
            name: header.name.to_ascii_lowercase(),
            value,
            kind: header.type_,
        });
    }

    let request_timeout_ms = duration_ms(
        spec.timeouts.as_ref().and_then(|t| t.request.as_deref()),
        "spec.timeouts.request",
    )
    .unwrap_or_else(|problem| {
        // Keep going: the backends' references are still worth reporting.
        verdict.reject(problem);
        None
    });

    let mut duration = |value: Option<&str>, field: &str| {
        duration_ms(value, field).unwrap_or_else(|problem| {
            verdict.reject(problem);
            None
        })
    };
    let timeouts = spec.timeouts.as_ref();
    let total_timeout_ms = duration(
        timeouts.and_then(|t| t.total.as_deref()),
        "spec.timeouts.total",
    );
    let first_token_timeout_ms = duration(
        timeouts.and_then(|t| t.first_token.as_deref()),
        "spec.timeouts.firstToken",
    );
    let defaults = Retry::default();
    let retry_spec = spec.retry.clone().unwrap_or_default();
    let retry = Retry {
        attempts: retry_spec
            .attempts
            .unwrap_or(defaults.attempts)
            .clamp(1, 10),
        backoff_ms: duration(retry_spec.backoff.as_deref(), "spec.retry.backoff")
            .unwrap_or(defaults.backoff_ms),
        max_backoff_ms: duration(retry_spec.max_backoff.as_deref(), "spec.retry.maxBackoff")
            .unwrap_or(defaults.max_backoff_ms),
        budget_percent: retry_spec
            .budget_percent
            .unwrap_or(defaults.budget_percent)
            .min(100),
    };

    let circuit_defaults = Circuit::default();
    let breaker = spec.circuit_breaker.clone().unwrap_or_default();
    let circuit = Circuit {
        consecutive_failures: breaker
            .consecutive_failures
            .unwrap_or(circuit_defaults.consecutive_failures),
        error_rate_percent: breaker.error_rate_percent.unwrap_or(0).min(100),
        window_ms: duration(breaker.window.as_deref(), "spec.circuitBreaker.window")
            .unwrap_or(circuit_defaults.window_ms),
        ejection_ms: duration(breaker.ejection.as_deref(), "spec.circuitBreaker.ejection")
            .unwrap_or(circuit_defaults.ejection_ms),
        max_ejection_ms: duration(
            breaker.max_ejection.as_deref(),
            "spec.circuitBreaker.maxEjection",
        )
        .unwrap_or(circuit_defaults.max_ejection_ms),
    };

    let cache = spec
        .cache
        .as_ref()
        .filter(|c| c.enabled.unwrap_or(true))
        .map(|c| {
            let defaults = CachePolicy::default();
            CachePolicy {
                ttl_ms: duration(c.ttl.as_deref(), "spec.cache.ttl").unwrap_or(defaults.ttl_ms),
                max_entry_bytes: c
                    .max_entry_bytes
                    .map_or(defaults.max_entry_bytes, u64::from),
                requests: c.requests.unwrap_or_default(),
                scope: c.scope.unwrap_or_default(),
                coalesce_wait_ms: duration(c.coalesce_wait.as_deref(), "spec.cache.coalesceWait")
                    .unwrap_or(defaults.coalesce_wait_ms),
            }
        });

    let mut backends = Vec::new();
    for (i, backend) in spec.backends.iter().enumerate() {
        let field = format!("spec.backends[{i}]");
        let provider_key = key.sibling(ObjectKind::AIProvider, &backend.provider);
        let resolved = if !inputs.providers.contains_key(&provider_key) {
            Err(Problem::new(
                reasons::PROVIDER_NOT_FOUND,
                format!(
                    "{field}.provider: AIProvider {:?} not found in namespace {:?}; create it or fix the name",
                    backend.provider, key.namespace
                ),
            ))
        } else {
            match providers.get(&provider_key.id()) {
                None => Err(Problem::new(
                    reasons::PROVIDER_NOT_ACCEPTED,
                    format!(
                        "{field}.provider: AIProvider {:?} is not accepted; see its status conditions",
                        backend.provider
                    ),
                )),
                Some(provider) if !provider.models.contains_key(&backend.model) => {
                    Err(Problem::new(
                        reasons::UNKNOWN_MODEL,
                        format!(
                            "{field}.model: AIProvider {:?} does not list model {:?}; add it to the \
                             provider's spec.models or pick one of: {}",
                            backend.provider,
                            backend.model,
                            provider
                                .models
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
                Some(_) => Ok(Backend {
                    provider: provider_key.id(),
                    model: backend.model.clone(),
                    weight: backend.weight,
                    priority: backend.priority,
                }),
            }
        };
        match resolved {
            Ok(backend) => backends.push(backend),
            Err(problem) => verdict.unresolved(problem),
        }
    }
    if !backends.iter().any(|b| b.weight > 0) {
        verdict.reject(Problem::new(
            reasons::NO_VALID_BACKENDS,
            "spec.backends: no backend with a weight above 0 resolved; see the ResolvedRefs condition",
        ));
    }

    Some(Route {
        models,
        headers,
        backends,
        request_timeout_ms,
        total_timeout_ms,
        first_token_timeout_ms,
        retry,
        strategy: spec.strategy.unwrap_or_default(),
        circuit,
        cache,
    })
}

fn match_keys(route: &Route) -> Vec<MatchKey> {
    let mut headers: Vec<_> = route
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone(), h.kind))
        .collect();
    headers.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    route
        .models
        .iter()
        .map(|m| (m.clone(), headers.clone()))
        .collect()
}
