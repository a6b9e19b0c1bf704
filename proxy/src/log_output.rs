//! Where log lines go: stdout, in batches that one thread writes.
//!
//! Requests write their access line when they end; a log pipe that reads slowly (a
//! stalled collector, a full disk) must cost log lines, not requests. So lines are
//! appended to a bounded buffer (`BUFFER_BYTES`) and written by a dedicated thread;
//! when the buffer is full, a line is dropped and counted
//! (`switchboard_log_lines_dropped_total`).
//!
//! The thread writes in batches rather than line by line. Handing each line to a
//! sleeping thread costs a futex wake-up and, on a busy core, a context switch before
//! the response reaches the client: at low load that was a third of the proxy's
//! system calls per request (strace, bench/README.md). Here the thread wakes on its
//! own every `FLUSH_INTERVAL` while lines keep coming and writes what gathered with one
//! `write`; a line reaches stdout at most that long after it was logged. Requests wake
//! it only when it has gone to sleep for good (no line for `IDLE_TICKS` intervals) or
//! when more than `FLUSH_BYTES` wait.
//!
//! `tracing-appender`'s non-blocking writer, used before, queues and wakes per line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of log lines held before new lines are dropped (about 16,000 access lines).
pub const BUFFER_BYTES: usize = 8 << 20;
/// How often the thread writes what gathered while lines keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Intervals without a line before the thread sleeps until a request wakes it.
const IDLE_TICKS: u32 = 10;
/// Past this many bytes waiting, the thread writes without waiting out the interval.
const FLUSH_BYTES: usize = 64 << 10;
/// The write buffer kept between batches; a larger one (after a burst) is let go.
const SPARE_BYTES: usize = 1 << 20;

static WRITER: OnceLock<LineWriter> = OnceLock::new();

/// Starts the writer thread on stdout (once per process). The guard writes what is
/// still buffered when dropped: keep it until the process ends.
pub fn install() -> Option<FlushGuard> {
    // Without its thread (none could be started), lines go straight to stdout.
    let (writer, guard) = LineWriter::start(std::io::stdout(), BUFFER_BYTES).ok()?;
    WRITER.set(writer).ok()?;
    Some(guard)
}

/// Writes one whole line (ending in a newline). Without `install` (the proxy embedded
/// in a test), straight to stdout.
pub fn write_line(line: &[u8]) {
    match WRITER.get() {
        Some(writer) => writer.write_line(line),
        None => {
            let _ = std::io::stdout().lock().write_all(line);
        }
    }
}

/// Lines dropped so far because the buffer was full.
pub fn dropped_lines() -> u64 {
    WRITER.get().map_or(0, LineWriter::dropped_lines)
}

/// Where `tracing`'s formatter writes: each event arrives in one `write` call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The handle requests append through; cheap to share.
#[derive(Clone, Debug)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when a line arrives while the thread sleeps for good, when the
    /// buffer passes `FLUSH_BYTES`, and on close.
    wake: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The thread waits for a signal rather than its next tick.
    asleep: bool,
    closed: bool,
}

/// Closes the writer and waits for its thread to write what is left.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

// === impl LineWriter ===

