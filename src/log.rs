//! Log lines on stderr that can never take the process down. `eprintln!` panics when stderr
//! cannot be written (`2>/dev/full`, a journald restart closing the pipe), and in `run` that
//! panic would leave pending triggers unanswered. A line that cannot be written is dropped and
//! counted instead (`efficientad_log_lines_dropped_total` in `/metrics`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes one line to stderr; a failure is counted, never raised.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    if writeln!(err, "{args}").is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Log lines that could not be written so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `eprintln!` that never panics: see [`crate::log`].
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
