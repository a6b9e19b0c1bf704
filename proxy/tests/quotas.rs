//! Quotas end to end: in-process proxies, fake providers on loopback, and a real
//! `redis-server` started on a free port for shared counters.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use support::*;
use switchboard_e2e::redis::RedisServer;
use switchboard_proxy::Proxy;

/// 50 input and 50 output tokens per answer.
const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":50,"completion_tokens":50,"total_tokens":100}}"#;

fn chunk(content: &str) -> Bytes {
    sse(&format!(
        r#"{{"id":"s1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
    ))
}

/// A stream of `n` chunks of 20 bytes of text, then finish, usage (`n * 5` output
/// tokens) and `[DONE]`.
fn long_stream(n: usize, gap: Duration) -> Vec<(Duration, Bytes)> {
    let mut pieces: Vec<(Duration, Bytes)> = (0..n)
        .map(|_| (gap, chunk("twenty bytes of text")))
        .collect();
    pieces.push((
        Duration::ZERO,
        sse(r#"{"id":"s1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
    ));
    pieces.push((
        Duration::ZERO,
        sse(&format!(
            r#"{{"id":"s1","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{{"prompt_tokens":50,"completion_tokens":{},"total_tokens":{}}}}}"#,
            n * 5,
            50 + n * 5
        )),
    ));
    pieces.push((Duration::ZERO, sse("[DONE]")));
    pieces
}

/// A provider answering `ANSWER`, or `stream` pieces for streams.
async fn upstream(stream: Vec<(Duration, Bytes)>) -> FakeProvider {
    FakeProvider::start(move |received| {
        if received.json()["stream"] == true {
            Reply::Stream(stream.clone())
        } else {
            Reply::Json(StatusCode::OK, Bytes::from_static(ANSWER.as_bytes()))
        }
    })
    .await
}

fn provider(name: &str, url: &str, pricing: &str) -> String {
    format!(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: {name}}}
spec:
  type: openai-compatible
  endpoint: {url}
  auth: {{secretRef: {{name: {name}-secret, key: apiKey}}}}
  models: [{{name: m, upstreamName: {name}-model{pricing}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret}}
stringData: {{apiKey: {PROVIDER_KEY}}}
"#
    )
}

