//! Streamed answers, and how a stream ended.
//!
//! A stream reaches the client in one of two forms: a provider's own events passed
//! through (`NativeStream`: a client on a provider of its own API), or IR
//! events that the client API writes in its own format (`ChatStream`). Either way the
//! request's end learns once how the stream ended (`StreamEnd`).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use super::chat::{StreamError, StreamEvent};
use super::usage::Usage;

/// IR stream events in batches, each batch what one upstream read produced. The last
/// batch ends with `Done` or `Error`.
pub type ChatStream = Pin<Box<dyn Stream<Item = Vec<StreamEvent>> + Send>>;

/// A provider's server-sent events in the client's own format, in batches as read
/// from upstream. The stream ends when the upstream does.
pub type NativeStream = Pin<Box<dyn Stream<Item = NativeChunk> + Send>>;

/// What one upstream read of a native stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeChunk {
    /// Whole events to forward byte for byte, and the usage the read reported (also
    /// when the event that carried it is not forwarded).
    Events {
        events: Vec<Bytes>,
        usage: Option<Usage>,
    },
    /// The upstream connection broke; nothing follows.
    Broken,
    /// The stream cannot go on (an event over the size limit, an upstream silent past
    /// the idle timeout); the client is told why. Nothing follows.
    Failed(StreamError),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// The last usage the stream reported (or, cut at a budget, what it used).
    pub usage: Option<Usage>,
    pub outcome: StreamOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// The upstream finished the stream (or a quota cut it cleanly).
    Complete,
    /// The client went away; the upstream request was dropped.
    ClientGone,
    /// The upstream failed mid-stream; the client got an error event.
    UpstreamError,
}

// === impl StreamOutcome ===

impl StreamOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Complete => "complete",
            StreamOutcome::ClientGone => "client_gone",
            StreamOutcome::UpstreamError => "upstream_error",
        }
    }

    /// The error type a request whose stream ended so is counted and logged with: the
    /// code of the error event an OpenAI client got. A client that left got nothing.
    pub fn error_type(self) -> Option<&'static str> {
        match self {
            StreamOutcome::UpstreamError => Some("upstream_stream_error"),
            StreamOutcome::Complete | StreamOutcome::ClientGone => None,
        }
    }
}
