//! AIProvider pass: endpoint, credentials, models, timeouts and TLS.

use std::collections::BTreeMap;

use url::Url;

use super::inputs::{Inputs, ObjectKey};
use super::refs::{cel_rules, duration_ms, secret_value};
use super::status::{Problem, Verdict};
use crate::snapshot::{
    Anthropic, ApiKey, DEFAULT_CACHE_WRITE_1H_FACTOR, DEFAULT_CACHE_WRITE_FACTOR, Echo, Model,
    Pricing, Provider, Tls,
};
use crate::v1alpha1::condition::reasons;
use crate::v1alpha1::{AIProvider, ObjectStatus, ProviderType};

/// OpenAI's API, the default endpoint for `type: openai`.
pub const OPENAI_DEFAULT_ENDPOINT: &str = "https://api.openai.com/v1";
/// Anthropic's API, the default endpoint for `type: anthropic`.
pub const ANTHROPIC_DEFAULT_ENDPOINT: &str = "https://api.anthropic.com/v1";
/// Google's Generative Language API, the default endpoint for `type: gemini`.
pub const GEMINI_DEFAULT_ENDPOINT: &str = "https://generativelanguage.googleapis.com/v1beta";
/// The Messages API version Switchboard's translation is written against.
pub const ANTHROPIC_DEFAULT_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; sent when the client sets none.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 300_000;

/// Compiles every AIProvider; returns the accepted ones by `namespace/name`.
pub(super) fn compile(
    inputs: &Inputs,
    statuses: &mut BTreeMap<ObjectKey, ObjectStatus>,
) -> BTreeMap<String, Provider> {
    let mut providers = BTreeMap::new();
    for (key, object) in &inputs.providers {
        let mut verdict = Verdict::new(object.metadata.generation);
        if let Some(provider) = compile_one(inputs, key, object, &mut verdict) {
            providers.insert(key.id(), provider);
        }
        statuses.insert(key.clone(), verdict.into_status());
    }
    providers
}

