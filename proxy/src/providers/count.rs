//! Token counts estimated by the gateway, for providers with no counting API (every
//! provider but Anthropic). The estimate is one token per four characters of the text
//! in the request's `system`, `messages` and `tools`: every string value in them
//! (text, tool inputs and results, tool names, descriptions and schemas), except the
//! `type` tags of blocks and the base64 `data` of images and documents, whose tokens
//! depend on the picture or file, not on the length of its encoding. It is a rough
//! figure for budgeting a prompt; the response says it is an estimate.

use serde_json::Value;

/// The fields whose text is counted.
const COUNTED: [&str; 3] = ["system", "messages", "tools"];

/// Estimated input tokens of a Messages API request body; 0 for a body that is not a
/// JSON object (the request was checked when read; nothing here may fail).
pub fn estimate(body: &[u8]) -> u64 {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let chars: u64 = COUNTED
        .iter()
        .filter_map(|name| fields.get(*name))
        .map(text_chars)
        .sum();
    chars.div_ceil(4)
}

/// Characters of every string value in `value` (keys are not counted), but those under
/// `type` and `data` keys.
fn text_chars(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.chars().count() as u64,
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "type" | "data"))
            .map(|(_, value)| text_chars(value))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_of_system_messages_and_tools_only() {
        let body = br#"{"model":"a-long-model-name","max_tokens":1024,
            "system":[{"type":"text","text":"12345678"}],
            "messages":[{"role":"user","content":[{"type":"text","text":"abcd"},
                {"type":"image","source":{"type":"base64","media_type":"","data":"QUFBQUFBQUFBQUFBQUFB"}}]}],
            "tools":[{"name":"ab","description":"cd","input_schema":{"type":"object"}}]}"#;
        // 8 + "user" 4 + 4 + 2 + 2 = 20 characters.
        assert_eq!(estimate(body), 5);
        assert_eq!(estimate(b"[1]"), 0);
        assert_eq!(estimate(b"{\"messages\":\"x\"}"), 1);
    }
}
