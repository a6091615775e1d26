//! Where log lines go: stderr, one `write(2)` per line, except that a runtime worker
//! holds its INFO lines (the access log) until it goes idle and then writes them at once.
//!
//! Why: with the access log on, the `write(2)` per line was the largest item left of the
//! log's cost (4.5 % of the samples in the loopback bench, `docs/performance.md`). A busy
//! worker serves several requests per wake-up; one write for all their lines costs one
//! system call instead of several. What a line may wait is bounded three ways: the worker
//! going idle (its park hook calls [`park`]), [`HOLD_BYTES`] held, and [`HOLD_FOR`] since
//! the first held line. WARN and ERROR lines are never held: they go out at once, after
//! the lines held before them, so the order on a thread is kept.
//!
//! Only threads whose park hook has run hold lines. A thread that never parks (the main
//! thread before the runtime, the blocking pool, tests) writes every line at once.
//! [`flush`] writes a thread's held lines on demand (each worker as it stops, the main
//! thread after its runtime, the panic hook), and a thread's exit writes what is left.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Held lines are written once they reach this size: a few dozen access lines, and one
/// write well under a pipe's 64 KiB.
pub const HOLD_BYTES: usize = 16 * 1024;

/// Held lines are written at the next line once the first of them is this old, should a
/// worker stay busy without reaching [`HOLD_BYTES`].
pub const HOLD_FOR: Duration = Duration::from_millis(100);

/// Where a thread's lines end: stderr in the router, a capture in tests.
pub type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The `MakeWriter` of the router's subscriber.
#[derive(Clone)]
pub struct LineWriter {
    sink: Sink,
}

impl LineWriter {
    /// Lines to stderr. Every write holds stderr's lock, so lines from different
    /// threads never interleave, whatever the size of a write.
    pub fn stderr() -> Self {
        Self::to(Arc::new(|bytes: &[u8]| {
            // Nowhere to report a failed log write; the request it describes is served.
            let _ = io::stderr().lock().write_all(bytes);
        }))
    }

