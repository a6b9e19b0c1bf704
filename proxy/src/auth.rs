//! Authenticates the caller: gateway key from the request headers to an AIConsumer.

use std::collections::HashMap;

use std::borrow::Cow;

use http::{HeaderMap, Uri};
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{Consumer, hash_key};

use crate::error::ProxyError;
use crate::ir::ClientApi;

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

/// The key from `Authorization: Bearer <key>`, `x-api-key: <key>` or
/// `x-goog-api-key: <key>` (what the google-genai SDKs send), else, on Gemini's paths
/// only, from the `key` query parameter, as Google's API takes it. The query is read
/// last and only there: a key in a URL ends up in more logs than one in a header.
fn presented_key<'h>(headers: &'h HeaderMap, uri: Option<&Uri>) -> Option<Cow<'h, str>> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(key.trim()));
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(value) = headers.get(name) {
            return value.to_str().ok().map(|k| Cow::Borrowed(k.trim()));
        }
    }
    let uri = uri.filter(|uri| ClientApi::of_path(uri.path()) == ClientApi::Gemini)?;
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, key)| Cow::Owned(key.trim().to_string()))
}

/// The consumer holding the request's key. Keys are compared by hash, as the Snapshot
/// holds nothing else. `uri`: the request's, when its query may carry the key.
pub fn authenticate<'r>(
    keys: &Keys,
    snapshot: &'r Snapshot,
    headers: &HeaderMap,
    uri: Option<&Uri>,
) -> Result<Caller<'r>, ProxyError> {
    let key = presented_key(headers, uri).ok_or(ProxyError::MissingKey)?;
    if key.is_empty() {
        return Err(ProxyError::MissingKey);
    }
    let id = keys.0.get(&hash_key(&key)).ok_or(ProxyError::InvalidKey)?;
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
        assert_eq!(key(&headers, None).as_deref(), Some("abc"));
        headers.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(key(&headers, None).as_deref(), Some("xyz"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(key(&headers, None), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(key(&headers, None).as_deref(), Some("k1"));
        assert_eq!(key(&HeaderMap::new(), None), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-api-key", "g1".parse().unwrap());
        assert_eq!(key(&headers, None).as_deref(), Some("g1"));
    }

    #[test]
    fn reads_the_query_key_on_gemini_paths_only() {
        let gemini: Uri = "/v1beta/models/m:generateContent?alt=sse&key=a%2Bb"
            .parse()
            .unwrap();
        assert_eq!(
            key(&HeaderMap::new(), Some(&gemini)).as_deref(),
            Some("a+b")
        );
        let v1: Uri = "/v1/models/m:generateContent?key=k".parse().unwrap();
        assert_eq!(key(&HeaderMap::new(), Some(&v1)).as_deref(), Some("k"));
        let openai: Uri = "/v1/chat/completions?key=abc".parse().unwrap();
        assert_eq!(key(&HeaderMap::new(), Some(&openai)), None);
        // A header wins over the query.
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-api-key", "h".parse().unwrap());
        assert_eq!(key(&headers, Some(&gemini)).as_deref(), Some("h"));
    }

    fn key(headers: &HeaderMap, uri: Option<&Uri>) -> Option<String> {
        presented_key(headers, uri).map(Cow::into_owned)
    }
}
