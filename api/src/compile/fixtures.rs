//! Chainable builders for compile's inputs, in the style of kube-rs controller-rs
//! `fixtures.rs`: `provider("openai").openai().secret("openai-key", "apiKey").model("gpt-4o")`.
//!
//! Every builder starts from the smallest object the API server would accept, in namespace
//! `default`, without a creation timestamp or generation; each method changes one thing.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use super::inputs::{DEFAULT_NAMESPACE, Inputs, Object, ObjectKey, ObjectKind};
use super::{Compiled, compile};
use crate::v1alpha1::{
    AIConsumer, AIConsumerSpec, AIProvider, AIProviderSpec, AIQuota, AIQuotaSpec, AIRoute,
    AIRouteSpec, AllowedConsumers, AllowedNamespaces, AzureSettings, ConsumerKey, EchoSettings,
    FailurePolicy, HeaderMatch, HeaderMatchType, ModelPricing, NamespacesFrom, ProviderAuth,
    ProviderModel, ProviderTimeouts, ProviderTls, ProviderType, QuotaLimit, QuotaMetric,
    QuotaTarget, QuotaWindow, RouteBackend, RouteReference, RouteRetry, RouteTimeouts,
    SecretKeyRef,
};

/// A creation timestamp `seconds` after the Unix epoch.
pub fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("timestamp in range"))
}

fn secret_ref(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.to_string(),
        key: key.to_string(),
    }
}

/// `namespace`, `created`, `generation` and `label` for every builder.
macro_rules! metadata_methods {
    ($builder:ty) => {
        impl $builder {
            /// Moves the object to `namespace` (default `default`).
            pub fn namespace(mut self, namespace: &str) -> Self {
                self.0.meta_mut().namespace = Some(namespace.to_string());
                self
            }

            /// Sets `metadata.creationTimestamp` to `seconds` after the epoch.
            pub fn created(mut self, seconds: i64) -> Self {
                self.0.meta_mut().creation_timestamp = Some(at(seconds));
                self
            }

            /// Sets `metadata.generation`.
            pub fn generation(mut self, generation: i64) -> Self {
                self.0.meta_mut().generation = Some(generation);
                self
            }

            /// Adds a label.
            pub fn label(mut self, key: &str, value: &str) -> Self {
                self.0
                    .meta_mut()
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key.to_string(), value.to_string());
                self
            }

            /// The key compile uses for this object in `Compiled::statuses`.
            pub fn object_key(&self) -> ObjectKey {
                Object::from(self.clone()).key()
            }

            /// The `namespace/name` compile uses in the Snapshot.
            pub fn id(&self) -> String {
                self.object_key().id()
            }
        }
    };
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(DEFAULT_NAMESPACE.to_string()),
        ..ObjectMeta::default()
    }
}

// === AIProvider ===

/// Builds an `AIProvider`. Starts as an `echo` provider with no models.
#[derive(Clone, Debug)]
pub struct ProviderBuilder(pub AIProvider);

pub fn provider(name: &str) -> ProviderBuilder {
    let mut object = AIProvider::new(
        name,
        AIProviderSpec {
            type_: ProviderType::Echo,
            endpoint: None,
            auth: None,
            azure: None,
            anthropic: None,
            models: Vec::new(),
            timeouts: None,
            tls: None,
            echo: None,
        },
    );
    object.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    ProviderBuilder(object)
}

metadata_methods!(ProviderBuilder);

impl ProviderBuilder {
    pub fn kind(mut self, kind: ProviderType) -> Self {
        self.0.spec.type_ = kind;
        self
    }

    pub fn openai(self) -> Self {
        self.kind(ProviderType::OpenAI)
    }

    pub fn openai_compatible(self) -> Self {
        self.kind(ProviderType::OpenAICompatible)
    }

    pub fn azure_openai(self) -> Self {
        self.kind(ProviderType::AzureOpenAI)
    }

    pub fn echo(self) -> Self {
        self.kind(ProviderType::Echo)
    }

    pub fn endpoint(mut self, url: &str) -> Self {
        self.0.spec.endpoint = Some(url.to_string());
        self
    }

    /// `spec.auth.secretRef`: the API key is in Secret `name` under `key`.
    pub fn secret(mut self, name: &str, key: &str) -> Self {
        self.0.spec.auth = Some(ProviderAuth {
            secret_ref: secret_ref(name, key),
        });
        self
    }

    /// `spec.azure.apiVersion`.
    pub fn azure_api_version(mut self, version: &str) -> Self {
        self.0.spec.azure = Some(AzureSettings {
            api_version: version.to_string(),
        });
        self
    }

    pub fn model(mut self, name: &str) -> Self {
        self.0.spec.models.push(ProviderModel {
            name: name.to_string(),
            upstream_name: None,
            pricing: None,
        });
        self
    }

