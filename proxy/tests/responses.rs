//! OpenAI's Responses API (`POST /v1/responses`) through the gateway: passed through
//! to OpenAI and Azure OpenAI providers byte for byte, whole and streamed, metered like
//! chat (operation `responses`); refused, in OpenAI's error format, on routes whose
//! providers do not have it. The official `openai` SDK reads what the gateway returns.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;

fn corpus(file: &str) -> Bytes {
    let path = format!("{}/tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(path).unwrap())
}

/// A fake OpenAI answering the Responses API from the corpus.
async fn fake_openai() -> FakeProvider {
    let (whole, stream) = (
        corpus("openai-responses-whole.json"),
        corpus("openai-responses-stream.sse"),
    );
    FakeProvider::start(move |received| match received.json()["stream"] == true {
        true => Reply::Pieces(StatusCode::OK, "text/event-stream", vec![stream.clone()]),
        false => Reply::Json(StatusCode::OK, whole.clone()),
    })
    .await
}

/// Route `gpt` to `openai` (model `gpt-4.1` upstream), route `claude` to an
/// Anthropic provider.
fn manifests(openai: &FakeProvider, anthropic: &FakeProvider) -> Manifests {
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "openai.yaml",
            &(provider_yaml("oai", "openai", &openai.url(), &[("gpt", "gpt-4.1")], "")
                + "---\n"
                + &route_yaml("gpt", &["gpt"], "oai", "gpt", "")),
        )
        .write(
            "anthropic.yaml",
            &(provider_yaml(
                "ant",
                "anthropic",
                &anthropic.url(),
                &[("claude", "claude-x")],
                "",
            ) + "---\n"
                + &route_yaml("claude", &["claude"], "ant", "claude", "")),
        );
    manifests
}

/// The strings of a JSON array.
fn strings(array: &serde_json::Value) -> Vec<&str> {
    let items = array.as_array().map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(|k| k.as_str()).collect()
}

/// The fakes, their manifests and a proxy on them.
async fn gateway() -> (
    FakeProvider,
    FakeProvider,
    Manifests,
    switchboard_proxy::Proxy,
) {
    let openai = fake_openai().await;
    let anthropic = FakeProvider::json(500, "{}").await;
    let manifests = manifests(&openai, &anthropic);
    let proxy = proxy(&manifests).await;
    (openai, anthropic, manifests, proxy)
}

