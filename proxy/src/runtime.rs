//! The immutable runtime a proxy serves from, built from a Snapshot, and the handle
//! through which it is swapped atomically.
//!
//! A request loads the current runtime once and keeps that `Arc` to its end, so a swap
//! never changes the config under an in-flight request and never waits for one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use regex::Regex;
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{Backend, Consumer, HeaderMatchType, Provider, Route};

use crate::health::{BackendHealth, CircuitView};
use crate::plan::RetryBudget;
use crate::providers::UpstreamUrls;
use crate::upstream::{self, ClientError};

/// Everything needed to serve requests under one Snapshot.
#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// Consumer id by key hash.
    consumers_by_key: HashMap<String, String>,
    /// Compiled regular expressions by route id, index-aligned with `Route::headers`.
    header_regexes: HashMap<String, Vec<Option<Regex>>>,
    providers: HashMap<String, Arc<ProviderRuntime>>,
    /// Retry budget by route id. A reload starts each budget afresh.
    retry_budgets: HashMap<String, RetryBudget>,
    /// Passive health by backend (`health_key`), carried over across reloads.
    health: HashMap<String, Arc<BackendHealth>>,
}

/// A provider's config with its pooled client.
#[derive(Debug)]
pub struct ProviderRuntime {
    pub id: String,
    pub config: Provider,
    pub client: reqwest::Client,
    pub urls: UpstreamUrls,
}

/// Shared handle to the current runtime; empty until the first config loads.
#[derive(Debug, Default)]
pub struct RuntimeHandle(ArcSwapOption<Runtime>);

// === impl Runtime ===

impl Runtime {
    /// Builds a runtime. Clients of providers whose config is unchanged are taken from
    /// `previous`, so a reload keeps their warm connection pools.
    pub fn build(snapshot: Snapshot, previous: Option<&Runtime>) -> Result<Self, ClientError> {
        let mut providers = HashMap::new();
        for (id, config) in &snapshot.providers {
            let reused = previous
                .and_then(|p| p.providers.get(id))
                .filter(|p| p.config == *config)
                .cloned();
            let provider = match reused {
                Some(provider) => provider,
                None => Arc::new(ProviderRuntime {
                    id: id.clone(),
                    config: config.clone(),
                    client: upstream::client(id, config)?,
                    urls: UpstreamUrls::for_provider(config).map_err(|e| ClientError {
                        provider: id.clone(),
                        message: format!("spec.endpoint: {e}"),
                    })?,
                }),
            };
            providers.insert(id.clone(), provider);
        }

        let mut consumers_by_key = HashMap::new();
        for (id, consumer) in &snapshot.consumers {
            for hash in &consumer.key_hashes {
                consumers_by_key.insert(hash.clone(), id.clone());
            }
        }

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

        let retry_budgets = snapshot
            .routes
            .iter()
            .map(|(id, route)| (id.clone(), RetryBudget::new(&route.retry)))
            .collect();

        let mut health = HashMap::new();
        for backend in snapshot.routes.values().flat_map(|r| &r.backends) {
            let key = health_key(backend);
            let carried = previous.and_then(|p| p.health.get(&key)).cloned();
            health
                .entry(key)
                .or_insert_with(|| carried.unwrap_or_default());
        }

        Ok(Self {
            snapshot: Arc::new(snapshot),
            consumers_by_key,
            header_regexes,
            providers,
            retry_budgets,
            health,
        })
    }

    pub fn version(&self) -> &str {
        &self.snapshot.version
    }

    /// The consumer holding the key with this hash.
    pub fn consumer_by_key_hash(&self, hash: &str) -> Option<(&str, &Consumer)> {
        let id = self.consumers_by_key.get(hash)?;
        let consumer = self.snapshot.consumers.get(id)?;
        Some((id.as_str(), consumer))
    }

    pub fn route(&self, id: &str) -> Option<&Route> {
        self.snapshot.routes.get(id)
    }

    /// Whether every header match of route `id` holds for `headers`.
    pub fn headers_match(&self, id: &str, route: &Route, headers: &http::HeaderMap) -> bool {
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

    /// What this proxy knows about a backend's health and load.
    pub fn health(&self, backend: &Backend) -> Option<&Arc<BackendHealth>> {
        self.health.get(&health_key(backend))
    }

    /// Every backend's circuit as (provider, upstream model name, state).
    pub fn circuits(&self, now: Instant) -> impl Iterator<Item = (&str, &str, CircuitView)> {
        self.health.iter().filter_map(move |(key, health)| {
            let (provider, model) = key.split_once('#')?;
            let upstream = &self
                .providers
                .get(provider)?
                .config
                .models
                .get(model)?
                .upstream_name;
            Some((provider, upstream.as_str(), health.view(now)))
        })
    }

    pub fn retry_budget(&self, route_id: &str) -> Option<&RetryBudget> {
        self.retry_budgets.get(route_id)
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<ProviderRuntime>> {
        self.providers.get(id)
    }
}

/// A backend is one provider model, whichever routes use it.
fn health_key(backend: &Backend) -> String {
    format!("{}#{}", backend.provider, backend.model)
}

// === impl RuntimeHandle ===

impl RuntimeHandle {
    /// The current runtime, if one has loaded.
    pub fn current(&self) -> Option<Arc<Runtime>> {
        self.0.load_full()
    }

    /// Replaces the runtime; in-flight requests keep the one they loaded.
    pub fn swap(&self, runtime: Runtime) {
        self.0.store(Some(Arc::new(runtime)));
    }
}

#[cfg(test)]
mod tests {
    use switchboard_api::compile::{Inputs, Object};
    use switchboard_api::v1alpha1::{
        AIProvider, AIProviderSpec, ProviderAuth, ProviderModel, ProviderType, SecretKeyRef,
    };

    use super::*;

    #[test]
    fn debug_output_never_shows_a_provider_key() {
        crate::install_crypto_provider();
        let mut provider = AIProvider::new(
            "openai",
            AIProviderSpec {
                type_: ProviderType::OpenAI,
                endpoint: None,
                auth: Some(ProviderAuth {
                    secret_ref: SecretKeyRef {
                        name: "s".into(),
                        key: "k".into(),
                    },
                }),
                azure: None,
                anthropic: None,
                models: vec![ProviderModel {
                    name: "m".into(),
                    upstream_name: None,
                    pricing: None,
                }],
                timeouts: None,
                tls: None,
                echo: None,
            },
        );
        provider.metadata.namespace = Some("default".into());
        let mut secret = k8s_openapi::api::core::v1::Secret::default();
        secret.metadata.name = Some("s".into());
        secret.metadata.namespace = Some("default".into());
        secret.string_data =
            Some([("k".to_string(), "sk-very-secret-provider-key".to_string())].into());
        let inputs = Inputs::from_objects([Object::Provider(provider), Object::Secret(secret)]);
        let compiled = switchboard_api::compile(&inputs);
        assert_eq!(
            compiled.snapshot.providers.len(),
            1,
            "{:?}",
            compiled.statuses
        );
        let runtime = Runtime::build(compiled.snapshot, None).unwrap();
        let debug = format!("{runtime:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains("sk-very-secret"), "{debug}");
    }
}
