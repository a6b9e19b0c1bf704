//! The cache key: a SHA-256 of what decides the answer, so that requests differing
//! only in field order, whitespace or fields that do not change the answer share it.
//!
//! What goes in: a format version; the client API and operation; the route and its
//! backends' provider models (a route pointed at other models starts a fresh cache);
//! the consumer, for per-consumer caches; and the request body in a canonical form
//! (object keys sorted, each value tagged and length-prefixed), without the fields
//! that cannot change the answer.

use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_api::snapshot::{CacheScope, CacheableRequests, Route};

use crate::ir::{Operation, Request};

/// Bumped when what goes into a key or an entry changes, so old entries are not read.
const FORMAT: &[u8] = b"switchboard-cache-v1";

/// Top-level request fields that do not change the answer: how it is delivered
/// (`stream`, `stream_options`), who the end user is (`user`, `metadata`), the model
/// name the client used (the route stands for it), and OpenAI's storage and service
/// tier options.
const IGNORED_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
];

/// A cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The Redis key of this entry.
    pub fn redis_key(&self) -> String {
        format!("sb:cache:{}", hex::encode(self.0))
    }
}

/// Why a request is not cacheable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    /// The route caches only `temperature: 0` requests.
    NotDeterministic,
    /// More than one choice (`n` > 1): a stream replay could not give them all.
    SeveralChoices,
    /// A Responses API request: each answer has its own id, which the client may
    /// store and continue from (`previous_response_id`); a replayed one would not be
    /// a response the provider knows.
    Stateful,
}

/// The key of `request` on `route` from `consumer`; `Err` when the route's policy or
/// the request's shape rules caching out.
pub fn of(
    route_id: &str,
    route: &Route,
    requests: CacheableRequests,
    scope: CacheScope,
    consumer: &str,
    request: &Request,
) -> Result<Key, NotCacheable> {
    // The body parsed when the client sent it; what the pipeline reads was checked.
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let field = |name: &str| body.get(name);
    if request.operation == Operation::Responses {
        return Err(NotCacheable::Stateful);
    }
    if request.operation == Operation::ChatCompletions {
        if field("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(NotCacheable::SeveralChoices);
        }
        let deterministic = field("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t == 0.0);
        if requests == CacheableRequests::Deterministic && !deterministic {
            return Err(NotCacheable::NotDeterministic);
        }
    }

    let mut hash = Sha256::new();
    bytes(&mut hash, FORMAT);
    bytes(&mut hash, request.api.name().as_bytes());
    bytes(&mut hash, request.operation.name().as_bytes());
    bytes(&mut hash, route_id.as_bytes());
    for backend in &route.backends {
        bytes(&mut hash, backend.provider.as_bytes());
        bytes(&mut hash, backend.model.as_bytes());
    }
    match scope {
        CacheScope::PerConsumer => bytes(&mut hash, consumer.as_bytes()),
        CacheScope::Shared => bytes(&mut hash, b""),
    }
    match &body {
        Value::Object(fields) => {
            let mut kept: Vec<(&String, &Value)> = fields
                .iter()
                .filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_str()))
                .collect();
            kept.sort_unstable_by_key(|(name, _)| *name);
            hash.update(b"{");
            for (name, value) in kept {
                bytes(&mut hash, name.as_bytes());
                canonical(&mut hash, value);
            }
            hash.update(b"}");
        }
        other => canonical(&mut hash, other),
    }
    Ok(Key(hash.finalize().into()))
}

/// Length-prefixed bytes: no two sequences of fields hash alike.
fn bytes(hash: &mut Sha256, value: &[u8]) {
    hash.update((value.len() as u64).to_le_bytes());
    hash.update(value);
}

