//! An upstream stream's bytes, read within the stream's bounds, and gathered: what
//! arrived together leaves together.
//!
//! hyper hands a response body over one HTTP chunk at a time, through a one-slot
//! channel from the connection's task. A provider that sends one event per chunk
//! (most do) and whose events arrive in one TCP read would otherwise cost one client
//! write per event: the client's connection writes whatever it has each time the body
//! makes it wait, and it waits for the connection's task between chunks. So after a
//! chunk, a read lets the tasks already woken run (the connection's among them) and
//! takes what they made ready, for as long as that keeps giving bytes (at most
//! `GATHER_BYTES`). A chunk that arrives alone waits one scheduler turn, not a timer.
//! The stream's first read is not gathered: its first bytes go out at once, with the
//! response head (time to first token is what clients watch).

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyDataStream;
use tokio::time::Instant;

use super::UpstreamLimits;
use crate::ir::chat::StreamError;
use crate::upstream::UpstreamResponse;

/// Bytes gathered into one read at most.
const GATHER_BYTES: usize = 64 << 10;

/// One read of an upstream byte stream, within its bounds (`BoundedReads`).
pub(super) enum Read {
    Chunk(Bytes),
    /// The stream went past a bound (quiet too long, too long, too many bytes): it
    /// ends with this error.
    Over(StreamError),
    /// The connection broke.
    Broken,
    /// The upstream closed the stream.
    End,
}

/// A response's body as a stream of its bytes.
pub(super) fn body_stream(response: UpstreamResponse) -> UpstreamBytes {
    BodyDataStream::new(response.into_body())
}

/// What `body_stream` gives.
pub(super) type UpstreamBytes = BodyDataStream<hyper::body::Incoming>;

/// An upstream stream's bytes, read within the stream's bounds: the idle timeout
/// between reads, and the most bytes and longest time of the whole stream (from its
/// response headers). Shared by the relayed and the translated stream paths.
pub(super) struct BoundedReads<S> {
    upstream: S,
    idle: Duration,
    /// When the stream must have ended.
    deadline: Option<Instant>,
    max_duration: Duration,
    /// Bytes the stream may still send.
    left: u64,
    max_bytes: u64,
    /// What the stream said after the bytes a read gathered (its end, an error, a
    /// chunk past `GATHER_BYTES`): the next read.
    held: Option<Option<Result<Bytes, hyper::Error>>>,
    /// Whether a read gathers what follows its chunk: from the second read on.
    gathering: bool,
}

