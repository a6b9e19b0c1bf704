use serde_json::json;

use super::*;
use crate::formats::golden::{collect, decode_split, read};

fn golden_json(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap()
}

#[test]
fn reads_the_documented_request() {
    let chat = parse_request(read("anthropic/request_tools.json").as_bytes()).unwrap();
    let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::Tool]
    );
    assert_eq!(
        chat.messages[0].joined_text(),
        "Today's date is 2024-06-01."
    );
    assert!(matches!(
        &chat.messages[1].content[0],
        Part::Image(Image::Base64 { media_type, .. }) if media_type == "image/png"
    ));
    let call = &chat.messages[2].tool_calls[0];
    assert_eq!(call.id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(call.name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&call.arguments).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(
        chat.messages[3].tool_call_id.as_deref(),
        Some("toolu_01A09q90qw90lq917835lq9")
    );
    assert_eq!(chat.messages[3].joined_text(), "15 degrees");
    assert_eq!(chat.tools[0].name, "get_weather");
    assert_eq!(chat.tool_choice, Some(ToolChoice::Auto));
    assert_eq!(chat.max_tokens, Some(1024));
    assert_eq!(chat.temperature, Some(1.0));
    assert_eq!(chat.stop, ["END"]);
    assert_eq!(
        chat.user.as_deref(),
        Some("13803d75-b4b5-4c3e-b2a2-6f21399b021b")
    );
}

#[test]
fn the_documented_request_round_trips() {
    let golden = golden_json("anthropic/request_tools.json");
    let chat = parse_request(read("anthropic/request_tools.json").as_bytes()).unwrap();
    let written: Value =
        serde_json::from_slice(&write_request(&chat, "claude-sonnet-4-5", false, 4096).unwrap())
            .unwrap();
    for field in [
        "model",
        "max_tokens",
        "system",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
    ] {
        assert_eq!(written[field], golden[field], "{field}");
    }
    assert_eq!(written["temperature"].as_f64(), Some(1.0));
    // Messages are equal but for the tool result's content, a string in the example
    // and text blocks when written.
    assert_eq!(written["messages"][0], golden["messages"][0]);
    assert_eq!(written["messages"][1], golden["messages"][1]);
    assert_eq!(
        written["messages"][2]["content"][0]["content"],
        json!([{"type": "text", "text": "15 degrees"}])
    );
    assert_eq!(
        written["messages"][2]["content"][0]["tool_use_id"],
        "toolu_01A09q90qw90lq917835lq9"
    );
}

#[test]
fn writes_the_required_max_tokens_default() {
    let chat = ChatRequest {
        messages: vec![Message::text(Role::User, "hi")],
        ..ChatRequest::default()
    };
    let written: Value =
        serde_json::from_slice(&write_request(&chat, "claude", true, 777).unwrap()).unwrap();
    assert_eq!(written["max_tokens"], 777);
    assert_eq!(written["stream"], true);
    assert!(written.get("system").is_none());
}

#[test]
fn refuses_what_the_messages_api_cannot_express() {
    let base = || ChatRequest {
        messages: vec![Message::text(Role::User, "hi")],
        ..ChatRequest::default()
    };
    let cases: Vec<(ChatRequest, &str)> = vec![
        (
            ChatRequest {
                response_format: Some(ResponseFormat::JsonObject),
                ..base()
            },
            "response_format",
        ),
        (
            ChatRequest {
                n: Some(2),
                ..base()
            },
            "'n'",
        ),
        (
            ChatRequest {
                seed: Some(1),
                ..base()
            },
            "'seed'",
        ),
        (
            ChatRequest {
                messages: vec![
                    Message::text(Role::User, "hi"),
                    Message::text(Role::System, "late"),
                ],
                ..base()
            },
            "system messages only at the start",
        ),
    ];
    for (chat, expected) in cases {
        let error = write_request(&chat, "claude", false, 1).unwrap_err();
        assert!(matches!(error, ProxyError::BadRequest(_)));
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn merges_tool_results_into_one_user_turn() {
    let chat = ChatRequest {
        messages: vec![
            Message::text(Role::User, "weather in A and B?"),
            Message {
                tool_calls: vec![
                    ToolCall {
                        id: "c1".into(),
                        name: "w".into(),
                        arguments: r#"{"city":"A"}"#.into(),
                    },
                    ToolCall {
                        id: "c2".into(),
                        name: "w".into(),
                        arguments: r#"{"city":"B"}"#.into(),
                    },
                ],
                ..Message::text(Role::Assistant, "")
            },
            Message {
                tool_call_id: Some("c1".into()),
                ..Message::text(Role::Tool, "sunny")
            },
            Message {
                tool_call_id: Some("c2".into()),
                is_error: true,
                ..Message::text(Role::Tool, "failed")
            },
        ],
        ..ChatRequest::default()
    };
    let written: Value =
        serde_json::from_slice(&write_request(&chat, "claude", false, 1).unwrap()).unwrap();
    let messages = written["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{written}");
    assert_eq!(messages[1]["content"].as_array().unwrap().len(), 2);
    assert_eq!(messages[1]["content"][0]["input"], json!({"city": "A"}));
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["tool_use_id"], "c2");
    assert_eq!(results[1]["is_error"], true);
}

#[test]
fn reads_the_documented_responses() {
    let text = parse_response(read("anthropic/response_text.json").as_bytes()).unwrap();
    assert_eq!(text.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    assert_eq!(text.text, "Hi! My name is Claude.");
    assert_eq!(text.finish.reason, FinishReason::Stop);
    // input_tokens excludes cache reads and writes; the IR counts every prompt token.
    assert_eq!(text.usage.prompt_tokens, 2095 + 2051 + 2051);
    assert_eq!(text.usage.cached_tokens(), 2051);
    assert_eq!(text.usage.cache_write_tokens(), 2051);
    assert_eq!(text.usage.completion_tokens, 503);

    let tool = parse_response(read("anthropic/response_tool_use.json").as_bytes()).unwrap();
    assert_eq!(tool.finish.reason, FinishReason::ToolCalls);
    assert_eq!(tool.tool_calls.len(), 1);
    assert!(tool.tool_calls[0].id.starts_with("toolu_"));
    assert!(
        serde_json::from_str::<Value>(&tool.tool_calls[0].arguments)
            .unwrap()
            .is_object()
    );
}

#[test]
fn maps_every_stop_reason() {
    for (wire, reason) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::ContentFilter),
        ("pause_turn", FinishReason::Stop),
        ("model_context_window_exceeded", FinishReason::Length),
    ] {
        assert_eq!(finish_from_wire(Some(wire), None).reason, reason, "{wire}");
    }
    let finish = finish_from_wire(Some("stop_sequence"), Some("END".into()));
    assert_eq!(stop_reason_to_wire(&finish), "stop_sequence");
}

