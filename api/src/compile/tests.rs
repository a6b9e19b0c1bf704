//! Unit tests for `compile()`: one test (or more) per status reason, Secrets handling,
//! sealing, and a property test that compile does not depend on arrival order.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::fixtures::*;
use super::{Compiled, Inputs, Object, ObjectKey, ObjectKind, compile};
use crate::snapshot::{RouteTable, Snapshot, hash_key};
use crate::v1alpha1::condition::{reasons, types};
use crate::v1alpha1::{
    Condition, ConditionStatus, FailurePolicy, MidStreamPolicy, ObjectStatus, ProviderType,
    QuotaMetric, QuotaScope, QuotaWindow,
};

// === helpers ===

fn pkey(name: &str) -> ObjectKey {
    key(ObjectKind::AIProvider, name)
}

fn rkey(name: &str) -> ObjectKey {
    key(ObjectKind::AIRoute, name)
}

fn ckey(name: &str) -> ObjectKey {
    key(ObjectKind::AIConsumer, name)
}

fn qkey(name: &str) -> ObjectKey {
    key(ObjectKind::AIQuota, name)
}

#[track_caller]
fn status<'a>(compiled: &'a Compiled, key: &ObjectKey) -> &'a ObjectStatus {
    compiled
        .statuses
        .get(key)
        .unwrap_or_else(|| panic!("no status for {key}; statuses: {:#?}", compiled.statuses))
}

#[track_caller]
fn condition<'a>(compiled: &'a Compiled, key: &ObjectKey, type_: &str) -> &'a Condition {
    status(compiled, key)
        .condition(type_)
        .unwrap_or_else(|| panic!("{key} has no {type_} condition"))
}

/// Asserts one condition's status and reason, and that its message contains every
/// `needle` (the field and what to fix).
#[track_caller]
fn assert_condition(
    compiled: &Compiled,
    key: &ObjectKey,
    type_: &str,
    expected: ConditionStatus,
    reason: &str,
    needles: &[&str],
) {
    let c = condition(compiled, key, type_);
    assert_eq!(c.status, expected, "{key} {type_}: {c:#?}");
    assert_eq!(c.reason, reason, "{key} {type_}: {c:#?}");
    for needle in needles {
        assert!(
            c.message.contains(needle),
            "{key} {type_} message {:?} should contain {needle:?}",
            c.message
        );
    }
}

/// Both conditions `True`, with the success reasons and no message.
#[track_caller]
fn assert_healthy(compiled: &Compiled, key: &ObjectKey) {
    assert_condition(
        compiled,
        key,
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_condition(
        compiled,
        key,
        types::RESOLVED_REFS,
        ConditionStatus::True,
        reasons::RESOLVED_REFS,
        &[],
    );
    for c in &status(compiled, key).conditions {
        assert!(
            c.message.is_empty(),
            "{key}: healthy condition has a message: {c:#?}"
        );
    }
}

#[track_caller]
fn assert_rejected(compiled: &Compiled, key: &ObjectKey, reason: &str, needles: &[&str]) {
    assert_condition(
        compiled,
        key,
        types::ACCEPTED,
        ConditionStatus::False,
        reason,
        needles,
    );
    assert!(!status(compiled, key).is_accepted());
}

#[track_caller]
fn assert_refs_resolved(compiled: &Compiled, key: &ObjectKey) {
    assert_condition(
        compiled,
        key,
        types::RESOLVED_REFS,
        ConditionStatus::True,
        reasons::RESOLVED_REFS,
        &[],
    );
}

#[track_caller]
fn assert_unresolved(compiled: &Compiled, key: &ObjectKey, reason: &str, needles: &[&str]) {
    assert_condition(
        compiled,
        key,
        types::RESOLVED_REFS,
        ConditionStatus::False,
        reason,
        needles,
    );
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(ToString::to_string).collect()
}

const OPENAI_KEY: &str = "sk-test-provider-secret-0001";
const APP_KEY: &str = "sb-gateway-key-for-app-0001";

/// An accepted openai provider `openai` serving gpt-4o and gpt-4o-mini, with its Secret.
fn openai_world() -> InputsBuilder {
    inputs()
        .with(secret("openai-key").string("apiKey", OPENAI_KEY))
        .with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .models(["gpt-4o", "gpt-4o-mini"]),
        )
}

// === happy paths ===

#[test]
fn happy_path_every_kind_is_accepted_and_in_the_snapshot() {
    let compiled = openai_world()
        .with(
            route("chat")
                .models(["gpt-4o", "smart"])
                .backend("openai", "gpt-4o"),
        )
        .with(secret("app-key").string("key", APP_KEY))
        .with(
            consumer("app")
                .key("app-key", "key")
                .allowed_models(["gpt-4o"])
                .allowed_route("chat")
                .label("team", "red"),
        )
        .with(
            quota("app-rpm")
                .consumers(["app"])
                .routes(["chat"])
                .models(["gpt-4o"])
                .requests_per_minute(60.0)
                .failure_policy(FailurePolicy::FailClosed),
        )
        .compile();

    for key in [pkey("openai"), rkey("chat"), ckey("app"), qkey("app-rpm")] {
        assert_healthy(&compiled, &key);
    }
    assert_eq!(compiled.problems().count(), 0);
    assert_eq!(compiled.statuses.len(), 4, "Secrets get no status");

    let snapshot = &compiled.snapshot;
    let provider = &snapshot.providers["default/openai"];
    assert_eq!(provider.kind, ProviderType::OpenAI);
    assert_eq!(provider.endpoint, "https://api.openai.com/v1");
    assert_eq!(
        provider.api_key.as_ref().map(|k| k.expose()),
        Some(OPENAI_KEY)
    );
    assert_eq!(
        provider.models.keys().collect::<Vec<_>>(),
        ["gpt-4o", "gpt-4o-mini"]
    );

    let route = &snapshot.routes["default/chat"];
    assert_eq!(route.models, ids(["gpt-4o", "smart"]));
    assert_eq!(route.backends.len(), 1);
    assert_eq!(route.backends[0].provider, "default/openai");
    assert_eq!(route.backends[0].model, "gpt-4o");
    assert_eq!(
        (route.backends[0].weight, route.backends[0].priority),
        (1, 0)
    );
    let table = table_of(&compiled, "default", "app");
    assert_eq!(table["gpt-4o"], ["default/chat"]);
    assert!(
        !table.contains_key("smart"),
        "allowedModels narrows the consumer's table"
    );
    assert!(!table.contains_key("gpt-4o-mini"));

    let consumer = &snapshot.consumers["default/app"];
    assert_eq!(consumer.key_hashes, ids([hash_key(APP_KEY).as_str()]));
    assert_eq!(snapshot.route_tables.len(), 1);
    assert_eq!(consumer.route_table, 0);
    assert_eq!(consumer.labels.get("team").map(String::as_str), Some("red"));

    let quota = &snapshot.quotas["default/app-rpm"];
    assert_eq!(quota.consumers, Some(ids(["default/app"])));
    assert_eq!(quota.routes, Some(ids(["default/chat"])));
    assert_eq!(quota.models, Some(ids(["gpt-4o"])));
    assert_eq!(quota.limits.len(), 1);
    assert_eq!(quota.limits[0].metric, QuotaMetric::Requests);
    assert_eq!(quota.limits[0].max, 60.0);
    assert_eq!(quota.limits[0].window, QuotaWindow::Minute);
    assert_eq!(quota.failure_policy, FailurePolicy::FailClosed);
}

#[test]
fn observed_generation_is_copied_from_metadata_generation() {
    let compiled = openai_world()
        .with(
            route("good")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .generation(7),
        )
        .with(
            route("bad")
                .models(["x"])
                .backend("missing", "x")
                .generation(3),
        )
        .with(route("none").models(["y"]).backend("openai", "gpt-4o-mini"))
        .with(provider("p").echo().model("m").generation(11))
        .compile();

    for (name, kind, generation) in [
        ("good", ObjectKind::AIRoute, Some(7)),
        ("bad", ObjectKind::AIRoute, Some(3)),
        ("none", ObjectKind::AIRoute, None),
        ("p", ObjectKind::AIProvider, Some(11)),
    ] {
        let status = status(&compiled, &key(kind, name));
        assert_eq!(status.observed_generation, generation, "{name}");
        let expected = if kind == ObjectKind::AIRoute && status.is_accepted() {
            3
        } else {
            2
        };
        assert_eq!(
            status.conditions.len(),
            expected,
            "{name}: Accepted, ResolvedRefs, and Reachable for accepted routes"
        );
        for c in &status.conditions {
            assert_eq!(c.observed_generation, generation, "{name} {}", c.type_);
            assert!(c.last_transition_time.is_none(), "compile stamps no time");
        }
    }
    assert!(!status(&compiled, &rkey("bad")).is_accepted());
}

