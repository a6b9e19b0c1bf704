//! Picks the route for a request (model name, header matches, consumer allowlists) and
//! the backend within it.

use http::HeaderMap;
use switchboard_api::snapshot::{Backend, Consumer, Route};

use crate::error::ProxyError;
use crate::runtime::Runtime;

/// The first route serving `model` whose header matches hold and that the consumer may
/// use. Unknown and forbidden models look the same to the caller.
pub fn select<'r>(
    runtime: &'r Runtime,
    consumer: &Consumer,
    model: &str,
    headers: &HeaderMap,
) -> Result<(&'r str, &'r Route), ProxyError> {
    let unknown = || ProxyError::UnknownModel(model.to_string());
    if !model_allowed(consumer, model) {
        return Err(unknown());
    }
    let candidates = runtime.snapshot.models.get(model).ok_or_else(unknown)?;
    candidates
        .iter()
        .filter(|id| route_allowed(consumer, id))
        .filter_map(|id| runtime.route(id).map(|route| (id.as_str(), route)))
        .find(|(id, route)| runtime.headers_match(id, route, headers))
        .ok_or_else(unknown)
}

/// Model names the consumer may request, for `GET /v1/models`.
pub fn visible_models<'r>(
    runtime: &'r Runtime,
    consumer: &'r Consumer,
) -> impl Iterator<Item = &'r str> + 'r {
    runtime
        .snapshot
        .models
        .iter()
        .filter(|(model, _)| model_allowed(consumer, model))
        .filter(|(_, routes)| routes.iter().any(|id| route_allowed(consumer, id)))
        .map(|(model, _)| model.as_str())
}

/// A backend from the lowest priority tier that has weight, chosen at random by weight.
pub fn pick_backend(route: &Route) -> Option<&Backend> {
    let tier = route
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| b.priority)
        .min()?;
    let in_tier = || {
        route
            .backends
            .iter()
            .filter(move |b| b.priority == tier && b.weight > 0)
    };
    let total: u64 = in_tier().map(|b| u64::from(b.weight)).sum();
    let mut ticket = fastrand::u64(0..total);
    in_tier().find(|b| {
        let weight = u64::from(b.weight);
        if ticket < weight {
            true
        } else {
            ticket -= weight;
            false
        }
    })
}

fn model_allowed(consumer: &Consumer, model: &str) -> bool {
    consumer
        .allowed_models
        .as_ref()
        .is_none_or(|allowed| allowed.contains(model))
}

fn route_allowed(consumer: &Consumer, route_id: &str) -> bool {
    consumer
        .allowed_routes
        .as_ref()
        .is_none_or(|allowed| allowed.contains(route_id))
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
        }
    }

    #[test]
    fn picks_only_from_the_lowest_tier_with_weight() {
        let r = route(vec![
            backend("fallback", 5, 1),
            backend("zero", 0, 0),
            backend("primary", 1, 0),
        ]);
        for _ in 0..200 {
            assert_eq!(pick_backend(&r).unwrap().provider, "primary");
        }
    }

    #[test]
    fn spreads_by_weight() {
        let r = route(vec![backend("a", 3, 0), backend("b", 1, 0)]);
        let picks_a = (0..4000)
            .filter(|_| pick_backend(&r).unwrap().provider == "a")
            .count();
        // Expected 3000; a fair weighted pick lands well inside this band.
        assert!((2700..3300).contains(&picks_a), "a picked {picks_a} times");
    }

    #[test]
    fn no_backend_when_all_weights_are_zero() {
        assert!(pick_backend(&route(vec![backend("a", 0, 0)])).is_none());
    }
}
