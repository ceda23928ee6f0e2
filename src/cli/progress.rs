//! A progress bar on stderr for long runs; indicatif draws nothing when stderr is not a
//! terminal, so logs and pipes stay clean. With `PRUNEBENCH_PROGRESS=lines` each step is
//! instead written as one plain line (`progress: PREFIX DONE/TOTAL WHAT`), for logs of long
//! runs and for tests that check what a run did before it was refused.

use indicatif::{ProgressBar, ProgressStyle};
use prunebench_harness::Progress;

/// The environment variable that asks for plain progress lines.
pub const LINES_ENV: &str = "PRUNEBENCH_PROGRESS";

pub struct Bar(ProgressBar, Option<String>);

fn lines_prefix(prefix: &str) -> Option<String> {
    (std::env::var(LINES_ENV).as_deref() == Ok("lines")).then(|| prefix.to_string())
}

impl Bar {
    pub fn new(prefix: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("static template"),
        );
        bar.set_prefix(prefix.to_string());
        Self(bar, lines_prefix(prefix))
    }

    /// A bar for runs of minutes to hours (a whole model), with the time left.
    pub fn with_eta(prefix: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}, {eta} left] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("static template"),
        );
        bar.set_prefix(prefix.to_string());
        Self(bar, lines_prefix(prefix))
    }

    pub fn update(&self, p: Progress<'_>) {
        if let Some(prefix) = &self.1 {
            eprintln!("progress: {prefix} {}/{} {}", p.done, p.total, p.what);
            return;
        }
        self.0.set_length(p.total);
        self.0.set_position(p.done);
        self.0.set_message(p.what.to_string());
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