#[test]
fn provider_fields_compile_into_the_snapshot() {
    let compiled = inputs()
        .with(secret("k").string("apiKey", "sk-local"))
        .with(
            provider("vllm")
                .openai_compatible()
                .endpoint("http://vllm.inference:8000/v1/")
                .secret("k", "apiKey")
                .model_as("llama", "meta-llama/Llama-3.1-8B")
                .pricing(1.0, 2.0, None)
                .model("qwen")
                .pricing(1.0, 2.0, Some(0.5))
                .connect_timeout("1m30s")
                .request_timeout("500ms")
                .ca_bundle("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
                .insecure_skip_verify(),
        )
        .with(
            provider("azure")
                .azure_openai()
                .endpoint("https://res.openai.azure.com")
                .azure_api_version("2024-10-21")
                .secret("k", "apiKey")
                .model_as("gpt-4o", "my-deployment"),
        )
        .with(
            provider("echo")
                .echo()
                .model("echo")
                .echo_latency("250ms")
                .echo_chunk_interval("20ms"),
        )
        .compile();
    for name in ["vllm", "azure", "echo"] {
        assert_healthy(&compiled, &pkey(name));
    }

    let vllm = &compiled.snapshot.providers["default/vllm"];
    assert_eq!(
        vllm.endpoint, "http://vllm.inference:8000/v1",
        "trailing slash trimmed"
    );
    assert_eq!(
        vllm.models["llama"].upstream_name,
        "meta-llama/Llama-3.1-8B"
    );
    assert_eq!(
        vllm.models["qwen"].upstream_name, "qwen",
        "defaults to name"
    );
    let llama = vllm.models["llama"].pricing.expect("pricing");
    assert_eq!(
        llama.cached_input_per_million, 1.0,
        "defaults to input price"
    );
    let qwen = vllm.models["qwen"].pricing.expect("pricing");
    assert_eq!(qwen.cached_input_per_million, 0.5);
    // Unset: 1.25 x input, Anthropic's 5-minute write price, compiled in.
    assert_eq!(llama.cache_write_per_million, Some(1.25));
    // And 2 x input for writes kept an hour.
    assert_eq!(llama.cache_write_1h_per_million, Some(2.0));
    assert_eq!(vllm.connect_timeout_ms, 90_000);
    assert_eq!(vllm.request_timeout_ms, 500);
    assert!(vllm.tls.insecure_skip_verify);
    assert!(
        vllm.tls
            .ca_bundle_pem
            .as_deref()
            .is_some_and(|p| p.contains("MIIB"))
    );

    let azure = &compiled.snapshot.providers["default/azure"];
    assert_eq!(azure.kind, ProviderType::AzureOpenAI);
    assert_eq!(azure.azure_api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(azure.models["gpt-4o"].upstream_name, "my-deployment");
    assert_eq!(azure.connect_timeout_ms, 10_000, "default connect timeout");
    assert_eq!(azure.request_timeout_ms, 300_000, "default request timeout");

    let echo = &compiled.snapshot.providers["default/echo"];
    assert!(echo.api_key.is_none(), "echo needs no credentials");
    assert_eq!(
        (echo.echo.latency_ms, echo.echo.chunk_interval_ms),
        (250, 20)
    );
}

#[test]
fn route_fields_compile_into_the_snapshot() {
    let compiled = openai_world()
        .with(provider("echo").model("echo"))
        .with(
            route("chat")
                .models(["gpt-4o"])
                .header("X-Team", "red")
                .header_regex("X-Env", "prod|staging")
                .weighted_backend("openai", "gpt-4o", 3, 0)
                .weighted_backend("echo", "echo", 1, 2)
                .request_timeout("2m"),
        )
        .compile();
    assert_healthy(&compiled, &rkey("chat"));
    let route = &compiled.snapshot.routes["default/chat"];
    assert_eq!(route.request_timeout_ms, Some(120_000));
    assert_eq!(
        route.headers[0].name, "x-team",
        "header names are lower-cased"
    );
    assert_eq!(route.headers[0].value, "red");
    assert_eq!(route.headers[1].name, "x-env");
    assert_eq!(
        route.headers[1].value, "^(?:prod|staging)$",
        "regex is anchored"
    );
    let backends: Vec<_> = route
        .backends
        .iter()
        .map(|b| (b.provider.as_str(), b.model.as_str(), b.weight, b.priority))
        .collect();
    assert_eq!(
        backends,
        [
            ("default/openai", "gpt-4o", 3, 0),
            ("default/echo", "echo", 1, 2)
        ],
        "in the order the AIRoute lists them"
    );
}

#[test]
fn quota_consumer_selector_matches_labels_in_its_own_namespace() {
    let compiled = inputs()
        .with(secret("k1").string("key", "red-team-gateway-key-001"))
        .with(secret("k2").string("key", "blue-team-gateway-key-001"))
        .with(
            secret("k3")
                .string("key", "red-team-gateway-key-other")
                .namespace("other"),
        )
        .with(consumer("red").key("k1", "key").label("team", "red"))
        .with(consumer("blue").key("k2", "key").label("team", "blue"))
        .with(
            consumer("red-elsewhere")
                .namespace("other")
                .key("k3", "key")
                .label("team", "red"),
        )
        .with(
            quota("red-only")
                .selector_label("team", "red")
                .requests_per_minute(10.0),
        )
        .with(
            quota("not-blue")
                .selector_expression("team", "NotIn", &["blue"])
                .requests_per_minute(10.0),
        )
        .with(quota("everyone").limit(QuotaMetric::CostUsd, 12.5, QuotaWindow::Month))
        .compile();
    for name in ["red-only", "not-blue", "everyone"] {
        assert_healthy(&compiled, &qkey(name));
    }
    let quotas = &compiled.snapshot.quotas;
    assert_eq!(
        quotas["default/red-only"].consumers,
        Some(ids(["default/red"]))
    );
    assert_eq!(
        quotas["default/not-blue"].consumers,
        Some(ids(["default/red"]))
    );
    let everyone = &quotas["default/everyone"];
    assert_eq!(
        everyone.consumers,
        Some(ids(["default/blue", "default/red"])),
        "no target means every consumer of the quota's namespace, not another's"
    );
    assert_eq!(everyone.routes, None);
    assert_eq!(everyone.models, None);
    assert_eq!(everyone.limits[0].max, 12.5, "CostUSD may be fractional");
    assert_eq!(everyone.failure_policy, FailurePolicy::FailOpen, "default");
}

#[test]
fn quota_fallback_route_resolves_or_leaves_the_quota_refusing() {
    let compiled = openai_world()
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .with(
            route("cheap")
                .models(["mini"])
                .backend("openai", "gpt-4o-mini"),
        )
        .with(
            quota("with-fallback")
                .requests_per_minute(1.0)
                .fallback_route("cheap"),
        )
        .with(
            quota("dangling")
                .requests_per_minute(1.0)
                .fallback_route("nowhere"),
        )
        .compile();
    assert_healthy(&compiled, &qkey("with-fallback"));
    let quotas = &compiled.snapshot.quotas;
    let with_fallback = &quotas["default/with-fallback"];
    assert_eq!(
        with_fallback.fallback_route.as_deref(),
        Some("default/cheap")
    );
    assert_eq!(with_fallback.scope, QuotaScope::PerConsumer, "default");
    assert_eq!(with_fallback.mid_stream, MidStreamPolicy::Cut, "default");
    assert_eq!(with_fallback.default_output_tokens, 1024, "default");

    // A missing fallback route does not lift the limit: the quota stays, refusing.
    assert_eq!(quotas["default/dangling"].fallback_route, None);
    assert!(compiled.statuses[&qkey("dangling")].is_accepted());
    assert_unresolved(
        &compiled,
        &qkey("dangling"),
        reasons::ROUTE_NOT_FOUND,
        &["spec.fallbackRoute", "nowhere"],
    );
}

// === SecretNotFound ===

#[test]
fn secret_not_found_rejects_provider() {
    let compiled = inputs()
        .with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .model("gpt-4o"),
        )
        .compile();
    let needles = [
        "spec.auth.secretRef",
        "Secret \"openai-key\" not found",
        "namespace \"default\"",
        "create it or fix the name",
    ];
    assert_rejected(
        &compiled,
        &pkey("openai"),
        reasons::SECRET_NOT_FOUND,
        &needles,
    );
    assert_unresolved(
        &compiled,
        &pkey("openai"),
        reasons::SECRET_NOT_FOUND,
        &needles,
    );
    assert!(compiled.snapshot.providers.is_empty());
}

#[test]
fn secret_in_another_namespace_is_not_found() {
    let compiled = inputs()
        .with(
            secret("openai-key")
                .namespace("other")
                .string("apiKey", OPENAI_KEY),
        )
        .with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .model("gpt-4o"),
        )
        .compile();
    assert_rejected(
        &compiled,
        &pkey("openai"),
        reasons::SECRET_NOT_FOUND,
        &["Secret \"openai-key\""],
    );
    assert!(compiled.snapshot.providers.is_empty());
}

#[test]
fn secret_not_found_leaves_consumer_without_keys() {
    let compiled = inputs()
        .with(consumer("app").key("app-key", "key"))
        .compile();
    assert_unresolved(
        &compiled,
        &ckey("app"),
        reasons::SECRET_NOT_FOUND,
        &[
            "spec.keys[0].secretRef",
            "Secret \"app-key\" not found",
            "create it or fix the name",
        ],
    );
    assert_rejected(
        &compiled,
        &ckey("app"),
        reasons::NO_VALID_KEYS,
        &["spec.keys"],
    );
    assert!(compiled.snapshot.consumers.is_empty());
}

// === SecretKeyNotFound ===

#[test]
fn secret_key_not_found_when_key_is_missing() {
    let compiled = inputs()
        .with(secret("openai-key").string("other", OPENAI_KEY))
        .with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .model("gpt-4o"),
        )
        .compile();
    let needles = [
        "spec.auth.secretRef",
        "Secret \"openai-key\" has no non-empty UTF-8 key \"apiKey\"",
        "add it or fix the key",
    ];
    assert_rejected(
        &compiled,
        &pkey("openai"),
        reasons::SECRET_KEY_NOT_FOUND,
        &needles,
    );
    assert_unresolved(
        &compiled,
        &pkey("openai"),
        reasons::SECRET_KEY_NOT_FOUND,
        &needles,
    );
    assert!(compiled.snapshot.providers.is_empty());
}

