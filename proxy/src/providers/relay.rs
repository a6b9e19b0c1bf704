//! Native streams: a provider's own events relayed to a client of the same API, within
//! the stream's bounds, scrubbed of the provider key, with the usage read on the way.
//! Shared by every adapter that passes streams through; what differs per API (where
//! usage is, which events the gateway added) is the adapter's `Events`.

use bytes::Bytes;
use futures_util::Stream;

use super::reads::{self, BoundedReads, Read};
use super::{Call, exchange, scrub};
use crate::ir::Usage;
use crate::ir::chat::StreamError;
use crate::ir::stream::{NativeChunk, NativeStream};
use crate::sse::{self, EventSplitter};
use crate::upstream::UpstreamResponse;

/// What an API's relay does with each whole event.
pub(super) trait Events {
    /// Reads usage from `event` into `usage`; returns the event to forward, or `None`
    /// to take it out.
    fn read(&mut self, event: Bytes, usage: &mut Option<Usage>) -> Option<Bytes>;
}

/// `response`'s events relayed as they arrive, read by `events`.
pub(super) fn stream<E: Events + Send + 'static>(
    call: &Call<'_>,
    response: UpstreamResponse,
    events: E,
) -> NativeStream {
    let relay = EventRelay {
        upstream: BoundedReads::new(reads::body_stream(response), &call.limits),
        splitter: EventSplitter::with_limit(call.limits.max_event_bytes),
        events,
        key: exchange::key(call.upstream).map(str::to_string),
        ended: false,
        failed: None,
    };
    relay.into_stream()
}

/// Relays upstream events as the client's connection asks for them: no task or
/// channel in between, so each event costs one poll, not two task wake-ups. Splits the
/// bytes into whole events and hands each to the adapter's `Events` (which reads usage
/// and may take an event out). Dropped early (the client left), it drops the upstream
/// request with it.
struct EventRelay<S, E> {
    upstream: BoundedReads<S>,
    splitter: EventSplitter,
    events: E,
    /// The provider key, scrubbed from every event (whole events: a key split across
    /// reads is still seen).
    key: Option<String>,
    ended: bool,
    /// The error to end with, after the events read before it.
    failed: Option<StreamError>,
}

impl<S, E> EventRelay<S, E>
where
    S: Stream<Item = Result<Bytes, hyper::Error>> + Send + Unpin + 'static,
    E: Events + Send + 'static,
{
    fn into_stream(self) -> NativeStream {
        Box::pin(futures_util::stream::unfold(self, |mut relay| async move {
            let chunk = relay.next_chunk().await?;
            Some((chunk, relay))
        }))
    }

    /// The events of the next upstream read that carries any to forward (or usage).
    async fn next_chunk(&mut self) -> Option<NativeChunk> {
        if self.ended {
            return self.failed.take().map(NativeChunk::Failed);
        }
        loop {
            match self.upstream.next().await {
                Read::Chunk(chunk) => {
                    let mut usage = None;
                    let mut events = Vec::new();
                    let mut failed = None;
                    for event in self.splitter.push(&chunk) {
                        // Passed through, an event is still checked as a translated
                        // one is read: one rule for every stream (and whole body).
                        if sse::check_utf8(&event).is_err() {
                            failed = Some(StreamError::upstream(sse::NOT_UTF8_MESSAGE));
                            break;
                        }
                        if let Some(event) = self.events.read(event, &mut usage) {
                            events.push(scrub::bytes(event, self.key.as_deref()));
                        }
                    }
                    if failed.is_none() && self.splitter.too_large() {
                        failed = Some(StreamError::upstream(sse::too_large_message(
                            self.splitter.max_event(),
                        )));
                    }
                    if let Some(error) = failed {
                        // What came before the event that failed is still the client's;
                        // the error follows on the next poll.
                        self.ended = true;
                        self.failed = Some(error);
                        if events.is_empty() && usage.is_none() {
                            return self.failed.take().map(NativeChunk::Failed);
                        }
                    }
                    if !events.is_empty() || usage.is_some() {
                        return Some(NativeChunk::Events { events, usage });
                    }
                }
                Read::Over(error) => {
                    self.ended = true;
                    return Some(NativeChunk::Failed(error));
                }
                Read::Broken => {
                    self.ended = true;
                    return Some(NativeChunk::Broken);
                }
                Read::End => {
                    self.ended = true;
                    let rest = self.splitter.remainder()?;
                    if sse::check_utf8(&rest).is_err() {
                        return Some(NativeChunk::Failed(StreamError::upstream(
                            sse::NOT_UTF8_MESSAGE,
                        )));
                    }
                    return Some(NativeChunk::Events {
                        events: vec![scrub::bytes(rest, self.key.as_deref())],
                        usage: None,
                    });
                }
            }
        }
    }
}