    pub fn models<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Self {
        names
            .into_iter()
            .fold(self, |builder, name| builder.model(name.as_ref()))
    }

    /// A model sent upstream under another name (an Azure deployment, say).
    pub fn model_as(mut self, name: &str, upstream: &str) -> Self {
        self.0.spec.models.push(ProviderModel {
            name: name.to_string(),
            upstream_name: Some(upstream.to_string()),
            pricing: None,
        });
        self
    }

    /// Prices for the last model added.
    pub fn pricing(mut self, input: f64, output: f64, cached_input: Option<f64>) -> Self {
        let model = self
            .0
            .spec
            .models
            .last_mut()
            .expect("call .model() before .pricing()");
        model.pricing = Some(ModelPricing {
            input_per_million: input,
            output_per_million: output,
            cached_input_per_million: cached_input,
            cache_write_per_million: None,
            cache_write_1h_per_million: None,
        });
        self
    }

    fn timeouts(&mut self) -> &mut ProviderTimeouts {
        self.0
            .spec
            .timeouts
            .get_or_insert_with(ProviderTimeouts::default)
    }

    pub fn connect_timeout(mut self, duration: &str) -> Self {
        self.timeouts().connect = Some(duration.to_string());
        self
    }

    pub fn request_timeout(mut self, duration: &str) -> Self {
        self.timeouts().request = Some(duration.to_string());
        self
    }

    pub fn ca_bundle(mut self, pem: &str) -> Self {
        self.0
            .spec
            .tls
            .get_or_insert_with(ProviderTls::default)
            .ca_bundle = Some(pem.to_string());
        self
    }

    pub fn insecure_skip_verify(mut self) -> Self {
        self.0
            .spec
            .tls
            .get_or_insert_with(ProviderTls::default)
            .insecure_skip_verify = true;
        self
    }

    fn echo_settings(&mut self) -> &mut EchoSettings {
        self.0.spec.echo.get_or_insert_with(EchoSettings::default)
    }

    pub fn echo_latency(mut self, duration: &str) -> Self {
        self.echo_settings().latency = Some(duration.to_string());
        self
    }

    pub fn echo_chunk_interval(mut self, duration: &str) -> Self {
        self.echo_settings().chunk_interval = Some(duration.to_string());
        self
    }

    pub fn build(self) -> AIProvider {
        self.0
    }
}

impl From<ProviderBuilder> for Object {
    fn from(builder: ProviderBuilder) -> Self {
        Object::Provider(builder.0)
    }
}

// === AIRoute ===

/// Builds an `AIRoute`. Starts with no models and no backends.
#[derive(Clone, Debug)]
pub struct RouteBuilder(pub AIRoute);

pub fn route(name: &str) -> RouteBuilder {
    let mut object = AIRoute::new(
        name,
        AIRouteSpec {
            models: Vec::new(),
            headers: Vec::new(),
            backends: Vec::new(),
            timeouts: None,
            retry: None,
            strategy: None,
            circuit_breaker: None,
            cache: None,
            allowed_consumers: None,
        },
    );
    object.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    RouteBuilder(object)
}

metadata_methods!(RouteBuilder);

impl RouteBuilder {
    /// `allowedConsumers.namespaces.from: All`.
    pub fn allow_all_namespaces(mut self) -> Self {
        let allowed = self
            .0
            .spec
            .allowed_consumers
            .get_or_insert_with(Default::default);
        allowed.namespaces = Some(AllowedNamespaces {
            from: NamespacesFrom::All,
            selector: None,
        });
        self
    }