#[test]
fn written_responses_read_back_the_same() {
    let response = ChatResponse {
        id: "msg_1".into(),
        model: "claude".into(),
        text: "Let me look.".into(),
        tool_calls: vec![ToolCall {
            id: "toolu_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"location":"Paris"}"#.into(),
        }],
        finish: Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        usage: Usage::new(120, 30, 100)
            .with_cache_writes(15)
            .with_cache_writes_1h(10),
    };
    let written = write_response(&response);
    // Anthropic's terms: input_tokens without cache reads and writes, the writes by
    // lifetime.
    let usage = &serde_json::from_slice::<Value>(&written).unwrap()["usage"];
    assert_eq!(
        *usage,
        json!({"input_tokens": 5, "output_tokens": 30,
               "cache_read_input_tokens": 100, "cache_creation_input_tokens": 15,
               "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 10}})
    );
    assert_eq!(parse_response(&written).unwrap(), response);
}

#[test]
fn decodes_the_documented_tool_use_stream() {
    let events = decode_split(
        &mut StreamDecoder::default(),
        read("anthropic/stream_tool_use.sse").as_bytes(),
        &[],
    );
    assert!(matches!(
        &events[0],
        StreamEvent::Start { id, usage: Some(usage), .. }
            if id == "msg_014p7gG3wDgGV9EUtLvnow3U" && usage.prompt_tokens == 472
    ));
    let (text, arguments) = collect(&events);
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments[0]).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert!(events.contains(&StreamEvent::ToolCallStart {
        index: 0,
        id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
        name: "get_weather".into(),
    }));
    let n = events.len();
    assert_eq!(
        events[n - 2],
        StreamEvent::Finish(Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None
        })
    );
    assert_eq!(events[n - 1], StreamEvent::Done);
    let usage = events.iter().rev().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    });
    assert_eq!(usage.unwrap().completion_tokens, 89);
    assert_eq!(usage.unwrap().prompt_tokens, 472);
}

#[test]
fn decodes_the_documented_error_event() {
    let events = decode_split(
        &mut StreamDecoder::default(),
        read("anthropic/stream_error.sse").as_bytes(),
        &[],
    );
    assert!(matches!(
        events.last(),
        Some(StreamEvent::Error(StreamError {
            kind: StreamErrorKind::Overloaded,
            ..
        }))
    ));
}