#[test]
fn secret_key_not_found_when_value_is_empty_or_blank() {
    for (label, secret) in [
        (
            "empty stringData",
            secret("openai-key").string("apiKey", ""),
        ),
        (
            "blank stringData",
            secret("openai-key").string("apiKey", "  \n\t"),
        ),
        (
            "empty data",
            secret("openai-key").data("apiKey", Vec::new()),
        ),
        (
            "blank data",
            secret("openai-key").data("apiKey", b" \n".to_vec()),
        ),
        (
            "non-UTF-8 data",
            secret("openai-key").data("apiKey", vec![0xff, 0xfe, 0x41]),
        ),
    ] {
        let compiled = inputs()
            .with(secret)
            .with(
                provider("openai")
                    .openai()
                    .secret("openai-key", "apiKey")
                    .model("gpt-4o"),
            )
            .compile();
        let c = condition(&compiled, &pkey("openai"), types::ACCEPTED);
        assert_eq!(c.reason, reasons::SECRET_KEY_NOT_FOUND, "{label}: {c:#?}");
        assert!(c.message.contains("\"apiKey\""), "{label}: {}", c.message);
        assert!(compiled.snapshot.providers.is_empty(), "{label}");
    }
}

// === ProviderNotFound / ProviderNotAccepted / UnknownModel / NoValidBackends ===

#[test]
fn provider_not_found_rejects_route_without_other_backends() {
    let compiled = openai_world()
        .with(
            route("chat")
                .models(["gpt-4o"])
                .backend("anthropic", "claude"),
        )
        .compile();
    assert_unresolved(
        &compiled,
        &rkey("chat"),
        reasons::PROVIDER_NOT_FOUND,
        &[
            "spec.backends[0].provider",
            "AIProvider \"anthropic\" not found in namespace \"default\"",
            "create it or fix the name",
        ],
    );
    assert_rejected(
        &compiled,
        &rkey("chat"),
        reasons::NO_VALID_BACKENDS,
        &["spec.backends", "see the ResolvedRefs condition"],
    );
    assert!(compiled.snapshot.routes.is_empty());
    assert!(
        compiled
            .snapshot
            .route_tables
            .iter()
            .all(|t| t.models.is_empty()),
        "a rejected route serves no model"
    );
}

#[test]
fn provider_in_another_namespace_is_not_found() {
    let compiled = openai_world()
        .with(
            route("chat")
                .namespace("team")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o"),
        )
        .compile();
    let key = ObjectKey::new(ObjectKind::AIRoute, "team", "chat");
    assert_unresolved(
        &compiled,
        &key,
        reasons::PROVIDER_NOT_FOUND,
        &["namespace \"team\""],
    );
    assert_rejected(&compiled, &key, reasons::NO_VALID_BACKENDS, &[]);
}

