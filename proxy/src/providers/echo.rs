//! The built-in `echo` provider: deterministic answers for demos and tests, no network.
//!
//! Chat replies with the text of the request's last message (cut to `max_tokens` words,
//! then `finish_reason: "length"`); embeddings are unit vectors derived from a hash of
//! each input. One word counts as one token. Answers depend only on the request, so
//! tests can compare them byte for byte.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Call, Reply, StreamEnd, StreamOutcome, stream_channel};
use crate::error::ProxyError;
use crate::ir::{Operation, Request, Usage};
use crate::sse;

pub(super) async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let echo = call.provider.config.echo;
    if echo.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(echo.latency_ms)).await;
    }
    match call.request.operation {
        Operation::Embeddings => embeddings(call.request, call.upstream_model),
        Operation::ChatCompletions => {
            let answer = Answer::new(call.request)?;
            if call.request.stream {
                Ok(stream(
                    answer,
                    call.upstream_model.to_string(),
                    call.request.client_wants_usage,
                    Duration::from_millis(echo.chunk_interval_ms),
                    call.on_stream_end,
                ))
            } else {
                Ok(complete(&answer, call.upstream_model))
            }
        }
    }
}

/// What the echo model says to a chat request.
struct Answer {
    id: String,
    words: Vec<String>,
    finish_reason: &'static str,
    usage: Usage,
}

#[derive(Deserialize)]
struct ChatFields {
    messages: Vec<Message>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Value,
}

impl Answer {
    fn new(request: &Request) -> Result<Self, ProxyError> {
        let fields: ChatFields = serde_json::from_slice(&request.body)
            .map_err(|e| ProxyError::BadRequest(format!("invalid chat request: {e}")))?;
        let prompt_tokens: u64 = fields
            .messages
            .iter()
            .map(|m| word_count(&text_of(&m.content)))
            .sum();
        let last = fields
            .messages
            .last()
            .map(|m| text_of(&m.content))
            .unwrap_or_default();
        let mut words: Vec<String> = last.split_whitespace().map(str::to_string).collect();
        let limit = fields.max_completion_tokens.or(fields.max_tokens);
        let mut finish_reason = "stop";
        if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
            && words.len() > limit
        {
            words.truncate(limit);
            finish_reason = "length";
        }
        let completion_tokens = words.len() as u64;
        let digest = Sha256::digest(&request.body);
        Ok(Self {
            id: format!("chatcmpl-echo-{}", hex::encode(&digest[..8])),
            words,
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
                prompt_tokens_details: None,
            },
        })
    }
}

/// The text of a message's content: a string, or the text parts of a parts array.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

fn complete(answer: &Answer, model: &str) -> Reply {
    let body = json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.words.join(" ")},
            "logprobs": null,
            "finish_reason": answer.finish_reason,
        }],
        "usage": usage_json(&answer.usage),
    });
    Reply::Complete {
        body: Bytes::from(body.to_string()),
        usage: Some(answer.usage),
    }
}

fn stream(
    answer: Answer,
    model: String,
    include_usage: bool,
    interval: Duration,
    on_end: super::StreamEndHook,
) -> Reply {
    let (tx, body) = stream_channel();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            let mut chunk = json!({
                "id": answer.id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if include_usage {
                chunk["usage"] = Value::Null;
            }
            sse::event(&chunk.to_string())
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        let last = answer.words.len().saturating_sub(1);
        for (i, word) in answer.words.iter().enumerate() {
            let text = if i == last {
                word.clone()
            } else {
                format!("{word} ")
            };
            events.push(chunk(json!({"content": text}), None));
        }
        events.push(chunk(json!({}), Some(answer.finish_reason)));
        if include_usage {
            let usage = json!({
                "id": answer.id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage_json(&answer.usage),
            });
            events.push(sse::event(&usage.to_string()));
        }
        events.push(sse::event("[DONE]"));

        let mut outcome = StreamOutcome::Complete;
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Ok(event)).await.is_err() {
                outcome = StreamOutcome::ClientGone;
                break;
            }
        }
        on_end(StreamEnd {
            usage: Some(answer.usage),
            outcome,
        });
    });
    Reply::Stream(body)
}

/// Dimensions of echo embeddings unless the request sets `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;
const MAX_DIMENSIONS: usize = 4096;

#[derive(Deserialize)]
struct EmbeddingFields {
    input: Value,
    dimensions: Option<usize>,
}

fn embeddings(request: &Request, model: &str) -> Result<Reply, ProxyError> {
    let fields: EmbeddingFields = serde_json::from_slice(&request.body)
        .map_err(|e| ProxyError::BadRequest(format!("invalid embeddings request: {e}")))?;
    let dimensions = fields.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
        return Err(ProxyError::BadRequest(format!(
            "'dimensions' must be between 1 and {MAX_DIMENSIONS}"
        )));
    }
    let inputs: Vec<Value> = match fields.input {
        Value::String(_) => vec![fields.input],
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items)]
        }
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(ProxyError::BadRequest(
                "'input' must be a non-empty string, array of strings, or array of token arrays"
                    .to_string(),
            ));
        }
    };
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += match input {
                Value::String(text) => word_count(text),
                Value::Array(tokens) => tokens.len() as u64,
                _ => 0,
            };
            json!({"object": "embedding", "index": index, "embedding": vector(input, dimensions)})
        })
        .collect();
    let usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
        total_tokens: prompt_tokens,
        prompt_tokens_details: None,
    };
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(Reply::Complete {
        body: Bytes::from(body.to_string()),
        usage: Some(usage),
    })
}

/// A unit vector derived from the input's hash: equal inputs get equal vectors.
fn vector(input: &Value, dimensions: usize) -> Vec<f32> {
    let seed = Sha256::digest(input.to_string().as_bytes());
    let raw: Vec<f32> = (0..dimensions)
        .map(|i| {
            let byte = seed[i % seed.len()].wrapping_add((i / seed.len()) as u8);
            f32::from(byte) / 127.5 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|v| v / norm).collect()
}