#[test]
fn skips_event_types_it_does_not_know() {
    let mut out = Vec::new();
    StreamDecoder::default().decode(r#"{"type":"future_event","x":1}"#, &mut out);
    assert!(out.is_empty());
    StreamDecoder::default().decode(r#"{"type":"message_start"}"#, &mut out);
    assert!(
        matches!(out[0], StreamEvent::Error(_)),
        "a broken known event is an error"
    );
}

/// Encodes IR events, checks the event sequence Anthropic's SDKs expect, and decodes
/// them back to the same IR.
#[test]
fn encoded_streams_decode_back_to_the_same_events() {
    let source = decode_split(
        &mut StreamDecoder::default(),
        read("anthropic/stream_tool_use.sse").as_bytes(),
        &[],
    );
    let mut encoder = StreamEncoder::default();
    let mut bytes = BytesMut::new();
    for event in source.clone() {
        encoder.encode(event, &mut bytes);
    }
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let starts = names
        .iter()
        .filter(|n| **n == "content_block_start")
        .count();
    let stops = names.iter().filter(|n| **n == "content_block_stop").count();
    assert_eq!((starts, stops), (2, 2), "every block opened is closed");

    let decoded = decode_split(&mut StreamDecoder::default(), &bytes, &[]);
    assert_eq!(collect(&decoded), collect(&source));
    assert_eq!(decoded.last(), Some(&StreamEvent::Done));
    assert_eq!(decoded[decoded.len() - 2], source[source.len() - 2]);
}

#[test]
fn encodes_errors_as_the_documented_error_event() {
    let mut bytes = BytesMut::new();
    StreamEncoder::default().encode(
        StreamEvent::Error(StreamError {
            kind: StreamErrorKind::Overloaded,
            message: "Overloaded".into(),
        }),
        &mut bytes,
    );
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
    );
    let documented = read("anthropic/error_overloaded.json");
    assert_eq!(
        parse_error(documented.as_bytes()).as_deref(),
        Some("Overloaded")
    );
}

/// A whole answer with every optional field `null`: read as if absent, nothing lost,
/// and written for an OpenAI client whole.
#[test]
fn null_optional_fields_of_an_answer_read_as_absent() {
    let body = r#"{
      "id": null, "type": "message", "role": "assistant", "model": null,
      "content": [
        {"type": "text", "text": "hi", "citations": null},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": null}
      ],
      "stop_reason": "tool_use", "stop_sequence": null, "container": null,
      "usage": {"input_tokens": 3, "output_tokens": 2, "cache_creation_input_tokens": null,
        "cache_read_input_tokens": null, "server_tool_use": null, "service_tier": null,
        "cache_creation": null}
    }"#;
    let response = parse_response(body.as_bytes()).unwrap();
    assert_eq!(response.text, "hi");
    assert_eq!(response.tool_calls[0].name, "f");
    assert_eq!(response.tool_calls[0].arguments, "{}");
    assert_eq!(response.finish.reason, FinishReason::ToolCalls);
    assert_eq!(response.usage, Usage::new(3, 2, 0));
    let written: Value =
        serde_json::from_slice(&crate::formats::openai::write_response(&response, 1)).unwrap();
    assert_eq!(written["choices"][0]["message"]["content"], "hi");
    assert_eq!(written["usage"]["total_tokens"], 5);

    let response = parse_response(br#"{"content":null,"usage":null,"stop_reason":null}"#).unwrap();
    assert_eq!(response.text, "");
    assert_eq!(response.finish.reason, FinishReason::Stop);
    let response = parse_response(br#"{"content":[{"type":"text","text":null}]}"#).unwrap();
    assert_eq!(response.text, "");
}

/// The same for a stream: every event with its optional fields `null`.
#[test]
fn null_optional_fields_of_stream_events_read_as_absent() {
    let events = [
        r#"{"type":"message_start","message":{"id":null,"type":"message","role":"assistant","model":null,"content":[],"stop_reason":null,"stop_sequence":null,"usage":null}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":null,"citations":null}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":null}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":null}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":null}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"input_tokens":null,"output_tokens":2,"cache_read_input_tokens":null}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    for event in events {
        decoder.decode(event, &mut out);
    }
    assert!(
        !out.iter().any(|e| matches!(e, StreamEvent::Error(_))),
        "{out:?}"
    );
    let (text, arguments) = collect(&out);
    assert_eq!(text, "hi");
    assert_eq!(arguments, ["{}"]);
    assert!(out.iter().any(|e| matches!(
        e,
        StreamEvent::Finish(Finish {
            reason: FinishReason::ToolCalls,
            ..
        })
    )));
    assert!(
        out.iter()
            .any(|e| matches!(e, StreamEvent::Usage(u) if u.completion_tokens == 2))
    );
    assert_eq!(out.last(), Some(&StreamEvent::Done));

    // An error event whose fields are null is still an error event.
    let mut out = Vec::new();
    StreamDecoder::default().decode(
        r#"{"type":"error","error":{"type":null,"message":null}}"#,
        &mut out,
    );
    assert!(matches!(out.as_slice(), [StreamEvent::Error(_)]), "{out:?}");
}

/// `message_start` carries input, cache reads and writes; `message_delta` the output
/// (and, in newer streams, the input counts again): merged, never double counted.
#[test]
fn stream_usage_merges_message_start_and_message_delta() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":null,\"output_tokens\":50}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let events = decode_split(&mut StreamDecoder::default(), stream.as_bytes(), &[]);
    let usage = events.iter().rev().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    });
    assert_eq!(
        usage,
        Some(Usage::new(3012, 50, 2000).with_cache_writes(1000))
    );
}
