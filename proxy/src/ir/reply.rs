//! What a provider, or the cache, answered.

use bytes::Bytes;

use super::chat::ChatResponse;
use super::stream::{ChatStream, NativeStream};
use super::usage::Usage;

/// An answer on its way to the client. A provider that speaks the client's API answers
/// in its own bytes (`Native`, `NativeStream`), which pass through untouched; every
/// other pairing goes through the IR (`Chat`, `ChatStream`), and the client API writes
/// the answer in its own format.
pub enum Reply {
    /// A whole JSON response in the client's format, with the usage read from it.
    Native { body: Bytes, usage: Option<Usage> },
    /// Server-sent events in the client's format, forwarded as they arrive.
    NativeStream(NativeStream),
    /// A whole answer, for the client API to write.
    Chat(ChatResponse),
    /// A streamed answer, for the client API to write as it arrives.
    ChatStream(ChatStream),
    /// Input tokens the gateway estimated for a token count, for a provider that
    /// cannot count them.
    TokenEstimate(u64),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Native { usage, .. } => f.debug_struct("Native").field("usage", usage).finish(),
            Reply::NativeStream(_) => f.write_str("NativeStream"),
            Reply::Chat(response) => f.debug_tuple("Chat").field(response).finish(),
            Reply::ChatStream(_) => f.write_str("ChatStream"),
            Reply::TokenEstimate(n) => f.debug_tuple("TokenEstimate").field(n).finish(),
        }
    }
}
