//! A cached answer, how it is stored, and how it is replayed to a client.
//!
//! Every answer is kept as an OpenAI-format JSON body (a chat completion or an
//! embeddings response), whatever API the provider spoke: one format to store, and the
//! gateway already reads and writes it. An OpenAI client asking for a whole answer gets
//! the body as stored; any other client, or a client asking for a stream, gets it
//! through the IR, a stream as one burst of well-formed events.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::formats::openai as openai_format;
use crate::ir::chat::{ChatResponse, StreamEvent};
use crate::ir::reply::Reply;
use crate::ir::stream::ChatStream;
use crate::ir::{ClientApi, Operation, Request, Usage};

/// A stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// OpenAI-format JSON.
    pub body: Bytes,
    pub usage: Usage,
    /// What the answer cost when it was made (none when unpriced): what a hit saves.
    pub cost_usd: Option<f64>,
    /// Unix seconds when it was stored.
    pub created: u64,
    /// How long it is served.
    pub ttl: Duration,
}

/// The fields of an entry besides its body, as stored in Redis.
#[derive(Serialize, Deserialize)]
struct Header {
    created: u64,
    ttl_ms: u64,
    input: u64,
    output: u64,
    cached: u64,
    cost: Option<f64>,
}

/// Leads every stored value: a value of another format is a miss, not an error.
const MAGIC: &[u8] = b"SBC1";

impl Entry {
    pub fn new(body: Bytes, usage: Usage, cost_usd: Option<f64>, ttl: Duration) -> Self {
        Self {
            body,
            usage,
            cost_usd,
            created: unix_now(),
            ttl,
        }
    }

    /// What the memory store counts against its size: the body and a little more.
    pub fn weight(&self) -> u32 {
        u32::try_from(self.body.len() + 128).unwrap_or(u32::MAX)
    }

    /// Seconds since it was stored.
    pub fn age(&self) -> u64 {
        unix_now().saturating_sub(self.created)
    }

    /// The value stored in Redis: a header line and the body, LZ4-compressed.
    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            created: self.created,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            input: self.usage.prompt_tokens,
            output: self.usage.completion_tokens,
            cached: self.usage.cached_tokens(),
            cost: self.cost_usd,
        };
        let mut plain = Vec::with_capacity(self.body.len() + 128);
        plain.extend_from_slice(MAGIC);
        // Serializing a struct of numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut plain, &header);
        plain.push(b'\n');
        plain.extend_from_slice(&self.body);
        lz4_flex::compress_prepend_size(&plain)
    }

    /// An entry from a Redis value; `None` for anything `encode` did not write.
    pub fn decode(value: &[u8]) -> Option<Self> {
        let plain = lz4_flex::decompress_size_prepended(value).ok()?;
        let rest = plain.strip_prefix(MAGIC)?;
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&rest[..newline]).ok()?;
        Some(Self {
            body: Bytes::copy_from_slice(&rest[newline + 1..]),
            usage: Usage::new(header.input, header.output, header.cached),
            cost_usd: header.cost,
            created: header.created,
            ttl: Duration::from_millis(header.ttl_ms),
        })
    }

    /// The stored answer as the reply to `request`: the body as stored for an OpenAI
    /// client that wants it whole (and for embeddings), else the answer in the IR,
    /// whole or as a stream. `None` if the stored body cannot be read (then the
    /// request is a miss).
    pub fn reply(&self, request: &Request) -> Option<Reply> {
        if request.operation == Operation::Embeddings
            || (request.api == ClientApi::OpenAI && !request.stream)
        {
            return Some(Reply::Native {
                body: self.body.clone(),
                usage: Some(self.usage),
            });
        }
        let answer = openai_format::parse_response(&self.body).ok()?;
        Some(match request.stream {
            true => Reply::ChatStream(as_stream(answer)),
            false => Reply::Chat(answer),
        })
    }
}

/// A whole answer as the events of a stream that gave it, in one batch.
fn as_stream(answer: ChatResponse) -> ChatStream {
    let mut events = vec![StreamEvent::Start {
        id: answer.id,
        model: answer.model,
        usage: None,
    }];
    if !answer.text.is_empty() {
        events.push(StreamEvent::Text(answer.text));
    }
    for (index, call) in answer.tool_calls.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        events.push(StreamEvent::ToolCallStart {
            index,
            id: call.id,
            name: call.name,
        });
        events.push(StreamEvent::ToolCallArguments {
            index,
            arguments: call.arguments,
        });
    }
    events.extend([
        StreamEvent::Finish(answer.finish),
        StreamEvent::Usage(answer.usage),
        StreamEvent::Done,
    ]);
    Box::pin(futures_util::stream::iter([events]))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_redis() {
        let entry = Entry::new(
            Bytes::from_static(br#"{"id":"x","choices":[]}"#),
            Usage::new(12, 5, 4),
            Some(0.000_125),
            Duration::from_secs(60),
        );
        let stored = entry.encode();
        assert_eq!(Entry::decode(&stored), Some(entry));
        assert_eq!(Entry::decode(b"not ours"), None);
        assert_eq!(
            Entry::decode(&lz4_flex::compress_prepend_size(b"SBC1{}\n")),
            None
        );
    }
}