impl LineWriter {
    /// A writer holding at most `capacity` bytes, drained into `sink` by a thread.
    pub fn start(
        sink: impl Write + Send + 'static,
        capacity: usize,
    ) -> std::io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let drain = shared.clone();
        let thread = std::thread::Builder::new()
            .name("switchboard-log".to_string())
            .spawn(move || drain.drain_into(sink))?;
        let guard = FlushGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((LineWriter { shared }, guard))
    }

    /// Appends `line` whole, or drops and counts it when it does not fit.
    pub fn write_line(&self, line: &[u8]) {
        let wake = {
            let Ok(mut pending) = self.shared.pending.lock() else {
                return;
            };
            let before = pending.bytes.len();
            if pending.closed || before + line.len() > self.shared.capacity {
                drop(pending);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pending.bytes.extend_from_slice(line);
            let wake =
                pending.asleep || (before < FLUSH_BYTES && pending.bytes.len() >= FLUSH_BYTES);
            pending.asleep = false;
            wake
        };
        // Outside the lock, so the woken thread does not wait for it.
        if wake {
            self.shared.wake.notify_one();
        }
    }

    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

// === impl Shared ===

impl Shared {
    /// The writer thread: every tick, writes what gathered in one go; sleeps until
    /// signalled after `IDLE_TICKS` empty ones.
    fn drain_into(&self, mut sink: impl Write) {
        let mut batch = Vec::new();
        let mut idle_ticks = 0;
        loop {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            // Wait for the tick, unless a batch is already big enough.
            if !pending.closed && pending.bytes.len() < FLUSH_BYTES {
                if pending.bytes.is_empty() && idle_ticks >= IDLE_TICKS {
                    pending.asleep = true;
                    pending = match self.wake.wait_while(pending, |p| p.asleep && !p.closed) {
                        Ok(pending) => pending,
                        Err(_) => return,
                    };
                    idle_ticks = 0;
                }
                pending = match self.wake.wait_timeout_while(pending, FLUSH_INTERVAL, |p| {
                    !p.closed && p.bytes.len() < FLUSH_BYTES
                }) {
                    Ok((pending, _)) => pending,
                    Err(_) => return,
                };
            }
            if pending.bytes.is_empty() {
                idle_ticks += 1;
            } else {
                idle_ticks = 0;
            }
            std::mem::swap(&mut batch, &mut pending.bytes);
            let closed = pending.closed;
            drop(pending);
            if !batch.is_empty() {
                // A write error (stdout closed) loses this batch; nothing better to do.
                let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                batch.clear();
                if batch.capacity() > SPARE_BYTES {
                    batch = Vec::new();
                }
            }
            if closed {
                // Lines that raced the close were dropped and counted by `write_line`.
                return;
            }
        }
    }
}

// === impl FlushGuard ===

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.closed = true;
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink tests can read back; `gate` holds writes back while locked (a stalled pipe).
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _stalled = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            self.writes.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_in_batches() {
        let sink = Sink::default();
        let (writer, guard) = LineWriter::start(sink.clone(), BUFFER_BYTES).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        writer.write_line(format!("thread {t} line {i:05}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(
            lines.len(),
            8_000,
            "every line is written once the guard drops"
        );
        for t in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..2_000)
                .map(|i| format!("thread {t} line {i:05}"))
                .collect();
            assert_eq!(own, expected, "thread {t}'s lines are whole and in order");
        }
        let writes = sink.writes.load(Ordering::Relaxed);
        assert!(writes < 100, "8,000 lines went out in {writes} writes");
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn a_stalled_sink_costs_lines_not_writers() {
        let sink = Sink::default();
        let stalled = sink.gate.lock().unwrap();
        let (writer, guard) = LineWriter::start(sink.clone(), 4096).unwrap();
        let line = [b'x'; 99]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // The first batch may be taken by the thread (then stuck in the sink); after
        // that the 4 KiB buffer holds 40 lines and the rest are dropped and counted.
        for _ in 0..1_000 {
            writer.write_line(&line);
        }
        let dropped = writer.dropped_lines();
        assert!(
            (1_000 - 2 * 41..=1_000 - 40).contains(&dropped),
            "dropped {dropped} of 1,000 with room for 40 to 80"
        );
        drop(stalled);
        drop(guard);
        let written = sink.written.lock().unwrap().len();
        assert_eq!(
            written as u64,
            (1_000 - dropped) * 100,
            "kept lines are all written"
        );
    }

    // A plain thread, not a runtime worker: sleeping is how it waits.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn lone_lines_are_written_after_the_thread_went_to_sleep() {
        let sink = Sink::default();
        let (writer, _guard) = LineWriter::start(sink.clone(), BUFFER_BYTES).unwrap();
        let written_soon = |expected: &[u8]| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while sink.written.lock().unwrap().as_slice() != expected {
                assert!(std::time::Instant::now() < deadline, "the line was written");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        writer.write_line(b"hello\n");
        written_soon(b"hello\n");
        // Past IDLE_TICKS the thread waits for a request to wake it.
        std::thread::sleep(FLUSH_INTERVAL * (IDLE_TICKS + 3));
        assert!(writer.shared.pending.lock().unwrap().asleep);
        writer.write_line(b"again\n");
        written_soon(b"hello\nagain\n");
    }
}
