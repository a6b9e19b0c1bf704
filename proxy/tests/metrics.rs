//! Metrics after a known sequence of requests: counts, tokens and cost to the cent,
//! attempts, retries and fallbacks, gauges back at rest, and the consumer label switch.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;

/// 1,000 input tokens (400 of them cached) and 500 output tokens.
const PRICED_ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":400}}}"#;

/// The same usage, streamed: two content chunks, then the usage chunk.
fn priced_stream() -> Vec<(Duration, Bytes)> {
    let chunk = |content: &str| {
        sse(&format!(
            r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
        ))
    };
    vec![
        (Duration::ZERO, chunk("o")),
        (Duration::from_millis(5), chunk("k")),
        (
            Duration::ZERO,
            sse(
                r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":400}}}"#,
            ),
        ),
        (Duration::ZERO, sse("[DONE]")),
    ]
}

/// Input $2.50, cached input $1.25, output $10 per million tokens: each answer above
/// costs 600 * 2.5 + 400 * 1.25 + 500 * 10 = 7,000 per million = $0.007.
const COST_PER_ANSWER: f64 = 0.007;

fn provider(name: &str, url: &str, model: &str, pricing: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: {name}}}
spec:
  type: openai-compatible
  endpoint: {url}
  auth: {{secretRef: {{name: {name}-secret, key: apiKey}}}}
  models:
    - {{name: {model}, upstreamName: {model}-upstream{pricing}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret}}
stringData: {{apiKey: {PROVIDER_KEY}}}
"#
    )
}

