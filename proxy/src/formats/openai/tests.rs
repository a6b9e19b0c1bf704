use serde_json::json;

use super::*;
use crate::formats::golden::{collect, decode_split, read};

const FULL_REQUEST: &str = r#"{
  "model": "smart",
  "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
    {"role": "user", "content": [
      {"type": "text", "text": "What is in this image, and the weather?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
      {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}
    ]},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
  ],
  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
  "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
  "parallel_tool_calls": false,
  "max_completion_tokens": 100,
  "temperature": 0.5,
  "top_p": 0.9,
  "stop": "END",
  "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
  "user": "user-42",
  "n": 1,
  "seed": 7,
  "presence_penalty": 0.1,
  "frequency_penalty": 0.2,
  "stream": true,
  "stream_options": {"include_usage": true},
  "logprobs": false
}"#;

#[test]
fn types_every_field_it_knows() {
    let chat = parse_request(FULL_REQUEST.as_bytes()).unwrap();
    let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool
        ]
    );
    assert_eq!(
        chat.messages[2].content[1],
        Part::Image(Image::Base64 {
            media_type: "image/png".into(),
            data: "iVBORw0KGgo=".into()
        })
    );
    assert_eq!(
        chat.messages[2].content[2],
        Part::Image(Image::Url("https://example.com/cat.jpg".into()))
    );
    assert!(chat.messages[3].content.is_empty());
    assert_eq!(
        chat.messages[3].tool_calls[0].arguments,
        r#"{"city":"Paris"}"#
    );
    assert_eq!(chat.messages[4].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(
        chat.tool_choice,
        Some(ToolChoice::Tool("get_weather".into()))
    );
    assert_eq!(chat.parallel_tool_calls, Some(false));
    assert_eq!(chat.max_tokens, Some(100));
    assert_eq!(chat.stop, ["END"]);
    assert!(matches!(
        &chat.response_format,
        Some(ResponseFormat::JsonSchema { name, strict: Some(true), .. }) if name == "answer"
    ));
    assert_eq!(chat.user.as_deref(), Some("user-42"));
    assert_eq!((chat.n, chat.seed), (Some(1), Some(7)));
}

#[test]
fn written_requests_read_back_the_same() {
    let chat = parse_request(FULL_REQUEST.as_bytes()).unwrap();
    let written = write_request(&chat, "gpt-4o", true);
    let json: Value = serde_json::from_slice(&written).unwrap();
    assert_eq!(json["model"], "gpt-4o");
    assert_eq!(json["stream_options"], json!({"include_usage": true}));
    assert_eq!(parse_request(&written).unwrap(), chat);
}

#[test]
fn refuses_fields_it_cannot_translate() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":2}"#;
    let error = parse_request(body.as_bytes()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("'logprobs'") && message.contains("'top_logprobs'"),
        "{message}"
    );

    for (body, expected) in [
        (
            r#"{"messages":[{"role":"function","content":"x"}]}"#,
            "function",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#,
            "invalid chat completions request",
        ),
        (
            r#"{"messages":[],"tool_choice":"sometimes"}"#,
            "tool_choice",
        ),
        (r#"{"messages":[],"temperature":"hot"}"#, "invalid type"),
    ] {
        let error = parse_request(body.as_bytes()).unwrap_err();
        assert!(matches!(error, ProxyError::BadRequest(_)));
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn written_responses_read_back_the_same() {
    let response = ChatResponse {
        id: "chatcmpl-1".into(),
        model: "gpt-4o".into(),
        text: String::new(),
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }],
        finish: Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        usage: Usage::new(50, 10, 20).with_reasoning(4),
    };
    let written = write_response(&response, 1_700_000_000);
    let json: Value = serde_json::from_slice(&written).unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(json["usage"]["prompt_tokens_details"]["cached_tokens"], 20);
    assert_eq!(
        json["usage"]["completion_tokens_details"]["reasoning_tokens"],
        4
    );
    assert_eq!(parse_response(&written).unwrap(), response);
}

