//! Server-sent events: splitting a byte stream into whole events without altering
//! their bytes, and reading an event's data.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into events. Each event is returned with its raw bytes, blank
/// line included, so it can be forwarded exactly as received.
///
/// With a limit (`with_limit`), an event longer than it is never held whole: once the
/// unfinished event passes the limit, its bytes are dropped and the splitter is
/// `too_large` for good (the stream is to be ended). It holds at most the limit plus
/// one received chunk.
#[derive(Debug)]
pub struct EventSplitter {
    buffer: BytesMut,
    max_event: usize,
    too_large: bool,
}

impl Default for EventSplitter {
    /// No limit: for events already split (and bounded) upstream of it.
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

// === impl EventSplitter ===

impl EventSplitter {
    /// A splitter that refuses events longer than `max_event` bytes.
    pub fn with_limit(max_event: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max_event,
            too_large: false,
        }
    }

    /// Adds received bytes; returns the events they complete, up to the first one over
    /// the limit (then `too_large` says so and nothing more is returned).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        if self.too_large {
            return Vec::new();
        }
        let searched = self.buffer.len().saturating_sub(3);
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut from = searched;
        while let Some(end) = event_end(&self.buffer, from) {
            if end > self.max_event {
                self.overflow();
                return events;
            }
            events.push(self.buffer.split_to(end).freeze());
            from = 0;
        }
        if self.buffer.len() > self.max_event {
            self.overflow();
        }
        events
    }

    /// An event went over the limit: its bytes go, and the stream is to be ended.
    fn overflow(&mut self) {
        self.too_large = true;
        self.buffer = BytesMut::new();
    }

    /// Whether an event went over the limit; the stream cannot go on.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// The limit on one event's size, in bytes.
    pub fn max_event(&self) -> usize {
        self.max_event
    }

    /// Bytes left after the last complete event (a stream cut off mid-event).
    pub fn remainder(&mut self) -> Option<Bytes> {
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// What a client is told when an upstream event goes over the limit.
pub fn too_large_message(max_event: usize) -> String {
    format!("upstream provider sent a stream event larger than the limit of {max_event} bytes")
}

/// Joins events into one buffer, so that what arrived together from upstream leaves in
/// one write instead of one system call (and one chunk) per event. `None` if empty.
pub fn join(events: impl IntoIterator<Item = Bytes>) -> Option<Bytes> {
    let mut events = events.into_iter();
    let first = events.next()?;
    let Some(second) = events.next() else {
        return Some(first);
    };
    let mut joined = BytesMut::with_capacity(first.len() * 4);
    joined.extend_from_slice(&first);
    joined.extend_from_slice(&second);
    for event in events {
        joined.extend_from_slice(&event);
    }
    Some(joined.freeze())
}

/// The end (exclusive) of the first event in `buf`, searching from `from`: the first
/// blank line, in any of the three line-ending styles SSE allows.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    // Line ends are found by a vectorized search; only they are looked at closely.
    while let Some(found) = memchr::memchr2(b'\n', b'\r', buf.get(i..)?) {
        let at = i + found;
        match (buf[at], buf.get(at + 1), buf.get(at + 2)) {
            (b'\n', Some(b'\n'), _) => return Some(at + 2),
            (b'\n', Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            (b'\r', Some(b'\r'), _) => return Some(at + 2),
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// An event whose bytes are not UTF-8. Server-sent events are UTF-8 text and every
/// API's events carry JSON, which is UTF-8 too (RFC 8259): such an event is a broken
/// stream, never something to skip or to repair with replacement characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// What a client is told when an upstream event is not UTF-8.
pub const NOT_UTF8_MESSAGE: &str = "upstream provider sent a stream event that is not valid UTF-8";

/// Checks that an event is UTF-8, for events forwarded without reading their data.
pub fn check_utf8(event: &[u8]) -> Result<(), NotUtf8> {
    std::str::from_utf8(event).map(drop).map_err(|_| NotUtf8)
}

/// The event's data: its `data:` lines joined by newlines, or `None` if it has none.
/// An event that is not UTF-8 is an error, not an event without data: skipping it would
/// end a stream as if complete with part of the answer missing.
pub fn data(event: &[u8]) -> Result<Option<String>, NotUtf8> {
    let text = std::str::from_utf8(event).map_err(|_| NotUtf8)?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(existing) => {
                existing.push('\n');
                existing.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    Ok(data)
}

/// One event carrying `data`.
pub fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_every_byte_in_order() {
        assert_eq!(join(Vec::new()), None);
        let one = Bytes::from_static(b"data: 1\n\n");
        assert_eq!(join(vec![one.clone()]), Some(one));
        let events = ["data: 1\n\n", "data: 2\n\n", "data: [DONE]\n\n"]
            .map(|e| Bytes::from_static(e.as_bytes()));
        assert_eq!(
            join(events).as_deref(),
            Some(&b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"[..])
        );
    }

    #[test]
    fn splits_events_across_chunk_boundaries() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut splitter = EventSplitter::default();
            let mut events = splitter.push(&stream[..split]);
            events.extend(splitter.push(&stream[split..]));
            let joined: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
            assert_eq!(joined, stream.to_vec(), "split at {split}");
            assert_eq!(events.len(), 4, "split at {split}");
            assert!(splitter.remainder().is_none());
        }
    }

    #[test]
    fn refuses_an_event_over_the_limit() {
        // A whole event over the limit, after one within it.
        let mut splitter = EventSplitter::with_limit(16);
        let events = splitter.push(b"data: 1\n\ndata: 0123456789abcdef\n\ndata: 2\n\n");
        assert_eq!(events, vec![Bytes::from_static(b"data: 1\n\n")]);
        assert!(splitter.too_large());
        assert!(splitter.push(b"data: 3\n\n").is_empty());
        assert!(splitter.remainder().is_none());

        // An event that never ends is dropped as soon as it passes the limit.
        let mut splitter = EventSplitter::with_limit(16);
        assert!(splitter.push(b"data: 01234567").is_empty());
        assert!(!splitter.too_large());
        assert!(splitter.push(b"89abcdef").is_empty());
        assert!(splitter.too_large());
        assert!(splitter.remainder().is_none());

        // An event exactly at the limit passes.
        let mut splitter = EventSplitter::with_limit(9);
        assert_eq!(splitter.push(b"data: 1\n\n").len(), 1);
        assert!(!splitter.too_large());
    }

    #[test]
    fn keeps_an_unfinished_event_as_remainder() {
        let mut splitter = EventSplitter::default();
        assert!(splitter.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            splitter.remainder().unwrap(),
            Bytes::from_static(b"data: {\"a\"")
        );
    }

    #[test]
    fn reads_data_lines() {
        assert_eq!(data(b"data: [DONE]\n\n"), Ok(Some("[DONE]".to_string())));
        assert_eq!(
            data(b"event: x\ndata:a\ndata: b\n\n"),
            Ok(Some("a\nb".to_string()))
        );
        assert_eq!(data(b": keep-alive\n\n"), Ok(None));
    }

    #[test]
    fn an_event_that_is_not_utf8_is_an_error_not_an_event_without_data() {
        // A lone continuation byte, a truncated sequence, an overlong encoding.
        for event in [
            &b"data: {\"a\":\"\x80\"}\n\n"[..],
            b"data: \xe2\x82\n\n",
            b": \xc0\xaf\n\n",
        ] {
            assert_eq!(data(event), Err(NotUtf8), "{event:?}");
            assert_eq!(check_utf8(event), Err(NotUtf8), "{event:?}");
        }
        assert_eq!(
            check_utf8("data: \"h\u{e9}\u{1F600}\"\n\n".as_bytes()),
            Ok(())
        );
    }
}
