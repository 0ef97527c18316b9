//! Progress bars that show on a terminal and stay silent everywhere else.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A row counter for long work. Drawn on stderr only when stderr is a terminal and the user
/// did not ask for quiet, so scripts and logs never see control characters.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(visible: bool) -> Progress {
        let target = if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {human_pos}/{human_len} rows {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress { bar }
    }

    /// A progress that never draws, for library callers and tests.
    pub fn hidden() -> Progress {
        Progress::new(false)
    }

    pub fn start(&self, what: &str, total_rows: u64) {
        self.bar.set_prefix(what.to_owned());
        self.bar.set_length(total_rows);
        self.bar.set_position(0);
    }

    pub fn advance(&self, rows: u64) {
        self.bar.inc(rows);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
