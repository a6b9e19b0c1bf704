//! A cached answer, how it is stored, and how it is replayed to a client.
//!
//! An answer the gateway translated (or an OpenAI client's) is kept as an OpenAI-format
//! JSON body (a chat completion or an embeddings response): one format to store, and
//! the gateway already reads and writes it. An OpenAI client asking for a whole answer
//! gets the body as stored; any other client, or a client asking for a stream, gets it
//! through the IR, a stream as one burst of well-formed events.
//!
//! An answer passed through in Anthropic's or Gemini's own format is kept whole in
//! that format, every block the IR has no place for (thinking, citations, server tool
//! results) included: a stream put back together as the one answer it spelled
//! (`formats::*::StreamAssembler`). Only a client of that API asks under its key (the
//! key holds the client API), and it gets the body as stored, or, streaming, the
//! events that spell it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::formats::{
    anthropic as anthropic_format, gemini as gemini_format, openai as openai_format,
};
use crate::ir::chat::{ChatResponse, StreamEvent};
use crate::ir::reply::Reply;
use crate::ir::stream::{ChatStream, NativeChunk};
use crate::ir::{ClientApi, Operation, Request, Usage};

/// A stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// A whole answer, as JSON in `api`'s format.
    pub body: Bytes,
    /// OpenAI for answers stored from the IR; the client's API for answers passed through.
    pub api: ClientApi,
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
    /// Absent in entries stored before cache writes and reasoning were told apart.
    #[serde(default)]
    cache_write: u64,
    #[serde(default)]
    reasoning: u64,
    #[serde(default)]
    cache_write_1h: u64,
    cost: Option<f64>,
    /// The body's format: absent (OpenAI) in entries stored before passed-through
    /// answers were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api: Option<String>,
}

/// Leads every stored value: a value of another format is a miss, not an error.
const MAGIC: &[u8] = b"SBC1";

/// The most bytes the magic, the header line and its newline take: nine numbers of
/// at most 24 characters (`u64::MAX` has 20, an `f64` at most 24), the API's name and
/// their names come to under 380 (`the_largest_header_fits` checks it).
const MAX_HEADER: usize = 384;

/// LZ4 (block format) grows what it cannot compress by at most this, over 10%
/// (`lz4_flex::block::get_maximum_output_size`), and the value leads with the
/// decompressed size in 4 bytes.
const LZ4_OVERHEAD: usize = 16 + 4 + 4;

impl Entry {
    pub fn new(
        body: Bytes,
        api: ClientApi,
        usage: Usage,
        cost_usd: Option<f64>,
        ttl: Duration,
    ) -> Self {
        Self {
            body,
            api,
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
            cache_write: self.usage.cache_write_tokens(),
            reasoning: self.usage.reasoning_tokens(),
            cache_write_1h: self.usage.cache_write_1h_tokens(),
            cost: self.cost_usd,
            api: (self.api != ClientApi::OpenAI).then(|| self.api.name().to_string()),
        };
        let mut plain = Vec::with_capacity(self.body.len() + 128);
        plain.extend_from_slice(MAGIC);
        // Serializing a struct of numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut plain, &header);
        plain.push(b'\n');
        plain.extend_from_slice(&self.body);
        lz4_flex::compress_prepend_size(&plain)
    }

    /// The most bytes `encode` writes for a body of at most `max_body` bytes (a route's
    /// `maxEntryBytes`: larger answers are never stored). Redis values are read up to
    /// this, so that a value grown by hand, by another writer or by corruption cannot
    /// make the proxy read (or hold) it whole.
    pub fn max_stored(max_body: u64) -> usize {
        let plain = max_plain(max_body);
        (plain / 10)
            .saturating_add(plain)
            .saturating_add(LZ4_OVERHEAD)
    }

