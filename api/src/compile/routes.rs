//! AIRoute pass: header matches, backends against accepted providers, and the grant
//! of who may use the route (`access`).
//!
//! Two routes of one namespace conflict when they claim the same model name with the
//! same header matches. The older one (by creation time, then name) keeps the name; the
//! other is rejected with `ModelConflict`. Routes of different namespaces never
//! conflict: each consumer sees its own namespace's routes first (`access`).

use std::collections::{BTreeMap, BTreeSet};

use super::access::{Grant, match_key};
use super::inputs::{Inputs, ObjectKey, ObjectKind};
use super::refs::{age, cel_rules, duration_ms};
use super::status::{Problem, Verdict};
use crate::snapshot::{Backend, CachePolicy, Circuit, HeaderMatch, Provider, Retry, Route};
use crate::v1alpha1::condition::reasons;
use crate::v1alpha1::{AIRoute, HeaderMatchType, ObjectStatus};

/// Namespace, a model name and the header matches: what two routes must not share.
type MatchKey = (String, String, Vec<(String, String, HeaderMatchType)>);

/// Accepted routes and their grants, by `namespace/name`.
pub(super) struct CompiledRoutes {
    pub routes: BTreeMap<String, Route>,
    pub grants: BTreeMap<String, Grant>,
}

/// Compiles every AIRoute.
pub(super) fn compile(
    inputs: &Inputs,
    providers: &BTreeMap<String, Provider>,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> CompiledRoutes {
    let mut candidates = Vec::new();
    for (key, object) in &inputs.routes {
        let mut verdict = Verdict::new(object.metadata.generation);
        let route = compile_one(inputs, providers, key, object, &mut verdict);
        let grant = Grant::compile(key, object.spec.allowed_consumers.as_ref())
            .map_err(|problem| verdict.reject(problem))
            .ok();
        candidates.push((age(object), key, route.zip(grant), verdict));
    }

    // Oldest first, so the older route keeps a contested model name.
    candidates.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut claimed: BTreeMap<MatchKey, &ObjectKey> = BTreeMap::new();
    let mut compiled = CompiledRoutes {
        routes: BTreeMap::new(),
        grants: BTreeMap::new(),
    };
    for (_, key, route, mut verdict) in candidates {
        if let Some((route, grant)) = route.filter(|_| verdict.is_accepted()) {
            let headers = match_key(&route);
            let keys: Vec<MatchKey> = route
                .models
                .iter()
                .map(|m| (key.namespace.clone(), m.clone(), headers.clone()))
                .collect();
            match keys
                .iter()
                .find_map(|k| claimed.get(k).map(|owner| (k, *owner)))
            {
                Some(((_, model, _), owner)) => verdict.reject(Problem::new(
                    reasons::MODEL_CONFLICT,
                    format!(
                        "spec.models: {model:?} is already served by AIRoute {}/{} with the \
                         same header matches; rename the model, add a header match, or delete \
                         one route",
                        owner.namespace, owner.name
                    ),
                )),
                None => {
                    claimed.extend(keys.into_iter().map(|k| (k, key)));
                    compiled.routes.insert(key.id(), route);
                    compiled.grants.insert(key.id(), grant);
                }
            }
        }
        statuses.insert(key.clone(), verdict.into_status());
    }
    compiled
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
    let stream_idle_timeout_ms = duration(
        timeouts.and_then(|t| t.stream_idle.as_deref()),
        "spec.timeouts.streamIdle",
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
        fallback_on_unreadable: retry_spec.fallback_on_unreadable.unwrap_or(false),
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
        stream_idle_timeout_ms,
        retry,
        strategy: spec.strategy.unwrap_or_default(),
        circuit,
        cache,
    })
}