#[test]
fn decodes_the_documented_tool_call_stream() {
    let events = decode_split(
        &mut StreamDecoder::default(),
        read("openai/stream_tool_calls.sse").as_bytes(),
        &[],
    );
    assert!(matches!(&events[0], StreamEvent::Start { model, .. } if model == "gpt-4o-2024-08-06"));
    assert!(events.contains(&StreamEvent::ToolCallStart {
        index: 0,
        id: "call_pVHYsU0gmSfX5TqxOyVbB2ma".into(),
        name: "get_weather".into(),
    }));
    let (_, arguments) = collect(&events);
    assert!(
        serde_json::from_str::<Value>(&arguments[0])
            .unwrap()
            .is_object()
    );
    assert!(events.iter().any(|e| matches!(
        e,
        StreamEvent::Finish(Finish {
            reason: FinishReason::ToolCalls,
            ..
        })
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Usage(u) if u.total_tokens > 0))
    );
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

fn encode(events: &[StreamEvent], include_usage: bool) -> String {
    let mut encoder = StreamEncoder::new(include_usage, 1);
    let mut out = BytesMut::new();
    for event in events {
        encoder.encode(event.clone(), &mut out);
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// The chunks written for a stream read back to the same events, and have the shape
/// OpenAI documents: role first, then deltas, the finish reason, the usage chunk when
/// asked for, and `[DONE]`.
#[test]
fn encoded_streams_decode_back_to_the_same_events() {
    for path in ["openai/stream_tool_calls.sse", "openai/stream_text.sse"] {
        let source = decode_split(&mut StreamDecoder::default(), read(path).as_bytes(), &[]);
        let text = encode(&source, true);
        let decoded = decode_split(&mut StreamDecoder::default(), text.as_bytes(), &[]);
        assert_eq!(decoded, source, "{path}");

        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}

#[test]
fn the_usage_chunk_is_sent_only_when_asked_for() {
    let events = [
        StreamEvent::Start {
            id: "x".into(),
            model: "m".into(),
            usage: None,
        },
        StreamEvent::Text("hi".into()),
        StreamEvent::Finish(Finish {
            reason: FinishReason::Stop,
            stop_sequence: None,
        }),
        StreamEvent::Usage(Usage::new(3, 1, 0)),
        StreamEvent::Done,
    ];
    let without = encode(&events, false);
    assert!(!without.contains("usage"), "{without}");
    assert_eq!(without.matches("data: ").count(), 4);
    let with = encode(&events, true);
    assert!(
        with.contains(r#""choices":[],"usage":{"prompt_tokens":3"#),
        "{with}"
    );
}

#[test]
fn mid_stream_errors_are_error_events_without_done() {
    let text = encode(
        &[StreamEvent::Error(StreamError {
            kind: StreamErrorKind::Overloaded,
            message: "Overloaded".into(),
        })],
        false,
    );
    assert_eq!(
        text,
        "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n"
    );
}

#[test]
fn azure_content_filter_chunk_does_not_start_the_answer() {
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    decoder.decode(
        r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
        &mut out,
    );
    assert!(out.is_empty());
    decoder.decode(
        r#"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#,
        &mut out,
    );
    assert_eq!(
        out,
        [
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o".into(),
                usage: None
            },
            StreamEvent::Text("Hi".into())
        ]
    );
}

/// A whole answer with every optional field `null`, as OpenAI-compatible servers write
/// them: read as if absent, nothing lost.
#[test]
fn null_optional_fields_of_an_answer_read_as_absent() {
    let body = r#"{
      "id": null, "object": "chat.completion", "created": null, "model": null,
      "system_fingerprint": null, "service_tier": null,
      "choices": [{
        "index": 0, "logprobs": null, "finish_reason": null,
        "message": {"role": "assistant", "content": "hi", "refusal": null,
          "tool_calls": null, "function_call": null, "audio": null, "annotations": null}
      }],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": null, "audio_tokens": null},
        "completion_tokens_details": null}
    }"#;
    let response = parse_response(body.as_bytes()).unwrap();
    assert_eq!(response.text, "hi");
    assert!(response.tool_calls.is_empty());
    assert_eq!(response.finish.reason, FinishReason::Stop);
    assert_eq!((response.id.as_str(), response.model.as_str()), ("", ""));
    assert_eq!(response.usage.prompt_tokens, 3);
    assert_eq!(response.usage.total_tokens, 4);
    assert_eq!(response.usage.cached_tokens(), 0);

    // Null where a whole object or list may be: still read.
    let body = r#"{"id":"x","model":"m","choices":[{"message":{"content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"f","arguments":null}}]},
        "finish_reason":"tool_calls"}],"usage":null}"#;
    let response = parse_response(body.as_bytes()).unwrap();
    assert_eq!(response.text, "");
    assert_eq!(response.tool_calls[0].id, "call_1");
    assert_eq!(response.tool_calls[0].name, "f");
    assert_eq!(response.tool_calls[0].arguments, "");
    assert_eq!(response.usage, Usage::default());
    let response = parse_response(br#"{"choices":[{"message":null}]}"#).unwrap();
    assert_eq!(response.text, "");
}

