//! Picks the route for a request: model name and header matches, among the routes the
//! consumer's route table lists (who may use what is decided by compile, `access`).
//! Which backends of the route to try, in what order, is `plan`'s job.

use std::collections::HashMap;

use http::HeaderMap;
use regex::Regex;
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{Consumer, HeaderMatchType, Route, RouteTable};

use crate::error::ProxyError;

/// The header matches of every route, their regular expressions compiled once per
/// Snapshot.
#[derive(Debug, Default)]
pub struct Routes {
    /// By route id, index-aligned with `Route::headers`.
    header_regexes: HashMap<String, Vec<Option<Regex>>>,
}

/// A route, with its id.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'r> {
    /// `namespace/name`.
    pub id: &'r str,
    pub route: &'r Route,
}

// === impl Routes ===

impl Routes {
    pub fn new(snapshot: &Snapshot) -> Self {
        let mut header_regexes = HashMap::new();
        for (id, route) in &snapshot.routes {
            let regexes = route
                .headers
                .iter()
                .map(|h| match h.kind {
                    HeaderMatchType::Exact => None,
                    // Compile validated the pattern; an error here leaves the match unmatched.
                    HeaderMatchType::RegularExpression => Regex::new(&h.value).ok(),
                })
                .collect();
            header_regexes.insert(id.clone(), regexes);
        }
        Self { header_regexes }
    }

    /// Whether every header match of route `id` holds for `headers`.
    fn headers_match(&self, id: &str, route: &Route, headers: &HeaderMap) -> bool {
        let regexes = self.header_regexes.get(id);
        route.headers.iter().enumerate().all(|(i, m)| {
            let Some(value) = headers.get(&m.name).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            match m.kind {
                HeaderMatchType::Exact => value == m.value,
                HeaderMatchType::RegularExpression => regexes
                    .and_then(|r| r.get(i))
                    .and_then(Option::as_ref)
                    .is_some_and(|re| re.is_match(value)),
            }
        })
    }
}

/// The first route serving `model` whose header matches hold, among those the consumer
/// may use (its route table: compile made every access decision). Unknown and
/// forbidden models look the same to the caller.
pub fn select<'r>(
    routes: &Routes,
    snapshot: &'r Snapshot,
    consumer: &Consumer,
    model: &str,
    headers: &HeaderMap,
) -> Result<Selected<'r>, ProxyError> {
    let unknown = || ProxyError::UnknownModel(model.to_string());
    let candidates = table(snapshot, consumer)
        .and_then(|t| t.models.get(model))
        .ok_or_else(unknown)?;
    candidates
        .iter()
        .filter_map(|id| snapshot.routes.get_key_value(id))
        .find(|(id, route)| routes.headers_match(id, route, headers))
        .map(|(id, route)| Selected { id, route })
        .ok_or_else(unknown)
}

/// Route `id`, if the consumer may use it (a quota's fallback route).
pub fn allowed<'r>(snapshot: &'r Snapshot, consumer: &Consumer, id: &str) -> Option<Selected<'r>> {
    let reachable = table(snapshot, consumer)?
        .models
        .values()
        .any(|ids| ids.iter().any(|r| r == id));
    if !reachable {
        return None;
    }
    let (id, route) = snapshot.routes.get_key_value(id)?;
    Some(Selected { id, route })
}

/// Model names the consumer may request, for `GET /v1/models`.
pub fn visible_models<'r>(
    snapshot: &'r Snapshot,
    consumer: &'r Consumer,
) -> impl Iterator<Item = &'r str> + 'r {
    table(snapshot, consumer)
        .into_iter()
        .flat_map(|t| t.models.keys())
        .map(String::as_str)
}

/// The consumer's route table; `validate` made sure it exists.
fn table<'r>(snapshot: &'r Snapshot, consumer: &Consumer) -> Option<&'r RouteTable> {
    snapshot.route_tables.get(consumer.route_table)
}