#[tokio::test]
async fn responses_pass_through_to_openai_whole_and_streamed_and_are_metered() {
    let (openai, _anthropic, _manifests, proxy) = gateway().await;

    // Whole: the client's bytes go up with only the model replaced; the answer comes
    // back byte for byte.
    let body = r#"{"model":"gpt","input":"Tell me a story.","max_output_tokens":300,"metadata":{"k":"v"}}"#;
    let response = post(&proxy, "/v1/responses", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.bytes().await.unwrap(),
        corpus("openai-responses-whole.json")
    );
    let sent = openai.last();
    assert_eq!(sent.uri, "/v1/responses");
    assert_eq!(sent.body, body.replace(r#""gpt""#, r#""gpt-4.1""#));
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );

    // Streamed: no `stream_options` added (the final event has the usage), events
    // passed through byte for byte.
    let body = r#"{"model":"gpt","input":"hi","stream":true}"#;
    let response = post(&proxy, "/v1/responses", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.bytes().await.unwrap(),
        corpus("openai-responses-stream.sse")
    );
    assert_eq!(openai.last().body, body.replace(r#""gpt""#, r#""gpt-4.1""#));

    // Metered like chat, under their own operation.
    let metrics = scrape(&proxy).await;
    let usage = |token_type: &str| {
        let labels = [
            ("gen_ai_operation_name", "responses"),
            ("gen_ai_token_type", token_type),
        ];
        metrics.get("gen_ai_client_token_usage_sum", &labels)
    };
    // The whole answer's 36 + the stream's 37 input tokens; 87 + 11 output.
    assert_eq!(usage("input"), Some(73.0));
    assert_eq!(usage("output"), Some(98.0));
    assert_eq!(usage("cache_read"), Some(12.0));
    let requests = [
        ("gen_ai_operation_name", "responses"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        metrics.get("switchboard_requests_total", &requests),
        Some(2.0)
    );
}

#[tokio::test]
async fn azure_serves_responses_on_its_v1_api_with_the_deployment_in_the_body() {
    let upstream = FakeProvider::json(200, "{\"id\":\"resp_1\",\"usage\":null}").await;
    let manifests = Manifests::new();
    manifests
        .write("consumer.yaml", &consumer_yaml("app", ""))
        .write(
            "azure.yaml",
            &(provider_yaml(
                "az",
                "azure-openai",
                &format!("http://{}", upstream.addr),
                &[("gpt", "my-deployment")],
                "  azure: {apiVersion: 2024-10-21}\n",
            ) + "---\n"
                + &route_yaml("gpt", &["gpt"], "az", "gpt", "")),
        );
    let proxy = proxy(&manifests).await;
    let response = post(&proxy, "/v1/responses", r#"{"model":"gpt","input":"x"}"#).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/openai/v1/responses");
    assert_eq!(seen.json()["model"], "my-deployment");
    assert_eq!(seen.headers["api-key"], PROVIDER_KEY);
}

#[tokio::test]
async fn a_route_without_a_responses_provider_is_a_clear_400_in_openai_format() {
    let (_openai, anthropic, _manifests, proxy) = gateway().await;
    let response = post(&proxy, "/v1/responses", r#"{"model":"claude","input":"x"}"#).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: serde_json::Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("responses API"), "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(anthropic.received().is_empty());

    let response = post(&proxy, "/v1/responses", "[1,2]").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(error["error"]["message"].is_string(), "{error}");
}

/// A provider stream that breaks off mid-answer ends, for the client, with the
/// Responses API's `error` event, numbered after the provider's last event.
#[tokio::test]
async fn a_stream_that_breaks_ends_with_a_responses_error_event() {
    let stream = corpus("openai-responses-stream.sse");
    // Up to the first text delta (sequence number 4), then the connection breaks.
    let text = std::str::from_utf8(&stream).unwrap();
    let cut = text.find("event: response.output_text.delta").unwrap();
    let after_first_delta = cut + text[cut..].find("\n\n").unwrap() + 2;
    let head = Bytes::copy_from_slice(&stream[..after_first_delta]);
    let openai = FakeProvider::start(move |_| Reply::CutAfter(head.clone())).await;
    let anthropic = FakeProvider::json(500, "{}").await;
    let manifests = manifests(&openai, &anthropic);
    let proxy = proxy(&manifests).await;

    let body = r#"{"model":"gpt","input":"hi","stream":true}"#;
    let response = post(&proxy, "/v1/responses", body).await;
    let got = response.text().await.unwrap();
    assert!(got.starts_with(&text[..after_first_delta]), "{got}");
    let last = got[after_first_delta..].trim_end();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("an error event at the end: {got}"));
    let error: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["sequence_number"], 5);
    assert_eq!(error["code"], "server_error");
    assert!(!error["message"].as_str().unwrap().is_empty());
}

const SCRIPT: &str = r#"
import json, os
import openai

base, key = os.environ["SWITCHBOARD_URL"].rstrip("/"), os.environ["SWITCHBOARD_KEY"]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
out = {}
r = client.responses.create(model="gpt", input="Tell me a story.")
out["whole"] = r.output_text
out["whole_usage"] = [r.usage.input_tokens, r.usage.output_tokens]
kinds = []
with client.responses.stream(model="gpt", input="hi") as stream:
    for event in stream:
        kinds.append(event.type)
    final = stream.get_final_response()
out["stream"] = final.output_text
out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]
out["kinds"] = kinds
try:
    client.responses.create(model="claude", input="x")
    out["refused"] = None
except openai.BadRequestError as error:
    out["refused"] = error.status_code
print(json.dumps(out))
"#;

/// The official `openai` SDK (installed by scripts/test.sh) creates responses whole
/// and streamed through the gateway, and reads a refusal as its own error type.
#[tokio::test]
async fn the_openai_sdk_creates_responses_through_the_gateway() {
    let (_openai, _anthropic, _manifests, proxy) = gateway().await;

    let stdout = sdk_script(&proxy, SCRIPT).await;
    let read: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        read["whole"],
        "Under a silver moon, a unicorn named Lumina dreamed of rainbows."
    );
    assert_eq!(read["whole_usage"], serde_json::json!([36, 87]));
    assert_eq!(read["stream"], "Hi there!");
    assert_eq!(read["stream_usage"], serde_json::json!([37, 11]));
    let kinds = strings(&read["kinds"]);
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count(),
        3
    );
    assert_eq!(read["refused"], 400);
}

const VALIDATE: &str = r#"
import json, sys
from pydantic import TypeAdapter
from openai.types.responses import Response, ResponseStreamEvent

stream, whole = sys.stdin.read().split("\n\n\n\n")
events, numbers = TypeAdapter(ResponseStreamEvent), []
text = ""
for block in stream.strip().split("\n\n"):
    kind, data = block.split("\n")
    event = events.validate_python(json.loads(data.removeprefix("data: ")))
    assert kind == "event: " + event.type, (kind, event.type)
    numbers.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        text += event.delta
    last = event
assert numbers == list(range(len(numbers))), numbers
final = last.response
print(json.dumps({
    "kinds": [b.split("\n")[0].removeprefix("event: ") for b in stream.strip().split("\n\n")],
    "streamed_text": text,
    "final_text": final.output_text,
    "final_calls": [[o.call_id, o.name, o.arguments] for o in final.output if o.type == "function_call"],
    "final_usage": [final.usage.input_tokens, final.usage.output_tokens],
    "whole": Response.model_validate(json.loads(whole)).output_text,
}))
"#;

/// The Responses events and answers the gateway writes itself (for translated answers
/// and the events it adds to a passed-through stream) are read by the official SDK's
/// own types, which check every field.
#[tokio::test]
async fn the_gateways_own_responses_events_validate_against_the_sdk_types() {
    use bytes::BytesMut;
    use switchboard_proxy::formats::responses::{StreamEncoder, write_response};
    use switchboard_proxy::ir::Usage;
    use switchboard_proxy::ir::chat::{ChatResponse, Finish, FinishReason, StreamEvent, ToolCall};

    let mut encoder = StreamEncoder::new(1_741_290_958);
    let mut stream = BytesMut::new();
    for event in [
        StreamEvent::Start {
            id: "chatcmpl-1".into(),
            model: "claude-x".into(),
            usage: None,
        },
        StreamEvent::Text("Checking ".into()),
        StreamEvent::Text("the weather.".into()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "get_weather".into(),
        },
        StreamEvent::ToolCallArguments {
            index: 0,
            arguments: "{\"city\":".into(),
        },
        StreamEvent::ToolCallArguments {
            index: 0,
            arguments: "\"Oslo\"}".into(),
        },
        StreamEvent::Finish(Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        }),
        StreamEvent::Usage(Usage::new(20, 9, 0)),
        StreamEvent::Done,
    ] {
        encoder.encode(event, &mut stream);
    }
    let whole = write_response(
        &ChatResponse {
            id: "resp_2".into(),
            model: "claude-x".into(),
            text: "Hello.".into(),
            tool_calls: vec![ToolCall {
                id: "call_2".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            finish: Finish {
                reason: FinishReason::Stop,
                stop_sequence: None,
            },
            usage: Usage::new(3, 2, 1),
        },
        1_741_290_958,
    );
    let mut input = stream.to_vec();
    input.extend_from_slice(b"\n\n");
    input.extend_from_slice(&whole);

    let mut command = tokio::process::Command::new("python3");
    command
        .args(["-c", VALIDATE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("python3 runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).await.unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the script ends within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}\n{stderr}\n{}",
        String::from_utf8_lossy(&input)
    );
    let read: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(read["streamed_text"], "Checking the weather.");
    assert_eq!(read["final_text"], "Checking the weather.");
    assert_eq!(
        read["final_calls"],
        serde_json::json!([["call_1", "get_weather", "{\"city\":\"Oslo\"}"]])
    );
    assert_eq!(read["final_usage"], serde_json::json!([20, 9]));
    assert_eq!(read["whole"], "Hello.");
    let kinds = strings(&read["kinds"]);
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
}

/// A Responses stream of `deltas` text deltas of 20 bytes, numbered from 0 (the first
/// four events open the response and its message).
fn long_responses_stream(deltas: usize) -> Vec<(Duration, Bytes)> {
    let mut events = vec![
        r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_9","object":"response","created_at":7,"status":"in_progress","model":"gpt-4.1","output":[],"usage":null}}"#.to_string(),
        r#"{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_9","object":"response","created_at":7,"status":"in_progress","model":"gpt-4.1","output":[],"usage":null}}"#.to_string(),
        r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_9","type":"message","status":"in_progress","role":"assistant","content":[]}}"#.to_string(),
        r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_9","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#.to_string(),
    ];
    for n in 0..deltas {
        events.push(format!(
            r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_9","output_index":0,"content_index":0,"delta":"twenty bytes of text","logprobs":[]}}"#,
            4 + n
        ));
    }
    events
        .into_iter()
        .map(|data| {
            let kind = serde_json::from_str::<serde_json::Value>(&data).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string();
            let event = format!("event: {kind}\ndata: {data}\n\n");
            (Duration::from_millis(2), Bytes::from(event))
        })
        .collect()
}

/// A quota that cuts a stream ends a Responses stream with `response.incomplete`,
/// numbered after the provider's last event passed on.
#[tokio::test]
async fn a_stream_cut_by_a_quota_ends_with_response_incomplete() {
    let openai = FakeProvider::start(|_| Reply::Stream(long_responses_stream(50))).await;
    let anthropic = FakeProvider::json(500, "{}").await;
    let manifests = manifests(&openai, &anthropic);
    manifests.write(
        "quota.yaml",
        "apiVersion: switchboard.dev/v1alpha1\nkind: AIQuota\nmetadata: {name: out}\nspec:\n  limits: [{metric: OutputTokens, max: 25, window: Hour}]\n",
    );
    let proxy = proxy(&manifests).await;
    let body = r#"{"model":"gpt","input":"hi","stream":true,"max_output_tokens":1000}"#;
    let response = post(&proxy, "/v1/responses", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .count();
    assert_eq!(deltas, 5, "5 deltas of 20 bytes reach 25 tokens: {text}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete", "{text}");
    assert_eq!(last["sequence_number"], 9);
    assert_eq!(last["response"]["id"], "resp_9");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
}
