//! Gemini's API as a client API (`/v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`): passed through to Gemini providers byte for byte
//! (model in the URL, provider key), translated through the IR to every other provider,
//! errors in Google's format, and the official `google-genai` Python SDK against it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use support::*;

fn golden(path: &str) -> String {
    let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The golden file as pieces of one event each, 2 ms apart.
fn pieces(text: &str) -> Vec<(Duration, Bytes)> {
    let separator = if text.contains("\r\n\r\n") {
        "\r\n\r\n"
    } else {
        "\n\n"
    };
    text.split_inclusive(separator)
        .map(|event| (Duration::from_millis(2), Bytes::from(event.to_string())))
        .collect()
}

/// A provider answering `whole` (a golden file) to whole requests and streaming
/// `stream` (a golden file) to streamed ones: Gemini says which in its URL, the others
/// in the body.
async fn fake(whole: &str, stream: &str) -> FakeProvider {
    let whole = Bytes::from(golden(whole));
    let stream = pieces(&golden(stream));
    FakeProvider::start(move |received| {
        let streamed = received.uri.contains(":streamGenerateContent")
            || serde_json::from_slice::<Value>(&received.body)
                .is_ok_and(|body| body["stream"] == true);
        match streamed {
            true => Reply::Stream(stream.clone()),
            false => Reply::Json(StatusCode::OK, whole.clone()),
        }
    })
    .await
}

/// Model `m` on `upstream`, a provider of `kind` (as `up-model`).
async fn gateway(upstream: &FakeProvider, kind: &str) -> (Manifests, switchboard_proxy::Proxy) {
    gateway_with(upstream, kind, "").await
}

/// `gateway`, with `route` added to the route's spec.
async fn gateway_with(
    upstream: &FakeProvider,
    kind: &str,
    route: &str,
) -> (Manifests, switchboard_proxy::Proxy) {
    let manifests = Manifests::new();
    manifests
        .write(
            "provider.yaml",
            &provider_yaml("up", kind, &upstream.url(), &[("m", "up-model")], ""),
        )
        .write("route.yaml", &route_yaml("r", &["m"], "up", "m", route))
        .write("consumer.yaml", &consumer_yaml("app", ""));
    let proxy = proxy(&manifests).await;
    (manifests, proxy)
}

/// POSTs `body` to `method` of model `model` as the google-genai SDK does: the gateway
/// key in `x-goog-api-key`.
async fn post_gemini(
    proxy: &switchboard_proxy::Proxy,
    model: &str,
    method: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .post(url(proxy, &format!("/v1beta/models/{model}:{method}")))
        .header("x-goog-api-key", KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The JSON of each server-sent event (LF or CRLF).
fn events(text: &str) -> Vec<Value> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("a data event");
            serde_json::from_str(data).unwrap_or_else(|e| panic!("{data}: {e}"))
        })
        .collect()
}

