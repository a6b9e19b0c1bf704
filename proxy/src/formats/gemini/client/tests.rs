use serde_json::json;

use super::*;

#[test]
fn reads_a_function_call_round_trip() {
    let body = json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "c2ln"}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}
        ],
        "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "d",
            "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {"temperature": 0.5, "topP": 0.9, "topK": 40.0, "maxOutputTokens": 100,
            "stopSequences": ["END"], "candidateCount": 1}
    });
    let chat = parse_request(body.to_string().as_bytes()).unwrap();
    let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::Tool]
    );
    let call = &chat.messages[2].tool_calls[0];
    assert_eq!(call.name, "get_weather");
    assert_eq!(
        chat.messages[3].tool_call_id.as_deref(),
        Some(call.id.as_str())
    );
    assert_eq!(chat.messages[3].joined_text(), r#"{"temp":21}"#);
    assert_eq!(
        chat.tools[0].parameters,
        Some(json!({"type": "object", "properties": {"city": {"type": "string"}}}))
    );
    assert_eq!(
        chat.tool_choice,
        Some(ToolChoice::Tool("get_weather".into()))
    );
    assert_eq!(chat.top_k, Some(40));
    assert_eq!(chat.max_tokens, Some(100));
    assert_eq!(chat.stop, ["END"]);
}

#[test]
fn refuses_what_cannot_be_translated_naming_it() {
    let cases = [
        (
            json!({"contents": [{"parts": [{"text": "hi"}]}], "safetySettings": [{}]}),
            "safetySettings",
        ),
        (
            json!({"contents": [{"parts": [{"fileData": {"fileUri": "x"}}]}]}),
            "fileData",
        ),
        (
            json!({"contents": [{"parts": [{"text": "hi"}]}], "tools": [{"googleSearch": {}}]}),
            "googleSearch",
        ),
        (
            json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
            "thinkingConfig",
        ),
        (
            json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": 2}}),
            "candidateCount",
        ),
        (json!({"contents": []}), "contents"),
        (
            json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
            "functionCall",
        ),
    ];
    for (body, named) in cases {
        let error = parse_request(body.to_string().as_bytes()).unwrap_err();
        assert!(
            error.to_string().contains(named),
            "{error} should name {named}"
        );
    }
}

#[test]
fn writes_answers_and_streams_as_gemini_does() {
    let answer = ChatResponse {
        id: "r1".into(),
        model: "m1".into(),
        text: "Hi".into(),
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        }],
        finish: Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        },
        usage: Usage::new(10, 5, 4),
    };
    let body: Value = serde_json::from_slice(&write_response(&answer)).unwrap();
    assert_eq!(
        body,
        json!({"candidates": [{"content": {"parts": [{"text": "Hi"},
            {"functionCall": {"id": "c1", "name": "f", "args": {"a": 1}}}], "role": "model"},
            "finishReason": "STOP", "index": 0}],
         "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
            "totalTokenCount": 15, "cachedContentTokenCount": 4},
         "modelVersion": "m1", "responseId": "r1"})
    );

    let mut encoder = StreamEncoder::default();
    let mut out = BytesMut::new();
    for event in [
        StreamEvent::Start {
            id: "r1".into(),
            model: "m1".into(),
            usage: None,
        },
        StreamEvent::Text("Hel".into()),
        StreamEvent::Text("lo".into()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "c1".into(),
            name: "f".into(),
        },
        StreamEvent::ToolCallArguments {
            index: 0,
            arguments: "{\"a\":".into(),
        },
        StreamEvent::ToolCallArguments {
            index: 0,
            arguments: "1}".into(),
        },
        StreamEvent::Finish(Finish {
            reason: FinishReason::ToolCalls,
            stop_sequence: None,
        }),
        StreamEvent::Usage(Usage::new(10, 5, 0)),
        StreamEvent::Done,
    ] {
        encoder.encode(event, &mut out);
    }
    // Decoded back by the provider side's decoder: the same answer.
    let mut decoder = super::super::StreamDecoder::default();
    let mut events = Vec::new();
    let text = String::from_utf8(out.to_vec()).unwrap();
    let datas: Vec<&str> = text
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(datas.len(), 4, "{text}");
    for data in datas {
        decoder.decode(data, &mut events);
    }
    decoder.end(&mut events);
    assert!(events.contains(&StreamEvent::Text("Hel".into())));
    assert!(events.contains(&StreamEvent::ToolCallArguments {
        index: 0,
        arguments: r#"{"a":1}"#.into()
    }));
    assert!(events.contains(&StreamEvent::Usage(Usage::new(10, 5, 0))));
    assert_eq!(events.last(), Some(&StreamEvent::Done));

    let mut out = BytesMut::new();
    StreamEncoder::default().encode(
        StreamEvent::Error(StreamError {
            kind: StreamErrorKind::Overloaded,
            message: "busy".into(),
        }),
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"data: {\"error\":{\"code\":503,\"message\":\"busy\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n"
    );
}

#[test]
fn writes_reasoning_as_thoughts_outside_the_candidates_count() {
    // 40 output tokens of which 30 were thinking: Gemini reports 10 + 30 thoughts.
    let usage = Usage::new(12, 40, 0).with_reasoning(30);
    let wire = usage_to_wire(&usage);
    assert_eq!(
        wire,
        json!({"promptTokenCount": 12, "candidatesTokenCount": 10,
               "thoughtsTokenCount": 30, "totalTokenCount": 52})
    );
    // Read back as a Gemini provider's answer, the same usage.
    let read: WireUsage = serde_json::from_value(wire).unwrap();
    assert_eq!(read.to_ir(), usage);
}
