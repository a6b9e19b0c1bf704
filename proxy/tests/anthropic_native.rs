//! Anthropic clients on Anthropic providers: requests pass through byte for byte (only
//! the model and credentials rewritten, the client's `anthropic-*` headers kept),
//! answers and streams come back as sent, usage is read from them; token counts pass
//! through to Anthropic and are estimated for other providers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;

/// A coding agent's request: extended thinking, `cache_control` on the system prompt
/// and a tool, a server tool, a document with citations, a field no release of the
/// gateway knows, and spacing no serializer would write.
const AGENT_REQUEST: &str = r#"{"model": "m" ,"max_tokens":16000,
 "thinking":{"type":"enabled","budget_tokens":10000},
 "system":[{"type":"text","text":"You are a coding agent.","cache_control":{"type":"ephemeral"}}],
 "tools":[{"name":"bash","description":"Run a command","input_schema":{"type":"object","properties":{"command":{"type":"string"}}},"cache_control":{"type":"ephemeral","ttl":"1h"}},
          {"type":"web_search_20250305","name":"web_search","max_uses":3}],
 "messages":[{"role":"user","content":[
   {"type":"document","source":{"type":"text","media_type":"text/plain","data":"The grass is green."},"title":"Notes","citations":{"enabled":true}},
   {"type":"text","text":"Summarize, citing the notes.","cache_control":{"type":"ephemeral"}}]}],
 "context_management":{"edits":[{"type":"clear_tool_uses_20250919"}]},
 "temperature":1.0}"#;

const BETA: &str = "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14";

/// An answer with a thinking block (and its signature), a cited text block, usage with
/// cache reads and writes, and a field added after the gateway was written.
const ANSWER: &str = r#"{"id":"msg_01Agent","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"thinking","thinking":"The notes say the grass is green.","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},{"type":"text","text":"The grass is green.","citations":[{"type":"char_location","cited_text":"The grass is green.","document_index":0,"document_title":"Notes","start_char_index":0,"end_char_index":19}]}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":50,"service_tier":"standard"},"container":null}"#;

/// The same answer streamed, as Anthropic streams it (thinking and signature deltas
/// included).
const STREAM: [&str; 11] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01Agent\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"The notes say the grass is green.\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"The grass is green.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":50}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

/// The Anthropic fake: the stream when asked for one, a token count on
/// `/messages/count_tokens`, the whole answer otherwise.
async fn anthropic_fake() -> FakeProvider {
    FakeProvider::start(|received| {
        if received.uri.ends_with("/count_tokens") {
            return Reply::Json(
                StatusCode::OK,
                Bytes::from_static(b"{\"input_tokens\":2095}"),
            );
        }
        if received.json()["stream"] == true {
            // Split mid-event and mid-UTF-8-free JSON, to show events are relayed
            // whole however they arrive.
            let all = STREAM.concat();
            let (a, b) = all.split_at(all.len() / 3);
            return Reply::Stream(vec![
                (Duration::ZERO, Bytes::from(a.to_string())),
                (Duration::from_millis(5), Bytes::from(b.to_string())),
            ]);
        }
        Reply::Json(StatusCode::OK, Bytes::from_static(ANSWER.as_bytes()))
    })
    .await
}

/// Model `m` on Anthropic provider `up` (as `claude-up`), model `o` on an
/// openai-compatible provider `oc`.
async fn gateway(
    anthropic: &FakeProvider,
    other: &FakeProvider,
) -> (Manifests, switchboard_proxy::Proxy) {
    gateway_with(anthropic, other, "").await
}