impl<S> BoundedReads<S>
where
    S: Stream<Item = Result<Bytes, hyper::Error>> + Unpin,
{
    pub(super) fn new(upstream: S, limits: &UpstreamLimits) -> Self {
        let max_duration = limits.max_stream_duration;
        Self {
            upstream,
            idle: limits.stream_idle,
            deadline: (!max_duration.is_zero()).then(|| Instant::now() + max_duration),
            max_duration,
            left: limits.max_stream_bytes,
            max_bytes: limits.max_stream_bytes,
            held: None,
            gathering: false,
        }
    }

    /// The next read, or the bound it went past.
    pub(super) async fn next(&mut self) -> Read {
        let read = match self.held.take() {
            Some(read) => read,
            None => match self.next_within_time().await {
                Ok(read) => read,
                Err(over) => return Read::Over(over),
            },
        };
        let chunk = match read {
            Some(Ok(chunk)) if self.gathering => self.gather(chunk).await,
            Some(Ok(chunk)) => {
                self.gathering = true;
                chunk
            }
            Some(Err(_)) => return Read::Broken,
            None => return Read::End,
        };
        match self.left.checked_sub(chunk.len() as u64) {
            Some(left) => {
                self.left = left;
                Read::Chunk(chunk)
            }
            None => Read::Over(StreamError::upstream(format!(
                "upstream provider sent more than the limit of {} bytes in one stream; \
                 it is ended",
                self.max_bytes
            ))),
        }
    }

    /// The stream's next item, within the idle timeout and the stream's deadline.
    async fn next_within_time(
        &mut self,
    ) -> Result<Option<Result<Bytes, hyper::Error>>, StreamError> {
        let idle = (!self.idle.is_zero()).then(|| Instant::now() + self.idle);
        let until = match (idle, self.deadline) {
            (Some(idle), Some(deadline)) => Some(idle.min(deadline)),
            (idle, deadline) => idle.or(deadline),
        };
        let Some(until) = until else {
            return Ok(self.upstream.next().await);
        };
        match tokio::time::timeout_at(until, self.upstream.next()).await {
            Ok(read) => Ok(read),
            Err(_) if self.deadline.is_some_and(|d| d <= Instant::now()) => {
                Err(StreamError::upstream(format!(
                    "the stream went on past the limit of {:?}; it is ended",
                    self.max_duration
                )))
            }
            Err(_) => Err(StreamError::idle(self.idle)),
        }
    }

    /// `first` and the chunks that follow it without waiting on the network: each time
    /// the stream is not ready, the task yields once to the tasks already woken (the
    /// upstream connection's, decoding its next chunk); it stops at a turn that made
    /// nothing ready. Anything but a chunk that fits is held for the next read.
    ///
    /// The task wakes itself rather than calling `tokio::task::yield_now`, which on the
    /// current-thread runtime defers the task until the I/O driver has been polled: a
    /// system call per turn.
    async fn gather(&mut self, first: Bytes) -> Bytes {
        let mut gathered: Option<BytesMut> = None;
        loop {
            let len = gathered.as_ref().map_or(first.len(), BytesMut::len);
            if len >= GATHER_BYTES {
                break;
            }
            let mut yielded = false;
            let next = poll_fn(|cx| match self.upstream.poll_next_unpin(cx) {
                Poll::Ready(item) => Poll::Ready(Some(item)),
                Poll::Pending if !yielded => {
                    yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            match next {
                None => break,
                Some(Some(Ok(chunk))) if len + chunk.len() <= GATHER_BYTES => {
                    gathered
                        .get_or_insert_with(|| {
                            let mut buf = BytesMut::with_capacity(4 * len.max(chunk.len()));
                            buf.extend_from_slice(&first);
                            buf
                        })
                        .extend_from_slice(&chunk);
                }
                Some(other) => {
                    self.held = Some(other);
                    break;
                }
            }
        }
        match gathered {
            Some(gathered) => gathered.freeze(),
            None => first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> UpstreamLimits {
        UpstreamLimits {
            max_body_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            stream_idle: Duration::from_secs(10),
            max_stream_bytes: 1 << 20,
            max_stream_duration: Duration::ZERO,
        }
    }

    /// Chunks handed over one at a time by another task, as hyper's connection task
    /// hands over a body: the producer can only send the next once the last is taken.
    fn one_slot_channel() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Stream<Item = Result<Bytes, hyper::Error>> + Unpin,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)));
        (tx, stream)
    }

    fn chunk(read: Read) -> Bytes {
        match read {
            Read::Chunk(chunk) => chunk,
            Read::Over(error) => panic!("over: {error:?}"),
            Read::Broken => panic!("broken"),
            Read::End => panic!("ended"),
        }
    }

    #[tokio::test]
    async fn chunks_that_arrive_together_are_read_together() {
        let (tx, stream) = one_slot_channel();
        tokio::spawn(async move {
            for i in 0..10 {
                let event = format!("data: {i}\n\n");
                if tx.send(Bytes::from(event)).await.is_err() {
                    return;
                }
            }
        });
        let mut reads = BoundedReads::new(stream, &limits());
        assert_eq!(
            chunk(reads.next().await),
            &b"data: 0\n\n"[..],
            "the first read goes out at once"
        );
        let expected: String = (1..10).map(|i| format!("data: {i}\n\n")).collect();
        assert_eq!(chunk(reads.next().await), expected.as_bytes());
        assert!(matches!(reads.next().await, Read::End));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_that_arrives_alone_is_not_held_for_the_next() {
        let (tx, stream) = one_slot_channel();
        let (next_tx, mut next_rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"data: 1\n\n")).await;
            // The second is sent only once the first has been read.
            let _ = next_rx.recv().await;
            let _ = tx.send(Bytes::from_static(b"data: 2\n\n")).await;
        });
        let mut reads = BoundedReads::new(stream, &limits());
        assert_eq!(chunk(reads.next().await), &b"data: 1\n\n"[..]);
        next_tx.send(()).await.unwrap();
        assert_eq!(chunk(reads.next().await), &b"data: 2\n\n"[..]);
        assert!(matches!(reads.next().await, Read::End));
    }

    #[tokio::test]
    async fn gathering_stops_at_its_bound_and_at_the_stream_limit() {
        let (tx, stream) = one_slot_channel();
        tokio::spawn(async move {
            for _ in 0..6 {
                let _ = tx.send(Bytes::from(vec![b'x'; 30 << 10])).await;
            }
        });
        let mut limits = limits();
        limits.max_stream_bytes = 100 << 10;
        let mut reads = BoundedReads::new(stream, &limits);
        assert_eq!(
            chunk(reads.next().await).len(),
            30 << 10,
            "the first, alone"
        );
        // 64 KiB at most per read: two 30 KiB chunks, then the next two.
        assert_eq!(chunk(reads.next().await).len(), 60 << 10);
        assert!(
            matches!(reads.next().await, Read::Over(_)),
            "150 KiB is past the stream's 100 KiB"
        );
    }
}
