//! Step banners with elapsed time, so long runs (toolchain installs, release builds,
//! benchmarks) show where they are and where the time went.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One named step. Finish it with [`Step::done`] or [`Step::skip`]; dropping it
/// unfinished (an error bubbled up) reports it as failed with its elapsed time.
#[must_use = "a step reports failure when dropped unfinished"]
pub struct Step {
    name: String,
    started: Instant,
    finished: bool,
}

pub fn step(name: impl Into<String>) -> Step {
    let name = name.into();
    banner(&format!("==> {name}"));
    Step {
        name,
        started: Instant::now(),
        finished: false,
    }
}

impl Step {
    pub fn done(mut self) {
        self.finished = true;
        eprintln!(
            "    ok: {} ({})",
            self.name,
            elapsed(self.started.elapsed())
        );
    }

    /// The step had nothing to do; `why` says what was found instead.
    pub fn skip(mut self, why: &str) {
        self.finished = true;
        eprintln!("    skip: {why}");
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            eprintln!(
                "    FAILED: {} after {}",
                self.name,
                elapsed(self.started.elapsed())
            );
        }
    }
}

/// A line that must stand out in a long log (bold on a terminal).
pub fn banner(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[1m{text}\x1b[0m");
    } else {
        eprintln!("{text}");
    }
}

/// A warning that must not scroll by unnoticed.
pub fn loud(lines: &[&str]) {
    let width = lines.iter().map(|l| l.len()).max().unwrap_or(0) + 4;
    let rule = "!".repeat(width);
    banner(&rule);
    for line in lines {
        banner(&format!("! {line:<w$} !", w = width - 4));
    }
    banner(&rule);
}

pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_is_human_readable() {
        assert_eq!(elapsed(Duration::from_millis(1234)), "1.2s");
        assert_eq!(elapsed(Duration::from_secs(125)), "2m05s");
    }
}