#[test]
fn one_dangling_backend_keeps_the_route_with_the_rest() {
    let compiled = openai_world()
        .with(
            route("chat")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .backend("anthropic", "claude"),
        )
        .compile();
    assert_condition(
        &compiled,
        &rkey("chat"),
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_unresolved(
        &compiled,
        &rkey("chat"),
        reasons::PROVIDER_NOT_FOUND,
        &["spec.backends[1].provider", "\"anthropic\""],
    );
    let route = &compiled.snapshot.routes["default/chat"];
    assert_eq!(route.backends.len(), 1);
    assert_eq!(route.backends[0].provider, "default/openai");
    assert_eq!(compiled.problems().count(), 1);
}

#[test]
fn provider_not_accepted_rejects_route() {
    let compiled = inputs()
        .with(
            provider("openai")
                .openai()
                .secret("missing", "apiKey")
                .model("gpt-4o"),
        )
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .compile();
    assert_unresolved(
        &compiled,
        &rkey("chat"),
        reasons::PROVIDER_NOT_ACCEPTED,
        &[
            "spec.backends[0].provider",
            "AIProvider \"openai\" is not accepted",
            "see its status conditions",
        ],
    );
    assert_rejected(&compiled, &rkey("chat"), reasons::NO_VALID_BACKENDS, &[]);
    assert!(compiled.snapshot.routes.is_empty());
}

#[test]
fn unknown_model_names_the_models_the_provider_lists() {
    let compiled = openai_world()
        .with(route("chat").models(["gpt-5"]).backend("openai", "gpt-5"))
        .compile();
    assert_unresolved(
        &compiled,
        &rkey("chat"),
        reasons::UNKNOWN_MODEL,
        &[
            "spec.backends[0].model",
            "AIProvider \"openai\" does not list model \"gpt-5\"",
            "add it to the provider's spec.models",
            "gpt-4o, gpt-4o-mini",
        ],
    );
    assert_rejected(&compiled, &rkey("chat"), reasons::NO_VALID_BACKENDS, &[]);
    assert!(compiled.snapshot.routes.is_empty());
}

#[test]
fn no_valid_backends_when_only_zero_weight_backends_resolve() {
    // The CEL rule passes (the dangling backend has a weight), but the only backend
    // that resolves has weight 0, so nothing can take traffic.
    let compiled = openai_world()
        .with(
            route("chat")
                .models(["gpt-4o"])
                .weighted_backend("openai", "gpt-4o", 0, 0)
                .weighted_backend("ghost", "gpt-4o", 5, 0),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("chat"),
        reasons::NO_VALID_BACKENDS,
        &["spec.backends", "no backend with a weight above 0 resolved"],
    );
    assert_unresolved(
        &compiled,
        &rkey("chat"),
        reasons::PROVIDER_NOT_FOUND,
        &["\"ghost\""],
    );
    assert!(compiled.snapshot.routes.is_empty());
}

// === RouteNotFound / ConsumerNotFound ===

#[test]
fn route_not_found_in_consumer_allowed_routes_keeps_consumer() {
    let compiled = openai_world()
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .with(
            route("team-chat")
                .namespace("team")
                .models(["team"])
                .backend("x", "y"),
        )
        .with(secret("app-key").string("key", APP_KEY))
        .with(
            consumer("app")
                .key("app-key", "key")
                .allowed_route("chat")
                .allowed_route("ghost")
                .allowed_route_in("team", "team-chat"),
        )
        .compile();
    assert_condition(
        &compiled,
        &ckey("app"),
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_unresolved(
        &compiled,
        &ckey("app"),
        reasons::ROUTE_NOT_FOUND,
        &[
            "spec.allowedRoutes[1]",
            "AIRoute default/ghost not found",
            "create it or fix the name",
        ],
    );
    let message = &condition(&compiled, &ckey("app"), types::RESOLVED_REFS).message;
    assert!(
        message.contains(
            "spec.allowedRoutes[2]: AIRoute team/team-chat does not exist or does not allow \
             consumers of namespace \"default\""
        ),
        "a route of another namespace that did not grant this one is refused: {message}"
    );
    assert_eq!(
        table_of(&compiled, "default", "app")
            .into_values()
            .flatten()
            .collect::<Vec<_>>(),
        ["default/chat"],
        "naming routes grants nothing"
    );
}

#[test]
fn route_not_found_in_quota_target_keeps_quota() {
    let compiled = openai_world()
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .with(
            quota("q")
                .routes(["chat", "ghost"])
                .requests_per_minute(5.0),
        )
        .compile();
    assert_condition(
        &compiled,
        &qkey("q"),
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_unresolved(
        &compiled,
        &qkey("q"),
        reasons::ROUTE_NOT_FOUND,
        &[
            "spec.target.routes[1]",
            "AIRoute \"ghost\" not found in namespace \"default\"",
        ],
    );
    assert_eq!(
        compiled.snapshot.quotas["default/q"].routes,
        Some(ids(["default/chat", "default/ghost"])),
        "the quota stays in force"
    );
}

#[test]
fn consumer_not_found_in_quota_target_keeps_quota() {
    let compiled = inputs()
        .with(quota("q").consumers(["ghost"]).requests_per_minute(5.0))
        .compile();
    assert_condition(
        &compiled,
        &qkey("q"),
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_unresolved(
        &compiled,
        &qkey("q"),
        reasons::CONSUMER_NOT_FOUND,
        &[
            "spec.target.consumers[0]",
            "AIConsumer \"ghost\" not found in namespace \"default\"",
        ],
    );
    assert_eq!(
        compiled.snapshot.quotas["default/q"].consumers,
        Some(ids(["default/ghost"]))
    );
}

// === ModelConflict ===

#[test]
fn model_conflict_older_route_by_creation_timestamp_wins() {
    // "zeta" sorts after "alpha" by name but is older, so it keeps the model name.
    let compiled = openai_world()
        .with(
            route("alpha")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(200),
        )
        .with(
            route("zeta")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(100),
        )
        .probe("default")
        .compile();
    assert_healthy(&compiled, &rkey("zeta"));
    assert_rejected(
        &compiled,
        &rkey("alpha"),
        reasons::MODEL_CONFLICT,
        &[
            "spec.models",
            "\"gpt-4o\" is already served by AIRoute default/zeta",
            "rename the model, add a header match, or delete one route",
        ],
    );
    assert_refs_resolved(&compiled, &rkey("alpha"));
    assert_eq!(
        compiled.snapshot.routes.keys().collect::<Vec<_>>(),
        ["default/zeta"]
    );
    assert_eq!(served(&compiled, "default")["gpt-4o"], ["default/zeta"]);
}

#[test]
fn model_conflict_with_equal_or_no_timestamps_namespace_then_name_decides() {
    for created in [Some(100), None] {
        let stamp = |r: RouteBuilder| match created {
            Some(t) => r.created(t),
            None => r,
        };
        let compiled = openai_world()
            .with(stamp(
                route("zeta").models(["gpt-4o"]).backend("openai", "gpt-4o"),
            ))
            .with(stamp(
                route("alpha")
                    .models(["gpt-4o"])
                    .backend("openai", "gpt-4o"),
            ))
            .probe("default")
            .compile();
        assert_healthy(&compiled, &rkey("alpha"));
        assert_rejected(
            &compiled,
            &rkey("zeta"),
            reasons::MODEL_CONFLICT,
            &["AIRoute default/alpha"],
        );
        assert_eq!(
            served(&compiled, "default")["gpt-4o"],
            ["default/alpha"],
            "{created:?}"
        );
    }

    // Routes of different namespaces never conflict: each namespace's consumers get
    // their own namespace's route.
    let compiled = inputs()
        .with(provider("echo").namespace("a").model("m"))
        .with(provider("echo").namespace("b").model("m"))
        .with(
            route("alpha")
                .namespace("b")
                .models(["shared"])
                .backend("echo", "m"),
        )
        .with(
            route("zeta")
                .namespace("a")
                .models(["shared"])
                .backend("echo", "m"),
        )
        .probe("a")
        .probe("b")
        .compile();
    assert_healthy(&compiled, &ObjectKey::new(ObjectKind::AIRoute, "a", "zeta"));
    assert_healthy(
        &compiled,
        &ObjectKey::new(ObjectKind::AIRoute, "b", "alpha"),
    );
    assert_eq!(served(&compiled, "a")["shared"], ["a/zeta"]);
    assert_eq!(served(&compiled, "b")["shared"], ["b/alpha"]);
}

#[test]
fn model_conflict_route_without_timestamp_sorts_first() {
    // Objects without a creation time (files on disk) count as oldest.
    let compiled = openai_world()
        .with(
            route("alpha")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(1),
        )
        .with(route("zeta").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .compile();
    assert_healthy(&compiled, &rkey("zeta"));
    assert_rejected(
        &compiled,
        &rkey("alpha"),
        reasons::MODEL_CONFLICT,
        &["default/zeta"],
    );
}

#[test]
fn model_conflict_rejects_the_whole_route_even_for_partial_overlap() {
    let compiled = openai_world()
        .with(
            route("old")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(1),
        )
        .with(
            route("new")
                .models(["gpt-4o", "fresh"])
                .backend("openai", "gpt-4o")
                .created(2),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("new"),
        reasons::MODEL_CONFLICT,
        &["\"gpt-4o\""],
    );
    assert!(
        compiled
            .snapshot
            .route_tables
            .iter()
            .all(|t| !t.models.contains_key("fresh"))
    );
    assert!(!compiled.snapshot.routes.contains_key("default/new"));
}

#[test]
fn model_conflict_same_headers_in_another_order_or_case_still_conflict() {
    let compiled = openai_world()
        .with(
            route("old")
                .models(["gpt-4o"])
                .header("x-team", "red")
                .header("x-env", "prod")
                .backend("openai", "gpt-4o")
                .created(1),
        )
        .with(
            route("new")
                .models(["gpt-4o"])
                .header("X-Env", "prod")
                .header("X-TEAM", "red")
                .backend("openai", "gpt-4o")
                .created(2),
        )
        .compile();
    assert_healthy(&compiled, &rkey("old"));
    assert_rejected(
        &compiled,
        &rkey("new"),
        reasons::MODEL_CONFLICT,
        &["default/old"],
    );
}

#[test]
fn rejected_route_does_not_claim_its_model_names() {
    // The older route is rejected for another reason, so the newer one gets the name.
    let compiled = openai_world()
        .with(
            route("old")
                .models(["gpt-4o"])
                .backend("ghost", "gpt-4o")
                .created(1),
        )
        .with(
            route("new")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(2),
        )
        .probe("default")
        .compile();
    assert_rejected(&compiled, &rkey("old"), reasons::NO_VALID_BACKENDS, &[]);
    assert_healthy(&compiled, &rkey("new"));
    assert_eq!(served(&compiled, "default")["gpt-4o"], ["default/new"]);
}

#[test]
fn differing_header_matches_do_not_conflict_and_more_specific_sorts_first() {
    let compiled = openai_world()
        .with(
            route("catch-all")
                .models(["gpt-4o"])
                .backend("openai", "gpt-4o")
                .created(1),
        )
        .with(
            route("red")
                .models(["gpt-4o"])
                .header("x-team", "red")
                .backend("openai", "gpt-4o")
                .created(2),
        )
        .with(
            route("blue")
                .models(["gpt-4o"])
                .header("x-team", "blue")
                .backend("openai", "gpt-4o")
                .created(3),
        )
        .with(
            route("red-prod")
                .models(["gpt-4o"])
                .header("x-team", "red")
                .header("x-env", "prod")
                .backend("openai", "gpt-4o")
                .created(4),
        )
        .with(
            route("red-regex")
                .models(["gpt-4o"])
                .header_regex("x-team", "red")
                .backend("openai", "gpt-4o")
                .created(0),
        )
        .probe("default")
        .compile();
    for name in ["catch-all", "red", "blue", "red-prod", "red-regex"] {
        assert_healthy(&compiled, &rkey(name));
    }
    // Most header matches first; among equals, oldest first; the catch-all last.
    assert_eq!(
        served(&compiled, "default")["gpt-4o"],
        [
            "default/red-prod",
            "default/red-regex",
            "default/red",
            "default/blue",
            "default/catch-all",
        ]
    );
}

// === KeyConflict ===

#[test]
fn key_conflict_older_consumer_keeps_a_shared_key() {
    let compiled = inputs()
        .with(secret("old-key").string("key", APP_KEY))
        // Same value once trimmed, in another Secret.
        .with(secret("new-key").data("key", format!("{APP_KEY}\n")))
        .with(consumer("zeta").key("old-key", "key").created(100))
        .with(consumer("alpha").key("new-key", "key").created(200))
        .compile();
    assert_healthy(&compiled, &ckey("zeta"));
    assert_rejected(
        &compiled,
        &ckey("alpha"),
        reasons::KEY_CONFLICT,
        &[
            "spec.keys[0].secretRef",
            "already belongs to AIConsumer default/zeta",
            "give each consumer its own key",
        ],
    );
    assert_refs_resolved(&compiled, &ckey("alpha"));
    assert_eq!(
        compiled.snapshot.consumers.keys().collect::<Vec<_>>(),
        ["default/zeta"]
    );
    let message = &condition(&compiled, &ckey("alpha"), types::ACCEPTED).message;
    assert!(!message.contains(APP_KEY), "the key is not echoed");
}

#[test]
fn key_conflict_with_equal_timestamps_name_order_decides() {
    for created in [Some(5), None] {
        let stamp = |c: ConsumerBuilder| match created {
            Some(t) => c.created(t),
            None => c,
        };
        let compiled = inputs()
            .with(secret("shared").string("key", APP_KEY))
            .with(stamp(consumer("beta").key("shared", "key")))
            .with(stamp(consumer("alpha").key("shared", "key")))
            .compile();
        assert_healthy(&compiled, &ckey("alpha"));
        assert_rejected(
            &compiled,
            &ckey("beta"),
            reasons::KEY_CONFLICT,
            &["AIConsumer default/alpha"],
        );
    }
}

// === DuplicateModel ===

#[test]
fn duplicate_model_rejects_provider() {
    let compiled = inputs()
        .with(provider("echo").models(["a", "b", "a"]))
        .with(route("r").models(["a"]).backend("echo", "a"))
        .compile();
    assert_rejected(
        &compiled,
        &pkey("echo"),
        reasons::DUPLICATE_MODEL,
        &[
            "spec.models[2].name",
            "model \"a\" is listed twice",
            "remove one",
        ],
    );
    assert_refs_resolved(&compiled, &pkey("echo"));
    assert!(compiled.snapshot.providers.is_empty());
    assert_unresolved(&compiled, &rkey("r"), reasons::PROVIDER_NOT_ACCEPTED, &[]);
}

// === NoValidKeys ===

#[test]
fn no_valid_keys_when_the_only_key_is_shorter_than_16_chars() {
    let short = "short-key-15-ch";
    assert_eq!(short.len(), 15);
    let compiled = inputs()
        .with(secret("app-key").string("key", short))
        .with(consumer("app").key("app-key", "key"))
        .compile();
    assert_unresolved(
        &compiled,
        &ckey("app"),
        reasons::WEAK_KEY,
        &[
            "spec.keys[0].secretRef",
            "shorter than 16 characters",
            "shorter than 16 characters",
        ],
    );
    assert_rejected(
        &compiled,
        &ckey("app"),
        reasons::NO_VALID_KEYS,
        &["spec.keys", "no gateway key resolved"],
    );
    assert!(compiled.snapshot.consumers.is_empty());
    for c in &status(&compiled, &ckey("app")).conditions {
        assert!(
            !c.message.contains(short),
            "the key is not echoed: {}",
            c.message
        );
    }
}

#[test]
fn a_key_of_exactly_16_chars_is_accepted_and_a_bad_key_beside_a_good_one_only_unresolves() {
    let sixteen = "exact-16-chars-q";
    assert_eq!(sixteen.len(), 16);
    let compiled = inputs()
        .with(secret("good").string("key", sixteen))
        .with(secret("short").string("key", "tiny"))
        .with(
            consumer("app")
                .key("good", "key")
                .key("short", "key")
                .key("missing", "key"),
        )
        .compile();
    assert_condition(
        &compiled,
        &ckey("app"),
        types::ACCEPTED,
        ConditionStatus::True,
        reasons::ACCEPTED,
        &[],
    );
    assert_unresolved(
        &compiled,
        &ckey("app"),
        reasons::WEAK_KEY,
        &[
            "spec.keys[1].secretRef",
            "spec.keys[2].secretRef",
            "Secret \"missing\" not found",
        ],
    );
    assert_eq!(
        compiled.snapshot.consumers["default/app"].key_hashes,
        ids([hash_key(sixteen).as_str()])
    );
}

// === Invalid ===

#[test]
fn invalid_endpoint_urls() {
    for (endpoint, needles) in [
        (
            "not a url",
            &["spec.endpoint: not a valid URL", "write one like https://"][..],
        ),
        (
            "ftp://files.example.com/v1",
            &["spec.endpoint", "must use http or https"][..],
        ),
        (
            "https://api.example.com/v1?x=1",
            &["spec.endpoint", "must not have a query"][..],
        ),
        (
            "https://api.example.com/v1#frag",
            &["spec.endpoint", "or fragment"][..],
        ),
    ] {
        let compiled = inputs()
            .with(secret("k").string("apiKey", OPENAI_KEY))
            .with(
                provider("p")
                    .openai_compatible()
                    .endpoint(endpoint)
                    .secret("k", "apiKey")
                    .model("m"),
            )
            .compile();
        assert_rejected(&compiled, &pkey("p"), reasons::INVALID, needles);
        assert_refs_resolved(&compiled, &pkey("p"));
        assert!(compiled.snapshot.providers.is_empty(), "{endpoint}");
    }
}

#[test]
fn invalid_endpoint_with_credentials_does_not_echo_them() {
    for endpoint in [
        "https://admin:hunter2-password@api.example.com/v1",
        "https://:hunter2-password@api.example.com/v1",
        "ftp://admin:hunter2-password@api.example.com/v1",
    ] {
        let compiled = inputs()
            .with(secret("k").string("apiKey", OPENAI_KEY))
            .with(
                provider("p")
                    .openai()
                    .endpoint(endpoint)
                    .secret("k", "apiKey")
                    .model("m"),
            )
            .compile();
        assert_rejected(
            &compiled,
            &pkey("p"),
            reasons::INVALID,
            &["spec.endpoint: must not carry credentials", "use spec.auth"],
        );
        let everything = format!("{:?}", compiled.statuses);
        assert!(!everything.contains("hunter2"), "{endpoint}: {everything}");
        assert!(compiled.snapshot.providers.is_empty());
    }
}

#[test]
fn invalid_durations() {
    let provider_cases = [
        (
            provider("p").connect_timeout("soon"),
            "spec.timeouts.connect: \"soon\"",
        ),
        (
            provider("p").request_timeout("-5s"),
            "spec.timeouts.request: \"-5s\"",
        ),
        (
            provider("p").echo_latency("10 parsecs"),
            "spec.echo.latency",
        ),
        (
            provider("p").echo_chunk_interval("5"),
            "spec.echo.chunkInterval",
        ),
    ];
    for (builder, field) in provider_cases {
        let compiled = inputs().with(builder.model("m")).compile();
        assert_rejected(
            &compiled,
            &pkey("p"),
            reasons::INVALID,
            &[
                field,
                "is not a duration",
                "write it like 30s, 1m30s or 500ms",
            ],
        );
        assert!(compiled.snapshot.providers.is_empty(), "{field}");
    }

    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(
            route("r")
                .models(["m"])
                .backend("echo", "m")
                .request_timeout("ten minutes"),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("r"),
        reasons::INVALID,
        &[
            "spec.timeouts.request: \"ten minutes\" is not a duration",
            "1m30s",
        ],
    );
    assert!(compiled.snapshot.routes.is_empty());
    assert!(
        compiled
            .snapshot
            .route_tables
            .iter()
            .all(|t| t.models.is_empty())
    );
}

#[test]
fn invalid_regex_header() {
    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(
            route("r")
                .models(["m"])
                .header("x-ok", "fine")
                .header_regex("x-team", "(unclosed")
                .backend("echo", "m"),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("r"),
        reasons::INVALID,
        &["spec.headers[1].value: not a valid regular expression"],
    );
    assert!(compiled.snapshot.routes.is_empty());
    // The same text is fine as an exact match.
    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(
            route("r")
                .models(["m"])
                .header("x-team", "(unclosed")
                .backend("echo", "m"),
        )
        .compile();
    assert_healthy(&compiled, &rkey("r"));
}

#[test]
fn invalid_ca_bundle() {
    let compiled = inputs()
        .with(provider("echo").model("m").ca_bundle("not a certificate"))
        .compile();
    assert_rejected(
        &compiled,
        &pkey("echo"),
        reasons::INVALID,
        &[
            "spec.tls.caBundle: not a PEM certificate",
            "-----BEGIN CERTIFICATE-----",
        ],
    );
    assert!(compiled.snapshot.providers.is_empty());
}

#[test]
fn invalid_cel_rules_on_providers() {
    for (name, builder, needles) in [
        (
            "openai without auth",
            provider("p").openai().model("m"),
            &[
                "spec.auth is required for every provider type except echo",
                "spec.auth: required for this provider type; point auth.secretRef at the API key",
            ][..],
        ),
        (
            "openai-compatible without endpoint",
            provider("p")
                .openai_compatible()
                .secret("k", "apiKey")
                .model("m"),
            &[
                "spec.endpoint is required for openai-compatible and azure-openai providers",
                "spec.endpoint: required for this provider type",
            ][..],
        ),
        (
            "azure-openai without azure settings",
            provider("p")
                .azure_openai()
                .endpoint("https://res.openai.azure.com")
                .secret("k", "apiKey")
                .model("m"),
            &[
                "spec.azure (with apiVersion) is required for azure-openai providers",
                "spec.azure.apiVersion: required for azure-openai, for example 2024-10-21",
            ][..],
        ),
        (
            "echo settings on a non-echo provider",
            provider("p")
                .openai()
                .secret("k", "apiKey")
                .model("m")
                .echo_latency("1s"),
            &["spec.echo applies only to providers of type echo"][..],
        ),
    ] {
        let compiled = inputs()
            .with(secret("k").string("apiKey", OPENAI_KEY))
            .with(builder)
            .compile();
        let c = condition(&compiled, &pkey("p"), types::ACCEPTED);
        assert_eq!(c.status, ConditionStatus::False, "{name}");
        assert_eq!(c.reason, reasons::INVALID, "{name}");
        for needle in needles {
            assert!(
                c.message.contains(needle),
                "{name}: {:?} lacks {needle:?}",
                c.message
            );
        }
        assert!(compiled.snapshot.providers.is_empty(), "{name}");
    }
}

#[test]
fn invalid_provider_models() {
    let compiled = inputs()
        .with(provider("empty"))
        .with(provider("priced").model("m").pricing(-1.0, 2.0, None))
        .with(provider("nan").model("m").pricing(1.0, f64::NAN, None))
        .with(provider("blank").model(""))
        .compile();
    assert_rejected(
        &compiled,
        &pkey("empty"),
        reasons::INVALID,
        &["spec.models: list at least one model"],
    );
    for name in ["priced", "nan"] {
        assert_rejected(
            &compiled,
            &pkey(name),
            reasons::INVALID,
            &["spec.models[0].pricing: prices must be zero or positive numbers"],
        );
    }
    assert_rejected(
        &compiled,
        &pkey("blank"),
        reasons::INVALID,
        &["spec.models[0].name: must not be empty"],
    );
    assert!(compiled.snapshot.providers.is_empty());
}

#[test]
fn invalid_route_cel_rule_and_models() {
    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(
            route("zero")
                .models(["m"])
                .weighted_backend("echo", "m", 0, 0),
        )
        .with(route("nameless").backend("echo", "m"))
        .compile();
    assert_rejected(
        &compiled,
        &rkey("zero"),
        reasons::INVALID,
        &[
            "at least one backend needs a weight above 0",
            "spec.backends: no backend",
        ],
    );
    assert_rejected(
        &compiled,
        &rkey("nameless"),
        reasons::INVALID,
        &["spec.models: list at least one non-empty model name"],
    );
    assert!(compiled.snapshot.routes.is_empty());
}

#[test]
fn invalid_quotas() {
    let compiled = inputs()
        .with(secret("k").string("key", APP_KEY))
        .with(consumer("app").key("k", "key").label("team", "red"))
        .with(
            quota("bad-operator")
                .selector_expression("team", "Near", &["red"])
                .requests_per_minute(1.0),
        )
        .with(quota("fractional").limit(QuotaMetric::TotalTokens, 1.5, QuotaWindow::Day))
        .with(quota("negative").limit(QuotaMetric::CostUsd, -1.0, QuotaWindow::Day))
        .with(quota("no-limits").consumers(["app"]))
        .compile();
    assert_rejected(
        &compiled,
        &qkey("bad-operator"),
        reasons::INVALID,
        &[
            "spec.target.consumerSelector",
            "Invalid expression operator",
        ],
    );
    assert_rejected(
        &compiled,
        &qkey("fractional"),
        reasons::INVALID,
        &[
            "spec.limits[0]",
            "max must be a whole number unless metric is CostUSD",
        ],
    );
    assert_rejected(
        &compiled,
        &qkey("negative"),
        reasons::INVALID,
        &["spec.limits[0].max: must be zero or a positive number"],
    );
    assert_rejected(
        &compiled,
        &qkey("no-limits"),
        reasons::INVALID,
        &["spec.limits: list at least one limit"],
    );
    assert!(compiled.snapshot.quotas.is_empty());
    assert_healthy(&compiled, &ckey("app"));
}

#[test]
fn every_reason_names_what_to_fix_in_one_compile() {
    // Every problem message names a spec field, so a person knows where to look.
    let compiled = openai_world()
        .with(provider("dup").models(["a", "a"]))
        .with(provider("nokey").openai().secret("nope", "k").model("m"))
        .with(
            route("bad")
                .models(["x"])
                .backend("nokey", "m")
                .backend("ghost", "m"),
        )
        .with(consumer("c").key("nope", "k").allowed_route("ghost"))
        .with(
            quota("q")
                .consumers(["ghost"])
                .routes(["ghost"])
                .requests_per_minute(1.0),
        )
        .compile();
    let problems: Vec<_> = compiled.problems().collect();
    assert_eq!(problems.len(), 5);
    for (key, status) in problems {
        for c in status.problems() {
            assert!(
                c.message.contains("spec"),
                "{key} {}: {:?}",
                c.type_,
                c.message
            );
            assert_eq!(c.status, ConditionStatus::False);
        }
    }
}

// === Secrets ===

#[test]
fn string_data_wins_over_data() {
    let compiled = inputs()
        .with(
            secret("k")
                .data("apiKey", b"from-data".to_vec())
                .string("apiKey", "from-string-data")
                .data("other", b"only-in-data".to_vec()),
        )
        .with(provider("a").openai().secret("k", "apiKey").model("m"))
        .with(provider("b").openai().secret("k", "other").model("m"))
        .compile();
    let key = |id: &str| {
        compiled.snapshot.providers[id]
            .api_key
            .as_ref()
            .map(|k| k.expose().to_string())
    };
    assert_eq!(key("default/a").as_deref(), Some("from-string-data"));
    assert_eq!(
        key("default/b").as_deref(),
        Some("only-in-data"),
        "data is used when stringData lacks the key"
    );
}

#[test]
fn secret_values_are_trimmed() {
    let raw = format!("  {APP_KEY}\r\n");
    let compiled = inputs()
        .with(secret("p").data("apiKey", format!("\t{OPENAI_KEY}\n")))
        .with(secret("c").string("key", &raw))
        .with(provider("openai").openai().secret("p", "apiKey").model("m"))
        .with(consumer("app").key("c", "key"))
        .compile();
    let provider = &compiled.snapshot.providers["default/openai"];
    assert_eq!(
        provider.api_key.as_ref().map(|k| k.expose()),
        Some(OPENAI_KEY)
    );
    let consumer = &compiled.snapshot.consumers["default/app"];
    assert_eq!(consumer.key_hashes, ids([hash_key(APP_KEY).as_str()]));
    assert!(!consumer.key_hashes.contains(&hash_key(&raw)));
}

#[test]
fn consumer_keys_are_stored_only_as_hashes() {
    let second = "sb-second-gateway-key-rotation";
    let compiled = inputs()
        .with(
            secret("app-key")
                .string("key", APP_KEY)
                .string("next", second),
        )
        .with(consumer("app").key("app-key", "key").key("app-key", "next"))
        .compile();
    let consumer = &compiled.snapshot.consumers["default/app"];
    assert_eq!(
        consumer.key_hashes,
        ids([hash_key(APP_KEY).as_str(), hash_key(second).as_str()])
    );
    let json = serde_json::to_string(&compiled.snapshot).expect("serialize");
    let debug = format!("{:?}", compiled.snapshot);
    for raw in [APP_KEY, second] {
        assert!(!json.contains(raw), "raw gateway key in JSON");
        assert!(!debug.contains(raw), "raw gateway key in Debug");
    }
    assert!(json.contains(&hash_key(APP_KEY)));
}

#[test]
fn provider_api_keys_are_redacted_in_debug() {
    let compiled = openai_world().compile();
    let debug = format!("{:?}", compiled.snapshot);
    assert!(
        !debug.contains(OPENAI_KEY),
        "provider key in Debug: {debug}"
    );
    assert!(debug.contains("ApiKey(<redacted>)"));
    assert!(!format!("{compiled:?}").contains(OPENAI_KEY));
    // It does serialize in full: the proxy needs it to call the provider.
    let json = serde_json::to_string(&compiled.snapshot).expect("serialize");
    assert!(json.contains(OPENAI_KEY));
}

// === sealing ===

/// A named change to a compiled Snapshot.
type Mutation = (&'static str, fn(&mut Snapshot));

#[test]
fn snapshot_is_sealed_after_compile_and_not_after_mutation() {
    let world = openai_world()
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .with(secret("app-key").string("key", APP_KEY))
        .with(consumer("app").key("app-key", "key"))
        .with(quota("q").requests_per_minute(1.0));
    let snapshot = world.compile().snapshot;
    assert!(snapshot.is_sealed());
    let digest = snapshot
        .version
        .strip_prefix("sha256:")
        .expect("sha256: prefix");
    assert_eq!(digest.len(), 64);
    assert!(digest.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        world.compile().snapshot.version,
        snapshot.version,
        "same input, same version"
    );
    assert_ne!(Snapshot::default().seal().version, snapshot.version);

    let mutations: Vec<Mutation> = vec![
        ("provider endpoint", |s| {
            s.providers.values_mut().for_each(|p| p.endpoint.push('x'));
        }),
        ("route weight", |s| {
            s.routes
                .values_mut()
                .for_each(|r| r.backends[0].weight += 1);
        }),
        ("route table", |s| {
            s.route_tables.push(RouteTable::default());
        }),
        ("consumer key", |s| {
            s.consumers.values_mut().for_each(|c| {
                c.key_hashes.insert(hash_key("attacker-supplied-key"));
            });
        }),
        ("quota max", |s| {
            s.quotas.values_mut().for_each(|q| q.limits[0].max = 1e9);
        }),
        ("version", |s| s.version = "sha256:00".into()),
    ];
    for (what, mutate) in mutations {
        let mut altered = snapshot.clone();
        mutate(&mut altered);
        assert!(!altered.is_sealed(), "{what}: mutation not detected");
        assert!(
            altered.clone().seal().is_sealed(),
            "{what}: resealing fixes it"
        );
    }
}

// === property: compile does not depend on arrival order ===

const ROUTE_MODELS: [&str; 3] = ["a", "b", "c"];
const PROVIDER_MODELS: [&str; 3] = ["m0", "m1", "m2"];
const SECRET_VALUES: [&str; 4] = [
    "short",
    "a-long-enough-gateway-key-0",
    "a-long-enough-gateway-key-1",
    "  a-long-enough-gateway-key-0\n",
];
const NAMESPACES: [&str; 2] = ["default", "team"];

fn created() -> impl Strategy<Value = Option<i64>> {
    // A small range so ties are common.
    prop::option::of(0i64..3)
}

fn stamp<B>(builder: B, created: Option<i64>, set: fn(B, i64) -> B) -> B {
    match created {
        Some(t) => set(builder, t),
        None => builder,
    }
}

fn arb_secret(i: usize) -> impl Strategy<Value = Option<Object>> {
    prop::option::of((prop::sample::select(SECRET_VALUES.to_vec()), any::<bool>())).prop_map(
        move |s| {
            s.map(|(value, as_data)| {
                let name = format!("s{i}");
                let b = secret(&name);
                if as_data {
                    b.data("key", value)
                } else {
                    b.string("key", value)
                }
                .into()
            })
        },
    )
}

fn arb_provider(i: usize) -> impl Strategy<Value = Option<Object>> {
    let fields = (
        prop::bool::weighted(0.3),
        0usize..5,
        // Mostly non-empty, so routes often resolve; empty lists are Invalid.
        prop_oneof![
            1 => Just(Vec::new()),
            4 => prop::sample::subsequence(PROVIDER_MODELS.to_vec(), 1..=3),
        ],
        created(),
        1i64..4,
    );
    prop::option::weighted(0.8, fields).prop_map(move |p| {
        p.map(|(openai, s, models, created, generation)| {
            let mut b = provider(&format!("p{i}")).generation(generation);
            if openai {
                b = b.openai().secret(&format!("s{s}"), "key");
            }
            b = b.models(models);
            stamp(b, created, ProviderBuilder::created).into()
        })
    })
}

fn arb_route(i: usize) -> impl Strategy<Value = Option<Object>> {
    let weight = prop_oneof![1 => Just(0u32), 4 => 1u32..3];
    let backend = (
        0usize..5,
        prop::sample::select(PROVIDER_MODELS.to_vec()),
        weight,
    );
    let fields = (
        prop_oneof![3 => Just(NAMESPACES[0]), 1 => Just(NAMESPACES[1])],
        prop::sample::subsequence(ROUTE_MODELS.to_vec(), 1..=2),
        prop_oneof![3 => Just(None), 1 => Just(Some("red")), 1 => Just(Some("blue"))],
        prop::collection::vec(backend, 1..4),
        created(),
    );
    prop::option::weighted(0.9, fields).prop_map(move |r| {
        r.map(|(namespace, models, header, backends, created)| {
            let mut b = route(&format!("r{i}")).namespace(namespace);
            b = b.models(models);
            if let Some(team) = header {
                b = b.header("x-team", team);
            }
            for (p, m, weight) in backends {
                b = b.weighted_backend(&format!("p{p}"), m, weight, 0);
            }
            stamp(b, created, RouteBuilder::created).into()
        })
    })
}

fn arb_consumer(i: usize) -> impl Strategy<Value = Option<Object>> {
    let fields = (
        prop::collection::vec(0usize..5, 1..3),
        prop::collection::vec(0usize..6, 0..3),
        prop::sample::select(vec!["red", "blue"]),
        created(),
    );
    prop::option::of(fields).prop_map(move |c| {
        c.map(|(keys, routes, team, created)| {
            let mut b = consumer(&format!("c{i}")).label("team", team);
            for k in keys {
                b = b.key(&format!("s{k}"), "key");
            }
            for r in routes {
                b = b.allowed_route(&format!("r{r}"));
            }
            stamp(b, created, ConsumerBuilder::created).into()
        })
    })
}

fn arb_quota(i: usize) -> impl Strategy<Value = Option<Object>> {
    let fields = (
        prop::collection::vec(0usize..5, 0..3),
        prop::collection::vec(0usize..6, 0..3),
        prop::option::of(prop::sample::select(vec!["red", "blue"])),
        1u32..100,
    );
    prop::option::of(fields).prop_map(move |q| {
        q.map(|(consumers, routes, team, max)| {
            let mut b = quota(&format!("q{i}")).requests_per_minute(f64::from(max));
            b = b
                .consumers(consumers.iter().map(|c| format!("c{c}")))
                .routes(routes.iter().map(|r| format!("r{r}")));
            if let Some(team) = team {
                b = b.selector_label("team", team);
            }
            b.into()
        })
    })
}

/// A random set of objects with unique keys (so arrival order cannot matter through
/// duplicates), with dangling references, short keys, conflicts and timestamp ties.
fn arb_objects() -> impl Strategy<Value = Vec<Object>> {
    let secrets: Vec<_> = (0..4).map(arb_secret).collect();
    let providers: Vec<_> = (0..4).map(arb_provider).collect();
    let routes: Vec<_> = (0..5).map(arb_route).collect();
    let consumers: Vec<_> = (0..4).map(arb_consumer).collect();
    let quotas: Vec<_> = (0..3).map(arb_quota).collect();
    (secrets, providers, routes, consumers, quotas)
        .prop_map(|(s, p, r, c, q)| [s, p, r, c, q].into_iter().flatten().flatten().collect())
}

/// An always-valid provider and route, so a change to them must show in the version.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    latency_ms: u32,
    weight: u32,
    extra_model: bool,
}

impl Anchor {
    fn objects(self) -> [Object; 2] {
        let mut route = route("anchor-route").models(["anchor"]).weighted_backend(
            "anchor",
            "anchor-model",
            self.weight,
            0,
        );
        if self.extra_model {
            route = route.models(["anchor-extra"]);
        }
        [
            provider("anchor")
                .model("anchor-model")
                .echo_latency(&format!("{}ms", self.latency_ms))
                .into(),
            route.into(),
        ]
    }
}

fn arb_anchor() -> impl Strategy<Value = Anchor> {
    (0u32..1000, 1u32..100, any::<bool>()).prop_map(|(latency_ms, weight, extra_model)| Anchor {
        latency_ms,
        weight,
        extra_model,
    })
}

/// What must hold for any input: statuses for exactly the non-Secret objects, accepted
/// exactly when in the Snapshot, and every Snapshot reference points inside it.
fn check_invariants(inputs: &Inputs, compiled: &Compiled) -> Result<(), TestCaseError> {
    let snapshot = &compiled.snapshot;
    prop_assert!(snapshot.is_sealed());
    let expected: BTreeSet<&ObjectKey> = inputs
        .providers
        .keys()
        .chain(inputs.routes.keys())
        .chain(inputs.consumers.keys())
        .chain(inputs.quotas.keys())
        .collect();
    prop_assert_eq!(compiled.statuses.keys().collect::<BTreeSet<_>>(), expected);
    for (key, status) in &compiled.statuses {
        let id = key.id();
        let in_snapshot = match key.kind {
            ObjectKind::AIProvider => snapshot.providers.contains_key(&id),
            ObjectKind::AIRoute => snapshot.routes.contains_key(&id),
            ObjectKind::AIConsumer => snapshot.consumers.contains_key(&id),
            ObjectKind::AIQuota => snapshot.quotas.contains_key(&id),
            ObjectKind::Secret => unreachable!("Secrets get no status"),
        };
        prop_assert_eq!(status.is_accepted(), in_snapshot, "{}", key);
        // Accepted routes also say whether they are reachable.
        let conditions = if key.kind == ObjectKind::AIRoute && in_snapshot {
            3
        } else {
            2
        };
        prop_assert_eq!(status.conditions.len(), conditions);
    }
    for (id, route) in &snapshot.routes {
        prop_assert!(route.backends.iter().any(|b| b.weight > 0), "{}", id);
        for b in &route.backends {
            let provider = snapshot.providers.get(&b.provider);
            prop_assert!(
                provider.is_some_and(|p| p.models.contains_key(&b.model)),
                "{}",
                id
            );
        }
    }
    // Every table entry is a route serving that model, and a consumer reaches only its
    // own namespace's routes unless another grants it.
    for (consumer_id, consumer) in &snapshot.consumers {
        let table = snapshot.route_tables.get(consumer.route_table);
        prop_assert!(table.is_some(), "{}", consumer_id);
        let consumer_namespace = consumer_id.split_once('/').map(|(ns, _)| ns);
        for (model, ids) in table.iter().flat_map(|t| &t.models) {
            for id in ids {
                prop_assert!(
                    snapshot
                        .routes
                        .get(id)
                        .is_some_and(|r| r.models.contains(model))
                );
                prop_assert_eq!(id.split_once('/').map(|(ns, _)| ns), consumer_namespace);
            }
        }
    }
    let mut owners = BTreeMap::new();
    for (id, consumer) in &snapshot.consumers {
        prop_assert!(!consumer.key_hashes.is_empty());
        for hash in &consumer.key_hashes {
            prop_assert!(
                owners.insert(hash, id).is_none(),
                "a key hash belongs to two consumers"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn compile_does_not_depend_on_insertion_order(
        (objects, shuffled) in arb_objects()
            .prop_flat_map(|objects| (Just(objects.clone()), Just(objects).prop_shuffle()))
    ) {
        let inputs = Inputs::from_objects(objects.clone());
        let first = compile(&inputs);
        check_invariants(&inputs, &first)?;
        let again = compile(&Inputs::from_objects(shuffled));
        prop_assert_eq!(&again.snapshot.version, &first.snapshot.version);
        prop_assert_eq!(&again.snapshot, &first.snapshot);
        prop_assert_eq!(&again.statuses, &first.statuses);
    }

    #[test]
    fn changing_a_meaningful_field_changes_the_version(
        objects in arb_objects(),
        anchor in arb_anchor(),
        change in 0usize..3,
    ) {
        let mut changed = anchor;
        match change {
            0 => changed.latency_ms += 1,
            1 => changed.weight += 1,
            _ => changed.extra_model = !changed.extra_model,
        }
        let build = |anchor: Anchor| {
            Inputs::from_objects(objects.iter().cloned().chain(anchor.objects()))
        };
        let before = compile(&build(anchor));
        let after = compile(&build(changed));
        for compiled in [&before, &after] {
            prop_assert!(compiled.snapshot.routes.contains_key("default/anchor-route"));
            prop_assert!(compiled.snapshot.providers.contains_key("default/anchor"));
        }
        prop_assert_ne!(&before.snapshot.version, &after.snapshot.version);
        // Only the anchor changed, so every other object's status is the same.
        prop_assert_eq!(&before.statuses, &after.statuses);
    }
}

// === compile bugs (ignored until fixed) ===

#[test]
fn huge_duration_is_invalid_not_a_panic() {
    let builder = inputs().with(
        provider("p")
            .model("m")
            .connect_timeout("99999999999999999999h"),
    );
    let compiled = std::panic::catch_unwind(|| builder.compile())
        .expect("compile must not panic on a huge duration");
    assert_rejected(
        &compiled,
        &pkey("p"),
        reasons::INVALID,
        &["spec.timeouts.connect"],
    );
}

#[test]
fn regex_header_cannot_escape_its_anchors() {
    let compiled = inputs()
        .with(provider("echo").model("m"))
        .with(
            route("r")
                .models(["m"])
                .header_regex("x-team", "a)|(b")
                .backend("echo", "m"),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("r"),
        reasons::INVALID,
        &["spec.headers[0].value: not a valid regular expression"],
    );
}

#[test]
fn route_with_invalid_timeout_still_reports_unresolved_backends() {
    let compiled = inputs()
        .with(
            route("r")
                .models(["m"])
                .backend("ghost", "m")
                .request_timeout("soon"),
        )
        .compile();
    assert_rejected(
        &compiled,
        &rkey("r"),
        reasons::INVALID,
        &["spec.timeouts.request"],
    );
    assert_unresolved(
        &compiled,
        &rkey("r"),
        reasons::PROVIDER_NOT_FOUND,
        &["\"ghost\""],
    );
}

#[test]
fn durations_outside_gateway_api_syntax_are_invalid() {
    for value in ["1.5s", "100us", "0", "1h1h1h1h1h"] {
        let compiled = inputs()
            .with(provider("p").model("m").request_timeout(value))
            .compile();
        assert_rejected(
            &compiled,
            &pkey("p"),
            reasons::INVALID,
            &["spec.timeouts.request"],
        );
    }
}

// === compile_keeping: the last accepted version of an object that breaks ===

mod keeping {
    use super::*;
    use crate::compile::{KEPT_NOTE, LastGood, compile_keeping};

    /// The openai world with a route through it, compiled and taken as serving.
    fn serving() -> (InputsBuilder, LastGood) {
        let world =
            openai_world().with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"));
        let inputs = world.build();
        let compiled = compile(&inputs);
        assert!(
            compiled.problems().next().is_none(),
            "{:#?}",
            compiled.statuses
        );
        (world, LastGood::new(inputs, &compiled))
    }

    fn without(world: &InputsBuilder, key: &ObjectKey) -> Inputs {
        let mut inputs = world.build();
        assert!(inputs.remove(key));
        inputs
    }

    fn served_key(compiled: &Compiled) -> String {
        let provider = &compiled.snapshot.providers["default/openai"];
        provider.api_key.as_ref().unwrap().expose().to_string()
    }

    #[test]
    fn a_deleted_secret_keeps_the_provider_serving_with_its_last_key() {
        let (world, last_good) = serving();
        let inputs = without(&world, &key(ObjectKind::Secret, "openai-key"));
        let kept = compile_keeping(&inputs, Some(&last_good));
        assert_eq!(kept.kept, BTreeSet::from([pkey("openai")]));
        assert_eq!(served_key(&kept.compiled), OPENAI_KEY);
        assert!(kept.compiled.snapshot.routes.contains_key("default/chat"));
        assert_rejected(
            &kept.compiled,
            &pkey("openai"),
            reasons::SECRET_NOT_FOUND,
            &["openai-key", KEPT_NOTE],
        );
        // The route is fine: its provider still serves.
        assert_healthy(&kept.compiled, &rkey("chat"));
        // Without a serving config, the provider and the route drop out.
        let fresh = compile_keeping(&inputs, None);
        assert!(fresh.kept.is_empty());
        assert!(fresh.compiled.snapshot.providers.is_empty());
        assert!(fresh.compiled.snapshot.routes.is_empty());
    }

    #[test]
    fn a_broken_edit_keeps_the_last_accepted_spec() {
        let (world, last_good) = serving();
        let broken = world.clone().with(
            provider("openai")
                .openai()
                .secret("openai-key", "apiKey")
                .endpoint("not a url")
                .models(["gpt-4o"]),
        );
        let kept = compile_keeping(&broken.build(), Some(&last_good));
        assert_eq!(kept.kept, BTreeSet::from([pkey("openai")]));
        let provider = &kept.compiled.snapshot.providers["default/openai"];
        assert!(
            provider.models.contains_key("gpt-4o-mini"),
            "the old spec serves"
        );
        assert_rejected(
            &kept.compiled,
            &pkey("openai"),
            reasons::INVALID,
            &[KEPT_NOTE],
        );
    }

    #[test]
    fn rotations_deletions_and_new_broken_objects_take_effect_at_once() {
        let (world, last_good) = serving();
        let rotated = world
            .clone()
            .with(secret("openai-key").string("apiKey", "sk-rotated-key-0002"));
        let kept = compile_keeping(&rotated.build(), Some(&last_good));
        assert!(kept.kept.is_empty());
        assert_eq!(served_key(&kept.compiled), "sk-rotated-key-0002");

        let deleted = without(&world, &rkey("chat"));
        let kept = compile_keeping(&deleted, Some(&last_good));
        assert!(kept.kept.is_empty());
        assert!(kept.compiled.snapshot.routes.is_empty());

        let new_broken = world
            .clone()
            .with(route("broken").models(["x"]).backend("missing", "x"));
        let kept = compile_keeping(&new_broken.build(), Some(&last_good));
        assert!(kept.kept.is_empty());
        assert!(!kept.compiled.snapshot.routes.contains_key("default/broken"));
        assert!(kept.compiled.snapshot.routes.contains_key("default/chat"));
    }
}

// === Snapshot::validate ===

#[test]
fn validate_accepts_compiled_snapshots_and_refuses_tampered_or_dangling_ones() {
    let compiled = openai_world()
        .with(route("chat").models(["gpt-4o"]).backend("openai", "gpt-4o"))
        .probe("default")
        .compile();
    compiled.snapshot.validate().unwrap();

    let mut tampered = compiled.snapshot.clone();
    tampered
        .routes
        .get_mut("default/chat")
        .unwrap()
        .request_timeout_ms = Some(1);
    assert!(tampered.validate().unwrap_err().contains("does not match"));

    let mut dangling = compiled.snapshot.clone();
    dangling.providers.clear();
    let dangling = dangling.seal();
    assert!(
        dangling
            .validate()
            .unwrap_err()
            .contains("unknown provider")
    );

    let mut unknown_route = compiled.snapshot.clone();
    unknown_route.routes.clear();
    let unknown_route = unknown_route.seal();
    assert!(
        unknown_route
            .validate()
            .unwrap_err()
            .contains("unknown route")
    );

    let mut no_table = compiled.snapshot.clone();
    no_table.route_tables.clear();
    let no_table = no_table.seal();
    assert!(
        no_table
            .validate()
            .unwrap_err()
            .contains("route table that does not exist")
    );
}

// === retry and total timeout ===

#[test]
fn retry_policy_and_total_timeout_compile_with_defaults() {
    use crate::snapshot::Retry;
    use crate::v1alpha1::RouteRetry;
    let compiled = openai_world()
        .with(route("plain").models(["a"]).backend("openai", "gpt-4o"))
        .with(
            route("tuned")
                .models(["b"])
                .backend("openai", "gpt-4o")
                .total_timeout("45s")
                .retry(RouteRetry {
                    attempts: Some(5),
                    backoff: Some("250ms".into()),
                    max_backoff: Some("5s".into()),
                    budget_percent: Some(50),
                    fallback_on_unreadable: Some(true),
                }),
        )
        .with(
            route("broken")
                .models(["c"])
                .backend("openai", "gpt-4o")
                .retry(RouteRetry {
                    backoff: Some("soon".into()),
                    ..RouteRetry::default()
                }),
        )
        .compile();
    let plain = &compiled.snapshot.routes["default/plain"];
    assert_eq!(plain.retry, Retry::default());
    assert_eq!(plain.total_timeout_ms, None);
    let tuned = &compiled.snapshot.routes["default/tuned"];
    assert_eq!(
        tuned.retry,
        Retry {
            attempts: 5,
            backoff_ms: 250,
            max_backoff_ms: 5_000,
            budget_percent: 50,
            fallback_on_unreadable: true,
        }
    );
    assert_eq!(tuned.total_timeout_ms, Some(45_000));
    assert_rejected(
        &compiled,
        &rkey("broken"),
        reasons::INVALID,
        &["spec.retry.backoff"],
    );
}

#[test]
fn strategy_circuit_breaker_and_first_token_timeout_compile() {
    use crate::snapshot::{Circuit, Strategy};
    use crate::v1alpha1::CircuitBreaker;
    let mut tuned = route("tuned")
        .models(["b"])
        .backend("openai", "gpt-4o")
        .build();
    tuned.spec.strategy = Some(Strategy::LowestLatency);
    tuned.spec.circuit_breaker = Some(CircuitBreaker {
        consecutive_failures: Some(2),
        error_rate_percent: Some(50),
        window: Some("1m".into()),
        ejection: Some("30s".into()),
        max_ejection: Some("10m".into()),
    });
    tuned.spec.timeouts = Some(crate::v1alpha1::RouteTimeouts {
        first_token: Some("3s".into()),
        stream_idle: Some("5m".into()),
        ..Default::default()
    });
    let mut broken = route("broken")
        .models(["c"])
        .backend("openai", "gpt-4o")
        .build();
    broken.spec.circuit_breaker = Some(CircuitBreaker {
        ejection: Some("a while".into()),
        ..Default::default()
    });
    broken.spec.timeouts = Some(crate::v1alpha1::RouteTimeouts {
        stream_idle: Some("forever".into()),
        ..Default::default()
    });
    let compiled = openai_world()
        .with(Object::Route(tuned))
        .with(Object::Route(broken))
        .compile();
    let tuned = &compiled.snapshot.routes["default/tuned"];
    assert_eq!(tuned.strategy, Strategy::LowestLatency);
    assert_eq!(
        tuned.circuit,
        Circuit {
            consecutive_failures: 2,
            error_rate_percent: 50,
            window_ms: 60_000,
            ejection_ms: 30_000,
            max_ejection_ms: 600_000
        }
    );
    assert_eq!(tuned.first_token_timeout_ms, Some(3_000));
    assert_eq!(tuned.stream_idle_timeout_ms, Some(300_000));
    assert_rejected(
        &compiled,
        &rkey("broken"),
        reasons::INVALID,
        &["spec.circuitBreaker.ejection", "spec.timeouts.streamIdle"],
    );
}