fn compile_one(
    inputs: &Inputs,
    key: &ObjectKey,
    object: &AIProvider,
    verdict: &mut Verdict,
) -> Option<Provider> {
    let spec = &object.spec;
    if let Err(problem) = cel_rules(object) {
        verdict.reject(problem);
    }
    let endpoint = endpoint(spec.type_, spec.endpoint.as_deref()).map_err(|p| verdict.reject(p));

    let api_key = match (&spec.type_, &spec.auth) {
        (ProviderType::Echo, _) => None,
        (_, None) => {
            verdict.reject(Problem::new(
                reasons::INVALID,
                "spec.auth: required for this provider type; point auth.secretRef at the API key",
            ));
            None
        }
        (_, Some(auth)) => {
            match secret_value(inputs, key, &auth.secret_ref, "spec.auth.secretRef") {
                Ok(value) => Some(ApiKey::new(value)),
                Err(problem) => {
                    // A provider without its key cannot serve; keep it out.
                    verdict.unresolved(problem.clone());
                    verdict.reject(problem);
                    None
                }
            }
        }
    };

    let azure_api_version = spec.azure.as_ref().map(|a| a.api_version.clone());
    if spec.type_ == ProviderType::AzureOpenAI && azure_api_version.is_none() {
        verdict.reject(Problem::new(
            reasons::INVALID,
            "spec.azure.apiVersion: required for azure-openai, for example 2024-10-21",
        ));
    }

    let mut models = BTreeMap::new();
    for (i, model) in spec.models.iter().enumerate() {
        let field = format!("spec.models[{i}]");
        if model.name.is_empty() {
            verdict.reject(Problem::new(
                reasons::INVALID,
                format!("{field}.name: must not be empty"),
            ));
            continue;
        }
        let pricing = model.pricing.as_ref().map(|p| Pricing {
            input_per_million: p.input_per_million,
            output_per_million: p.output_per_million,
            cached_input_per_million: p.cached_input_per_million.unwrap_or(p.input_per_million),
            cache_write_per_million: Some(
                p.cache_write_per_million
                    .unwrap_or(p.input_per_million * DEFAULT_CACHE_WRITE_FACTOR),
            ),
            cache_write_1h_per_million: Some(
                p.cache_write_1h_per_million
                    .unwrap_or(p.input_per_million * DEFAULT_CACHE_WRITE_1H_FACTOR),
            ),
        });
        if let Some(p) = &pricing {
            let prices = [
                p.input_per_million,
                p.output_per_million,
                p.cached_input_per_million,
                p.cache_write_per_million(),
                p.cache_write_1h_per_million(),
            ];
            if prices.iter().any(|v| !v.is_finite() || *v < 0.0) {
                verdict.reject(Problem::new(
                    reasons::INVALID,
                    format!("{field}.pricing: prices must be zero or positive numbers"),
                ));
            }
        }
        let compiled = Model {
            upstream_name: model
                .upstream_name
                .clone()
                .unwrap_or_else(|| model.name.clone()),
            pricing,
        };
        if models.insert(model.name.clone(), compiled).is_some() {
            verdict.reject(Problem::new(
                reasons::DUPLICATE_MODEL,
                format!(
                    "{field}.name: model {:?} is listed twice; remove one",
                    model.name
                ),
            ));
        }
    }
    if spec.models.is_empty() {
        verdict.reject(Problem::new(
            reasons::INVALID,
            "spec.models: list at least one model",
        ));
    }

    // A bad duration rejects the provider; reading on still reports every other problem.
    let mut duration = |value: Option<&String>, field: &str| {
        duration_ms(value.map(String::as_str), field).unwrap_or_else(|problem| {
            verdict.reject(problem);
            None
        })
    };
    let timeouts = spec.timeouts.as_ref();
    let connect = duration(
        timeouts.and_then(|t| t.connect.as_ref()),
        "spec.timeouts.connect",
    );
    let request = duration(
        timeouts.and_then(|t| t.request.as_ref()),
        "spec.timeouts.request",
    );
    let echo = spec.echo.as_ref();
    let latency = duration(echo.and_then(|e| e.latency.as_ref()), "spec.echo.latency");
    let interval = duration(
        echo.and_then(|e| e.chunk_interval.as_ref()),
        "spec.echo.chunkInterval",
    );
    let tls = spec.tls.clone().unwrap_or_default();
    if let Some(pem) = &tls.ca_bundle
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        verdict.reject(Problem::new(
            reasons::INVALID,
            "spec.tls.caBundle: not a PEM certificate; paste the CA's -----BEGIN CERTIFICATE----- block",
        ));
    }

    let endpoint = endpoint.ok()?;
    verdict.is_accepted().then(|| Provider {
        kind: spec.type_,
        endpoint,
        api_key,
        azure_api_version,
        anthropic: Anthropic {
            version: spec
                .anthropic
                .as_ref()
                .and_then(|a| a.version.clone())
                .unwrap_or_else(|| ANTHROPIC_DEFAULT_VERSION.to_string()),
            default_max_tokens: spec
                .anthropic
                .as_ref()
                .and_then(|a| a.default_max_tokens)
                .unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS),
        },
        models,
        connect_timeout_ms: connect.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
        request_timeout_ms: request.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
        tls: Tls {
            ca_bundle_pem: tls.ca_bundle,
            insecure_skip_verify: tls.insecure_skip_verify,
        },
        echo: Echo {
            latency_ms: latency.unwrap_or(0),
            chunk_interval_ms: interval.unwrap_or(0),
        },
    })
}

/// The base URL without a trailing slash, defaulted for the public APIs.
fn endpoint(kind: ProviderType, endpoint: Option<&str>) -> Result<String, Problem> {
    let raw = match (kind, endpoint) {
        (_, Some(raw)) => raw,
        (ProviderType::OpenAI, None) => OPENAI_DEFAULT_ENDPOINT,
        (ProviderType::Anthropic, None) => ANTHROPIC_DEFAULT_ENDPOINT,
        (ProviderType::Gemini, None) => GEMINI_DEFAULT_ENDPOINT,
        (ProviderType::Echo, None) => return Ok("echo://local".to_string()),
        (_, None) => {
            return Err(Problem::new(
                reasons::INVALID,
                "spec.endpoint: required for this provider type, for example http://vllm:8000/v1",
            ));
        }
    };
    let url = Url::parse(raw).map_err(|e| {
        Problem::new(
            reasons::INVALID,
            format!(
                "spec.endpoint: not a valid URL ({e}); write one like https://api.example.com/v1"
            ),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the URL holds credentials.
        return Err(Problem::new(
            reasons::INVALID,
            "spec.endpoint: must not carry credentials; put the key in a Secret and use spec.auth",
        ));
    }
    let bad = |why: &str| {
        Problem::new(
            reasons::INVALID,
            format!("spec.endpoint: {raw:?} {why}; write a URL like https://api.example.com/v1"),
        )
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}
