//! A throttled one-line progress display with elapsed time and ETA, for long evaluations and
//! compression runs (at most two updates a second, and always the final one).

use std::io::Write;
use std::time::Instant;

/// Progress of `done` out of `total` steps, redrawn in place on stderr.
#[derive(Debug)]
pub struct ProgressLine {
    label: String,
    start: Instant,
    last: f64,
}

impl ProgressLine {
    /// Starts the clock for a task called `label`.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            start: Instant::now(),
            last: f64::NEG_INFINITY,
        }
    }

    /// Reports `done` of `total` steps with an optional detail; ends the line when `done ==
    /// total`.
    pub fn update(&mut self, done: usize, total: usize, detail: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        let finished = done >= total;
        if secs - self.last < 0.5 && !finished {
            return;
        }
        self.last = secs;
        // No estimate before the first step is done.
        let eta = match done {
            0 => "?".to_string(),
            _ => format!(
                "{:.0}",
                secs / done as f64 * total.saturating_sub(done) as f64
            ),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {done}/{total} {detail} {secs:.0} s elapsed, ETA {eta} s   ",
            self.label
        );
        if finished {
            let _ = writeln!(err);
        }
    }

    /// Seconds since [`ProgressLine::new`].
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