/// `gateway`, with `route` added to route `r`'s spec.
async fn gateway_with(
    anthropic: &FakeProvider,
    other: &FakeProvider,
    route: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "up.yaml",
            // Claude Sonnet's prices (anthropic.com/pricing): $3/MTok input, $3.75
            // 5-minute cache write, $0.30 cache read, $15 output.
            &provider_yaml(
                "up",
                "anthropic",
                &anthropic.url(),
                &[("m", "claude-up")],
                "",
            )
            .replacen(
                "upstreamName: claude-up}",
                "upstreamName: claude-up, pricing: {inputPerMillion: 3, cacheWritePerMillion: 3.75, cachedInputPerMillion: 0.3, outputPerMillion: 15}}",
                1,
            ),
        )
        .write(
            "oc.yaml",
            &provider_yaml(
                "oc",
                "openai-compatible",
                &other.url(),
                &[("o", "o-up")],
                "",
            ),
        )
        .write("r.yaml", &route_yaml("r", &["m"], "up", "m", route))
        .write("ro.yaml", &route_yaml("ro", &["o"], "oc", "o", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

/// POSTs `body` to `path` as a coding agent does: its gateway key in `x-api-key`, and
/// its `anthropic-*` headers.
async fn post_as_agent(
    proxy: &switchboard_proxy::Proxy,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(url(proxy, path))
        .header("x-api-key", KEY)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body).send().await.unwrap()
}

/// What the provider must receive: the client's bytes, the model renamed.
fn as_sent(request: &str) -> String {
    let renamed = request.replacen(r#""model": "m" "#, r#""model": "claude-up" "#, 1);
    assert_ne!(renamed, request, "the test request names model m");
    renamed
}

/// What the answer (and the stream) cost: input_tokens 12, cache writes 1,000, cache
/// reads 2,000, output 50: 12 * 3 + 1,000 * 3.75 + 2,000 * 0.30 + 50 * 15
/// = 36 + 3,750 + 600 + 750 = 5,136 per million (4,386 if writes cost as input).
const ANSWER_COST: f64 = 0.005_136;

#[tokio::test]
async fn an_agent_request_passes_through_byte_for_byte() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;

    let response = post_as_agent(
        &proxy,
        "/v1/messages",
        AGENT_REQUEST.to_string(),
        &[
            ("anthropic-version", "2099-01-01"),
            ("anthropic-beta", BETA),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-switchboard-model"], "claude-up");
    // The answer as the provider wrote it: thinking, signature, citations, model.
    assert_eq!(response.text().await.unwrap(), ANSWER);

    let sent = anthropic.last();
    assert_eq!(sent.uri, "/v1/messages");
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        as_sent(AGENT_REQUEST)
    );
    assert_eq!(sent.headers["anthropic-beta"], BETA);
    // The client's version, not the provider's default.
    let versions: Vec<_> = sent.headers.get_all("anthropic-version").iter().collect();
    assert_eq!(versions, ["2099-01-01"]);
    assert_eq!(sent.headers["x-api-key"], PROVIDER_KEY);
    assert!(!sent.headers.contains_key("authorization"));

    // Usage: input counts cache reads and writes; cache reads are the cached input.
    let scrape = scrape(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 3012.0);
    assert_eq!(tokens(&scrape, "cache_read"), 2000.0);
    assert_eq!(tokens(&scrape, "cache_creation"), 1000.0);
    assert_eq!(tokens(&scrape, "output"), 50.0);
    assert!(
        (cost(&scrape) - ANSWER_COST).abs() < 1e-12,
        "{}",
        cost(&scrape)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_agent_stream_passes_through_byte_for_byte() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;

    let request = AGENT_REQUEST.replacen(
        "\"temperature\":1.0",
        "\"temperature\":1.0,\"stream\":true",
        1,
    );
    // Two beta header lines: both reach the provider, in order. No version: the
    // provider's default is sent.
    let response = client()
        .post(url(&proxy, "/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .body(request.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.text().await.unwrap(), STREAM.concat());

    let sent = anthropic.last();
    assert_eq!(std::str::from_utf8(&sent.body).unwrap(), as_sent(&request));
    let betas: Vec<_> = sent.headers.get_all("anthropic-beta").iter().collect();
    assert_eq!(
        betas,
        [
            "prompt-caching-2024-07-31",
            "interleaved-thinking-2025-05-14"
        ]
    );
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");

    // The stream's usage settles once the response is over.
    let scrape_now = settled(&proxy).await;
    assert_eq!(tokens(&scrape_now, "input"), 3012.0);
    assert_eq!(tokens(&scrape_now, "cache_read"), 2000.0);
    assert_eq!(tokens(&scrape_now, "cache_creation"), 1000.0);
    assert_eq!(tokens(&scrape_now, "output"), 50.0);
    assert!(
        (cost(&scrape_now) - ANSWER_COST).abs() < 1e-12,
        "{}",
        cost(&scrape_now)
    );
    proxy.shutdown().await;
}

/// A passed-through answer is cached whole, in Anthropic's format: a repeat gets the
/// provider's bytes again, and a client that streams gets events that spell the same
/// message (thinking, signature and citations included). A streamed answer is put
/// back together and cached the same way.
#[tokio::test]
async fn passed_through_answers_are_cached_whole() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway_with(&anthropic, &other, "  cache: {ttl: 1h}").await;
    let stream_request = AGENT_REQUEST.replacen(
        "\"temperature\":1.0",
        "\"temperature\":1.0,\"stream\":true",
        1,
    );
    let post = |body: &str| post_as_agent(&proxy, "/v1/messages", body.to_string(), &[]);

    let first = post(AGENT_REQUEST).await;
    assert_eq!(first.headers()["x-switchboard-cache"], "miss");
    assert_eq!(first.text().await.unwrap(), ANSWER);
    let again = post(AGENT_REQUEST).await;
    assert_eq!(again.headers()["x-switchboard-cache"], "hit");
    assert_eq!(again.text().await.unwrap(), ANSWER);
    // Streamed from the cache: Anthropic's events, put back together the same message.
    let streamed = post(&stream_request).await;
    assert_eq!(streamed.headers()["x-switchboard-cache"], "hit");
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let message = assembled(&streamed.text().await.unwrap());
    assert_eq!(
        message,
        serde_json::from_str::<serde_json::Value>(ANSWER).unwrap()
    );
    assert_eq!(anthropic.received().len(), 1);

    // A streamed answer (another request: another key) is put back together and cached.
    let other_stream = stream_request.replacen("Summarize,", "Summarize again,", 1);
    let whole_request = other_stream.replacen(",\"stream\":true", "", 1);
    let first = post(&other_stream).await;
    assert_eq!(first.headers()["x-switchboard-cache"], "miss");
    assert_eq!(first.text().await.unwrap(), STREAM.concat());
    let mut cached = None;
    for _ in 0..50 {
        let again = post(&whole_request).await;
        if again.headers()["x-switchboard-cache"] == "hit" {
            cached = Some(again.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cached: serde_json::Value = serde_json::from_str(&cached.expect("never a hit")).unwrap();
    // The message the stream spelled: the same as the whole answer, but for the
    // `container` field only the whole answer has.
    let mut expected: serde_json::Value = serde_json::from_str(ANSWER).unwrap();
    expected.as_object_mut().unwrap().remove("container");
    expected["content"][1]
        .as_object_mut()
        .unwrap()
        .remove("citations");
    expected["usage"]
        .as_object_mut()
        .unwrap()
        .remove("service_tier");
    assert_eq!(cached, expected);
    proxy.shutdown().await;
}

/// The message a Messages API stream spells, put together as Anthropic's SDKs do.
fn assembled(stream: &str) -> serde_json::Value {
    use serde_json::Value;
    let mut message = Value::Null;
    let mut partial = String::new();
    for event in stream.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let event: Value = serde_json::from_str(data).unwrap();
        let index = event["index"].as_u64().unwrap_or(0) as usize;
        match event["type"].as_str().unwrap() {
            "message_start" => message = event["message"].clone(),
            "content_block_start" => message["content"]
                .as_array_mut()
                .unwrap()
                .push(event["content_block"].clone()),
            "content_block_delta" => {
                let block = &mut message["content"][index];
                let delta = &event["delta"];
                let mut append = |field: &str, key: &str| {
                    let text = block[field].as_str().unwrap_or("").to_string();
                    block[field] = format!("{text}{}", delta[key].as_str().unwrap()).into();
                };
                match delta["type"].as_str().unwrap() {
                    "text_delta" => append("text", "text"),
                    "thinking_delta" => append("thinking", "thinking"),
                    "signature_delta" => append("signature", "signature"),
                    "citations_delta" => block["citations"]
                        .as_array_mut()
                        .unwrap()
                        .push(delta["citation"].clone()),
                    "input_json_delta" => partial.push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "message_delta" => {
                for (name, value) in event["delta"].as_object().unwrap() {
                    message[name] = value.clone();
                }
                for (name, value) in event["usage"].as_object().unwrap() {
                    message["usage"][name] = value.clone();
                }
            }
            _ => {}
        }
    }
    message
}

#[tokio::test]
async fn anthropic_errors_pass_through_as_anthropic_wrote_them() {
    const ERROR: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"thinking.budget_tokens: must be less than max_tokens"}}"#;
    let anthropic = FakeProvider::json(400, ERROR).await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;
    let response = post_as_agent(&proxy, "/v1/messages", AGENT_REQUEST.to_string(), &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.text().await.unwrap(), ERROR);
    proxy.shutdown().await;
}

const COUNT_REQUEST: &str = r#"{"model": "m" , "system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"Hello, world","cache_control":{"type":"ephemeral"}}]}],"thinking":{"type":"enabled","budget_tokens":2048},"tools":[{"name":"bash","description":"Run","input_schema":{"type":"object"}}]}"#;

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;

    let response = post_as_agent(
        &proxy,
        "/v1/messages/count_tokens",
        COUNT_REQUEST.to_string(),
        &[("anthropic-beta", BETA)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("x-switchboard-token-count"));
    assert_eq!(response.text().await.unwrap(), "{\"input_tokens\":2095}");

    let sent = anthropic.last();
    assert_eq!(sent.uri, "/v1/messages/count_tokens");
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        as_sent(COUNT_REQUEST)
    );
    assert_eq!(sent.headers["anthropic-beta"], BETA);
    assert_eq!(sent.headers["x-api-key"], PROVIDER_KEY);

    // A count spends no tokens: after it and one answer, only the answer's are counted.
    let answer = post_as_agent(&proxy, "/v1/messages", AGENT_REQUEST.to_string(), &[]).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let scrape = scrape(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 3012.0);
    assert_eq!(
        metric(
            &scrape,
            "switchboard_requests_total",
            &[
                ("route", "default/r"),
                ("gen_ai_operation_name", "count_tokens")
            ]
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn count_tokens_is_estimated_for_other_providers() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;

    let request = COUNT_REQUEST.replacen(r#""model": "m" "#, r#""model": "o" "#, 1);
    let response = post_as_agent(&proxy, "/v1/messages/count_tokens", request, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-switchboard-token-count"], "estimate");
    assert_eq!(response.headers()["x-switchboard-provider"], "default/oc");
    let body: serde_json::Value = response.json().await.unwrap();
    // "Be brief." 9 + "user" 4 + "Hello, world" 12 + "bash" 4 + "Run" 3 = 32 characters
    // (`type` tags left out): 8 tokens.
    assert_eq!(body, serde_json::json!({"input_tokens": 8}));
    assert_eq!(other.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Routed like messages: an unknown model is refused, in Anthropic's format.
    let request = COUNT_REQUEST.replacen(r#""model": "m" "#, r#""model": "nope" "#, 1);
    let response = post_as_agent(&proxy, "/v1/messages/count_tokens", request, &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found_error");

    // Authenticated like messages.
    let response = client()
        .post(url(&proxy, "/v1/messages/count_tokens"))
        .header("x-api-key", "sk-wrong")
        .body(COUNT_REQUEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    proxy.shutdown().await;
}

/// Anthropic's own Python SDK, with thinking and cache_control, whole and streamed,
/// through the gateway to the Anthropic fake. Skipped (said so) where the SDK is not
/// installed; scripts/test.sh installs it.
#[tokio::test]
async fn the_anthropic_python_sdk_gets_thinking_through() {
    let import = std::process::Command::new("python3")
        .args(["-c", "import anthropic"])
        .output();
    if !import.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 with the anthropic SDK is not installed");
        return;
    }
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let (_m, proxy) = gateway(&anthropic, &other).await;
    let script = r#"
import os, anthropic
client = anthropic.Anthropic(base_url=os.environ["SWITCHBOARD_URL"].rstrip("/"), api_key=os.environ["SWITCHBOARD_KEY"], max_retries=0)
args = dict(
    model="m", max_tokens=16000,
    thinking={"type": "enabled", "budget_tokens": 10000},
    system=[{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
    messages=[{"role": "user", "content": "Summarize."}],
    extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
)
message = client.messages.create(**args)
print("whole", message.content[0].type, message.content[0].signature, message.usage.cache_read_input_tokens)
with client.messages.stream(**args) as stream:
    final = stream.get_final_message()
print("stream", final.content[0].type, final.content[0].signature, final.content[1].text, final.usage.output_tokens)
print("count", client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}]).input_tokens)
"#;
    let stdout = sdk_script(&proxy, script).await;
    let signature = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";
    assert!(
        stdout.contains(&format!("whole thinking {signature} 2000")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "stream thinking {signature} The grass is green. 50"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("count 2095"), "{stdout}");
    let sent = &anthropic.received()[0];
    let body = sent.json();
    assert_eq!(body["model"], "claude-up");
    assert_eq!(body["thinking"]["budget_tokens"], 10000);
    assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(
        sent.headers["anthropic-beta"],
        "interleaved-thinking-2025-05-14"
    );
    proxy.shutdown().await;
}

/// A passed-through stream cut at a quota's output budget ends as Anthropic's own
/// streams end: the open block stopped, `max_tokens`, `message_stop`.
#[tokio::test]
async fn a_passed_through_stream_is_cut_cleanly_at_its_budget() {
    let anthropic = anthropic_fake().await;
    let other = FakeProvider::json(500, "{}").await;
    let manifests = Manifests::new();
    manifests
        .write(
            "up.yaml",
            &provider_yaml("up", "anthropic", &anthropic.url(), &[("m", "claude-up")], ""),
        )
        .write(
            "oc.yaml",
            &provider_yaml("oc", "openai-compatible", &other.url(), &[("o", "o-up")], ""),
        )
        .write("r.yaml", &route_yaml("r", &["m"], "up", "m", ""))
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "quota.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIQuota\nmetadata: {name: out}\nspec:\n  limits: [{metric: OutputTokens, max: 5, window: Hour}]\n",
        );
    let proxy = proxy(&manifests).await;
    let request = AGENT_REQUEST.replacen("\"temperature\":1.0", "\"stream\":true", 1);
    let response = post_as_agent(&proxy, "/v1/messages", request, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    // "The grass is green." (19 bytes, 5 tokens) spends the budget: what came before
    // it is as the provider sent it, then the gateway closes the stream.
    let upstream: String = STREAM[..8].concat();
    let rest = text
        .strip_prefix(upstream.as_str())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        rest.starts_with(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
        ),
        "{rest}"
    );
    assert!(rest.contains(r#""stop_reason":"max_tokens""#), "{rest}");
    assert!(
        rest.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{rest}"
    );
    assert!(!rest.contains("end_turn"), "{rest}");
    proxy.shutdown().await;
}

/// A request typed for one backend of its route (translated to an OpenAI-compatible
/// provider, which fails) still passes through whole to the Anthropic backend it falls
/// back to.
#[tokio::test]
async fn a_request_translated_for_a_failed_backend_passes_through_to_the_next() {
    let anthropic = anthropic_fake().await;
    let down = FakeProvider::json(503, r#"{"error":{"message":"down"}}"#).await;
    let manifests = Manifests::new();
    manifests
        .write(
            "up.yaml",
            &provider_yaml("up", "anthropic", &anthropic.url(), &[("m", "claude-up")], ""),
        )
        .write(
            "down.yaml",
            &provider_yaml("down", "openai-compatible", &down.url(), &[("d", "d-up")], ""),
        )
        .write(
            "r.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m]\n  backends:\n    - {provider: down, model: d}\n    - {provider: up, model: m, priority: 1}\n",
        )
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    // Nothing Anthropic-only: it can be translated for the first backend.
    let request = r#"{"model": "m" , "max_tokens":64,"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"u1"}}"#;
    let response = post_as_agent(
        &proxy,
        "/v1/messages",
        request.to_string(),
        &[("anthropic-beta", BETA)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), ANSWER);
    assert!(down.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let sent = anthropic.last();
    assert_eq!(std::str::from_utf8(&sent.body).unwrap(), as_sent(request));
    assert_eq!(sent.headers["anthropic-beta"], BETA);
    proxy.shutdown().await;
}