fn quota(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIQuota\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// Provider `up` at `upstream`, route `r` (model `m`), consumer `app`, and `quotas`.
fn world(upstream: &FakeProvider, quotas: &str) -> Manifests {
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write("up.yaml", &provider("up", &upstream.url(), ""))
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", ""));
    // An empty file is refused as a config caught half-written.
    if !quotas.trim().is_empty() {
        manifests.write("quotas.yaml", quotas);
    }
    manifests
}

/// A proxy on `manifests`, sharing counters in `redis` if given. Debug builds on a busy
/// two-core machine answer slowly under load, so Redis gets a generous timeout here;
/// the outage test sets a short one.
async fn proxy_on(manifests: &Manifests, redis: Option<&RedisServer>) -> Proxy {
    proxy_with_timeout(manifests, redis, Duration::from_secs(2)).await
}

async fn proxy_with_timeout(
    manifests: &Manifests,
    redis: Option<&RedisServer>,
    timeout: Duration,
) -> Proxy {
    let url = redis.map(RedisServer::url);
    proxy_with(manifests, |s| {
        s.redis_url = url;
        s.redis_timeout = timeout;
    })
    .await
}

fn chat(stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"m","stream":{stream},"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// A request with `max_tokens` 50 whose body (about 460 bytes) estimates more input
/// tokens than the 50 the fake provider reports, as real bodies do.
fn long_chat() -> String {
    let prompt = "Tell me about quotas. ".repeat(18);
    format!(
        r#"{{"model":"m","max_tokens":50,"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    )
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn a_limit_refuses_with_429_retry_after_and_rate_limit_headers() {
    let up = upstream(Vec::new()).await;
    let manifests = world(
        &up,
        &quota(
            "rpm",
            "  limits:\n    - {metric: Requests, max: 3, window: Minute}\n    - {metric: TotalTokens, max: 100000, window: Minute}\n",
        ),
    );
    let proxy = proxy_on(&manifests, None).await;
    for remaining in ["2", "1", "0"] {
        let response = post(&proxy, "/v1/chat/completions", chat(false, 10)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&response, "x-ratelimit-remaining-requests").as_deref(),
            Some(remaining)
        );
        assert_eq!(
            header(&response, "x-ratelimit-limit-tokens").as_deref(),
            Some("100000")
        );
        let reset = header(&response, "x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
    }
    let response = post(&proxy, "/v1/chat/completions", chat(false, 10)).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&response, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let message = assert_error(response, 429, "quota_exceeded").await;
    assert!(
        message.contains("default/rpm") && message.contains("Requests/Minute"),
        "{message}"
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 3, "nothing went upstream");

    // Anthropic clients get Anthropic's rate-limit error.
    let response = client()
        .post(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .body(r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(
            &samples,
            "switchboard_quota_rejections_total",
            &[("quota", "default/rpm"), ("limit", "Requests/Minute")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &samples,
            "switchboard_quota_used",
            &[
                ("quota", "default/rpm"),
                ("limit", "Requests/Minute"),
                ("consumer", "default/app")
            ]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &samples,
            "switchboard_quota_limit",
            &[("quota", "default/rpm"), ("limit", "Requests/Minute")]
        ),
        3.0
    );
}

#[tokio::test]
async fn windows_start_again_on_time() {
    let up = upstream(Vec::new()).await;
    let manifests = world(
        &up,
        &quota(
            "rps",
            "  limits: [{metric: Requests, max: 2, window: Second}]\n",
        ),
    );
    let proxy = proxy_on(&manifests, None).await;
    // Start just after a second begins, so the three requests share one window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_nanos(u64::from(
        1_000_000_000 - now.subsec_nanos(),
    )))
    .await;
    let statuses = [
        post(&proxy, "/v1/chat/completions", chat(false, 1))
            .await
            .status(),
        post(&proxy, "/v1/chat/completions", chat(false, 1))
            .await
            .status(),
        post(&proxy, "/v1/chat/completions", chat(false, 1))
            .await
            .status(),
    ];
    assert_eq!(statuses, [200, 200, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = post(&proxy, "/v1/chat/completions", chat(false, 1)).await;
    assert_eq!(response.status(), 200, "a new second, a new window");
}

/// Three proxies share one Redis: under concurrent load, a shared token budget is
/// overshot by at most one request's reservation, a request limit not at all, and the
/// counters hold exactly what the answers used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_proxies_share_one_budget_without_overshooting() {
    let redis = RedisServer::start().await;
    let up = upstream(Vec::new()).await;
    let manifests = world(
        &up,
        &quota(
            "team",
            "  scope: Shared\n  limits:\n    - {metric: TotalTokens, max: 3000, window: Hour}\n    - {metric: Requests, max: 1000, window: Hour}\n",
        ),
    );
    let proxies = Arc::new([
        proxy_on(&manifests, Some(&redis)).await,
        proxy_on(&manifests, Some(&redis)).await,
        proxy_on(&manifests, Some(&redis)).await,
    ]);
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..24 {
        let (proxies, answered, refused) = (proxies.clone(), answered.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            let proxy = &proxies[i % 3];
            for _ in 0..10 {
                let response = post(proxy, "/v1/chat/completions", long_chat()).await;
                match response.status().as_u16() {
                    200 => answered.fetch_add(1, Ordering::SeqCst),
                    429 => refused.fetch_add(1, Ordering::SeqCst),
                    other => panic!("unexpected {other}"),
                };
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let answered = answered.load(Ordering::SeqCst) as i64;
    for proxy in proxies.iter() {
        let samples = scrape(proxy).await;
        assert_eq!(
            metric(&samples, "switchboard_quota_store_errors_total", &[]),
            0.0,
            "Redis answered every admission"
        );
    }
    assert!(refused.load(Ordering::SeqCst) > 0, "the budget ran out");
    // Each answer used 100 tokens; its reservation was 50 output + the body's bytes / 4
    // input (at least the 50 the answer reports: the estimate does not undercount).
    let max_reservation = 50 + long_chat().len().div_ceil(4) as i64;
    assert!(max_reservation - 50 >= 50);
    assert!(
        answered * 100 <= 3000 + max_reservation,
        "{answered} answers used {} tokens",
        answered * 100
    );
    assert!(answered >= 20, "the budget was used: {answered} answers");
    // Settles run just after the responses.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tokens = redis.counter("TotalTokens/Hour").await;
        if tokens == answered * 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counter {tokens}, answers used {}",
            answered * 100
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A refused request reserves nothing (all or nothing), so only answers count.
    assert_eq!(redis.counter("Requests/Hour").await, answered);
}

#[tokio::test]
async fn a_request_limit_shared_by_three_proxies_is_exact() {
    let redis = RedisServer::start().await;
    let up = upstream(Vec::new()).await;
    let manifests = world(
        &up,
        &quota(
            "rpm",
            "  limits: [{metric: Requests, max: 25, window: Hour}]\n",
        ),
    );
    let proxies = Arc::new([
        proxy_on(&manifests, Some(&redis)).await,
        proxy_on(&manifests, Some(&redis)).await,
        proxy_on(&manifests, Some(&redis)).await,
    ]);
    let mut clients = Vec::new();
    for i in 0..12 {
        let proxies = proxies.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..5 {
                if post(&proxies[i % 3], "/v1/chat/completions", chat(false, 1))
                    .await
                    .status()
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert_eq!(answered, 25, "exactly the limit, across three proxies");
}

#[tokio::test]
async fn a_redis_outage_follows_each_quotas_failure_policy_and_recovers() {
    let mut redis = RedisServer::start().await;
    let up = upstream(Vec::new()).await;
    let manifests = world(&up, "");
    manifests
        .write("route-b.yaml", &route_yaml("b", &["mb"], "up", "m", ""))
        .write(
            "quotas.yaml",
            &format!(
                "{}---\n{}",
                quota(
                    "open",
                    "  target: {routes: [r]}\n  failurePolicy: FailOpen\n  limits: [{metric: Requests, max: 100, window: Hour}]\n"
                ),
                quota(
                    "closed",
                    "  target: {routes: [b]}\n  failurePolicy: FailClosed\n  limits: [{metric: Requests, max: 100, window: Hour}]\n"
                )
            ),
        );
    let proxy = proxy_with_timeout(&manifests, Some(&redis), Duration::from_millis(200)).await;
    let ask = |model: &'static str| {
        let proxy = &proxy;
        async move {
            let body =
                format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
            let started = Instant::now();
            let response = post(proxy, "/v1/chat/completions", body).await;
            (response.status().as_u16(), started.elapsed())
        }
    };
    assert_eq!(ask("m").await.0, 200);
    assert_eq!(ask("mb").await.0, 200);
    assert_eq!(redis.counter("default/open").await, 1);

    redis.stop();
    for _ in 0..3 {
        let (status, took) = ask("m").await;
        assert_eq!(status, 200, "fail open: served on local counters");
        assert!(
            took < Duration::from_secs(2),
            "not held up by Redis: {took:?}"
        );
        let (status, took) = ask("mb").await;
        assert_eq!(status, 503, "fail closed");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let response = post(
        &proxy,
        "/v1/chat/completions",
        r#"{"model":"mb","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_error(response, 503, "quota_unavailable").await;
    let samples = scrape(&proxy).await;
    assert_eq!(metric(&samples, "switchboard_quota_store_up", &[]), 0.0);
    assert!(metric(&samples, "switchboard_quota_store_errors_total", &[]) >= 1.0);

    redis.resume().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ask("mb").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed quota recovers with Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ask("m").await.0, 200);
    assert!(
        redis.counter("default/open").await >= 1,
        "counted in Redis again"
    );
    let samples = scrape(&proxy).await;
    assert_eq!(metric(&samples, "switchboard_quota_store_up", &[]), 1.0);
}

#[tokio::test]
async fn streams_settle_to_their_usage_and_a_departed_client_keeps_its_reservation() {
    let redis = RedisServer::start().await;
    let (held, feed) = FakeProvider::held().await;
    let whole = upstream(long_stream(4, Duration::ZERO)).await;
    let manifests = world(&whole, "");
    manifests
        .write("held.yaml", &provider("held", &held.url(), ""))
        .write("route-h.yaml", &route_yaml("h", &["mh"], "held", "m", ""))
        .write(
            "quotas.yaml",
            &quota(
                "tokens",
                "  scope: Shared\n  midStream: Complete\n  limits: [{metric: OutputTokens, max: 100000, window: Hour}]\n",
            ),
        );
    let proxy = proxy_on(&manifests, Some(&redis)).await;

    // A complete stream: the reservation (max_tokens 500) settles to the usage (20).
    let response = post(&proxy, "/v1/chat/completions", chat(true, 500)).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.counter("OutputTokens/Hour").await != 20 {
        assert!(
            Instant::now() < deadline,
            "settled to 20: {}",
            redis.counter("OutputTokens/Hour").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client that leaves mid-stream: the provider's usage never comes, so the
    // reservation of 500 stands.
    feed.send(chunk("partial answer")).await.unwrap();
    let body = r#"{"model":"mh","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut response = post(&proxy, "/v1/chat/completions", body).await;
    response.chunk().await.unwrap().expect("the first event");
    assert_eq!(
        redis.counter("OutputTokens/Hour").await,
        520,
        "reserved while streaming"
    );
    drop(response);
    // The proxy ends a request (keeping or settling its reservation) before counting it
    // in `switchboard_requests_total`, and the request stops counting as in flight and
    // its stream as open after that: wait for all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(&proxy).await;
        let counted = samples.get("switchboard_requests_total", &[("route", "default/h")]);
        let open = metric(&samples, "switchboard_streams_open", &[]);
        let in_flight = metric(&samples, "switchboard_requests_in_flight", &[]);
        if counted == Some(1.0) && open == 0.0 && in_flight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the departed stream did not end within 10s: counted {counted:?}, {open} open, {in_flight} in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        redis.counter("OutputTokens/Hour").await,
        520,
        "kept after the client left"
    );
    // A settlement is written to Redis off the request's path; one that wrongly refunded
    // the reservation could land after the check above. Another complete stream settles
    // to its usage (20) on top of what stands: the counter reaches 540 only if the
    // departed client's 500 stayed.
    let response = post(&proxy, "/v1/chat/completions", chat(true, 500)).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = redis.counter("OutputTokens/Hour").await;
        if used == 540 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the departed client's reservation stands under a later settlement: {used}, not 540"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The OpenAI client's final events, as (content so far, finish reason) and whether the
/// stream ended with `[DONE]`.
fn read_openai_stream(text: &str) -> (String, Option<String>, bool) {
    let mut content = String::new();
    let mut finish = None;
    let mut done = false;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        if let Some(choice) = chunk["choices"].get(0) {
            content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_string());
            }
        }
    }
    (content, finish, done)
}

#[tokio::test]
async fn a_stream_is_cut_cleanly_at_its_budget() {
    // 50 chunks of 20 bytes (about 250 tokens) against 25 output tokens left.
    let up = upstream(long_stream(50, Duration::from_millis(2))).await;
    let manifests = world(
        &up,
        &quota(
            "out",
            "  limits: [{metric: OutputTokens, max: 25, window: Hour}]\n",
        ),
    );
    let proxy = proxy_on(&manifests, None).await;
    let response = post(&proxy, "/v1/chat/completions", chat(true, 1000)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let (content, finish, done) = read_openai_stream(&text);
    assert_eq!(finish.as_deref(), Some("length"), "{text}");
    assert!(done, "ends with [DONE]: {text}");
    assert_eq!(
        content.len(),
        100,
        "5 chunks of 20 bytes reach 25 tokens: {text}"
    );

    // Through translation (an Anthropic client) the cut reads as max_tokens.
    let proxy = proxy_on(
        &world(
            &up,
            &quota(
                "out",
                "  limits: [{metric: OutputTokens, max: 25, window: Hour}]\n",
            ),
        ),
        None,
    )
    .await;
    let response = client()
        .post(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .body(r#"{"model":"m","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(r#""stop_reason":"max_tokens""#), "{text}");
    assert!(
        text.trim_end()
            .ends_with(r#"data: {"type":"message_stop"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_spent_budget_sends_requests_to_the_fallback_route() {
    let expensive = upstream(Vec::new()).await;
    let cheap = upstream(Vec::new()).await;
    let manifests = world(&expensive, "");
    manifests
        .write(
            "up.yaml",
            &provider(
                "up",
                &expensive.url(),
                ", pricing: {inputPerMillion: 10000, outputPerMillion: 10000}",
            ),
        )
        .write("cheap.yaml", &provider("cheap", &cheap.url(), ""))
        .write("route-c.yaml", &route_yaml("cheap", &["cheap"], "cheap", "m", ""))
        .write(
            "quotas.yaml",
            &quota(
                "smart-budget",
                "  target: {routes: [r]}\n  fallbackRoute: cheap\n  limits: [{metric: CostUSD, max: 1, window: Day}]\n",
            ),
        );
    let proxy = proxy_on(&manifests, None).await;
    // Each answer costs 100 tokens at $0.01 = $1: the first spends the budget.
    let response = post(&proxy, "/v1/chat/completions", chat(false, 50)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-switchboard-provider").as_deref(),
        Some("default/up")
    );
    assert_eq!(header(&response, "x-switchboard-quota-fallback"), None);
    for _ in 0..2 {
        let response = post(&proxy, "/v1/chat/completions", chat(false, 50)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-switchboard-provider").as_deref(),
            Some("default/cheap")
        );
        assert_eq!(
            header(&response, "x-switchboard-quota-fallback").as_deref(),
            Some("default/smart-budget")
        );
    }
    assert_eq!(expensive.hits.load(Ordering::SeqCst), 1);
    assert_eq!(cheap.hits.load(Ordering::SeqCst), 2);
    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(
            &samples,
            "switchboard_quota_fallbacks_total",
            &[("quota", "default/smart-budget")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_consumer_key_rotates_without_a_failed_request() {
    let up = upstream(Vec::new()).await;
    let manifests = world(&up, "");
    let consumer_with = |keys: &[(&str, &str)]| {
        let refs: String = keys
            .iter()
            .map(|(secret, _)| format!("{{secretRef: {{name: {secret}, key: key}}}}, "))
            .collect();
        let secrets: String = keys
            .iter()
            .map(|(secret, value)| {
                format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}}}\nstringData: {{key: {value}}}\n")
            })
            .collect();
        format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIConsumer\nmetadata: {{name: app}}\nspec:\n  keys: [{}]\n{secrets}",
            refs.trim_end_matches(", ")
        )
    };
    const OLD: &str = "sk-old-key-for-the-app-0001";
    const NEW: &str = "sk-new-key-for-the-app-0002";
    manifests.write("consumer.yaml", &consumer_with(&[("old", OLD)]));
    let proxy = proxy_on(&manifests, None).await;
    let key = Arc::new(std::sync::Mutex::new(OLD));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (key, stop, failures, sent) =
            (key.clone(), stop.clone(), failures.clone(), sent.clone());
        let addr = proxy.addr;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let current = *key.lock().unwrap();
                let response = client()
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth(current)
                    .body(chat(false, 1))
                    .send()
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
                if response.status() != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let version = |p: &Proxy| p.gateway.runtime.current().unwrap().version().to_string();
    let wait_for_change = |before: String| {
        let proxy = &proxy;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while version(proxy) == before {
                assert!(Instant::now() < deadline, "the reload applies");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Waits (bounded) until the load has answered `n` more requests: it ran under the
    // config and key of the step just taken.
    let answered = |n: usize| {
        let sent = &sent;
        async move {
            let target = sent.load(Ordering::SeqCst) + n;
            let deadline = Instant::now() + Duration::from_secs(10);
            while sent.load(Ordering::SeqCst) < target {
                assert!(
                    Instant::now() < deadline,
                    "the load made {} of {target} requests within 10s",
                    sent.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // 1. Both keys valid; 2. clients move to the new key; 3. the old key goes.
    let before = version(&proxy);
    manifests.write(
        "consumer.yaml",
        &consumer_with(&[("old", OLD), ("new", NEW)]),
    );
    wait_for_change(before).await;
    answered(10).await;
    *key.lock().unwrap() = NEW;
    // All but the one in flight when the key changed were sent with the new key.
    answered(10).await;
    let before = version(&proxy);
    manifests.write("consumer.yaml", &consumer_with(&[("new", NEW)]));
    wait_for_change(before).await;
    answered(10).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        sent.load(Ordering::SeqCst) > 20,
        "{} requests",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    // And the old key no longer works.
    let response = client()
        .post(url(&proxy, "/v1/chat/completions"))
        .bearer_auth(OLD)
        .body(chat(false, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}
