//! Authenticates the caller: gateway key from the request headers to an AIConsumer.

use std::collections::HashMap;

use http::HeaderMap;
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{Consumer, hash_key};

use crate::error::ProxyError;

/// Every gateway key of a Snapshot, by hash: the consumer id holding it.
#[derive(Debug, Default)]
pub struct Keys(HashMap<String, String>);

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'r> {
    /// The AIConsumer's id (`namespace/name`).
    pub id: &'r str,
    pub consumer: &'r Consumer,
}

// === impl Keys ===

impl Keys {
    pub fn new(snapshot: &Snapshot) -> Self {
        let mut keys = HashMap::new();
        for (id, consumer) in &snapshot.consumers {
            for hash in &consumer.key_hashes {
                keys.insert(hash.clone(), id.clone());
            }
        }
        Self(keys)
    }
}

/// The key from `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// The consumer holding the request's key. Keys are compared by hash, as the Snapshot
/// holds nothing else.
pub fn authenticate<'r>(
    keys: &Keys,
    snapshot: &'r Snapshot,
    headers: &HeaderMap,
) -> Result<Caller<'r>, ProxyError> {
    let key = presented_key(headers).ok_or(ProxyError::MissingKey)?;
    if key.is_empty() {
        return Err(ProxyError::MissingKey);
    }
    let id = keys.0.get(&hash_key(key)).ok_or(ProxyError::InvalidKey)?;
    let (id, consumer) = snapshot
        .consumers
        .get_key_value(id)
        .ok_or(ProxyError::InvalidKey)?;
    Ok(Caller { id, consumer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_x_api_key() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("abc"));
        headers.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("xyz"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k1"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
