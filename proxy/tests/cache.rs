//! The response cache end to end: in-process proxies, a fake provider on loopback that
//! counts what reaches it, and a real `redis-server` for the shared store.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;
use switchboard_e2e::redis::RedisServer;
use switchboard_proxy::Proxy;
use switchboard_proxy::formats::{anthropic, openai};
use switchboard_proxy::ir::chat::{FinishReason, StreamEvent};
use switchboard_proxy::sse::{self, EventSplitter};

/// 50 input and 20 output tokens; the provider prices them at 1 and 2 USD per million.
const ANSWER: &str = r#"{"id":"c-1","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"cached words"},"finish_reason":"stop"}],"usage":{"prompt_tokens":50,"completion_tokens":20,"total_tokens":70}}"#;

fn chunk(delta: &str, finish: &str) -> Bytes {
    sse(&format!(
        r#"{{"id":"s-1","object":"chat.completion.chunk","created":7,"model":"up-model","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
    ))
}

/// The same answer as a stream: two text chunks, finish, usage, `[DONE]`.
fn stream() -> Vec<(Duration, Bytes)> {
    vec![
        (
            Duration::ZERO,
            chunk(r#"{"role":"assistant","content":"cached "}"#, "null"),
        ),
        (Duration::ZERO, chunk(r#"{"content":"words"}"#, "null")),
        (Duration::ZERO, chunk("{}", r#""stop""#)),
        (
            Duration::ZERO,
            sse(
                r#"{"id":"s-1","object":"chat.completion.chunk","created":7,"model":"up-model","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":20,"total_tokens":70}}"#,
            ),
        ),
        (Duration::ZERO, sse("[DONE]")),
    ]
}

/// A provider answering `ANSWER` (or its stream) after `delay`.
async fn upstream(delay: Duration) -> FakeProvider {
    FakeProvider::start(move |received| {
        let reply = if received.json()["stream"] == true {
            Reply::Stream(stream())
        } else {
            Reply::Json(StatusCode::OK, Bytes::from_static(ANSWER.as_bytes()))
        };
        Reply::Delayed(delay, Box::new(reply))
    })
    .await
}

/// Provider `up`, consumer `app`, route `r` for model `m` with `cache` (YAML of the
/// route's `cache:` block, or empty for none) and route `plain` for `p` without.
fn world(upstream: &FakeProvider, cache: &str) -> Manifests {
    let manifests = Manifests::new();
    let priced = ", pricing: {inputPerMillion: 1, outputPerMillion: 2}";
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "up.yaml",
            &provider_yaml(
                "up",
                "openai-compatible",
                &upstream.url(),
                &[("m", "up-model"), ("p", "up-plain")],
                "",
            )
            .replace(
                "upstreamName: up-model}",
                &format!("upstreamName: up-model{priced}}}"),
            ),
        )
        .write(
            "route.yaml",
            &route_yaml("r", &["m", "m-alias"], "up", "m", cache),
        )
        .write("plain.yaml", &route_yaml("plain", &["p"], "up", "p", ""));
    manifests
}

const CACHE: &str = "  cache: {ttl: 1h}";

async fn cached_proxy(
    upstream: &FakeProvider,
    cache: &str,
    redis: Option<&RedisServer>,
) -> (Manifests, Proxy) {
    let manifests = world(upstream, cache);
    let url = redis.map(RedisServer::url);
    let proxy = proxy_with(&manifests, |s| {
        s.redis_url = url;
        s.redis_timeout = Duration::from_secs(2);
    })
    .await;
    (manifests, proxy)
}

fn chat(content: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"m","stream":{stream},"temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

async fn send(proxy: &Proxy, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(url(proxy, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn cache_header(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("x-switchboard-cache")
        .map(|v| v.to_str().unwrap())
}

/// Decodes an SSE body with the proxy's own provider-side parser for its format.
fn decode(body: &[u8], anthropic: bool) -> Vec<StreamEvent> {
    let mut splitter = EventSplitter::default();
    let mut events = Vec::new();
    let mut openai = openai::StreamDecoder::default();
    let mut claude = anthropic::StreamDecoder::default();
    for event in splitter.push(body) {
        let data = sse::data(&event)
            .expect("every event is UTF-8")
            .expect("every event has data");
        match anthropic {
            true => claude.decode(&data, &mut events),
            false => openai.decode(&data, &mut events),
        }
    }
    assert!(
        splitter.remainder().is_none(),
        "the stream ends on an event boundary"
    );
    events
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_memory_without_going_upstream() {
    let upstream = upstream(Duration::ZERO).await;
    let (_m, proxy) = cached_proxy(&upstream, CACHE, None).await;

    let first = send(&proxy, &chat("hello", false), &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first), Some("miss"));
    let first = first.text().await.unwrap();
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Same request: other field order, whitespace, an alias, and a `user`.
    let same = r#"{ "messages": [ {"content": "hello", "role": "user"} ],
        "temperature": 0, "user": "u-42", "model": "m-alias" }"#;
    let hit = send(&proxy, same, &[]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(cache_header(&hit), Some("hit"));
    assert!(hit.headers().get("age").is_some());
    assert!(hit.headers().get("x-switchboard-provider").is_none());
    assert_eq!(
        hit.text().await.unwrap(),
        first,
        "an OpenAI client gets the body as stored"
    );
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Another prompt is another entry.
    let other = send(&proxy, &chat("goodbye", false), &[]).await;
    assert_eq!(cache_header(&other), Some("miss"));
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Embeddings are cached too, as the provider's body.
    for expected in ["miss", "hit"] {
        let response = client()
            .post(url(&proxy, "/v1/embeddings"))
            .bearer_auth(KEY)
            .body(r#"{"model":"m","input":"hello"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(cache_header(&response), Some(expected));
        assert_eq!(response.text().await.unwrap(), ANSWER);
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 3);

    // A route without a cache says nothing about one.
    let plain = send(
        &proxy,
        r#"{"model":"p","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(plain.status(), 200);
    assert_eq!(cache_header(&plain), None);
}

#[tokio::test]
async fn clients_bypass_refresh_and_shorten_the_ttl() {
    let upstream = upstream(Duration::ZERO).await;
    let (_m, proxy) = cached_proxy(&upstream, CACHE, None).await;
    let hits = || upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    let body = chat("control", false);

    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("miss"));
    for asked in [
        ("x-switchboard-cache", "bypass"),
        ("cache-control", "no-cache"),
    ] {
        let response = send(&proxy, &body, &[asked]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(cache_header(&response), Some("bypass"), "{asked:?}");
    }
    assert_eq!(hits(), 3);
    let refreshed = send(&proxy, &body, &[("x-switchboard-cache", "refresh")]).await;
    assert_eq!(cache_header(&refreshed), Some("miss"));
    assert_eq!(hits(), 4);
    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("hit"));
    assert_eq!(hits(), 4);

    // A request's own TTL, shorter than the route's.
    let short = chat("short-lived", false);
    let ttl = [("x-switchboard-cache-ttl", "1")];
    assert_eq!(
        cache_header(&send(&proxy, &short, &ttl).await),
        Some("miss")
    );
    assert_eq!(cache_header(&send(&proxy, &short, &[]).await), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache_header(&send(&proxy, &short, &[]).await), Some("miss"));

    // Unknown values are refused in the client's format rather than ignored.
    let typo = send(&proxy, &body, &[("x-switchboard-cache", "refesh")]).await;
    assert_error(typo, 400, "invalid_request").await;
    let bad_ttl = send(&proxy, &body, &[("x-switchboard-cache-ttl", "soon")]).await;
    assert_error(bad_ttl, 400, "invalid_request").await;
}

#[tokio::test]
async fn cached_answers_replay_as_well_formed_streams_in_either_api() {
    let upstream = upstream(Duration::ZERO).await;
    let (_m, proxy) = cached_proxy(&upstream, CACHE, None).await;

    // Stored from a whole answer, replayed as an OpenAI stream.
    send(&proxy, &chat("as a stream", false), &[]).await;
    let streamed = send(&proxy, &chat("as a stream", true), &[]).await;
    assert_eq!(cache_header(&streamed), Some("hit"));
    assert_eq!(
        streamed.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = decode(&streamed.bytes().await.unwrap(), false);
    assert!(
        matches!(events.first(), Some(StreamEvent::Start { .. })),
        "{events:?}"
    );
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "cached words");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Finish(f) if f.reason == FinishReason::Stop))
    );
    assert_eq!(events.last(), Some(&StreamEvent::Done));

    // Stored from a stream, replayed whole.
    send(&proxy, &chat("from a stream", true), &[])
        .await
        .bytes()
        .await
        .unwrap();
    let whole = send(&proxy, &chat("from a stream", false), &[]).await;
    assert_eq!(cache_header(&whole), Some("hit"));
    let whole: serde_json::Value = whole.json().await.unwrap();
    assert_eq!(whole["choices"][0]["message"]["content"], "cached words");
    assert_eq!(whole["usage"]["completion_tokens"], 20);

    // An Anthropic client: its whole answer stored, then replayed as Anthropic events.
    let messages = |stream: bool| {
        client()
            .post(url(&proxy, "/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .body(format!(
                r#"{{"model":"m","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"hi claude"}}]}}"#
            ))
            .send()
    };
    let stored = messages(false).await.unwrap();
    assert_eq!(cache_header(&stored), Some("miss"));
    let replayed = messages(true).await.unwrap();
    assert_eq!(cache_header(&replayed), Some("hit"));
    let body = replayed.bytes().await.unwrap();
    assert!(body.starts_with(b"event: message_start\n"), "{body:?}");
    let events = decode(&body, true);
    assert!(
        events.contains(&StreamEvent::Text("cached words".into())),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn identical_requests_in_flight_send_one_upstream_request() {
    let upstream = upstream(Duration::from_millis(400)).await;
    let (_m, proxy) = cached_proxy(&upstream, CACHE, None).await;
    let body = chat("together", false);
    let requests = (0..8).map(|_| send(&proxy, &body, &[]));
    let responses = futures_util::future::join_all(requests).await;
    let mut results = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        results.push(cache_header(&response).unwrap().to_string());
        assert_eq!(response.text().await.unwrap(), ANSWER);
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    results.sort();
    assert_eq!(
        results,
        ["hit", "hit", "hit", "hit", "hit", "hit", "hit", "miss"]
    );
    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(
            &samples,
            "switchboard_cache_coalesced_total",
            &[("route", "default/r")]
        ),
        7.0
    );

    // Streams coalesce too: the waiting requests get the first one's answer replayed.
    let body = chat("streams together", true);
    let requests = (0..4).map(|_| send(&proxy, &body, &[]));
    for response in futures_util::future::join_all(requests).await {
        let events = decode(&response.bytes().await.unwrap(), false);
        assert_eq!(events.last(), Some(&StreamEvent::Done));
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn only_complete_successful_answers_within_the_size_limit_are_stored() {
    // Errors.
    let failing = FakeProvider::json(
        400,
        r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
    )
    .await;
    let (_m, proxy) = cached_proxy(&failing, CACHE, None).await;
    for _ in 0..2 {
        let response = send(&proxy, &chat("fails", false), &[]).await;
        assert_eq!(response.status(), 400);
        assert_eq!(cache_header(&response), Some("miss"));
    }
    assert_eq!(failing.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A stream the provider breaks off.
    let cut = FakeProvider::start(|_| {
        Reply::CutAfter(chunk(r#"{"role":"assistant","content":"half"}"#, "null"))
    })
    .await;
    let (_m2, proxy) = cached_proxy(&cut, CACHE, None).await;
    for _ in 0..2 {
        send(&proxy, &chat("cut", true), &[])
            .await
            .bytes()
            .await
            .ok();
    }
    assert_eq!(cut.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Larger than the route's limit (the answer is about 280 bytes).
    let upstream = upstream(Duration::ZERO).await;
    let (_m3, proxy) = cached_proxy(&upstream, "  cache: {maxEntryBytes: 100}", None).await;
    for _ in 0..2 {
        let response = send(&proxy, &chat("big", false), &[]).await;
        assert_eq!(cache_header(&response), Some("miss"));
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(
            &samples,
            "switchboard_cache_too_large_total",
            &[("route", "default/r")]
        ),
        2.0
    );
}

#[tokio::test]
async fn deterministic_routes_cache_only_temperature_zero() {
    let upstream = upstream(Duration::ZERO).await;
    let (_m, proxy) = cached_proxy(&upstream, "  cache: {requests: Deterministic}", None).await;
    let warm = r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"poem"}]}"#;
    for _ in 0..2 {
        assert_eq!(cache_header(&send(&proxy, warm, &[]).await), Some("bypass"));
    }
    send(&proxy, &chat("fact", false), &[]).await;
    assert_eq!(
        cache_header(&send(&proxy, &chat("fact", false), &[]).await),
        Some("hit")
    );
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hits_cost_nothing_in_metrics_or_budgets_and_count_as_saved() {
    let upstream = upstream(Duration::ZERO).await;
    let manifests = world(&upstream, CACHE);
    // One request per minute: a hit is served anyway, since it uses no allowance.
    manifests.write(
        "quota.yaml",
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIQuota\nmetadata: {name: q}\nspec:\n  limits: [{metric: Requests, max: 1, window: Minute}]\n",
    );
    let proxy = proxy(&manifests).await;
    let body = chat("budget", false);
    assert_eq!(send(&proxy, &body, &[]).await.status(), 200);
    for _ in 0..3 {
        let hit = send(&proxy, &body, &[]).await;
        assert_eq!(hit.status(), 200);
        assert_eq!(cache_header(&hit), Some("hit"));
    }
    let miss = send(&proxy, &chat("another", false), &[]).await;
    assert_eq!(miss.status(), 429, "the quota still holds for misses");

    let samples = scrape(&proxy).await;
    let route = [("route", "default/r")];
    let tokens = |kind: &str| {
        metric(
            &samples,
            "switchboard_tokens_total",
            &[("route", "default/r"), ("gen_ai_token_type", kind)],
        )
    };
    assert_eq!(tokens("input"), 50.0, "only the miss spent tokens");
    assert_eq!(tokens("output"), 20.0);
    let cost = metric(&samples, "switchboard_cost_usd_total", &route);
    assert!((cost - 0.000_09).abs() < 1e-12, "{cost}");
    let saved = |kind: &str| {
        metric(
            &samples,
            "switchboard_cache_saved_tokens_total",
            &[("route", "default/r"), ("gen_ai_token_type", kind)],
        )
    };
    assert_eq!(saved("input"), 150.0);
    assert_eq!(saved("output"), 60.0);
    let saved_cost = metric(&samples, "switchboard_cache_saved_cost_usd_total", &route);
    assert!((saved_cost - 0.000_27).abs() < 1e-12, "{saved_cost}");
    assert_eq!(
        metric(
            &samples,
            "switchboard_cache_lookups_total",
            &[("route", "default/r"), ("result", "hit")]
        ),
        3.0
    );
    assert_eq!(
        metric(&samples, "switchboard_cache_memory_entries", &[]),
        1.0
    );
    assert!(metric(&samples, "switchboard_cache_memory_bytes", &[]) > 0.0);
}

#[tokio::test]
async fn a_redis_cache_is_shared_by_proxies_and_expires_in_redis() {
    let redis = RedisServer::start().await;
    let upstream = upstream(Duration::ZERO).await;
    let (_m1, first) = cached_proxy(&upstream, "  cache: {ttl: 2s}", Some(&redis)).await;
    let (_m2, second) = cached_proxy(&upstream, "  cache: {ttl: 2s}", Some(&redis)).await;
    let body = chat("shared", false);

    assert_eq!(cache_header(&send(&first, &body, &[]).await), Some("miss"));
    let (key, ttl, value) = &one_entry(&redis).await;
    assert!(key.starts_with("sb:cache:"), "{key}");
    assert!(*ttl > 0 && *ttl <= 2000, "Redis expires it: {ttl} ms");
    assert!(
        !value.windows(12).any(|w| w == b"cached words"),
        "values are compressed"
    );

    let hit = send(&second, &body, &[]).await;
    assert_eq!(cache_header(&hit), Some("hit"));
    assert_eq!(hit.text().await.unwrap(), ANSWER);
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(cache_header(&send(&second, &body, &[]).await), Some("miss"));
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// The one cache entry in Redis (its key, milliseconds to live and value), once the
/// store written after a response has landed.
async fn one_entry(redis: &RedisServer) -> (String, i64, Vec<u8>) {
    let mut entries = Vec::new();
    for _ in 0..50 {
        entries = redis.cache_entries().await;
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match <[_; 1]>::try_from(entries) {
        Ok([entry]) => entry,
        Err(entries) => panic!("one entry in Redis: {entries:?}"),
    }
}

/// Waits until the value under `key` is no longer `length` bytes long: the proxy
/// stored a new answer over it.
async fn replaced(redis: &RedisServer, key: &str, length: usize) {
    for _ in 0..100 {
        let now: usize = redis.run(redis::cmd("STRLEN").arg(key)).await;
        if now != length && now > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy did not store over the value of {key}");
}

/// A value changed in Redis behind the proxy's back, by hand, by another writer or by
/// corruption: one that claims to decompress to 4 GiB, and one of 128 MiB. Each is a
/// miss answered upstream, without allocating what the value claims or reading it
/// whole (this process's peak address space and resident memory, where the proxy
/// runs, stay put); the answer then replaces it, and is a hit again.
#[tokio::test]
async fn a_forged_or_huge_redis_value_is_a_miss_read_within_bounds() {
    let redis = RedisServer::start().await;
    let upstream = upstream(Duration::ZERO).await;
    let (_m, proxy) = cached_proxy(&upstream, CACHE, Some(&redis)).await;
    let body = chat("forged", false);
    let hits = || upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("miss"));
    let (key, _, _) = one_entry(&redis).await;
    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("hit"));
    assert_eq!(hits(), 1);

    // The LZ4 size prefix says u32::MAX bytes; a few bytes follow.
    let mut forged = u32::MAX.to_le_bytes().to_vec();
    forged.extend_from_slice(b"\x40SBC1");
    redis
        .run::<()>(redis::cmd("SET").arg(&key).arg(&forged))
        .await;
    let before = status_kb("VmPeak");
    let response = send(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(cache_header(&response), Some("miss"));
    assert_eq!(response.text().await.unwrap(), ANSWER);
    assert_eq!(hits(), 2);
    let grown = status_kb("VmPeak") - before;
    assert!(grown < 1 << 20, "address space grew by {grown} KiB");
    replaced(&redis, &key, forged.len()).await;
    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("hit"));

    // The stored entry followed by zeros up to 128 MiB, grown inside Redis (this
    // process never holds it).
    let huge = 128 << 20;
    let length: usize = redis
        .run(redis::cmd("SETRANGE").arg(&key).arg(huge - 1).arg("x"))
        .await;
    assert_eq!(length, huge);
    let before = status_kb("VmHWM");
    let response = send(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(cache_header(&response), Some("miss"));
    assert_eq!(response.text().await.unwrap(), ANSWER);
    assert_eq!(hits(), 3);
    let grown = status_kb("VmHWM") - before;
    assert!(grown < 32 << 10, "resident memory grew by {grown} KiB");
    replaced(&redis, &key, huge).await;
    let hit = send(&proxy, &body, &[]).await;
    assert_eq!(cache_header(&hit), Some("hit"));
    assert_eq!(hit.text().await.unwrap(), ANSWER);
    assert_eq!(hits(), 3);

    // Neither was a Redis failure: lookups were misses, not errors.
    let samples = scrape(&proxy).await;
    assert_eq!(
        metric(
            &samples,
            "switchboard_cache_lookups_total",
            &[("route", "default/r"), ("result", "miss")]
        ),
        3.0
    );
    assert_eq!(
        metric_or_zero(&samples, "switchboard_cache_store_errors_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_redis_outage_turns_the_cache_off_without_failing_requests() {
    let mut redis = RedisServer::start().await;
    let upstream = upstream(Duration::ZERO).await;
    let manifests = world(&upstream, CACHE);
    let address = redis.url();
    let proxy = proxy_with(&manifests, |s| {
        s.redis_url = Some(address);
        s.redis_timeout = Duration::from_millis(200);
    })
    .await;
    let body = chat("outage", false);
    send(&proxy, &body, &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache_header(&send(&proxy, &body, &[]).await), Some("hit"));

    redis.stop();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = send(&proxy, &body, &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(cache_header(&response), Some("miss"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
    }
    let samples = scrape(&proxy).await;
    assert!(metric(&samples, "switchboard_cache_store_errors_total", &[]) >= 1.0);

    redis.resume().await;
    // After the pause that follows a failure, Redis is used again.
    let mut hit = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cache_header(&send(&proxy, &body, &[]).await) == Some("hit") {
            hit = true;
            break;
        }
    }
    assert!(hit, "the cache comes back with Redis");
}

/// examples/cache as shipped: the echo provider's half-second answer, then a hit, whole
/// and as a stream (echo answers from the gateway's internal form, so this also covers
/// answers that are stored as they are translated).
#[tokio::test]
async fn the_cache_example_answers_a_repeat_from_the_cache() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cache/gateway.yaml");
    let manifests = Manifests::new();
    manifests.write("gateway.yaml", &std::fs::read_to_string(example).unwrap());
    let proxy = proxy(&manifests).await;
    let ask = |stream: bool| {
        client()
            .post(url(&proxy, "/v1/chat/completions"))
            .bearer_auth("sk-switchboard-quickstart")
            .body(format!(
                r#"{{"model":"faq","temperature":0,"stream":{stream},"messages":[{{"role":"user","content":"What are your opening hours?"}}]}}"#
            ))
            .send()
    };
    let started = std::time::Instant::now();
    let first = ask(false).await.unwrap();
    assert_eq!(cache_header(&first), Some("miss"));
    let first: serde_json::Value = first.json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));

    let started = std::time::Instant::now();
    let hit = ask(false).await.unwrap();
    assert_eq!(cache_header(&hit), Some("hit"));
    let hit: serde_json::Value = hit.json().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no upstream wait"
    );
    assert_eq!(
        hit["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );

    // A stream stored as it is translated, then replayed whole.
    let prompt = |stream: bool| {
        client()
            .post(url(&proxy, "/v1/chat/completions"))
            .bearer_auth("sk-switchboard-quickstart")
            .body(format!(
                r#"{{"model":"faq","temperature":0,"stream":{stream},"messages":[{{"role":"user","content":"Where are you?"}}]}}"#
            ))
            .send()
    };
    let streamed = prompt(true).await.unwrap();
    assert_eq!(cache_header(&streamed), Some("miss"));
    let events = decode(&streamed.bytes().await.unwrap(), false);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let whole = prompt(false).await.unwrap();
    assert_eq!(cache_header(&whole), Some("hit"));
    let whole: serde_json::Value = whole.json().await.unwrap();
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(whole["choices"][0]["message"]["content"], text.as_str());
    assert!(!text.is_empty());
}
