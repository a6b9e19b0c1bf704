//! Picks the route for a request: model name, header matches, consumer allowlists.
//! Which backends of the route to try, in what order, is `plan`'s job.

use http::HeaderMap;
use switchboard_api::snapshot::{Consumer, Route};

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

fn model_allowed(consumer: &Consumer, model: &str) -> bool {
    consumer
        .allowed_models
        .as_ref()
        .is_none_or(|allowed| allowed.contains(model))
}

/// Whether `consumer` may use route `route_id` (its `allowedRoutes`).
pub fn route_allowed(consumer: &Consumer, route_id: &str) -> bool {
    consumer
        .allowed_routes
        .as_ref()
        .is_none_or(|allowed| allowed.contains(route_id))
}
