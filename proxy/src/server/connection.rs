//! One client connection's life: what it is doing (bytes moving, requests open, a
//! write the client does not take), and the watch that closes it when it has been
//! quiet too long.
//!
//! hyper bounds the time to read an HTTP/1 request head, but nothing else about a
//! connection: a client that connects and sends nothing (or half an HTTP/2 preface), or
//! keeps a connection open between requests forever, or stops reading a response, holds
//! a file descriptor and memory for as long as it likes. The watch here is the bound.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::{Body, BoxError};

/// What a connection is doing, shared by its I/O, its requests and its watch. Plain
/// atomics: the I/O side only counts, and the watch reads them a few times per timeout.
#[derive(Debug, Default)]
pub struct Activity {
    /// Reads and writes that moved bytes.
    progress: AtomicU64,
    /// Whether the last write found the client's receive window full.
    write_blocked: AtomicBool,
    /// Requests whose response is not yet fully sent.
    open_requests: AtomicUsize,
}

/// Why the proxy closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Past `--max-connections` and every spare connection: closed as accepted.
    Refused,
    /// No byte (or no finished TLS handshake) within its timeout.
    FirstByte,
    /// No request and no byte for the idle timeout.
    Idle,
    /// A response the client did not read for the idle timeout.
    Stalled,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Refused => "refused",
            Closed::FirstByte => "first_byte_timeout",
            Closed::Idle => "idle_timeout",
            Closed::Stalled => "client_stalled",
        }
    }
}

/// What the watch wants done with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep,
    /// Finish what is open and close (hyper's graceful shutdown).
    Wind(Closed),
    /// Close it now: it was wound down before and is still stuck.
    Drop(Closed),
}

/// The watch's state between two looks at a connection's `Activity`.
#[derive(Debug)]
pub struct Watch {
    /// How long a connection may be quiet with no request open (between keep-alive
    /// requests, or mid-head) or with a response the client does not read.
    idle: Duration,
    seen: u64,
    quiet_for: Duration,
    wound: bool,
}

// === impl Activity ===

impl Activity {
    /// A request opened on this connection; it stays open until the guard (carried by
    /// its response body) is dropped.
    pub fn open(self: &Arc<Self>) -> OpenRequest {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        OpenRequest {
            activity: self.clone(),
        }
    }

    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

// === impl Watch ===

impl Watch {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            seen: 0,
            quiet_for: Duration::ZERO,
            wound: false,
        }
    }

    /// How often to look: a few times per timeout, so that a connection is closed at
    /// most a quarter late.
    pub fn period(&self) -> Duration {
        (self.idle / 4).max(Duration::from_millis(50))
    }

    /// One look, `elapsed` after the previous one.
    pub fn look(&mut self, activity: &Activity, elapsed: Duration) -> Verdict {
        let progress = activity.progress.load(Ordering::Relaxed);
        if progress != self.seen {
            self.seen = progress;
            self.quiet_for = Duration::ZERO;
            return Verdict::Keep;
        }
        self.quiet_for += elapsed;
        let open = activity.open_requests.load(Ordering::Relaxed) > 0;
        let blocked = activity.write_blocked.load(Ordering::Relaxed);
        let why = match (open, blocked) {
            (true, true) => Closed::Stalled,
            (true, false) => {
                // Waiting on a provider: the route's and the stream's timeouts bound that.
                self.quiet_for = Duration::ZERO;
                return Verdict::Keep;
            }
            (false, _) => Closed::Idle,
        };
        if self.quiet_for < self.idle {
            return Verdict::Keep;
        }
        self.quiet_for = Duration::ZERO;
        if self.wound || why == Closed::Stalled {
            // A client that reads nothing gets no graceful end: it would wait on the
            // very response the client does not read.
            Verdict::Drop(why)
        } else {
            self.wound = true;
            Verdict::Wind(why)
        }
    }
}

/// A request's place in its connection's open requests.
#[derive(Debug)]
pub struct OpenRequest {
    activity: Arc<Activity>,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.activity.open_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body holding what its request holds until the body is sent or dropped:
/// its place among the connection's open requests and among the requests in flight.
pub struct HeldBody {
    body: Body,
    _open: Option<OpenRequest>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl HeldBody {
    pub fn new(body: Body, open: Option<OpenRequest>, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            body,
            _open: open,
            _slot: slot,
        }
    }
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's I/O, counting what moves in `Activity`.
pub struct WatchedIo<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> WatchedIo<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: Read + Unpin> Read for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper's cursor does not say how much was read; a ready read counts as
        // progress (an end of file too, which ends the connection anyway).
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.moved();
        }
        polled
    }
}

impl<I: Write + Unpin> Write for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I> WatchedIo<I> {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        let blocked = polled.is_pending();
        // Only a change is stored: most writes go through, and the flag stays put.
        if self.activity.write_blocked.load(Ordering::Relaxed) != blocked {
            self.activity
                .write_blocked
                .store(blocked, Ordering::Relaxed);
        }
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            self.activity.moved();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const TICK: Duration = Duration::from_secs(5);

    /// Looks every `TICK` until the verdict is not `Keep`; the time it took.
    fn until_verdict(watch: &mut Watch, activity: &Activity) -> (Duration, Verdict) {
        let mut waited = Duration::ZERO;
        for _ in 0..1000 {
            waited += TICK;
            let verdict = watch.look(activity, TICK);
            if verdict != Verdict::Keep {
                return (waited, verdict);
            }
        }
        (waited, Verdict::Keep)
    }

    #[test]
    fn an_idle_connection_is_wound_down_then_dropped() {
        let activity = Activity::default();
        activity.moved();
        let mut watch = Watch::new(IDLE);
        assert_eq!(watch.look(&activity, TICK), Verdict::Keep);
        assert_eq!(
            until_verdict(&mut watch, &activity),
            (IDLE, Verdict::Wind(Closed::Idle))
        );
        // Still there a timeout later (say, a half-sent HTTP/2 preface): dropped.
        assert_eq!(
            until_verdict(&mut watch, &activity),
            (IDLE, Verdict::Drop(Closed::Idle))
        );
    }

    #[test]
    fn an_open_request_waiting_on_its_provider_keeps_the_connection() {
        let activity = Arc::new(Activity::default());
        let open = activity.open();
        let mut watch = Watch::new(IDLE);
        assert_eq!(until_verdict(&mut watch, &activity).1, Verdict::Keep);
        // Once the response is sent, the idle timeout applies again.
        drop(open);
        assert_eq!(
            until_verdict(&mut watch, &activity),
            (IDLE, Verdict::Wind(Closed::Idle))
        );
    }

    #[test]
    fn a_client_that_stops_reading_its_response_is_dropped() {
        let activity = Arc::new(Activity::default());
        let _open = activity.open();
        activity.write_blocked.store(true, Ordering::Relaxed);
        let mut watch = Watch::new(IDLE);
        assert_eq!(
            until_verdict(&mut watch, &activity),
            (IDLE, Verdict::Drop(Closed::Stalled))
        );
    }

    #[test]
    fn progress_restarts_the_clock() {
        let activity = Activity::default();
        let mut watch = Watch::new(IDLE);
        for _ in 0..100 {
            activity.moved();
            assert_eq!(watch.look(&activity, IDLE / 2), Verdict::Keep);
        }
        assert_eq!(
            until_verdict(&mut watch, &activity),
            (IDLE, Verdict::Wind(Closed::Idle))
        );
    }
}