/// The same for a stream: every chunk with its optional fields `null`.
#[test]
fn null_optional_fields_of_stream_chunks_read_as_absent() {
    let chunks = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":null,"model":null,"system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":null,"tool_calls":null,"function_call":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi","tool_calls":null},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":null,"id":"call_1","type":"function","function":{"name":"f","arguments":null}}]},"finish_reason":null}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"function":{"name":null,"arguments":"{}"}}]},"finish_reason":null}]}"#,
        r#"{"id":"c1","choices":[{"index":0,"delta":null,"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
        r#"{"id":"c1","choices":null,"usage":{"prompt_tokens":3,"completion_tokens":null,"total_tokens":3,"prompt_tokens_details":null,"completion_tokens_details":null}}"#,
        "[DONE]",
    ];
    let mut decoder = StreamDecoder::default();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.decode(chunk, &mut events);
    }
    assert!(
        !events.iter().any(|e| matches!(e, StreamEvent::Error(_))),
        "{events:?}"
    );
    let (text, arguments) = collect(&events);
    assert_eq!(text, "hi");
    assert_eq!(arguments, ["{}"]);
    assert!(events.contains(&StreamEvent::Finish(Finish {
        reason: FinishReason::ToolCalls,
        stop_sequence: None
    })));
    assert!(events.contains(&StreamEvent::Usage(Usage::new(3, 0, 0))));
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

/// A body that cannot be read says what was wrong and where, never what it held.
#[test]
fn an_unreadable_answer_says_where_not_what() {
    for body in [
        &br#"{"choices":[{"message":{"content":"secret"}}], "usage": {"prompt_tokens": "secret"}}"#
            [..],
        b"{\"choices\":[{\"message\":{\"content\":\"secret\"",
        b"secret",
    ] {
        let error = parse_response(body).unwrap_err();
        let ProxyError::UpstreamUnreadable(what) = &error else {
            panic!("{error:?}");
        };
        assert!(what.contains(" at line 1 column "), "{what}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
    assert!(matches!(
        parse_response(br#"{"choices":[]}"#),
        Err(ProxyError::UpstreamUnreadable(_))
    ));
}

#[test]
fn a_tool_call_without_an_id_in_an_answer_gets_one() {
    let body = r#"{"id":"x","model":"m","choices":[{"message":{"content":null,"tool_calls":[
        {"id":null,"type":"function","function":{"name":"f","arguments":"{}"}},
        {"type":"function","function":{"name":"g","arguments":"{}"}}]},
        "finish_reason":"tool_calls"}]}"#;
    let response = parse_response(body.as_bytes()).unwrap();
    let ids: Vec<&str> = response.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["call_0", "call_1"]);
}
