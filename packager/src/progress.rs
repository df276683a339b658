//! Progress lines on stderr, prefixed by the step that prints them (`fetch: …`,
//! `build-router: …`), silenced by `--quiet`-style requests.

use std::fmt;

/// Where a step's progress lines go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    step: &'static str,
    quiet: bool,
}

impl Progress {
    /// Lines of `step`, or none when `quiet`.
    pub(crate) fn new(step: &'static str, quiet: bool) -> Self {
        Progress { step, quiet }
    }

    /// Whether lines are dropped.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// One line, `<step>: <args>`.
    pub(crate) fn line(&self, args: fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("{}: {args}", self.step);
        }
    }
}
