//! Where log lines go: stdout, through a bounded queue that one thread drains.
//!
//! Requests write their access line when they end; a log pipe that reads slowly (a
//! stalled collector, a full disk) must cost log lines, not requests. So lines are
//! queued (at most `QUEUE_LINES`) and written by a dedicated thread; when the queue is
//! full, a line is dropped and counted (`switchboard_log_lines_dropped_total`).
//! `tracing-appender`'s non-blocking writer does exactly this.

use std::io::Write;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines queued before new ones are dropped: at 500 bytes a line, about 8 MiB.
pub const QUEUE_LINES: usize = 16_384;

static WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// Starts the writer thread (once per process). The guard flushes the queue when
/// dropped: keep it until the process ends.
pub fn install() -> Option<(NonBlocking, WorkerGuard)> {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("switchboard-log")
        .finish(std::io::stdout());
    WRITER.set(writer.clone()).ok()?;
    Some((writer, guard))
}

/// Writes one whole line (ending in a newline). Without `install` (the proxy embedded
/// in a test), straight to stdout.
pub fn write_line(line: &[u8]) {
    match WRITER.get() {
        // One write per line: the queue holds whole lines, never interleaved.
        Some(writer) => {
            let _ = writer.clone().write_all(line);
        }
        None => {
            let _ = std::io::stdout().lock().write_all(line);
        }
    }
}

/// Lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    WRITER
        .get()
        .map_or(0, |writer| writer.error_counter().dropped_lines() as u64)
}
