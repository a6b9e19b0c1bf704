use serde_json::json;

use super::*;
use crate::formats::golden::{collect, decode_split, read};
use crate::formats::openai;

/// An OpenAI request with every feature Gemini can express.
fn request() -> ChatRequest {
    openai::parse_request(
        br#"{
  "model": "flash",
  "messages": [
    {"role": "system", "content": "You are a helpful lighting system bot."},
    {"role": "user", "content": [
      {"type": "text", "text": "Turn the lights down to a romantic level"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_a", "type": "function", "function": {"name": "set_light_values", "arguments": "{\"brightness\":25,\"color_temp\":\"warm\"}"}}
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": "{\"brightness\":25,\"colorTemperature\":\"warm\"}"},
    {"role": "tool", "tool_call_id": "call_a", "content": "done"}
  ],
  "tools": [{"type": "function", "function": {"name": "set_light_values", "description": "Sets the brightness and color temperature of a light.", "parameters": {"type": "object", "properties": {"brightness": {"type": "number"}}}}}],
  "tool_choice": "required",
  "temperature": 1.0, "top_p": 0.8, "max_tokens": 800, "stop": ["Title"],
  "response_format": {"type": "json_object"}, "seed": 3
}"#,
    )
    .unwrap()
}

#[test]
fn writes_the_documented_request_shape() {
    let written: Value = serde_json::from_slice(&write_request(&request()).unwrap()).unwrap();
    let golden: Value = serde_json::from_str(&read("gemini/request_tools.json")).unwrap();
    // The same structure as Google's example, field by field.
    assert_eq!(
        written["systemInstruction"]["parts"][0]["text"],
        "You are a helpful lighting system bot."
    );
    assert_eq!(
        written["contents"][0]["role"],
        golden["contents"][0]["role"]
    );
    assert_eq!(
        written["contents"][0]["parts"][0],
        golden["contents"][0]["parts"][0]
    );
    assert_eq!(
        written["contents"][0]["parts"][1]["inlineData"]["mimeType"],
        "image/png"
    );
    assert_eq!(written["contents"][1]["role"], "model");
    assert_eq!(
        written["contents"][1]["parts"][0]["functionCall"],
        golden["contents"][1]["parts"][0]["functionCall"]
    );
    assert_eq!(
        written["contents"][1]["parts"][0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );
    // Both tool results answer the model in one user turn, named after the call.
    assert_eq!(written["contents"][2]["role"], "user");
    assert_eq!(
        written["contents"][2]["parts"][0]["functionResponse"]["response"],
        json!({"brightness": 25, "colorTemperature": "warm"})
    );
    assert_eq!(
        written["contents"][2]["parts"][1]["functionResponse"],
        json!({"name": "set_light_values", "response": {"content": "done"}})
    );
    let declaration = &written["tools"][0]["functionDeclarations"][0];
    assert_eq!(declaration["name"], "set_light_values");
    assert_eq!(declaration["parametersJsonSchema"]["type"], "object");
    assert_eq!(
        written["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    let config = &written["generationConfig"];
    for field in ["temperature", "topP", "maxOutputTokens", "stopSequences"] {
        assert_eq!(config[field], golden["generationConfig"][field], "{field}");
    }
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["seed"], 3);
}

#[test]
fn refuses_what_gemini_cannot_express() {
    let mut chat = request();
    chat.messages[1]
        .content
        .push(Part::Image(Image::Url("https://x/cat.jpg".into())));
    assert!(
        write_request(&chat)
            .unwrap_err()
            .to_string()
            .contains("remote image")
    );

    let mut chat = request();
    chat.messages[3].tool_call_id = Some("unknown".into());
    assert!(
        write_request(&chat)
            .unwrap_err()
            .to_string()
            .contains("no earlier assistant")
    );

    let mut chat = request();
    chat.n = Some(2);
    assert!(
        write_request(&chat)
            .unwrap_err()
            .to_string()
            .contains("'n'")
    );

    let mut chat = request();
    chat.messages.push(Message::text(Role::System, "late"));
    assert!(
        write_request(&chat)
            .unwrap_err()
            .to_string()
            .contains("start of the conversation")
    );
}

#[test]
fn reads_the_documented_responses() {
    let text = parse_response(read("gemini/response_text.json").as_bytes()).unwrap();
    assert!(!text.text.is_empty());
    assert_eq!(text.finish.reason, FinishReason::Stop);
    assert!(text.usage.prompt_tokens > 0 && text.usage.completion_tokens > 0);

    let call = parse_response(read("gemini/response_function_call.json").as_bytes()).unwrap();
    assert_eq!(call.finish.reason, FinishReason::ToolCalls);
    assert_eq!(call.tool_calls.len(), 1);
    assert_eq!(call.tool_calls[0].name, "now");
    assert_eq!(call.tool_calls[0].arguments, "{}");
    assert!(call.tool_calls[0].id.starts_with("call_"));
    assert!(
        call.text.is_empty(),
        "thought summaries are not the answer: {}",
        call.text
    );
    let wire: Value = serde_json::from_str(&read("gemini/response_function_call.json")).unwrap();
    let usage = &wire["usageMetadata"];
    assert_eq!(
        call.usage.completion_tokens,
        usage["candidatesTokenCount"].as_u64().unwrap_or(0)
            + usage["thoughtsTokenCount"].as_u64().unwrap(),
        "thinking tokens are output tokens"
    );
    assert_eq!(
        call.usage.reasoning_tokens(),
        usage["thoughtsTokenCount"].as_u64().unwrap()
    );

    let cached = parse_response(read("gemini/response_text_cached.json").as_bytes()).unwrap();
    assert_eq!(cached.usage.prompt_tokens, 12013);
    assert!(cached.usage.cached_tokens() > 0);

    let safety = parse_response(read("gemini/response_text_safety.json").as_bytes()).unwrap();
    assert!(!safety.text.is_empty());
}

#[test]
fn maps_finish_reasons() {
    for (wire, reason) in [
        ("STOP", FinishReason::Stop),
        ("MAX_TOKENS", FinishReason::Length),
        ("SAFETY", FinishReason::ContentFilter),
        ("RECITATION", FinishReason::ContentFilter),
        ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
        ("OTHER", FinishReason::Stop),
    ] {
        assert_eq!(finish(Some(wire), false, false).reason, reason, "{wire}");
    }
    assert_eq!(
        finish(Some("STOP"), true, false).reason,
        FinishReason::ToolCalls
    );
    assert_eq!(
        finish(None, false, true).reason,
        FinishReason::ContentFilter
    );
}

#[test]
fn decodes_the_documented_stream() {
    for path in ["gemini/stream_text.sse", "gemini/stream_text_crlf.sse"] {
        let events = decode_split(&mut StreamDecoder::default(), read(path).as_bytes(), &[]);
        assert!(
            matches!(&events[0], StreamEvent::Start { model, .. } if model == "gemini-3.1-flash-lite")
        );
        let (text, _) = collect(&events);
        assert_eq!(text, "The capital of Wyoming is **Cheyenne**.\n", "{path}");
        let usage = events.iter().rev().find_map(|e| match e {
            StreamEvent::Usage(u) => Some(*u),
            _ => None,
        });
        assert_eq!(usage, Some(Usage::new(7, 10, 0)));
        assert!(events.contains(&StreamEvent::Finish(Finish {
            reason: FinishReason::Stop,
            stop_sequence: None
        })));
        assert_eq!(events.last(), Some(&StreamEvent::Done));
    }
}

#[test]
fn a_stream_closed_before_its_finish_reason_is_not_done() {
    let stream = read("gemini/stream_text.sse");
    let first = stream.split("\n\n").next().unwrap();
    let events = decode_split(&mut StreamDecoder::default(), first.as_bytes(), &[]);
    assert!(!events.contains(&StreamEvent::Done));
}

#[test]
fn streamed_function_calls_arrive_whole() {
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    decoder.decode(
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"a","args":{"x":1}}},{"functionCall":{"id":"own","name":"b","args":{}}}]},"finishReason":"STOP"}]}"#,
        &mut out,
    );
    decoder.end(&mut out);
    let (_, arguments) = collect(&out);
    assert_eq!(arguments, [r#"{"x":1}"#, "{}"]);
    assert!(
        out.iter()
            .any(|e| matches!(e, StreamEvent::ToolCallStart { index: 1, id, .. } if id == "own"))
    );
    assert!(out.contains(&StreamEvent::Finish(Finish {
        reason: FinishReason::ToolCalls,
        stop_sequence: None
    })));
    assert_eq!(out.last(), Some(&StreamEvent::Done));
}

#[test]
fn reads_the_documented_errors() {
    let bad_key = read("gemini/error_400.json");
    assert!(is_bad_key(bad_key.as_bytes()));
    assert_eq!(
        parse_error(read("gemini/error_503.json").as_bytes()).as_deref(),
        Some("The model is overloaded. Please try again later.")
    );
    assert!(!is_bad_key(read("gemini/error_429.json").as_bytes()));
    let mut out = Vec::new();
    StreamDecoder::default().decode(&read("gemini/error_503.json"), &mut out);
    assert!(matches!(
        out[0],
        StreamEvent::Error(StreamError {
            kind: StreamErrorKind::Overloaded,
            ..
        })
    ));
}

/// A whole answer with every optional field `null`: read as if absent, nothing lost.
#[test]
fn null_optional_fields_of_an_answer_read_as_absent() {
    let body = r#"{
      "candidates": [{
        "content": {"role": "model", "parts": [
          {"text": "hi", "thought": null, "thoughtSignature": null, "functionCall": null},
          {"text": null, "functionCall": {"id": null, "name": "f", "args": null}, "thought": null}
        ]},
        "finishReason": "STOP", "safetyRatings": null, "citationMetadata": null, "index": null
      }],
      "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,
        "thoughtsTokenCount": null, "cachedContentTokenCount": null, "totalTokenCount": null,
        "promptTokensDetails": null},
      "modelVersion": null, "responseId": null, "promptFeedback": null, "error": null
    }"#;
    let response = parse_response(body.as_bytes()).unwrap();
    assert_eq!(response.text, "hi");
    assert_eq!(response.tool_calls[0].name, "f");
    assert_eq!(response.tool_calls[0].arguments, "{}");
    assert_eq!(response.finish.reason, FinishReason::ToolCalls);
    assert_eq!(response.usage, Usage::new(3, 2, 0));
    // No model named: left empty here, for the adapter to name the model it asked for.
    assert_eq!(response.model, "");
    assert!(response.id.starts_with("gemini-"));

    let response = parse_response(
        br#"{"candidates":null,"usageMetadata":null,"promptFeedback":{"blockReason":null}}"#,
    )
    .unwrap();
    assert_eq!(response.text, "");
    assert_eq!(response.finish.reason, FinishReason::Stop);
    let response =
        parse_response(br#"{"candidates":[{"content":{"parts":null},"finishReason":null}]}"#)
            .unwrap();
    assert_eq!(response.text, "");
}

/// The same for a stream.
#[test]
fn null_optional_fields_of_stream_events_read_as_absent() {
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    for data in [
        r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"h","thought":null}]},"finishReason":null}],"usageMetadata":null,"modelVersion":null,"responseId":null}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"i"},{"functionCall":{"name":"f","args":null}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2,"thoughtsTokenCount":null,"cachedContentTokenCount":null}}"#,
        r#"{"candidates":null,"error":null}"#,
    ] {
        decoder.decode(data, &mut out);
    }
    decoder.end(&mut out);
    assert!(
        !out.iter().any(|e| matches!(e, StreamEvent::Error(_))),
        "{out:?}"
    );
    let (text, arguments) = collect(&out);
    assert_eq!(text, "hi");
    assert_eq!(arguments, ["{}"]);
    assert!(out.contains(&StreamEvent::Usage(Usage::new(3, 2, 0))));
    assert_eq!(out.last(), Some(&StreamEvent::Done));
}