    /// An entry from a Redis value; `None` for anything `encode` did not write for a
    /// body of at most `max_body` bytes. The size the value says it decompresses to is
    /// checked before anything is allocated for it: decompressing allocates that size
    /// first, and the value's first 4 bytes can say up to 4 GiB.
    pub fn decode(value: &[u8], max_body: u64) -> Option<Self> {
        let size = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
        if usize::try_from(size).ok()? > max_plain(max_body) {
            return None;
        }
        let plain = lz4_flex::decompress_size_prepended(value).ok()?;
        let rest = plain.strip_prefix(MAGIC)?;
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&rest[..newline]).ok()?;
        let api = match header.api.as_deref() {
            None => ClientApi::OpenAI,
            Some(name) => ClientApi::from_name(name)?,
        };
        Some(Self {
            body: Bytes::copy_from_slice(&rest[newline + 1..]),
            api,
            usage: Usage::new(header.input, header.output, header.cached)
                .with_cache_writes(header.cache_write)
                .with_cache_writes_1h(header.cache_write_1h)
                .with_reasoning(header.reasoning),
            cost_usd: header.cost,
            created: header.created,
            ttl: Duration::from_millis(header.ttl_ms),
        })
    }

    /// The stored answer as the reply to `request`: the body as stored for a client
    /// of its format that wants it whole (and for embeddings); a passed-through answer
    /// as its own API's events to a client that streams; else the answer in the IR,
    /// whole or as a stream. `None` if the stored body cannot be read, or is in
    /// another API's format (then the request is a miss).
    pub fn reply(&self, request: &Request) -> Option<Reply> {
        if self.api != ClientApi::OpenAI {
            return self.native_reply(request);
        }
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

impl Entry {
    /// A passed-through answer, to a client of its API.
    fn native_reply(&self, request: &Request) -> Option<Reply> {
        if request.api != self.api {
            return None;
        }
        let usage = Some(self.usage);
        if !request.stream {
            let body = self.body.clone();
            return Some(Reply::Native { body, usage });
        }
        let events = match self.api {
            ClientApi::Anthropic => anthropic_format::message_as_stream(&self.body)?,
            ClientApi::Gemini => gemini_format::response_as_stream(&self.body)?,
            // Responses are never stored (`key::NotCacheable::Stateful`).
            ClientApi::OpenAI | ClientApi::Responses => return None,
        };
        let chunk = NativeChunk::Events { events, usage };
        Some(Reply::NativeStream(Box::pin(futures_util::stream::iter([
            chunk,
        ]))))
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

/// The most bytes a stored entry with a body of at most `max_body` decompresses to.
fn max_plain(max_body: u64) -> usize {
    usize::try_from(max_body)
        .unwrap_or(usize::MAX)
        .saturating_add(MAX_HEADER)
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
            ClientApi::OpenAI,
            Usage::new(12, 5, 4)
                .with_cache_writes(3)
                .with_cache_writes_1h(1)
                .with_reasoning(2),
            Some(0.000_125),
            Duration::from_secs(60),
        );
        let stored = entry.encode();
        assert_eq!(Entry::decode(&stored, 1 << 20), Some(entry.clone()));
        let passed_through = Entry {
            api: ClientApi::Anthropic,
            ..entry
        };
        let stored = passed_through.encode();
        assert_eq!(Entry::decode(&stored, 1 << 20), Some(passed_through));
        assert_eq!(Entry::decode(b"not ours", 1 << 20), None);
        assert_eq!(Entry::decode(b"", 1 << 20), None);
        assert_eq!(
            Entry::decode(&lz4_flex::compress_prepend_size(b"SBC1{}\n"), 1 << 20),
            None
        );
    }

    /// An entry with every header field at its longest.
    fn largest_header(body: Bytes) -> Entry {
        Entry {
            body,
            api: ClientApi::Anthropic,
            usage: Usage::new(u64::MAX, u64::MAX, u64::MAX)
                .with_cache_writes(u64::MAX)
                .with_cache_writes_1h(u64::MAX)
                .with_reasoning(u64::MAX),
            cost_usd: Some(-f64::MAX / 3.0),
            created: u64::MAX,
            ttl: Duration::from_millis(u64::MAX),
        }
    }

    #[test]
    fn the_largest_header_fits() {
        let entry = largest_header(Bytes::new());
        let plain = lz4_flex::decompress_size_prepended(&entry.encode()).unwrap();
        assert!(plain.len() <= MAX_HEADER, "{} bytes", plain.len());
        assert_eq!(Entry::decode(&entry.encode(), 0), Some(entry));
    }

    #[test]
    fn entries_are_read_only_within_the_largest_body_stored() {
        // Incompressible bytes: the value is at its largest for the body.
        let mut rng = fastrand::Rng::with_seed(3);
        let body: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(4096).collect();
        let entry = largest_header(Bytes::from(body));
        let stored = entry.encode();
        assert!(stored.len() <= Entry::max_stored(4096), "{}", stored.len());
        assert_eq!(Entry::decode(&stored, 4096), Some(entry));
        // Stored under a larger limit (maxEntryBytes lowered since): a miss.
        assert_eq!(Entry::decode(&stored, 2048), None);
    }

    /// This process's peak address space (`VmPeak`), in KiB. An allocation shows in it
    /// even untouched (a large zeroed one is mapped, never written).
    fn vm_peak_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_forged_size_is_refused_before_anything_is_allocated() {
        // Says 4 GiB, holds a few bytes. Decompressing allocates the size it says
        // first: without the check, 4 GiB are mapped here (or, where memory is short,
        // the allocation fails and the process aborts).
        let mut forged = u32::MAX.to_le_bytes().to_vec();
        forged.extend_from_slice(b"\x40SBC1");
        let before = vm_peak_kb();
        assert_eq!(Entry::decode(&forged, 1 << 20), None);
        let grown = vm_peak_kb() - before;
        assert!(grown < 2 << 20, "address space grew by {grown} KiB");
        // Within the limit, a forged size is still only a miss.
        let mut forged = 1000u32.to_le_bytes().to_vec();
        forged.extend_from_slice(b"\x40SBC1");
        assert_eq!(Entry::decode(&forged, 1 << 20), None);
    }
}