    /// `allowedConsumers.namespaces`: `from: Selector` with namespace labels.
    pub fn allow_namespaces_labelled(mut self, label: &str, value: &str) -> Self {
        let allowed = self
            .0
            .spec
            .allowed_consumers
            .get_or_insert_with(Default::default);
        allowed.namespaces = Some(AllowedNamespaces {
            from: NamespacesFrom::Selector,
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(label.to_string(), value.to_string())])),
                match_expressions: None,
            }),
        });
        self
    }

    /// `allowedConsumers.selector`: consumer labels.
    pub fn allow_consumers_labelled(mut self, label: &str, value: &str) -> Self {
        let allowed: &mut AllowedConsumers = self
            .0
            .spec
            .allowed_consumers
            .get_or_insert_with(Default::default);
        allowed.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(label.to_string(), value.to_string())])),
            match_expressions: None,
        });
        self
    }

    pub fn models<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0.spec.models.extend(names.into_iter().map(Into::into));
        self
    }

    /// A backend with weight 1 and priority 0.
    pub fn backend(self, provider: &str, model: &str) -> Self {
        self.weighted_backend(provider, model, 1, 0)
    }

    pub fn weighted_backend(
        mut self,
        provider: &str,
        model: &str,
        weight: u32,
        priority: u32,
    ) -> Self {
        self.0.spec.backends.push(RouteBackend {
            provider: provider.to_string(),
            model: model.to_string(),
            weight,
            priority,
        });
        self
    }

    /// An `Exact` header match.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_match(name, value, HeaderMatchType::Exact)
    }

    /// A `RegularExpression` header match.
    pub fn header_regex(self, name: &str, pattern: &str) -> Self {
        self.header_match(name, pattern, HeaderMatchType::RegularExpression)
    }

    pub fn header_match(mut self, name: &str, value: &str, kind: HeaderMatchType) -> Self {
        self.0.spec.headers.push(HeaderMatch {
            name: name.to_string(),
            value: value.to_string(),
            type_: kind,
        });
        self
    }

    pub fn request_timeout(mut self, duration: &str) -> Self {
        self.0
            .spec
            .timeouts
            .get_or_insert_with(RouteTimeouts::default)
            .request = Some(duration.to_string());
        self
    }

    pub fn total_timeout(mut self, duration: &str) -> Self {
        self.0
            .spec
            .timeouts
            .get_or_insert_with(RouteTimeouts::default)
            .total = Some(duration.to_string());
        self
    }

    pub fn retry(mut self, retry: RouteRetry) -> Self {
        self.0.spec.retry = Some(retry);
        self
    }

    pub fn build(self) -> AIRoute {
        self.0
    }
}

impl From<RouteBuilder> for Object {
    fn from(builder: RouteBuilder) -> Self {
        Object::Route(builder.0)
    }
}

// === AIConsumer ===

/// Builds an `AIConsumer`. Starts with no keys.
#[derive(Clone, Debug)]
pub struct ConsumerBuilder(pub AIConsumer);

pub fn consumer(name: &str) -> ConsumerBuilder {
    let mut object = AIConsumer::new(
        name,
        AIConsumerSpec {
            keys: Vec::new(),
            allowed_models: Vec::new(),
            allowed_routes: Vec::new(),
        },
    );
    object.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    ConsumerBuilder(object)
}

metadata_methods!(ConsumerBuilder);

impl ConsumerBuilder {
    /// A gateway key in Secret `name` under `key`.
    pub fn key(mut self, name: &str, key: &str) -> Self {
        self.0.spec.keys.push(ConsumerKey {
            secret_ref: secret_ref(name, key),
        });
        self
    }

    pub fn allowed_models<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0
            .spec
            .allowed_models
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// An allowed AIRoute in the consumer's namespace.
    pub fn allowed_route(mut self, name: &str) -> Self {
        self.0.spec.allowed_routes.push(RouteReference {
            name: name.to_string(),
            namespace: None,
        });
        self
    }

    /// An allowed AIRoute in another namespace.
    pub fn allowed_route_in(mut self, namespace: &str, name: &str) -> Self {
        self.0.spec.allowed_routes.push(RouteReference {
            name: name.to_string(),
            namespace: Some(namespace.to_string()),
        });
        self
    }

    pub fn build(self) -> AIConsumer {
        self.0
    }
}

impl From<ConsumerBuilder> for Object {
    fn from(builder: ConsumerBuilder) -> Self {
        Object::Consumer(builder.0)
    }
}

// === AIQuota ===

/// Builds an `AIQuota`. Starts with an empty target and no limits.
#[derive(Clone, Debug)]
pub struct QuotaBuilder(pub AIQuota);

pub fn quota(name: &str) -> QuotaBuilder {
    let mut object = AIQuota::new(
        name,
        AIQuotaSpec {
            target: QuotaTarget::default(),
            limits: Vec::new(),
            failure_policy: FailurePolicy::default(),
            scope: Default::default(),
            default_output_tokens: None,
            mid_stream: Default::default(),
            fallback_route: None,
        },
    );
    object.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    QuotaBuilder(object)
}

metadata_methods!(QuotaBuilder);

impl QuotaBuilder {
    pub fn limit(mut self, metric: QuotaMetric, max: f64, window: QuotaWindow) -> Self {
        self.0.spec.limits.push(QuotaLimit {
            metric,
            max,
            window,
        });
        self
    }

    pub fn fallback_route(mut self, name: &str) -> Self {
        self.0.spec.fallback_route = Some(name.to_string());
        self
    }

    /// `limit(Requests, max, Minute)`.
    pub fn requests_per_minute(self, max: f64) -> Self {
        self.limit(QuotaMetric::Requests, max, QuotaWindow::Minute)
    }