/// A JSON value, tagged by type, objects with their keys sorted.
fn canonical(hash: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hash.update(b"n"),
        Value::Bool(true) => hash.update(b"t"),
        Value::Bool(false) => hash.update(b"f"),
        Value::Number(number) => {
            hash.update(b"#");
            bytes(hash, number.to_string().as_bytes());
        }
        Value::String(text) => {
            hash.update(b"s");
            bytes(hash, text.as_bytes());
        }
        Value::Array(items) => {
            hash.update(b"[");
            hash.update((items.len() as u64).to_le_bytes());
            for item in items {
                canonical(hash, item);
            }
        }
        Value::Object(fields) => {
            let mut sorted: Vec<(&String, &Value)> = fields.iter().collect();
            sorted.sort_unstable_by_key(|(name, _)| *name);
            hash.update(b"{");
            hash.update((sorted.len() as u64).to_le_bytes());
            for (name, value) in sorted {
                bytes(hash, name.as_bytes());
                canonical(hash, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ClientApi;
    use bytes::Bytes;
    use switchboard_api::snapshot::Backend;

    fn route() -> Route {
        Route {
            models: Default::default(),
            headers: Vec::new(),
            backends: vec![Backend {
                provider: "default/openai".into(),
                model: "gpt-4o".into(),
                weight: 1,
                priority: 0,
            }],
            request_timeout_ms: None,
            total_timeout_ms: None,
            first_token_timeout_ms: None,
            stream_idle_timeout_ms: None,
            retry: Default::default(),
            strategy: Default::default(),
            circuit: Default::default(),
            cache: None,
        }
    }

    fn request(body: &str) -> Request {
        Request {
            api: ClientApi::OpenAI,
            operation: Operation::ChatCompletions,
            model: "m".into(),
            stream: false,
            client_wants_usage: false,
            body: Bytes::from(body.to_string()),
            fields: Default::default(),
            api_headers: Vec::new(),
            chat: None,
            trace: Default::default(),
        }
    }

    fn key(body: &str, consumer: &str, scope: CacheScope) -> Result<Key, NotCacheable> {
        of(
            "default/r",
            &route(),
            CacheableRequests::All,
            scope,
            consumer,
            &request(body),
        )
    }

    #[test]
    fn order_whitespace_and_delivery_fields_do_not_split_the_cache() {
        let a = key(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            "c",
            CacheScope::PerConsumer,
        );
        let b = key(
            r#"{ "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
                 "user": "u-1", "messages": [ {"content": "hi", "role": "user"} ], "model": "alias" }"#,
            "c",
            CacheScope::PerConsumer,
        );
        assert_eq!(a.unwrap(), b.unwrap());
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        let base = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        let k = |body: &str| key(body, "c", CacheScope::PerConsumer).unwrap();
        assert_ne!(
            k(base),
            k(r#"{"messages":[{"role":"user","content":"hi!"}],"temperature":0}"#)
        );
        assert_ne!(
            k(base),
            k(r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#)
        );
        assert_ne!(
            k(base),
            k(r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#)
        );
        // A string "0" is not the number 0.
        assert_ne!(
            k(r#"{"messages":[],"seed":0}"#),
            k(r#"{"messages":[],"seed":"0"}"#)
        );
        let mut other_route = route();
        other_route.backends[0].model = "gpt-4o-mini".into();
        let moved = of(
            "default/r",
            &other_route,
            CacheableRequests::All,
            CacheScope::PerConsumer,
            "c",
            &request(base),
        );
        assert_ne!(k(base), moved.unwrap());
    }

    #[test]
    fn consumers_share_only_a_shared_cache() {
        let body = r#"{"messages":[]}"#;
        assert_ne!(
            key(body, "a", CacheScope::PerConsumer).unwrap(),
            key(body, "b", CacheScope::PerConsumer).unwrap()
        );
        assert_eq!(
            key(body, "a", CacheScope::Shared).unwrap(),
            key(body, "b", CacheScope::Shared).unwrap()
        );
    }

    #[test]
    fn deterministic_routes_take_only_temperature_zero() {
        let only = |body: &str| {
            of(
                "default/r",
                &route(),
                CacheableRequests::Deterministic,
                CacheScope::Shared,
                "c",
                &request(body),
            )
        };
        assert!(only(r#"{"messages":[],"temperature":0}"#).is_ok());
        assert!(only(r#"{"messages":[],"temperature":0.0}"#).is_ok());
        assert_eq!(
            only(r#"{"messages":[]}"#),
            Err(NotCacheable::NotDeterministic)
        );
        assert_eq!(
            only(r#"{"messages":[],"temperature":1}"#),
            Err(NotCacheable::NotDeterministic)
        );
        assert_eq!(
            key(r#"{"messages":[],"n":2}"#, "c", CacheScope::Shared),
            Err(NotCacheable::SeveralChoices)
        );
    }
}