/// The text of every part of every event's first candidate, joined.
fn joined_text(events: &[Value]) -> String {
    events
        .iter()
        .flat_map(|e| {
            e["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

/// Asserts a Google error with `code` and `status`; returns the message.
async fn assert_google_error(response: reqwest::Response, code: u16, status: &str) -> String {
    assert_eq!(response.status().as_u16(), code);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("a message")
        .to_string()
}

/// A request with fields no translation carries (safety settings, thinking), and
/// spacing no serializer writes: a Gemini provider gets it as sent.
const NATIVE_REQUEST: &str = r#"{ "contents": [{"role":"user","parts":[{"text": "Where is Google's headquarters?"}]}],
  "safetySettings": [{"category":"HARM_CATEGORY_HATE_SPEECH","threshold":"BLOCK_ONLY_HIGH"}],
  "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}, "temperature": 1.0e0},
  "someFutureField": {"x": [1, 2]} }"#;

#[tokio::test]
async fn a_gemini_request_passes_through_to_gemini_byte_for_byte() {
    let upstream = fake("gemini/response_text.json", "gemini/stream_text_crlf.sse").await;
    let (_m, proxy) = gateway(&upstream, "gemini").await;

    let response = post_gemini(&proxy, "m", "generateContent", NATIVE_REQUEST).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-switchboard-model"], "up-model");
    assert_eq!(
        response.text().await.unwrap(),
        golden("gemini/response_text.json")
    );

    let sent = upstream.last();
    assert_eq!(sent.uri, "/v1/models/up-model:generateContent");
    assert_eq!(std::str::from_utf8(&sent.body).unwrap(), NATIVE_REQUEST);
    assert_eq!(sent.headers["x-goog-api-key"], PROVIDER_KEY);
    assert!(!sent.headers.contains_key("authorization"));

    // Usage is read from usageMetadata.
    let scrape = settled(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 7.0);
    assert_eq!(tokens(&scrape, "output"), 22.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_gemini_stream_passes_through_to_gemini_byte_for_byte() {
    let upstream = fake("gemini/response_text.json", "gemini/stream_text_crlf.sse").await;
    let (_m, proxy) = gateway(&upstream, "gemini").await;

    // The key in the query, as Google's REST examples send it.
    let response = client()
        .post(url(
            &proxy,
            &format!("/v1beta/models/m:streamGenerateContent?alt=sse&key={KEY}"),
        ))
        .header("content-type", "application/json")
        .body(NATIVE_REQUEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.text().await.unwrap(),
        golden("gemini/stream_text_crlf.sse")
    );

    let sent = upstream.last();
    assert_eq!(
        sent.uri,
        "/v1/models/up-model:streamGenerateContent?alt=sse"
    );
    assert_eq!(std::str::from_utf8(&sent.body).unwrap(), NATIVE_REQUEST);
    assert_eq!(sent.headers["x-goog-api-key"], PROVIDER_KEY);
    assert!(!sent.uri.contains(KEY));

    let scrape = settled(&proxy).await;
    assert_eq!(tokens(&scrape, "input"), 7.0);
    assert!(tokens(&scrape, "output") > 0.0);
    proxy.shutdown().await;
}

/// A passed-through Gemini answer is cached whole in Gemini's format: a streamed one
/// put back together (its text in one part, its final usage), answered whole to the
/// next request; a whole one answered as a stream of one event to a client that streams.
#[tokio::test]
async fn passed_through_answers_are_cached_in_geminis_format() {
    let upstream = fake("gemini/response_text.json", "gemini/stream_text_crlf.sse").await;
    let (_m, proxy) = gateway_with(&upstream, "gemini", "  cache: {ttl: 1h}").await;
    let streamed = events(&golden("gemini/stream_text_crlf.sse"));

    let first = post_gemini(&proxy, "m", "streamGenerateContent?alt=sse", NATIVE_REQUEST).await;
    assert_eq!(first.headers()["x-switchboard-cache"], "miss");
    assert_eq!(
        first.text().await.unwrap(),
        golden("gemini/stream_text_crlf.sse")
    );
    let mut cached = None;
    for _ in 0..50 {
        let again = post_gemini(&proxy, "m", "generateContent", NATIVE_REQUEST).await;
        if again.headers()["x-switchboard-cache"] == "hit" {
            cached = Some(again.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cached = cached.expect("never a hit");
    let parts = cached["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(parts.len(), 1, "{cached}");
    assert_eq!(parts[0]["text"].as_str().unwrap(), joined_text(&streamed));
    let last = streamed.last().unwrap();
    assert_eq!(cached["usageMetadata"], last["usageMetadata"]);
    assert_eq!(
        cached["candidates"][0]["finishReason"],
        last["candidates"][0]["finishReason"]
    );

    // Whole first, then streamed from the cache.
    let other = NATIVE_REQUEST.replacen("headquarters", "campus", 1);
    let whole = post_gemini(&proxy, "m", "generateContent", other.clone()).await;
    assert_eq!(whole.headers()["x-switchboard-cache"], "miss");
    let whole: Value = whole.json().await.unwrap();
    let replayed = post_gemini(&proxy, "m", "streamGenerateContent?alt=sse", other).await;
    assert_eq!(replayed.headers()["x-switchboard-cache"], "hit");
    assert_eq!(replayed.headers()["content-type"], "text/event-stream");
    let replayed = events(&replayed.text().await.unwrap());
    assert_eq!(replayed, [whole]);
    assert_eq!(upstream.received().len(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn gemini_errors_pass_through_to_gemini_clients() {
    let upstream = FakeProvider::start(|_| {
        Reply::Json(
            StatusCode::TOO_MANY_REQUESTS,
            Bytes::from(golden("gemini/error_429.json")),
        )
    })
    .await;
    let (_m, proxy) = gateway(&upstream, "gemini").await;
    let response = post_gemini(&proxy, "m", "generateContent", NATIVE_REQUEST).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.text().await.unwrap(),
        golden("gemini/error_429.json")
    );
    proxy.shutdown().await;
}

const TOOLS_REQUEST: &str = r#"{
  "systemInstruction": {"parts": [{"text": "Be brief."}]},
  "contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}],
  "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}],
  "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
  "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 200, "stopSequences": ["END"], "candidateCount": 1}
}"#;

const OPENAI_TOOL_CALL: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-up","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":30,"completion_tokens":8,"total_tokens":38}}"#;

const OPENAI_TEXT: &str = r#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"gpt-up","choices":[{"index":0,"message":{"role":"assistant","content":"It is 21 degrees in Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":50,"completion_tokens":9,"total_tokens":59}}"#;

#[tokio::test]
async fn a_function_call_round_trip_through_an_openai_compatible_provider() {
    let upstream = FakeProvider::start(|received| {
        let answered = received.json()["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let body = if answered {
            OPENAI_TEXT
        } else {
            OPENAI_TOOL_CALL
        };
        Reply::Json(StatusCode::OK, Bytes::from_static(body.as_bytes()))
    })
    .await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;

    let response = post_gemini(&proxy, "m", "generateContent", TOOLS_REQUEST).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    let candidate = &answer["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    let call = &candidate["content"]["parts"][0]["functionCall"];
    assert_eq!(
        *call,
        json!({"id": "call_abc", "name": "get_weather", "args": {"city": "Paris"}})
    );
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(
        answer["usageMetadata"],
        json!({"promptTokenCount": 30, "candidatesTokenCount": 8, "totalTokenCount": 38})
    );
    assert_eq!(answer["modelVersion"], "gpt-up");

    let sent = upstream.last().json();
    assert_eq!(sent["model"], "up-model");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    // Gemini's OpenAPI type names become JSON Schema's.
    assert_eq!(sent["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(sent["stop"], json!(["END"]));

    // The SDK's way back: the model's content as it came, then the function's result
    // (no id: Gemini matches results by name).
    let mut history: Value = serde_json::from_str(TOOLS_REQUEST).unwrap();
    let contents = history["contents"].as_array_mut().unwrap();
    contents.push(candidate["content"].clone());
    contents.push(json!({"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temperature": 21}}}]}));
    let response = post_gemini(&proxy, "m", "generateContent", history.to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "It is 21 degrees in Paris."
    );

    let sent = upstream.last().json();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], "call_abc");
    assert_eq!(messages[3]["content"], r#"{"temperature":21}"#);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_openai_compatible_stream_is_written_as_gemini_events() {
    let upstream = fake("gemini/response_text.json", "openai/stream_text.sse").await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;
    let body = r#"{"contents": [{"parts": [{"text": "Weather?"}]}]}"#;
    let response = post_gemini(&proxy, "m", "streamGenerateContent?alt=sse", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());

    // The text as the provider streamed it, piece by piece.
    let expected: String = golden("openai/stream_text.sse")
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(joined_text(&events), expected);
    assert!(events.len() > 2);
    // The finish and the usage end the stream, as Gemini sends them.
    let last = events.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 14);
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 47);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none())
    );
    let sent = upstream.last().json();
    assert_eq!(sent["stream"], true);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_anthropic_provider_answers_gemini_clients_whole_and_streamed() {
    let upstream = fake("anthropic/response_text.json", "anthropic/stream_text.sse").await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let body = r#"{"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 64, "topK": 5}}"#;

    let response = post_gemini(&proxy, "m", "generateContent", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "Hi! My name is Claude."
    );
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
    // All input, cache reads and writes included; the cached part said apart.
    assert_eq!(
        answer["usageMetadata"]["promptTokenCount"],
        2095 + 2051 + 2051
    );
    assert_eq!(answer["usageMetadata"]["cachedContentTokenCount"], 2051);
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 503);
    let sent = upstream.last();
    assert_eq!(sent.uri, "/v1/messages");
    let sent = sent.json();
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["messages"][0]["role"], "user");

    let response = post_gemini(&proxy, "m", "streamGenerateContent?alt=sse", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = events(&response.text().await.unwrap());
    let expected: String = golden("anthropic/stream_text.sse")
        .split("\n\n")
        .filter_map(|e| e.split_once("data: ").map(|(_, d)| d.to_string()))
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(joined_text(&events), expected);
    let last = events.last().unwrap();
    assert!(last["candidates"][0]["finishReason"].is_string());
    assert!(last["usageMetadata"]["candidatesTokenCount"].as_u64() > Some(0));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_event_in_googles_format() {
    let upstream = fake(
        "anthropic/response_text.json",
        "anthropic/stream_error_midstream.sse",
    )
    .await;
    let (_m, proxy) = gateway(&upstream, "anthropic").await;
    let body = r#"{"contents": [{"parts": [{"text": "Hi"}]}]}"#;
    let response = post_gemini(&proxy, "m", "streamGenerateContent?alt=sse", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = events(&response.text().await.unwrap());
    assert_eq!(joined_text(&events), "Hello");
    assert_eq!(
        *events.last().unwrap(),
        json!({"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}})
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn gateway_errors_are_in_googles_format() {
    let upstream = FakeProvider::json(200, OPENAI_TEXT).await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;
    let body = r#"{"contents": [{"parts": [{"text": "Hi"}]}]}"#;
    let path = "/v1beta/models/m:generateContent";

    // No key, a wrong key.
    let response = client()
        .post(url(&proxy, path))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_google_error(response, 401, "UNAUTHENTICATED").await;
    let response = client()
        .post(url(&proxy, path))
        .header("x-goog-api-key", "sk-wrong")
        .body(body)
        .send()
        .await
        .unwrap();
    let message = assert_google_error(response, 401, "UNAUTHENTICATED").await;
    assert!(!message.contains("sk-wrong"));

    // Google's `v1` is served too (newer google-genai SDKs default to it).
    let response = client()
        .post(url(&proxy, "/v1/models/m:generateContent"))
        .header("x-goog-api-key", KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client()
        .post(url(&proxy, "/v1/models/nope:generateContent"))
        .header("x-goog-api-key", KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_google_error(response, 404, "NOT_FOUND").await;

    // An unknown model; a method the gateway does not serve.
    let response = post_gemini(&proxy, "nope", "generateContent", body).await;
    let message = assert_google_error(response, 404, "NOT_FOUND").await;
    assert!(message.contains("nope"), "{message}");
    let response = post_gemini(&proxy, "m", "embedContent", body).await;
    assert_google_error(response, 404, "NOT_FOUND").await;

    // Bodies that are not requests, and what cannot be translated, named.
    let response = post_gemini(&proxy, "m", "generateContent", "{not json").await;
    assert_google_error(response, 400, "INVALID_ARGUMENT").await;
    let response = post_gemini(&proxy, "m", "generateContent", "{}").await;
    let message = assert_google_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("contents"), "{message}");
    let response = post_gemini(&proxy, "m", "generateContent", NATIVE_REQUEST).await;
    let message = assert_google_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("safetySettings"), "{message}");
    let response = post_gemini(&proxy, "m", "streamGenerateContent", body).await;
    let message = assert_google_error(response, 400, "INVALID_ARGUMENT").await;
    assert!(message.contains("alt=sse"), "{message}");
    // Nothing reached the provider but the one `v1` request.
    assert_eq!(upstream.received().len(), 1);

    // A provider that rejects the gateway's key: the gateway's fault, not the client's.
    let rejecting = FakeProvider::json(401, r#"{"error":{"message":"bad key"}}"#).await;
    let (_m2, proxy2) = gateway(&rejecting, "openai-compatible").await;
    let response = post_gemini(&proxy2, "m", "generateContent", body).await;
    assert_google_error(response, 502, "INTERNAL").await;
    proxy2.shutdown().await;
    proxy.shutdown().await;
}

/// The official `google-genai` SDK, whole and streamed, against an openai-compatible
/// provider. Skipped only when there is no python3; the SDK itself must be installed
/// (scripts/test.sh does).
#[tokio::test]
async fn the_google_genai_sdk_works_against_the_gateway() {
    const SCRIPT: &str = r#"
import os
from google import genai
from google.genai import types

client = genai.Client(
    api_key=os.environ["SWITCHBOARD_KEY"],
    http_options=types.HttpOptions(base_url=os.environ["SWITCHBOARD_URL"]),
)
reply = client.models.generate_content(
    model="m",
    contents="Say hi",
    config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.1),
)
print("reply:", reply.text, reply.candidates[0].finish_reason.name,
      reply.usage_metadata.prompt_token_count)
text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
    model="m", contents="Stream please"))
print("stream:", text)
try:
    client.models.generate_content(model="nope", contents="hi")
except genai.errors.ClientError as error:
    print("error:", error.code, error.status)
"#;
    let upstream = FakeProvider::start({
        let stream = pieces(&golden("openai/stream_text.sse"));
        move |received| match received.json()["stream"] == true {
            true => Reply::Stream(stream.clone()),
            false => Reply::Json(StatusCode::OK, Bytes::from_static(OPENAI_TEXT.as_bytes())),
        }
    })
    .await;
    let (_m, proxy) = gateway(&upstream, "openai-compatible").await;

    let stdout = sdk_script(&proxy, SCRIPT).await;
    assert!(
        stdout.contains("reply: It is 21 degrees in Paris. STOP 50"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stream: I'm unable to provide real-time updates"),
        "{stdout}"
    );
    assert!(stdout.contains("error: 404 NOT_FOUND"), "{stdout}");

    let sent = upstream.received();
    let first = sent[0].json();
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(first["temperature"], 0.1);
    proxy.shutdown().await;
}