const PRICING: &str =
    ", pricing: {inputPerMillion: 2.5, outputPerMillion: 10, cachedInputPerMillion: 1.25}";

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// Priced route `priced` (model `m`), unpriced route `free` (model `f`), and route
/// `flaky` (model `x`) whose first tier always fails with 503.
async fn world() -> (Manifests, Vec<FakeProvider>) {
    let priced = FakeProvider::start(|received| {
        if received.json()["stream"] == true {
            Reply::Stream(priced_stream())
        } else {
            Reply::Json(StatusCode::OK, Bytes::from_static(PRICED_ANSWER.as_bytes()))
        }
    })
    .await;
    let down = FakeProvider::json(503, r#"{"error":{"message":"down"}}"#).await;
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write("priced.yaml", &provider("priced", &priced.url(), "pm", PRICING))
        .write("free.yaml", &provider("free", &priced.url(), "fm", ""))
        .write("down.yaml", &provider("down", &down.url(), "dm", PRICING))
        .write("r1.yaml", &route_yaml("priced", &["m"], "priced", "pm", ""))
        .write("r2.yaml", &route_yaml("free", &["f"], "free", "fm", ""))
        .write(
            "r3.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: flaky}\nspec:\n  models: [x]\n  backends:\n    - {provider: down, model: dm}\n    - {provider: priced, model: pm, priority: 1}\n",
        );
    (manifests, vec![priced, down])
}

/// A proxy with route `r` (model `m`) to `upstream` as the priced model `pm`.
async fn one_route(upstream: &FakeProvider) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write("p.yaml", &provider("p", &upstream.url(), "pm", PRICING))
        .write("r.yaml", &route_yaml("r", &["m"], "p", "pm", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

#[tokio::test]
async fn counts_tokens_and_cost_follow_a_known_sequence_of_requests() {
    let (manifests, _upstreams) = world().await;
    let proxy = proxy(&manifests).await;

    // 3 whole and 1 streamed answers on the priced route.
    for stream in [false, false, false, true] {
        let response = post(&proxy, "/v1/chat/completions", chat("m", stream)).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // 1 answer on the unpriced route; 1 on the flaky one after a fallback.
    for model in ["f", "x"] {
        let response = post(&proxy, "/v1/chat/completions", chat(model, false)).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // An unknown model (the client's name must not become a label) and a bad key.
    let response = post(&proxy, "/v1/chat/completions", chat("no-such-model", false)).await;
    assert_eq!(response.status(), 404);
    let response = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth("sk-wrong")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Health probes are not requests.
    client().get(url(&proxy, "/readyz")).send().await.unwrap();

    let samples = scrape(&proxy).await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&samples, name, labels);
    let priced = [("route", "default/priced")];

    // Requests by route and status class.
    assert_eq!(m("switchboard_requests_total", &[]), 8.0);
    assert_eq!(
        m(
            "switchboard_requests_total",
            &[
                ("route", "default/priced"),
                ("provider", "default/priced"),
                ("gen_ai_request_model", "m"),
                ("gen_ai_response_model", "pm-upstream"),
                ("gen_ai_operation_name", "chat"),
                ("consumer", "default/app"),
                ("status_class", "2xx"),
                ("error_type", ""),
            ]
        ),
        4.0
    );
    assert_eq!(
        m(
            "switchboard_requests_total",
            &[
                ("route", ""),
                ("gen_ai_request_model", ""),
                ("error_type", "model_not_found")
            ]
        ),
        1.0
    );
    assert_eq!(
        m(
            "switchboard_requests_total",
            &[("consumer", ""), ("error_type", "invalid_api_key")]
        ),
        1.0
    );
    assert!(
        !samples
            .iter()
            .any(|s| s.labels.iter().any(|(_, v)| v == "no-such-model")),
        "a client's model name is never a label value"
    );

    // Tokens and cost: four priced answers, to the cent (and far below).
    assert_eq!(
        m(
            "switchboard_tokens_total",
            &[priced[0], ("gen_ai_token_type", "input")]
        ),
        4000.0
    );
    assert_eq!(
        m(
            "switchboard_tokens_total",
            &[priced[0], ("gen_ai_token_type", "output")]
        ),
        2000.0
    );
    assert_eq!(
        m(
            "switchboard_tokens_total",
            &[priced[0], ("gen_ai_token_type", "cache_read")]
        ),
        1600.0
    );
    let cost = m("switchboard_cost_usd_total", &priced);
    assert!((cost - 4.0 * COST_PER_ANSWER).abs() < 1e-9, "cost {cost}");
    // The fallback answer came from the priced provider too; the unpriced one is counted
    // as such, not as free.
    let flaky_cost = m("switchboard_cost_usd_total", &[("route", "default/flaky")]);
    assert!(
        (flaky_cost - COST_PER_ANSWER).abs() < 1e-9,
        "flaky cost {flaky_cost}"
    );
    assert_absent(
        &samples,
        "switchboard_cost_usd_total",
        &[("route", "default/free")],
    );
    assert_eq!(
        m(
            "switchboard_unpriced_requests_total",
            &[("route", "default/free")]
        ),
        1.0
    );
    assert_eq!(
        metric_or_zero(&samples, "switchboard_unpriced_requests_total", &priced),
        0.0
    );
    let token_usage = [priced[0], ("gen_ai_token_type", "output")];
    assert_eq!(m("gen_ai_client_token_usage_sum", &token_usage), 2000.0);
    assert_eq!(m("gen_ai_client_token_usage_count", &token_usage), 4.0);

    // Latency histograms: every priced request, and the one stream's first token.
    assert_eq!(
        m("gen_ai_server_request_duration_seconds_count", &priced),
        4.0
    );
    assert_eq!(
        m("gen_ai_server_time_to_first_token_seconds_count", &priced),
        1.0
    );
    assert_eq!(
        m("gen_ai_server_time_per_output_token_seconds_count", &priced),
        1.0
    );
    assert_eq!(
        m("switchboard_output_tokens_per_second_count", &priced),
        4.0
    );

    // Attempts, retries and fallbacks: the flaky route tried `down`, then fell back.
    let attempts = |provider: &str, outcome: &str| {
        m(
            "switchboard_upstream_attempts_total",
            &[("provider", provider), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("default/down", "upstream_overloaded"), 1.0);
    assert_eq!(attempts("default/priced", "success"), 5.0);
    assert_eq!(
        m("switchboard_retries_total", &[("route", "default/flaky")]),
        1.0
    );
    assert_eq!(
        m("switchboard_fallbacks_total", &[("route", "default/flaky")]),
        1.0
    );
    assert_eq!(
        metric_or_zero(&samples, "switchboard_retries_total", &priced),
        0.0
    );

    // At rest: nothing in flight, no stream open; one config applied.
    assert_eq!(m("switchboard_requests_in_flight", &[]), 0.0);
    assert_eq!(m("switchboard_streams_open", &[]), 0.0);
    let version = proxy
        .gateway
        .runtime
        .current()
        .unwrap()
        .version()
        .to_string();
    assert_eq!(m("switchboard_config_info", &[("version", &version)]), 1.0);
    assert_eq!(
        m("switchboard_config_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert!(m("switchboard_config_last_applied_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(m("switchboard_build_info", &[]), 1.0);
    // Circuits: closed, one series per backend, named by the upstream model.
    assert_eq!(
        m(
            "switchboard_backend_circuit_state",
            &[
                ("provider", "default/priced"),
                ("gen_ai_response_model", "pm-upstream")
            ]
        ),
        0.0
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "switchboard_backend_circuit_state")
            .count(),
        3
    );
}

#[tokio::test]
async fn a_stream_counts_as_open_until_it_ends_and_a_client_that_leaves_is_counted() {
    let (upstream, feed) = FakeProvider::held().await;
    let (_manifests, proxy) = one_route(&upstream).await;

    // The proxy answers with the first event: feed it before asking.
    let first = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
    feed.send(sse(first)).await.unwrap();
    let mut response = post(&proxy, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(response.status(), 200);
    response.chunk().await.unwrap().expect("the first event");
    let samples = scrape(&proxy).await;
    assert_eq!(metric(&samples, "switchboard_streams_open", &[]), 1.0);
    assert_eq!(metric(&samples, "switchboard_requests_in_flight", &[]), 1.0);

    // The client leaves mid-stream: the stream is counted as answered (2xx) and closed.
    drop(response);
    let mut at_rest = false;
    for _ in 0..100 {
        let samples = scrape(&proxy).await;
        if metric(&samples, "switchboard_streams_open", &[]) == 0.0
            && metric(&samples, "switchboard_requests_in_flight", &[]) == 0.0
        {
            assert_eq!(
                metric(
                    &samples,
                    "switchboard_requests_total",
                    &[("status_class", "2xx")]
                ),
                1.0
            );
            at_rest = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(at_rest, "the stream's gauges return to zero");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_counted_as_gone() {
    let upstream = FakeProvider::start(|_| {
        Reply::Delayed(
            Duration::from_secs(30),
            Box::new(Reply::Json(
                StatusCode::OK,
                Bytes::from_static(PRICED_ANSWER.as_bytes()),
            )),
        )
    })
    .await;
    let (_manifests, proxy) = one_route(&upstream).await;

    let request = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(chat("m", false))
        .timeout(Duration::from_millis(300))
        .send();
    assert!(request.await.is_err(), "the client gives up");
    let mut counted = false;
    for _ in 0..100 {
        let samples = scrape(&proxy).await;
        if samples.get(
            "switchboard_requests_total",
            &[("error_type", "client_gone")],
        ) == Some(1.0)
        {
            assert_eq!(
                metric(
                    &samples,
                    "switchboard_requests_total",
                    &[("route", "default/r"), ("status_class", "4xx")]
                ),
                1.0
            );
            assert_eq!(metric(&samples, "switchboard_requests_in_flight", &[]), 0.0);
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        counted,
        "the departed client's request is counted as client_gone"
    );
}

#[tokio::test]
async fn the_consumer_label_can_be_turned_off_and_metrics_off_entirely() {
    let (manifests, _upstreams) = world().await;
    let proxy = proxy_with(&manifests, |s| s.metrics_consumer_label = false).await;
    let response = post(&proxy, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(response.status(), 200);
    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(&samples, "switchboard_requests_total", &[("consumer", "")]),
        1.0
    );
    assert!(
        !samples
            .iter()
            .any(|s| s.label("consumer") == Some("default/app")),
        "no series names the consumer"
    );

    let off = proxy_with(&manifests, |s| {
        s.metrics_listen = switchboard_proxy::settings::MetricsListen(None)
    })
    .await;
    assert!(off.metrics_addr.is_none());
    assert!(off.gateway.metrics.is_none());
    let response = post(&off, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_metrics_port_serves_only_metrics() {
    let (manifests, _upstreams) = world().await;
    let proxy = proxy(&manifests).await;
    let base = format!("http://{}", proxy.metrics_addr.unwrap());
    let response = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let response = client()
        .post(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let response = client()
        .get(format!("{base}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // And the client port does not serve metrics.
    let response = client().get(url(&proxy, "/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// Series of a route, provider and consumer that a reload deletes go away with them;
/// those of objects that remain stay.
#[tokio::test]
async fn series_of_deleted_routes_providers_and_consumers_are_removed() {
    let (manifests, providers) = world().await;
    let proxy = proxy(&manifests).await;
    for model in ["m", "f"] {
        let response = post(&proxy, "/v1/chat/completions", chat(model, false)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let before = scrape(&proxy).await;
    for route in ["default/priced", "default/free"] {
        assert!(
            before
                .get("switchboard_requests_total", &[("route", route)])
                .is_some(),
            "{route} has series"
        );
    }
    assert!(
        before
            .get("switchboard_tokens_total", &[("provider", "default/free")])
            .is_some()
    );

    // Route `free` and its provider are deleted.
    delete_and_reload(&proxy, &manifests, &["r2.yaml", "free.yaml"]).await;
    let after = scrape(&proxy).await;
    for (name, label, value) in [
        ("switchboard_requests_total", "route", "default/free"),
        (
            "gen_ai_server_request_duration_seconds_count",
            "route",
            "default/free",
        ),
        ("switchboard_tokens_total", "provider", "default/free"),
        (
            "switchboard_upstream_attempts_total",
            "provider",
            "default/free",
        ),
    ] {
        assert_absent(&after, name, &[(label, value)]);
    }
    // Only the deleted route had unpriced requests: the whole family is gone.
    assert!(
        before
            .family_of("switchboard_unpriced_requests_total")
            .is_some()
    );
    assert!(
        after
            .family_of("switchboard_unpriced_requests_total")
            .is_none()
    );
    assert!(
        after
            .get("switchboard_requests_total", &[("route", "default/priced")])
            .is_some(),
        "the remaining route keeps its series"
    );
    drop(providers);
}

/// The proxy resolves each route backend's series once per config (`BackendSeries`):
/// after a reload, a route that stays counts on into the same series, and a route that
/// was deleted and comes back starts from zero, as its series were removed.
#[tokio::test]
async fn series_count_on_across_reloads_and_start_afresh_for_a_route_that_comes_back() {
    let (manifests, providers) = world().await;
    let proxy = proxy(&manifests).await;
    let input_tokens = |scrape: &Scrape, route: &str| {
        let labels = [("route", route), ("gen_ai_token_type", "input")];
        scrape.get("switchboard_tokens_total", &labels).unwrap()
    };
    let ask = |model: &'static str| {
        let proxy = &proxy;
        async move {
            let response = post(proxy, "/v1/chat/completions", chat(model, false)).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    ask("m").await;
    ask("f").await;
    let first = scrape(&proxy).await;
    let per_request = input_tokens(&first, "default/priced");
    assert!(per_request > 0.0);
    assert_eq!(input_tokens(&first, "default/free"), per_request);

    delete_and_reload(&proxy, &manifests, &["r2.yaml", "free.yaml"]).await;
    ask("m").await;
    let after_delete = scrape(&proxy).await;
    assert_eq!(
        input_tokens(&after_delete, "default/priced"),
        2.0 * per_request,
        "the route that stayed counts on into its series"
    );

    // Both back in one file: one reload.
    let free_again = format!(
        "{}---\n{}",
        provider("free", &providers[0].url(), "fm", ""),
        route_yaml("free", &["f"], "free", "fm", "")
    );
    reload(&proxy, || {
        manifests.write("free-again.yaml", &free_again);
    })
    .await;
    ask("f").await;
    let back = scrape(&proxy).await;
    assert_eq!(
        input_tokens(&back, "default/free"),
        per_request,
        "the route that came back starts from zero"
    );
    let attempts = [("provider", "default/free"), ("outcome", "success")];
    assert_eq!(
        back.get("switchboard_upstream_attempts_total", &attempts),
        Some(1.0)
    );
    assert_eq!(input_tokens(&back, "default/priced"), 2.0 * per_request);
}

/// Removes `files` from `manifests` and waits until the proxy serves the config without
/// them.
async fn delete_and_reload(
    proxy: &switchboard_proxy::Proxy,
    manifests: &Manifests,
    files: &[&str],
) {
    reload(proxy, || {
        for file in files {
            std::fs::remove_file(manifests.path().join(file)).unwrap();
        }
    })
    .await;
}

/// Makes `change` to the manifests and waits until the proxy serves another config.
async fn reload(proxy: &switchboard_proxy::Proxy, change: impl FnOnce()) {
    let old = proxy
        .gateway
        .runtime
        .current()
        .unwrap()
        .version()
        .to_string();
    change();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.gateway.runtime.current().unwrap().version() == old {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn quota_yaml(name: &str, max: u32) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIQuota\nmetadata: {{name: {name}}}\nspec:\n  limits: [{{metric: Requests, max: {max}, window: Minute}}]\n"
    )
}

/// The cache's series of a route and the quota series of a quota that a reload deletes
/// go away with them; those of the route and quota that remain stay.
#[tokio::test]
async fn cache_and_quota_series_of_deleted_routes_and_quotas_are_removed() {
    let upstream = FakeProvider::json(200, PRICED_ANSWER).await;
    let manifests = Manifests::new();
    let cache = "  cache: {ttl: 1h}";
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write("p.yaml", &provider("p", &upstream.url(), "pm", PRICING))
        .write("gone.yaml", &route_yaml("gone", &["g"], "p", "pm", cache))
        .write("kept.yaml", &route_yaml("kept", &["k"], "p", "pm", cache))
        // Two requests a minute in all: a third that misses the cache is refused.
        .write("q-gone.yaml", &quota_yaml("gone", 2))
        .write("q-kept.yaml", &quota_yaml("kept", 1000));
    let proxy = proxy(&manifests).await;
    let chat = |model: &str, content: &str| {
        format!(
            r#"{{"model":"{model}","temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
        )
    };
    // A miss and a hit on each route, then a miss over quota `gone`.
    for (model, status) in [("g", 200), ("g", 200), ("k", 200), ("k", 200)] {
        let response = post(&proxy, "/v1/chat/completions", chat(model, "hi")).await;
        assert_eq!(response.status(), status);
    }
    let response = post(&proxy, "/v1/chat/completions", chat("k", "other")).await;
    assert_eq!(response.status(), 429);

    let before = scrape(&proxy).await;
    let gone_route = [("route", "default/gone")];
    let cache_families = [
        "switchboard_cache_lookups_total",
        "switchboard_cache_saved_tokens_total",
        "switchboard_cache_saved_cost_usd_total",
        "switchboard_cache_stored_total",
        "switchboard_cache_stored_bytes_total",
    ];
    for name in cache_families {
        for route in ["default/gone", "default/kept"] {
            assert!(
                before.get(name, &[("route", route)]).is_some(),
                "{name} of {route} before"
            );
        }
    }
    let gone_quota = [("quota", "default/gone")];
    let quota_families = [
        "switchboard_quota_used",
        "switchboard_quota_limit",
        "switchboard_quota_rejections_total",
    ];
    for name in quota_families {
        assert!(before.get(name, &gone_quota).is_some(), "{name} before");
    }

    delete_and_reload(&proxy, &manifests, &["gone.yaml", "q-gone.yaml"]).await;
    let after = scrape(&proxy).await;
    for name in cache_families {
        assert_absent(&after, name, &gone_route);
        assert!(
            after.get(name, &[("route", "default/kept")]).is_some(),
            "{name} of the remaining route stays"
        );
    }
    for name in ["switchboard_quota_used", "switchboard_quota_limit"] {
        assert_absent(&after, name, &gone_quota);
    }
    // Only the deleted quota had refused requests: the whole family is gone.
    assert!(
        after
            .family_of("switchboard_quota_rejections_total")
            .is_none()
    );
    for name in ["switchboard_quota_used", "switchboard_quota_limit"] {
        assert!(
            after.get(name, &[("quota", "default/kept")]).is_some(),
            "{name} of the remaining quota stays"
        );
    }
}
