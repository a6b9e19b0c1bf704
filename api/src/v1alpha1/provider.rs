//! `AIProvider`: one upstream account (an API endpoint and its credentials) and the
//! models it serves, with their prices.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DURATION_PATTERN, ObjectStatus, SecretKeyRef};

/// An upstream LLM account: its API type, endpoint, credentials and models.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "AIProvider",
    plural = "aiproviders",
    shortname = "aip",
    category = "switchboard",
    namespaced,
    status = "ObjectStatus",
    doc = "An upstream LLM provider account: API type, endpoint, credentials, models and prices.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        priority = 1
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type == 'echo' || has(self.auth)")
    .message("spec.auth is required for every provider type except echo")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!(self.type in ['openai-compatible', 'azure-openai']) || has(self.endpoint)")
    .message("spec.endpoint is required for openai-compatible and azure-openai providers")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.type != 'azure-openai' || has(self.azure)")
    .message("spec.azure (with apiVersion) is required for azure-openai providers")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.type == 'anthropic' || !has(self.anthropic)")
    .message("spec.anthropic applies only to providers of type anthropic"))]
#[x_kube(validation = Rule::new("self.type == 'echo' || !has(self.echo)")
    .message("spec.echo applies only to providers of type echo"))]
#[serde(rename_all = "camelCase")]
pub struct AIProviderSpec {
    /// The provider's API: `openai`, `azure-openai`, `openai-compatible` (vLLM, Ollama,
    /// Mistral, Groq, Together, DeepSeek and other OpenAI-shaped APIs), `anthropic`
    /// (Messages API), `gemini` (Google Generative Language API) or `echo` (built in,
    /// deterministic, for demos and tests; needs no credentials).
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// Base URL of the API, up to and including the version path, for example
    /// `https://api.openai.com/v1` or `http://vllm.inference:8000/v1`. For azure-openai,
    /// the resource URL, for example `https://my-resource.openai.azure.com`. Defaults to
    /// `https://api.openai.com/v1` for openai, `https://api.anthropic.com/v1` for
    /// anthropic and `https://generativelanguage.googleapis.com/v1beta` for gemini.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub endpoint: Option<String>,

    /// Where the provider's API key is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ProviderAuth>,

    /// Azure OpenAI settings; required when type is azure-openai.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,

    /// The models this account serves. Routes refer to them by `name`.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub models: Vec<ProviderModel>,

    /// Connection and request timeouts towards this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<ProviderTimeouts>,

    /// TLS settings towards this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProviderTls>,

    /// Anthropic settings; only for type anthropic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic: Option<AnthropicSettings>,

    /// Behaviour of the built-in echo provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoSettings>,
}

/// The API a provider speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    /// OpenAI's API.
    #[serde(rename = "openai")]
    OpenAI,
    /// Azure OpenAI: deployment URLs, `api-version`, `api-key` header.
    #[serde(rename = "azure-openai")]
    AzureOpenAI,
    /// Any API shaped like OpenAI's at a base URL of your choice.
    #[serde(rename = "openai-compatible")]
    OpenAICompatible,
    /// Anthropic's Messages API; requests and responses are translated.
    Anthropic,
    /// Google's Generative Language API (Gemini): generateContent and
    /// streamGenerateContent; requests and responses are translated.
    Gemini,
    /// Built-in deterministic provider: replies with the request's last message.
    Echo,
}

/// Credentials for a provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderAuth {
    /// The Secret key holding the provider's API key.
    pub secret_ref: SecretKeyRef,
}

/// Azure OpenAI settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// The `api-version` query parameter, for example `2024-10-21`.
    #[schemars(length(min = 1, max = 64))]
    pub api_version: String,
}

/// Anthropic settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnthropicSettings {
    /// The `anthropic-version` header sent with every request. Default `2023-06-01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub version: Option<String>,
    /// `max_tokens` sent when the client sets none (Anthropic requires one).
    /// Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub default_max_tokens: Option<u32>,
}

/// A model served by a provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderModel {
    /// Name routes use to refer to this model, for example `gpt-4o`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Model name sent upstream, when it differs from `name`. For azure-openai this is the
    /// deployment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub upstream_name: Option<String>,
    /// Prices in US dollars per million tokens, for cost accounting and budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<ModelPricing>,
}

/// Prices in US dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPricing {
    /// USD per million input (prompt) tokens.
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub input_per_million: f64,
    /// USD per million output (completion) tokens.
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub output_per_million: f64,
    /// USD per million cached input tokens; defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub cached_input_per_million: Option<f64>,
    /// USD per million input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`); defaults to 1.25 times the input price, Anthropic's
    /// 5-minute cache write price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub cache_write_per_million: Option<f64>,
    /// USD per million input tokens written to the prompt cache to be kept an hour
    /// (Anthropic's `cache_control: {ttl: "1h"}`, reported as
    /// `cache_creation.ephemeral_1h_input_tokens`); defaults to twice the input price,
    /// Anthropic's 1-hour cache write price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100000.0))]
    pub cache_write_1h_per_million: Option<f64>,
}

/// Timeouts towards a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTimeouts {
    /// Time to establish a connection (TCP and TLS). Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect: Option<String>,
    /// Time for a whole non-streaming request, or until a stream's response headers
    /// arrive. Default `300s`. A route's `timeouts.request` takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request: Option<String>,
}

/// TLS settings towards a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTls {
    /// PEM-encoded CA certificates to trust in addition to the system roots, for
    /// self-hosted endpoints with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// Skip certificate verification. For development only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Behaviour of the built-in echo provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EchoSettings {
    /// Delay before the response (or the first stream chunk), to imitate a real model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub latency: Option<String>,
    /// Delay between stream chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub chunk_interval: Option<String>,
}
