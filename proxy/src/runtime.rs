//! The immutable runtime a proxy serves from, built from a Snapshot, and the handle
//! through which it is swapped atomically.
//!
//! A runtime is the Snapshot and what each part of the request path prepares from it
//! once, rather than on every request: the key index (`auth`), compiled header
//! matches (`routing`), a pooled client and parsed URLs per provider (`providers`,
//! `upstream`), and for each route its retry budget (`plan`) and, for each of its
//! backends, the provider, model, health (`health`) and metric series (`metrics`) it
//! resolves to. A request loads the current runtime once and keeps that `Arc` to its
//! end, so a swap never changes the config under an in-flight request and never waits
//! for one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use switchboard_api::Snapshot;
use switchboard_api::snapshot::{Backend, Model};

use crate::auth::Keys;
use crate::health::{BackendHealth, CircuitView};
use crate::metrics::{BackendSeries, Metrics};
use crate::plan::RetryBudget;
use crate::providers::{Upstream, UpstreamUrls};
use crate::routing::Routes;
use crate::upstream::{self, ClientError};

/// Everything needed to serve requests under one Snapshot.
#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// Gateway keys, by hash.
    pub keys: Keys,
    /// Routes' header matches, compiled.
    pub routes: Routes,
    upstreams: HashMap<String, Arc<Upstream>>,
    /// What each route resolves to, by route id.
    prepared: HashMap<String, PreparedRoute>,
    /// Passive health by backend (`health_key`), carried over across reloads.
    health: HashMap<String, Arc<BackendHealth>>,
}

/// A route's retry budget and its backends, resolved once per config.
#[derive(Debug)]
pub struct PreparedRoute {
    /// A reload starts each budget afresh.
    pub retry_budget: RetryBudget,
    /// In the order of the route's `backends`; `None` where the provider or its model
    /// is not in the config (the compiler leaves none such, but a Snapshot from an
    /// operator is only validated, not trusted).
    pub backends: Vec<Option<PreparedBackend>>,
}

/// One backend of a route: the provider it calls, the model there, its health, and
/// the route's metric series for it.
#[derive(Debug)]
pub struct PreparedBackend {
    pub upstream: Arc<Upstream>,
    pub model: Model,
    /// Shared by every route with this backend.
    pub health: Arc<BackendHealth>,
    /// `None` with metrics off.
    pub series: Option<Arc<BackendSeries>>,
}

/// Shared handle to the current runtime; empty until the first config loads.
#[derive(Debug, Default)]
pub struct RuntimeHandle(ArcSwapOption<Runtime>);

// === impl Runtime ===

impl Runtime {
    /// Builds a runtime. Clients of providers whose config is unchanged are taken from
    /// `previous`, so a reload keeps their warm connection pools; `metrics` (when on)
    /// makes each route backend's series.
    pub fn build(
        snapshot: Snapshot,
        previous: Option<&Runtime>,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Self, ClientError> {
        let mut upstreams = HashMap::new();
        for (id, config) in &snapshot.providers {
            let reused = previous
                .and_then(|p| p.upstreams.get(id))
                .filter(|p| p.config == *config)
                .cloned();
            let upstream = match reused {
                Some(upstream) => upstream,
                None => Arc::new(Upstream {
                    id: id.clone(),
                    config: config.clone(),
                    client: upstream::client(id, config)?,
                    urls: UpstreamUrls::for_provider(config).map_err(|e| ClientError {
                        provider: id.clone(),
                        message: format!("spec.endpoint: {e}"),
                    })?,
                }),
            };
            upstreams.insert(id.clone(), upstream);
        }

        let mut health: HashMap<String, Arc<BackendHealth>> = HashMap::new();
        let mut prepared = HashMap::new();
        for (route_id, route) in &snapshot.routes {
            let backends = route
                .backends
                .iter()
                .map(|backend| {
                    let key = health_key(backend);
                    let health = health
                        .entry(key)
                        .or_insert_with_key(|key| {
                            let carried = previous.and_then(|p| p.health.get(key));
                            carried.cloned().unwrap_or_default()
                        })
                        .clone();
                    let upstream = upstreams.get(&backend.provider)?.clone();
                    let model = upstream.config.models.get(&backend.model)?.clone();
                    let series = metrics.map(|m| {
                        Arc::new(BackendSeries::new(
                            m.clone(),
                            route_id,
                            &backend.provider,
                            &model.upstream_name,
                        ))
                    });
                    Some(PreparedBackend {
                        upstream,
                        model,
                        health,
                        series,
                    })
                })
                .collect();
            let route_state = PreparedRoute {
                retry_budget: RetryBudget::new(&route.retry),
                backends,
            };
            prepared.insert(route_id.clone(), route_state);
        }

        Ok(Self {
            keys: Keys::new(&snapshot),
            routes: Routes::new(&snapshot),
            snapshot: Arc::new(snapshot),
            upstreams,
            prepared,
            health,
        })
    }

    pub fn version(&self) -> &str {
        &self.snapshot.version
    }

    /// Every backend's circuit as (provider, upstream model name, state).
    pub fn circuits(&self, now: Instant) -> impl Iterator<Item = (&str, &str, CircuitView)> {
        self.health.iter().filter_map(move |(key, health)| {
            let (provider, model) = key.split_once('#')?;
            let upstream = &self
                .upstreams
                .get(provider)?
                .config
                .models
                .get(model)?
                .upstream_name;
            Some((provider, upstream.as_str(), health.view(now)))
        })
    }

    /// A route's retry budget and backends, resolved.
    pub fn prepared(&self, route_id: &str) -> Option<&PreparedRoute> {
        self.prepared.get(route_id)
    }

    /// A provider, with its client and URLs.
    pub fn upstream(&self, id: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(id)
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
        crate::tls::install_crypto_provider();
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
        let runtime = Runtime::build(compiled.snapshot, None, None).unwrap();
        let debug = format!("{runtime:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains("sk-very-secret"), "{debug}");
    }
}