    pub fn consumers<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0
            .spec
            .target
            .consumers
            .extend(names.into_iter().map(Into::into));
        self
    }

    pub fn routes<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0
            .spec
            .target
            .routes
            .extend(names.into_iter().map(Into::into));
        self
    }

    pub fn models<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.0
            .spec
            .target
            .models
            .extend(names.into_iter().map(Into::into));
        self
    }

    fn selector(&mut self) -> &mut LabelSelector {
        self.0
            .spec
            .target
            .consumer_selector
            .get_or_insert_with(LabelSelector::default)
    }

    /// `consumerSelector.matchLabels[key] = value`.
    pub fn selector_label(mut self, key: &str, value: &str) -> Self {
        self.selector()
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// A `consumerSelector.matchExpressions` entry.
    pub fn selector_expression(mut self, key: &str, operator: &str, values: &[&str]) -> Self {
        self.selector()
            .match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement {
                key: key.to_string(),
                operator: operator.to_string(),
                values: Some(values.iter().map(ToString::to_string).collect()),
            });
        self
    }

    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.0.spec.failure_policy = policy;
        self
    }

    pub fn build(self) -> AIQuota {
        self.0
    }
}

impl From<QuotaBuilder> for Object {
    fn from(builder: QuotaBuilder) -> Self {
        Object::Quota(builder.0)
    }
}

// === Secret ===

/// Builds a `Secret`. Starts empty (no `data`, no `stringData`).
#[derive(Clone, Debug)]
pub struct SecretBuilder(pub Secret);

pub fn secret(name: &str) -> SecretBuilder {
    SecretBuilder(Secret {
        metadata: meta(name),
        ..Secret::default()
    })
}

metadata_methods!(SecretBuilder);

impl SecretBuilder {
    /// A `stringData` entry.
    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.0
            .string_data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// A `data` entry (raw bytes, as decoded from base64).
    pub fn data(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.0
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), ByteString(value.into()));
        self
    }

    pub fn build(self) -> Secret {
        self.0
    }
}

impl From<SecretBuilder> for Object {
    fn from(builder: SecretBuilder) -> Self {
        Object::Secret(builder.0)
    }
}

// === Inputs ===

/// Collects objects in insertion order, then builds `Inputs` with `Inputs::from_objects`.
#[derive(Clone, Debug, Default)]
pub struct InputsBuilder {
    pub objects: Vec<Object>,
    pub platform_namespace: Option<String>,
    pub namespace_labels: Vec<(String, String, String)>,
    pub standalone: bool,
}

pub fn inputs() -> InputsBuilder {
    InputsBuilder::default()
}

impl InputsBuilder {
    pub fn with(mut self, object: impl Into<Object>) -> Self {
        self.objects.push(object.into());
        self
    }

    /// Adds a consumer `probe` in `namespace` with no allowlists and a key of its own,
    /// whose route table [`served`] reads: what an unrestricted consumer there reaches.
    pub fn probe(self, namespace: &str) -> Self {
        let secret_name = format!("probe-key-{namespace}");
        self.with(
            secret(&secret_name)
                .namespace(namespace)
                .string("key", &format!("sk-probe-{namespace}-7Hq2xLw9Zc4Rv8Tb")),
        )
        .with(
            consumer("probe")
                .namespace(namespace)
                .key(&secret_name, "key"),
        )
    }

    pub fn platform(mut self, namespace: &str) -> Self {
        self.platform_namespace = Some(namespace.to_string());
        self
    }

    pub fn namespace_label(mut self, namespace: &str, label: &str, value: &str) -> Self {
        self.namespace_labels
            .push((namespace.into(), label.into(), value.into()));
        self
    }

    pub fn standalone(mut self) -> Self {
        self.standalone = true;
        self
    }

    pub fn build(&self) -> Inputs {
        let mut inputs = Inputs::from_objects(self.objects.clone());
        inputs.platform_namespace = self.platform_namespace.clone();
        inputs.standalone = self.standalone;
        for (namespace, label, value) in &self.namespace_labels {
            inputs
                .namespaces
                .entry(namespace.clone())
                .or_default()
                .insert(label.clone(), value.clone());
        }
        inputs
    }

    pub fn compile(&self) -> Compiled {
        compile(&self.build())
    }
}

/// The route table of consumer `namespace/name`: model name to route ids, in order.
pub fn table_of(
    compiled: &Compiled,
    namespace: &str,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let consumer = &compiled.snapshot.consumers[&format!("{namespace}/{name}")];
    compiled.snapshot.route_tables[consumer.route_table]
        .models
        .clone()
}

/// What the probe consumer of `namespace` reaches (see [`InputsBuilder::probe`]).
pub fn served(
    compiled: &Compiled,
    namespace: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    table_of(compiled, namespace, "probe")
}

/// Shorthand for the key of an object in namespace `default`.
pub fn key(kind: ObjectKind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, DEFAULT_NAMESPACE, name)
}