    /// Lines to `sink`.
    pub fn to(sink: Sink) -> Self {
        Self { sink }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            sink: &self.sink,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            sink: &self.sink,
            // Levels order by verbosity: ERROR < WARN < INFO.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// One event's line (tracing-subscriber writes each event with one `write_all`).
pub struct Line<'a> {
    sink: &'a Sink,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        // `try_with`: a line logged while the thread's locals are being destroyed goes
        // straight out.
        let held = HELD.try_with(|held| {
            let Ok(mut held) = held.try_borrow_mut() else {
                return false;
            };
            if !held.holding {
                return false;
            }
            if held
                .sink
                .as_ref()
                .is_some_and(|s| !Arc::ptr_eq(s, self.sink))
            {
                held.write_out();
            }
            if held.bytes.is_empty() {
                held.since = Some(Instant::now());
                held.sink = Some(self.sink.clone());
            }
            held.bytes.extend_from_slice(line);
            if self.urgent
                || held.bytes.len() >= HOLD_BYTES
                || held.since.is_some_and(|t| t.elapsed() >= HOLD_FOR)
            {
                held.write_out();
            }
            true
        });
        if held != Ok(true) {
            (self.sink)(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A thread's held lines.
#[derive(Default)]
struct Held {
    /// Set by the first [`park`]: this thread is a runtime worker.
    holding: bool,
    bytes: Vec<u8>,
    /// When the first held line came.
    since: Option<Instant>,
    sink: Option<Sink>,
}

impl Held {
    fn write_out(&mut self) {
        if let Some(sink) = &self.sink
            && !self.bytes.is_empty()
        {
            sink(&self.bytes);
        }
        self.bytes.clear();
        self.since = None;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.write_out();
    }
}

thread_local! {
    static HELD: RefCell<Held> = RefCell::new(Held::default());
}

/// The runtime's park hook: writes the lines this thread held, and from now on it holds
/// its INFO lines until it parks again.
pub fn park() {
    with_held(|held| {
        held.holding = true;
        held.write_out();
    });
}

/// Writes the lines this thread held, now, and holds none until the thread parks again:
/// for the main thread once its runtime has stopped, and the panic hook.
pub fn flush() {
    with_held(|held| {
        held.holding = false;
        held.write_out();
    });
}

fn with_held(f: impl FnOnce(&mut Held)) {
    // `try_with`: during the thread's exit the buffer may be gone (and written already).
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            f(&mut held);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::{debug, error, info, warn};

    use super::*;

    type Record = Arc<Mutex<Vec<String>>>;

    /// A writer whose sink records each write in `record`.
    fn recording(record: &Record) -> LineWriter {
        let r = record.clone();
        LineWriter::to(Arc::new(move |bytes: &[u8]| {
            r.lock()
                .expect("capture lock")
                .push(String::from_utf8_lossy(bytes).into_owned())
        }))
    }

    /// Runs `f` on a thread of its own (the buffer is the thread's), with a subscriber
    /// writing bare messages through a [`recording`] writer.
    fn on_a_thread(f: impl FnOnce(&Record) + Send + 'static) -> Vec<String> {
        let record = Record::default();
        let writer = recording(&record);
        let seen = record.clone();
        std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(writer)
                .with_max_level(Level::DEBUG)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false)
                .finish();
            let _default = tracing::subscriber::set_default(subscriber);
            f(&seen);
        })
        .join()
        .expect("test thread");
        writes(&record)
    }

    fn writes(record: &Record) -> Vec<String> {
        record.lock().expect("capture lock").clone()
    }

    #[test]
    fn a_thread_that_never_parked_writes_each_line_at_once() {
        let out = on_a_thread(|_| {
            info!("a");
            info!("b");
        });
        assert_eq!(out, ["a\n", "b\n"]);
    }

    #[test]
    fn a_worker_holds_info_lines_until_it_parks_and_writes_them_in_one_write() {
        let out = on_a_thread(|record| {
            park();
            info!("a");
            debug!("b");
            assert!(writes(record).is_empty(), "held until the worker parks");
            park();
            assert_eq!(writes(record), ["a\nb\n"]);
            info!("c");
            flush();
            assert_eq!(writes(record), ["a\nb\n", "c\n"]);
            info!("d");
            assert_eq!(
                writes(record),
                ["a\nb\n", "c\n", "d\n"],
                "no holding after flush"
            );
        });
        assert_eq!(out, ["a\nb\n", "c\n", "d\n"], "nothing more at exit");
    }

    #[test]
    fn warn_and_error_go_out_at_once_after_the_lines_held_before_them() {
        let out = on_a_thread(|record| {
            park();
            info!("held");
            warn!("warned");
            assert_eq!(writes(record), ["held\nwarned\n"]);
            info!("held");
            error!("failed");
        });
        assert_eq!(out, ["held\nwarned\n", "held\nfailed\n"]);
    }

    #[test]
    fn held_lines_go_out_at_the_size_bound() {
        let text = "x".repeat(999);
        let per_write = HOLD_BYTES.div_ceil(text.len() + 1);
        let t = text.clone();
        let out = on_a_thread(move |record| {
            park();
            for _ in 0..per_write - 1 {
                info!("{t}");
            }
            assert!(writes(record).is_empty(), "under the bound");
            info!("{t}");
            assert_eq!(writes(record).len(), 1, "at the bound");
        });
        assert_eq!(out, [format!("{text}\n").repeat(per_write)]);
    }

    #[test]
    fn held_lines_go_out_at_the_next_line_once_the_first_is_too_old() {
        let out = on_a_thread(|record| {
            park();
            info!("old");
            std::thread::sleep(HOLD_FOR);
            assert!(
                writes(record).is_empty(),
                "nothing writes without a line or a park"
            );
            info!("new");
            assert_eq!(writes(record), ["old\nnew\n"]);
        });
        assert_eq!(out, ["old\nnew\n"]);
    }

    #[test]
    fn a_thread_writes_what_it_held_when_it_exits() {
        let out = on_a_thread(|record| {
            park();
            info!("last");
            assert!(writes(record).is_empty());
        });
        assert_eq!(out, ["last\n"]);
    }

    #[test]
    fn lines_for_another_sink_write_out_the_held_ones_first() {
        let out = on_a_thread(|_| {
            park();
            info!("to the test's sink");
            let other = Record::default();
            recording(&other)
                .make_writer()
                .write_all(b"urgent\n")
                .expect("write");
            assert_eq!(writes(&other), ["urgent\n"]);
        });
        assert_eq!(out, ["to the test's sink\n"]);
    }
}
