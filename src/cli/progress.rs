//! A progress bar on stderr for long runs; indicatif draws nothing when stderr is not a
//! terminal, so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressStyle};
use prunebench_harness::Progress;

pub struct Bar(ProgressBar);

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
        Self(bar)
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
        Self(bar)
    }

    pub fn update(&self, p: Progress<'_>) {
        self.0.set_length(p.total);
        self.0.set_position(p.done);
        self.0.set_message(p.what.to_string());
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
