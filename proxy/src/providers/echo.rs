//! The built-in `echo` provider: deterministic answers for demos and tests, no network.
//!
//! Chat replies with the text of the request's last message (cut to `max_tokens` words,
//! then `finish_reason: "length"`), through the IR, so it answers every client API;
//! embeddings are unit vectors derived from a hash of each input. One word counts as
//! one token. Answers depend only on the request, so tests can compare them.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Call;
use crate::error::ProxyError;
use crate::ir::chat::{ChatResponse, Finish, FinishReason, StreamEvent};
use crate::ir::reply::Reply;
use crate::ir::stream::ChatStream;
use crate::ir::{Operation, Request, Usage};

pub(super) async fn call(call: Call<'_>) -> Result<Reply, ProxyError> {
    let echo = call.upstream.config.echo;
    if echo.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(echo.latency_ms)).await;
    }
    match call.request.operation {
        Operation::Embeddings => embeddings(call.request, call.upstream_model),
        // Estimated before any provider is called (`super::call`).
        Operation::CountTokens => Ok(Reply::TokenEstimate(0)),
        // Not offered (`super::supports`).
        Operation::Responses => Err(ProxyError::BadRequest(
            "the echo provider has no Responses API".into(),
        )),
        Operation::ChatCompletions => {
            let answer = answer(call.request, call.upstream_model)?;
            if call.request.stream {
                Ok(Reply::ChatStream(stream(
                    answer,
                    Duration::from_millis(echo.chunk_interval_ms),
                )))
            } else {
                Ok(Reply::Chat(answer))
            }
        }
    }
}

/// What the echo model says to a chat request: the text of the last message, cut to
/// `max_tokens` words.
fn answer(request: &Request, model: &str) -> Result<ChatResponse, ProxyError> {
    let chat = super::typed(request)?;
    let prompt_tokens: u64 = chat
        .messages
        .iter()
        .map(|m| word_count(&m.joined_text()))
        .sum();
    let last = chat
        .messages
        .last()
        .map(|m| m.joined_text())
        .unwrap_or_default();
    let mut words: Vec<&str> = last.split_whitespace().collect();
    let mut reason = FinishReason::Stop;
    if let Some(limit) = chat.max_tokens.and_then(|l| usize::try_from(l).ok())
        && words.len() > limit
    {
        words.truncate(limit);
        reason = FinishReason::Length;
    }
    let completion_tokens = words.len() as u64;
    let digest = Sha256::digest(&request.body);
    Ok(ChatResponse {
        id: format!("chatcmpl-echo-{}", hex::encode(&digest[..8])),
        model: model.to_string(),
        text: words.join(" "),
        tool_calls: Vec::new(),
        finish: Finish {
            reason,
            stop_sequence: None,
        },
        usage: Usage::new(prompt_tokens, completion_tokens, 0),
    })
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The answer as stream events: start, one event per word, finish, usage, done, with
/// `interval` between them.
fn stream(answer: ChatResponse, interval: Duration) -> ChatStream {
    let mut events = vec![StreamEvent::Start {
        id: answer.id,
        model: answer.model,
        usage: None,
    }];
    let words: Vec<&str> = answer.text.split(' ').filter(|w| !w.is_empty()).collect();
    let last = words.len().saturating_sub(1);
    for (i, word) in words.iter().enumerate() {
        let text = if i == last {
            word.to_string()
        } else {
            format!("{word} ")
        };
        events.push(StreamEvent::Text(text));
    }
    events.push(StreamEvent::Finish(answer.finish));
    events.push(StreamEvent::Usage(answer.usage));
    events.push(StreamEvent::Done);

    let paced = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            vec![event]
        },
    );
    Box::pin(paced)
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
    let usage = Usage::new(prompt_tokens, 0, 0);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(Reply::Native {
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
