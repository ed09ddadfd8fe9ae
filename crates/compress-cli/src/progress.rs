//! Progress bars on stderr (indicatif): blocks of a compression run, windows of an evaluation.
//!
//! Bars draw only when stderr is a terminal and `--json` is off, so logs and machine output
//! stay clean; the final summary is printed either way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar with `total` steps of `unit` (`blocks`, `windows`, `questions`), showing the rate
/// and the ETA; hidden when `quiet`.
pub fn bar(what: &str, unit: &str, total: usize, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total as u64),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    let template = format!(
        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}}, ETA {{eta}})"
    );
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// A `(done, total)` callback that drives `bar` (the evaluation functions' progress shape).
pub fn counter(bar: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }
}
